//! Writes the benchmark image: an uncompressed streamLayeredImage archive, one layer per
//! directory given (real files on this machine), with the test fixture writer. Used by
//! `bench/push.sh`; prints the config digest and the layer count.
//!
//!     cargo run --release --example bench_image -- OUT.tar DIR...

use test_images as images;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().expect("usage: bench_image OUT.tar DIR...");
    let layers: Vec<images::Layer> = args
        .map(|dir| images::Layer {
            paths: vec![dir.into()],
        })
        .collect();
    assert!(!layers.is_empty(), "usage: bench_image OUT.tar DIR...");
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    let written = images::write_stream_layered(file, &layers, images::Fault::None)?;
    let total: u64 = written.layer_sizes.iter().sum();
    println!(
        "{} {} layers {} bytes",
        written.config_digest,
        layers.len(),
        total
    );
    Ok(())
}
