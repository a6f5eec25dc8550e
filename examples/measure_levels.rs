//! Measures deflate engines and levels on one uncompressed file, one core each, and nixfly's own
//! layer compressor with 1 and 2 threads. `bench/deflate.py` runs it (with the ISA-L and gzip
//! command-line tools beside it) and prints the table in src/blob.rs:
//!
//!     cargo run --release --example measure_levels -- some.tar
//!
//! With `--floor`, prints only the seconds (median of 3) nixfly's default compression takes for
//! the whole file on every core, both SHA-256s included: the least a cold push of it can take.
//! `bench/push.py` prints it beside skopeo.
//!
//! With `--blocks`, prints one line per 1 MiB block (nixfly's gzip member): for libdeflate
//! levels 1 to 9, the member's size, the seconds it took, and the compressed size of a sample
//! of it (four 16 KiB slices), tab-separated.
//! `bench/engine_mix.py` reads it.
use nixfly::blob;
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = &args[..]
        && flag == "--floor"
    {
        return floor(&std::fs::read(path).unwrap());
    }
    if let [flag, path] = &args[..]
        && flag == "--blocks"
    {
        return blocks(&std::fs::read(path).unwrap());
    }
    let path = args
        .first()
        .expect("usage: measure_levels [--floor | --blocks] FILE");
    let data = std::fs::read(path).unwrap();
    let row = |name: String, seconds: f64, size: usize| {
        println!(
            "{name}\t{:.0}\t{:.3}",
            data.len() as f64 / seconds / 1e6,
            size as f64 / data.len() as f64
        );
    };
    // zlib-rs (what nixfly used before), one stream over the whole input.
    for level in [1, 2, 6] {
        let started = Instant::now();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(&data).unwrap();
        let size = encoder.finish().unwrap().len();
        row(
            format!("zlib-rs {level} (one stream)"),
            started.elapsed().as_secs_f64(),
            size,
        );
    }
    // libdeflate, one gzip member per block: the block size decides how much context is lost.
    for block in [256 << 10, 1 << 20, 4 << 20] {
        for level in [1, 2, 3, 4, 5, 6, 7, 9] {
            let mut compressor =
                libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
            let mut out = vec![0; compressor.gzip_compress_bound(block)];
            let started = Instant::now();
            let size: usize = data
                .chunks(block)
                .map(|chunk| compressor.gzip_compress(chunk, &mut out).unwrap())
                .sum();
            row(
                format!("libdeflate {level} ({} KiB members)", block >> 10),
                started.elapsed().as_secs_f64(),
                size,
            );
        }
    }
    // nixfly's compressor as pushes use it, 1 and 2 threads.
    for (algorithm, levels) in [
        (blob::Algorithm::Gzip, vec![1, 2, 4, 6, 9]),
        (blob::Algorithm::Zstd, vec![1, 3]),
    ] {
        for level in levels {
            let compression = blob::Compression::new(algorithm, Some(level)).unwrap();
            for workers in [1, 2] {
                let started = Instant::now();
                let digests =
                    blob::compress_layer(&data[..], compression, workers, |_| Ok(()), |_| {}).unwrap();
                row(
                    format!("nixfly {} ({workers} threads)", compression.key()),
                    started.elapsed().as_secs_f64(),
                    digests.size as usize,
                );
            }
        }
    }
}

fn floor(data: &[u8]) {
    let compression = blob::Compression::new(blob::Algorithm::Gzip, None).unwrap();
    let mut seconds: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            blob::compress_layer(data, compression, blob::default_workers(), |_| Ok(()), |_| {}).unwrap();
            started.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    println!("{:.3}", seconds[1]);
}

fn blocks(data: &[u8]) {
    let block = 1 << 20;
    let mut compressors: Vec<_> = (1..=9)
        .map(|level| libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap()))
        .collect();
    let mut out = vec![0; compressors[0].gzip_compress_bound(block)];
    for chunk in data.chunks(block) {
        let row: Vec<String> = compressors
            .iter_mut()
            .map(|compressor| {
                let started = Instant::now();
                let size = compressor.gzip_compress(chunk, &mut out).unwrap();
                let seconds = started.elapsed().as_secs_f64();
                // The sample a compressor could look at before choosing: four 16 KiB slices
                // spread over the member, each compressed on its own.
                let sampled: usize = (0..chunk.len())
                    .step_by(block / 4)
                    .map(|at| {
                        let slice = &chunk[at..chunk.len().min(at + (16 << 10))];
                        compressor.gzip_compress(slice, &mut out).unwrap()
                    })
                    .sum();
                format!("{size}\t{seconds:.6}\t{sampled}")
            })
            .collect();
        println!("{}", row.join("\t"));
    }
}
