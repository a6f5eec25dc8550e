#!/usr/bin/env python3
"""Fresh-runner push of an unchanged stream, against a generator that does the work nixpkgs'
stream_layered_image.py does (bench/push.py's stream script only `cat`s a ready archive).

The generator is the nixpkgs stand-in's `nix/tests/nixpkgs-standin/docker/stream.py`, written to
follow stream_layered_image.py byte for byte (Python's tarfile, every layer tarred twice: once to
hash, once to write). The image is bench/push.py's: one layer per directory of real files.
Rows, medians of --runs:
  generation alone     - the script into /dev/null
  push, unchanged      - empty nixfly cache, the registry already has the image under the tag:
                         wall time and layers uploaded (JSON events)
The target (issue 12): unchanged push <= generation + 0.5 s.

With `--delay-ms N` the registry is behind bench/delay_proxy.py, N ms each way (see push.py).

    bench/stream_generator.py [--runs N] [--dirs DIR ...] [--delay-ms N]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from push import DEFAULT_DIRS, ROOT, Registry, isolated_env, timed, uploaded_layers  # noqa: E402

STREAM_PY = ROOT / "nix/tests/nixpkgs-standin/docker/stream.py"


def write_conf(work, dirs):
    """A streamLayeredImage conf (the keys stream.py reads) with one layer per directory
    and an empty customisation layer."""
    custom = work / "customisation"
    custom.mkdir()
    subprocess.run(["tar", "-cf", custom / "layer.tar", "-T", "/dev/null"], check=True)
    digest = subprocess.run(["sha256sum", custom / "layer.tar"], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.split()[0]
    (custom / "checksum").write_text(digest)
    # store_dir "/": the layers are this machine's directories, not store paths, and
    # stream_layered_image.py checks that every path starts with store_dir.
    conf = {
        "store_dir": "/", "from_image": None, "created": "1970-01-01T00:00:01+00:00",
        "mtime": "1970-01-01T00:00:01+00:00", "uid": "0", "gid": "0", "uname": "root",
        "gname": "root", "store_layers": [[d] for d in dirs],
        "customisation_layer": str(custom), "architecture": "amd64",
        "config": {"Env": ["PATH=/bin"]}, "repo_tag": "bench:latest",
    }
    path = work / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS)
    parser.add_argument("--delay-ms", type=int, default=0,
                        help="put a delay line of this many ms each way before the registry")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--bin", "nixfly"], cwd=ROOT, check=True)
    nixfly = ROOT / "target/release/nixfly"
    work = Path(tempfile.mkdtemp(prefix="nixfly-bench-stream-"))
    registry = Registry(work, args.delay_ms)
    try:
        conf = write_conf(work, args.dirs)
        script = work / "stream-image"
        script.write_text(f"#!/bin/sh\nexec python3 '{STREAM_PY}' '{conf}'\n")
        script.chmod(0o755)

        registry.start_empty()
        push = [str(nixfly), "push", str(script), "--to", f"{registry.host}/bench", "--tag", "v1",
                "--output", "json"]
        timed(push, isolated_env(work / "seed"))  # the registry now has the image under the tag

        generation, unchanged, uploaded = [], [], []
        for run in range(args.runs):
            started = time.monotonic()
            subprocess.run(["sh", "-c", f"'{script}' > /dev/null 2>&1"], check=True)
            generation.append(time.monotonic() - started)
            run_dir = work / f"fresh-{run}"
            wall, _, stdout, _ = timed(push, isolated_env(run_dir))
            unchanged.append(wall)
            uploaded.append(uploaded_layers(stdout))
            shutil.rmtree(run_dir)
        gen, push_time = statistics.median(generation), statistics.median(unchanged)
        print(f"\n{len(args.dirs)} layers, generator {STREAM_PY.relative_to(ROOT)}, "
              f"medians of {args.runs}:\n")
        print("| run | wall time | layers uploaded |")
        print("|---|---:|---:|")
        print(f"| generation alone | {gen:.2f} s | - |")
        print(f"| nixfly push, unchanged, fresh runner | {push_time:.2f} s | {max(uploaded)} |")
        print(f"\nunchanged push - generation = {push_time - gen:+.2f} s (target <= +0.50 s)")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
