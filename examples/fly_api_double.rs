//! The Fly API double as a standalone process: a sandbox to try nixfly's rollout without a Fly
//! account.
//!
//!     cargo run --example fly_api_double -- --listen 127.0.0.1:0 --app demo --machines 3 --token t
//!     cargo run --example fly_api_double -- --seed seed.json
//!
//! It prints its base URL on stdout (use it for FLY_FLAPS_BASE_URL and FLY_API_BASE_URL), logs
//! each request and schema violation on stderr, and runs until killed. A seed file is
//! `{"app": "demo", "machines": [{"group": "app", "count": 2, "checks": 1, "services": true}]}`
//! with the fields of `MachineSpec`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fly_api_double::{FlyApi, MachineSpec, Options, Timing};

#[derive(Parser)]
#[command(about = "Serve a fake Fly Machines + releases API on loopback")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// App to create.
    #[arg(long, default_value = "demo")]
    app: String,
    /// Number of started machines in process group `app` (ignored with --seed).
    #[arg(long, default_value_t = 3)]
    machines: usize,
    /// Health checks per machine.
    #[arg(long, default_value_t = 1)]
    checks: usize,
    /// The token clients must send.
    #[arg(long, default_value = "sandbox-token")]
    token: String,
    /// Wall seconds per simulated Fly second (1.0 = real time).
    #[arg(long, default_value_t = 0.5)]
    time_scale: f64,
    /// JSON seed file: {"app": NAME, "machines": [MachineSpec, ...]}.
    #[arg(long)]
    seed: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    app: String,
    machines: Vec<MachineSpec>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading seed file {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing seed file {}", path.display()))?
        }
        None => Seed {
            app: args.app.clone(),
            machines: vec![
                MachineSpec::new("app")
                    .count(args.machines)
                    .checks(args.checks)
                    .services(true),
            ],
        },
    };
    let options = Options {
        token: args.token,
        timing: Timing {
            scale: args.time_scale,
            ..Timing::default()
        },
        echo: true,
        ..Options::default()
    };
    let fly =
        FlyApi::listen(args.listen, options).with_context(|| format!("listening on {}", args.listen))?;
    fly.add_app(&seed.app);
    for spec in &seed.machines {
        for id in fly.add_machines(&seed.app, spec) {
            eprintln!("fly-api-double: machine {id} ({}, {})", spec.group, spec.state);
        }
    }
    println!("{}", fly.url());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
