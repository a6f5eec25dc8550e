//! Reproduces the level table in src/blob.rs: `cargo run --release --example measure_levels -- some.tar`
//! (any large uncompressed file; the table used a 256 MiB tar of /usr).
use nixfly::blob;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let data = std::fs::read(&path).unwrap();
    for (alg, levels) in [
        (blob::Algorithm::Gzip, vec![1, 2, 3, 4, 6]),
        (blob::Algorithm::Zstd, vec![1, 3]),
    ] {
        for level in levels {
            let c = blob::Compression::new(alg, Some(level)).unwrap();
            let t = std::time::Instant::now();
            let d = blob::compress_layer(&data[..], c, 1, |_| Ok(()), |_| {}).unwrap();
            let s = t.elapsed().as_secs_f64();
            let t2 = std::time::Instant::now();
            blob::compress_layer(&data[..], c, 2, |_| Ok(()), |_| {}).unwrap();
            let s2 = t2.elapsed().as_secs_f64();
            println!(
                "{} {level}: 1 worker {:.0} MB/s, 2 workers {:.0} MB/s, ratio {:.3}",
                alg.name(),
                data.len() as f64 / s / 1e6,
                data.len() as f64 / s2 / 1e6,
                d.size as f64 / data.len() as f64
            );
        }
    }
}
