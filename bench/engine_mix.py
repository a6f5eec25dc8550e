#!/usr/bin/env python3
"""How fast could gzip be, at no more bytes than skopeo pushes, if each 1 MiB member could use
its own engine and level? The question behind #12's cold-push figure.

Every member of the push benchmark's image is compressed with libdeflate levels 1-9
(examples/measure_levels.rs --blocks) and ISA-L levels 0-3 (the `isal` package from PyPI:
`pip install isal`), one core, timing each. Then, for a byte budget (default: skopeo's pushed
bytes, 1.0156x libdeflate level 2's, as bench/push.py measured them), it prints:

- each engine and level alone;
- the best any per-member choice can do (each member's engine and level picked knowing how
  every one of them would do, by a Lagrangian sweep over seconds + lambda x bytes): a bound no
  real compressor reaches, since it must choose before compressing;
- a compressor that does choose before compressing: it compresses a sample of each member
  (four 16 KiB slices) with every candidate, predicts the member from it, picks by the same
  rule, and pays for the samples.

    bench/engine_mix.py [--image FILE] [--budget 1.0156]
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

BLOCK = 1 << 20
SLICE = 16 << 10
GZIP_FRAME = 18  # header and trailer of a gzip member around a raw deflate stream


def isal_member(isal_zlib, data, level):
    """Size and seconds of one gzip member of `data` by ISA-L at `level`."""
    started = time.perf_counter()
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    size = len(compressor.compress(data)) + len(compressor.flush()) + GZIP_FRAME
    return size, time.perf_counter() - started


def sweep(pick, budget):
    """Bisect lambda so that the chosen members' bytes just fit the budget; (bytes, seconds)."""
    low, high = 0.0, 10.0
    best = None
    for _ in range(50):
        lam = (low + high) / 2
        size, seconds = pick(lam)
        if size > budget:
            low = lam
        else:
            high, best = lam, (size, seconds)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="an uncompressed image tar (default: build the push benchmark's)")
    parser.add_argument("--budget", type=float, default=1.0156,
                        help="byte budget as a multiple of libdeflate level 2's bytes (default: skopeo's)")
    args = parser.parse_args()
    try:
        from isal import isal_zlib
    except ImportError:
        sys.exit("engine_mix.py needs ISA-L's Python binding: pip install isal")
    subprocess.run(["cargo", "build", "--release", "--example", "bench_image", "--example", "measure_levels"],
                   cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="nixfly-mix-"))
    try:
        image = args.image
        if image is None:
            image = work / "image.tar"
            subprocess.run([ROOT / "target/release/examples/bench_image", image, *DEFAULT_DIRS],
                           check=True, stdout=subprocess.DEVNULL)
        data = image.read_bytes()
        lines = subprocess.run([ROOT / "target/release/examples/measure_levels", "--blocks", image],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    names = [f"ISA-L {level}" for level in range(4)] + [f"libdeflate {level}" for level in range(1, 10)]
    # Per member: (bytes, seconds) for every option; and (sample bytes in, sample bytes out per
    # option).
    members, samples = [], []
    for index, line in enumerate(lines):
        chunk = data[index * BLOCK:(index + 1) * BLOCK]
        fields = line.split("\t")
        libdeflate = [(int(fields[i]), float(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 3)]
        slices = [chunk[at:at + SLICE] for at in range(0, len(chunk), BLOCK // 4)]
        isal = [isal_member(isal_zlib, chunk, level) for level in range(4)]
        isal_sampled = [sum(isal_member(isal_zlib, piece, level)[0] for piece in slices) for level in range(4)]
        members.append(isal + [(size, seconds) for size, seconds, _ in libdeflate])
        samples.append((sum(len(piece) for piece in slices), isal_sampled + [sampled for _, _, sampled in libdeflate]))
    total = len(data)
    print(f"{total / 1e6:.1f} MB in {len(members)} members of 1 MiB, one core\n")
    print("| members by | MB | seconds |\n|---|---:|---:|")
    for option, name in enumerate(names):
        print(f"| {name} | {sum(m[option][0] for m in members) / 1e6:.1f} | "
              f"{sum(m[option][1] for m in members):.2f} |")
    level2 = names.index("libdeflate 2")
    budget = sum(m[level2][0] for m in members) * args.budget
    print(f"\nbudget: {budget / 1e6:.1f} MB ({args.budget}x libdeflate 2's bytes)\n")
    print("| members by | MB | seconds |\n|---|---:|---:|")
    for label, allowed in [("any libdeflate level, chosen knowing every result", range(4, len(names))),
                           ("any engine and level, chosen knowing every result", range(len(names)))]:
        def oracle(lam, allowed=allowed):
            chosen = [m[min(allowed, key=lambda i: m[i][1] + lam * m[i][0] / 1e6)] for m in members]
            return sum(c[0] for c in chosen), sum(c[1] for c in chosen)
        size, seconds = sweep(oracle, budget)
        print(f"| {label} | {size / 1e6:.1f} | {seconds:.2f} |")
    # A real chooser: predicts each member from its sample, at each option's average speed, and
    # pays for compressing the sample with every candidate.
    candidates = [names.index(n) for n in ["ISA-L 2", "ISA-L 3", "libdeflate 1", "libdeflate 2",
                                           "libdeflate 3", "libdeflate 5"]]
    per_byte = {i: sum(m[i][1] for m in members) / total for i in candidates}
    sampling = sum(sampled * per_byte[i] for sampled, _ in samples for i in candidates)

    def predicted(lam):
        size = seconds = 0
        for member, (sampled, sample_out) in zip(members, samples):
            length = BLOCK  # the last member is shorter; its prediction scales the same way
            guess = {i: sample_out[i] * length / sampled for i in candidates}
            choice = min(candidates, key=lambda i: per_byte[i] * length + lam * guess[i] / 1e6)
            size += member[choice][0]
            seconds += member[choice][1]
        return size, seconds
    size, seconds = sweep(predicted, budget)
    print(f"| {', '.join(names[i] for i in candidates)}, chosen from a sample of each member "
          f"(sampling included) | {size / 1e6:.1f} | {seconds + sampling:.2f} |")


if __name__ == "__main__":
    main()
