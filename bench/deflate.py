#!/usr/bin/env python3
"""Deflate engines side by side, on the first 400 MB of the push benchmark's image.

Rows: zlib-rs (what nixfly used before), libdeflate at several levels and member sizes, and
nixfly's own layer compressor (examples/measure_levels.rs); ISA-L's igzip and GNU gzip as
command-line tools (Debian packages `isal`, `gzip`; time includes reading from the page cache).
One core each unless a row says otherwise. Prints MB/s of input and compressed/original.

    bench/deflate.py [--mb 400]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from push import DEFAULT_DIRS, ROOT  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=400)
    args = parser.parse_args()
    subprocess.run(
        ["cargo", "build", "--release", "--example", "bench_image", "--example", "measure_levels"],
        cwd=ROOT, check=True,
    )
    work = Path(tempfile.mkdtemp(prefix="nixfly-deflate-"))
    try:
        image = work / "image.tar"
        subprocess.run([ROOT / "target/release/examples/bench_image", image, *DEFAULT_DIRS],
                       check=True, stdout=subprocess.DEVNULL)
        sample = work / "sample"
        with open(image, "rb") as src, open(sample, "wb") as dst:
            dst.write(src.read(args.mb * 1_000_000))
        size = sample.stat().st_size
        print(f"sample: first {size / 1e6:.0f} MB of a {image.stat().st_size / 1e6:.0f} MB image\n")
        print("| engine, level | MB/s | compressed/original |\n|---|---:|---:|")
        out = subprocess.run([ROOT / "target/release/examples/measure_levels", sample],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            name, speed, ratio = line.split("\t")
            print(f"| {name} | {speed} | {ratio} |", flush=True)
        for tool, flag in [("igzip", "-1"), ("igzip", "-3"), ("gzip", "-6")]:
            if not shutil.which(tool):
                print(f"| {tool} {flag} | (not installed) | |")
                continue
            with open(sample, "rb") as src, open(work / "out.gz", "wb") as dst:
                started = time.monotonic()
                subprocess.run([tool, flag, "-n", "-c"], stdin=src, stdout=dst, check=True)
                seconds = time.monotonic() - started
            ratio = (work / "out.gz").stat().st_size / size
            print(f"| {tool} {flag[1:]} (command line) | {size / seconds / 1e6:.0f} | {ratio:.3f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
