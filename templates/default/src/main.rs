//! A tiny web app with no dependencies: answers every request with a greeting, on $PORT
//! (8080 by default, as fly.toml's internal_port says).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| std::io::Error::other(format!("PORT={p} is not a port number")))?,
        Err(_) => 8080,
    };
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    eprintln!("listening on 0.0.0.0:{port}");
    for stream in listener.incoming() {
        // One bad client must not stop the server.
        if let Err(err) = stream.and_then(answer) {
            eprintln!("request failed: {err}");
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = BufReader::new(&stream);
    let mut line = String::new();
    // Read the request head up to the blank line; the answer does not depend on it.
    while request.read_line(&mut line)? > 2 {
        line.clear();
    }
    let body = "Hello from Nix on Fly!\n";
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
