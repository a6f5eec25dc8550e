#!/usr/bin/env python3
"""A/B push benchmark: two builds of nixfly side by side on the same push, on one local registry
(Debian's docker-registry), so that a claim such as "this change made a cold push 0.3 s faster"
can be checked.

Each of --a and --b is a nixfly binary or a git revision of this repository. A revision is built
(`cargo build --release --bin nixfly`) in a detached worktree, removed after, and its binary kept
in ~/.cache/nixfly-ab/bin/COMMIT ($XDG_CACHE_HOME if set), so a commit is built once; the target
directory ~/.cache/nixfly-ab/target is shared, so dependencies are built once for all revisions
(to test uncommitted changes, build them and pass the binary). The image is bench/push.py's: one
layer per --dirs directory of real files on this machine, written by bench_image (built from this
checkout), and a copy with its last layer changed. Scenarios, each push with an empty cache:
  cold-tar      - empty registry, push the .tar
  fresh-tar     - the registry already has the image under the tag (pushed just before, by the
                  same build and arguments), push the .tar: a fresh runner, nothing changed
  fresh-stream  - the same, pushing the stream script (`cat` of the .tar, as in push.py)
  changed-tar   - the registry has the image; push the copy with its last layer changed
  fresh-deploy-paced
                - `nixfly deploy` of a paced stream script (the .tar written at 1 MiB per 3.5 ms, a
                  steady stand-in for a generator as slow as nixpkgs': about 4 s for 1.1 GB) to
                  one machine of the Fly API double (examples/fly_api_double, restarted each
                  run), after a deploy of the .tar: a fresh runner deploying an unchanged image,
                  its checks and lookups before the push and "nothing to deploy" after it
  fresh-deploy-tar
                - the same deploy of the .tar, whose layers are not read: the checks, the
                  lookups and the rollout's round trips are all there is
Every run does each scenario with A then B, the next run with B then A (ABBA...), so that a
drift on a noisy VM falls on both. Per scenario: median and range of the wall time of A and B,
B - A and B/A, whether the ranges overlap, and the layers each uploaded (`--output json`
events), which must be the same for both: a difference, or a failed push, fails the benchmark.

With `--delay-ms N` the registry, and the Fly API double, are behind bench/delay_proxy.py, N ms
each way (see push.py).
`--extra-args` goes to every push of both builds.

    bench/ab.py --a REV|BINARY --b REV|BINARY [--scenario NAME ...] [--runs N]
                [--dirs DIR ...] [--delay-ms N] [--extra-args='--level 1']
"""

import argparse
import fcntl
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from push import (  # noqa: E402
    DEFAULT_DIRS, ROOT, Registry, delay_line, isolated_env, stop_all, timed, uploaded_layers,
)

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nixfly-ab"
# Scenario: (what the registry is given first, or None for an empty one; what is timed).
SCENARIOS = {
    "cold-tar": (None, "image.tar"),
    "fresh-tar": ("image.tar", "image.tar"),
    "fresh-stream": ("image.tar", "stream-image"),
    "changed-tar": ("image.tar", "changed.tar"),
    "fresh-deploy-paced": ("image.tar", "paced-stream"),
    "fresh-deploy-tar": ("image.tar", "image.tar"),
}
# Scenarios that deploy (seed and timed run) instead of pushing.
DEPLOYS = {"fresh-deploy-paced", "fresh-deploy-tar"}
# The paced generator: the archive in 1 MiB writes, each after 3.5 ms.
PACED = """import sys, time
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        time.sleep(0.0035)
        sys.stdout.buffer.write(chunk)
"""


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def cargo_build(cwd, *targets):
    """`cargo build --release` of `targets` in `cwd`, into the shared target directory; returns
    its release directory."""
    target = CACHE / "target"
    subprocess.run(["cargo", "build", "--release", *targets], cwd=cwd, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
    return target / "release"


def nixfly_binary(spec):
    """(label, path) of the nixfly `spec` names: an executable file, or a git revision, built
    unless its commit's binary is in the cache."""
    path = Path(spec)
    if path.is_file() and os.access(path, os.X_OK):
        return str(path), path.resolve()
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{spec}: neither an executable file nor a git revision")
    binary = CACHE / "bin" / commit / "nixfly"
    if not binary.exists():
        src = Path(tempfile.mkdtemp(prefix="nixfly-ab-src-"))
        git("worktree", "add", "--detach", str(src), commit)
        try:
            built = cargo_build(src, "--bin", "nixfly") / "nixfly"
            binary.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, binary.with_suffix(".part"))
            os.replace(binary.with_suffix(".part"), binary)
        finally:
            git("worktree", "remove", "--force", str(src))
    return f"{spec} ({commit[:10]})", binary


def make_images(work, dirs, scenarios):
    """Writes the image, its changed copy (if a scenario pushes it) and the stream script into
    `work`; returns bench_image's summary line."""
    bench_image = cargo_build(ROOT, "--example", "bench_image") / "examples/bench_image"
    summary = subprocess.run([bench_image, work / "image.tar", *dirs], check=True,
                             stdout=subprocess.PIPE, text=True).stdout.split()
    if "changed-tar" in scenarios:  # the last layer replaced, as push.py's one changed store path
        subprocess.run([bench_image, work / "changed.tar", *dirs[:-1], "/usr/share/vim"],
                       check=True, stdout=subprocess.DEVNULL)
    script = work / "stream-image"
    script.write_text(f"#!/bin/sh\necho 'Creating layer 1' >&2\nexec cat '{work / 'image.tar'}'\n")
    script.chmod(0o755)
    (work / "paced.py").write_text(PACED)
    paced = work / "paced-stream"
    paced.write_text(f"#!/bin/sh\nexec python3 '{work / 'paced.py'}' '{work / 'image.tar'}'\n")
    paced.chmod(0o755)
    os.sync()  # the images' writeback is done before anything is timed (see push.py)
    return summary


def push(binary, source, host, run_dir, extra):
    """One push with an empty cache under `run_dir`: (wall seconds, layers uploaded). A failed
    push ends the benchmark (timed prints its stderr)."""
    argv = [str(binary), "push", str(source), "--to", f"{host}/bench", "--tag", "t",
            "--output", "json", *extra]
    wall, _, stdout, _ = timed(argv, isolated_env(run_dir))
    return wall, uploaded_layers(stdout)


class FlyDouble:
    """examples/fly_api_double with app `bench` and one machine on loopback, behind a delay
    line when `delay_ms`; started anew for each run, so that every deploy meets the same app."""

    def __init__(self, work, delay_ms):
        self.work, self.delay_ms = work, delay_ms
        self.binary = cargo_build(ROOT, "--example", "fly_api_double") / "examples/fly_api_double"
        self.proc = self.proxy = None
        self.url = None

    def start(self):
        self.stop()
        self.proc = subprocess.Popen([self.binary, "--app", "bench", "--machines", "1",
                                      "--token", "bench-token"],
                                     stdout=subprocess.PIPE, stderr=open(self.work / "fly.log", "ab"),
                                     text=True)
        url = self.proc.stdout.readline().strip()
        if not url:
            raise SystemExit(f"the Fly API double did not start (see {self.work / 'fly.log'})")
        self.url = url
        if self.delay_ms:
            self.proxy, listen = delay_line(int(url.rsplit(":", 1)[1].strip("/")), self.delay_ms)
            self.url = f"http://127.0.0.1:{listen}"

    def env(self, env):
        return dict(env, FLY_API_TOKEN="bench-token", FLY_FLAPS_BASE_URL=self.url,
                    FLY_API_BASE_URL=self.url)

    def stop(self):
        stop_all(self.proxy, self.proc)
        self.proc = self.proxy = None


def deploy(binary, source, host, run_dir, extra, fly):
    """One `nixfly deploy` with an empty cache under `run_dir` to the double's app: (wall
    seconds, layers uploaded)."""
    argv = [str(binary), "deploy", str(source), "--app", "bench", "--to", f"{host}/bench",
            "--tag", "t", "--output", "json", "--smoke-check-window", "1s", *extra]
    wall, _, stdout, _ = timed(argv, fly.env(isolated_env(run_dir)))
    return wall, uploaded_layers(stdout)


def report(scenario, labels, times, uploaded):
    """Prints the scenario's table; returns False if A and B uploaded different layer counts."""
    a, b = times["A"], times["B"]
    ma, mb = statistics.median(a), statistics.median(b)
    counts = {k: sorted(set(uploaded[k])) for k in "AB"}
    print(f"\n{scenario}, {len(a)} run{'s' if len(a) > 1 else ''} each:\n")
    print("| build | median | range | layers uploaded |")
    print("|---|---:|---:|---:|")
    for k in "AB":
        t = times[k]
        print(f"| {k}: {labels[k]} | {statistics.median(t):.2f} s | {min(t):.2f}-{max(t):.2f} s "
              f"| {', '.join(map(str, counts[k]))} |")
    print(f"| B - A | {mb - ma:+.2f} s | B/A {mb / ma:.3f}x | |\n")
    if len(a) == 1:
        print("one run each: no range to tell the difference from noise")
    elif min(a) <= max(b) and min(b) <= max(a):
        print("ranges overlap: the difference is within noise")
    else:
        faster = "faster" if mb < ma else "slower"
        print(f"ranges do not overlap: every run of B was {faster} than every run of A")
    if counts["A"] != counts["B"]:
        print(f"LAYERS UPLOADED DIFFER: A {counts['A']}, B {counts['B']}")
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="a nixfly binary or a git revision")
    parser.add_argument("--b", required=True, help="a nixfly binary or a git revision")
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS)
    parser.add_argument("--delay-ms", type=int, default=0,
                        help="put a delay line of this many ms each way before the registry")
    parser.add_argument("--extra-args", type=shlex.split, default=[],
                        help="nixfly push flags for both builds, one string: --extra-args='--level 1'")
    args = parser.parse_args()
    scenarios = list(dict.fromkeys(args.scenario))

    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nixfly-ab-"))
    registry = Registry(work, args.delay_ms)
    fly = None
    try:
        with open(CACHE / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time in the shared target directory
            labels, binaries = {}, {}
            for k, spec in [("A", args.a), ("B", args.b)]:
                labels[k], binaries[k] = nixfly_binary(spec)
            summary = make_images(work, args.dirs, scenarios)
            if DEPLOYS.intersection(scenarios):
                fly = FlyDouble(work, args.delay_ms)
        times = {s: {"A": [], "B": []} for s in scenarios}
        uploaded = {s: {"A": [], "B": []} for s in scenarios}
        for run in range(args.runs):
            for scenario in scenarios:
                seed, source = SCENARIOS[scenario]
                for k in "AB" if run % 2 == 0 else "BA":
                    registry.start_empty()
                    run_dir = work / "run"
                    if scenario in DEPLOYS:
                        fly.start()
                        step = lambda *a: deploy(*a, fly)  # noqa: E731
                    else:
                        step = push
                    if seed:
                        step(binaries[k], work / seed, registry.host, run_dir / "seed", args.extra_args)
                    wall, layers = step(binaries[k], work / source, registry.host, run_dir / "push",
                                        args.extra_args)
                    shutil.rmtree(run_dir)
                    times[scenario][k].append(wall)
                    uploaded[scenario][k].append(layers)
                    print(f"run {run + 1} {scenario} {k}: {wall:.2f} s, {layers} layers uploaded",
                          flush=True)
    finally:
        registry.stop()
        if fly:
            fly.stop()
        shutil.rmtree(work, ignore_errors=True)

    delay = f", behind a {args.delay_ms} ms delay line each way" if args.delay_ms else ""
    extra = f"; nixfly push {shlex.join(args.extra_args)}" if args.extra_args else ""
    print(f"\nImage: {summary[1]} layers, {int(summary[3]) / 1e6:.0f} MB uncompressed; wall time "
          f"of one push or deploy; {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f} at the end); "
          f"local docker-registry{delay}{extra}.")
    same = [report(s, labels, times[s], uploaded[s]) for s in scenarios]
    if not all(same):
        raise SystemExit("A and B uploaded different numbers of layers (see above)")


if __name__ == "__main__":
    main()
