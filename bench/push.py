#!/usr/bin/env python3
"""Push benchmark: nixfly against skopeo, on one local registry (Debian's docker-registry).

Builds a streamLayeredImage archive of real files on this machine (15 layers, ~1 GB) with the
test fixture writer, and a second one with its last layer changed, then, alternating the tools,
several runs of:
  cold push   - empty registry, empty client cache
  warm push   - the same image again, same registry and cache
  fresh       - the same image again to the same tag from a fresh runner (empty cache): what
                the registry's images tell is all nixfly has (nixfly only)
  one changed - the image with one layer changed, to the same tag, from a fresh runner
and prints medians: wall time, pushed bytes (registry blob storage), layers compressed and
uploaded (nixfly's JSON events), peak RSS (GNU time), and how long generating the stream alone
takes. skopeo 1.9 reads only an uncompressed seekable archive, so the comparison is on the
.tar; .tar.gz, stream-script and stdin runs are nixfly-only rows.

    bench/push.py [--runs N] [--dirs DIR ...]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = [
    "/usr/bin", "/usr/lib/gcc", "/usr/share/man", "/usr/lib/python3.11", "/usr/libexec",
    "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu/perl", "/usr/share/perl", "/usr/share/i18n",
    "/usr/sbin", "/etc", "/usr/include", "/usr/share/locale", "/usr/share/zoneinfo",
    "/usr/lib/x86_64-linux-gnu/gconv",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry on loopback with its storage in `dir`; restarted empty for cold runs."""

    def __init__(self, work):
        self.work = work
        self.proc = None
        self.port = None

    def start_empty(self):
        self.stop()
        storage = self.work / "registry"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir()
        self.port = free_port()
        config = self.work / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {storage}\nhttp:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(self.work / "registry.log", "ab"),
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("docker-registry did not start")

    def blob_bytes(self):
        total = 0
        for dirpath, _, files in os.walk(self.work / "registry/docker/registry/v2/blobs"):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if f == "data")
        return total

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"


def timed(argv, env, shell=False):
    """Run under GNU time; returns (wall seconds, peak RSS bytes, stdout)."""
    stats = tempfile.NamedTemporaryFile(delete=False)
    cmd = ["/usr/bin/time", "-o", stats.name, "-f", "%e %M"]
    cmd += ["sh", "-c", argv] if shell else argv
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        raise SystemExit(f"failed: {argv}")
    _, rss_kb = open(stats.name).read().split()[-2:]
    os.unlink(stats.name)
    return wall, int(rss_kb) * 1024, result.stdout.decode(errors="replace")


def isolated_env(run_dir, output="json"):
    """nixfly's environment for one run: its own HOME and cache under `run_dir`, no credentials
    from the developer's environment, progress as `output`."""
    env = dict(os.environ)
    home = run_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(run_dir / "cache"), NIXFLY_OUTPUT=output)
    for var in ["FLY_API_TOKEN", "FLY_ACCESS_TOKEN", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG"]:
        env.pop(var, None)
    return env


def uploaded_layers(stdout):
    """Layers nixfly compressed (or read) and uploaded, from its JSON events."""
    count = 0
    for line in stdout.splitlines():
        if line.startswith("{") and '"layer_done"' in line and '"uploaded"' in line:
            count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS)
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--bin", "nixfly", "--example", "bench_image"], cwd=ROOT, check=True)
    nixfly = ROOT / "target/release/nixfly"
    work = Path(tempfile.mkdtemp(prefix="nixfly-bench-"))
    registry = Registry(work)
    try:
        image = work / "image.tar"
        out = subprocess.run(
            [ROOT / "target/release/examples/bench_image", image, *args.dirs],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.split()
        layer_count, image_bytes = int(out[1]), int(out[3])
        # The same image with its last layer replaced (what one changed store path looks like).
        changed = work / "changed.tar"
        subprocess.run([ROOT / "target/release/examples/bench_image", changed, *args.dirs[:-1], "/usr/share/vim"],
                       check=True, stdout=subprocess.DEVNULL)
        image_gz = work / "image.tar.gz"
        with open(image_gz, "wb") as gz:  # what buildLayeredImage does (pigz -nTR, level 6)
            subprocess.run(["gzip", "-6", "-n", "-c", image], stdout=gz, check=True)
        scripts = {}
        for name, tar in [("image", image), ("changed", changed)]:
            script = work / f"stream-{name}"
            script.write_text(f"#!/bin/sh\necho 'Creating layer 1' >&2\nexec cat '{tar}'\n")
            script.chmod(0o755)
            scripts[name] = script

        def nixfly_push(source):
            return lambda h: [str(nixfly), "push", str(source), "--to", f"{h}/bench", "--tag", "t"]

        # name: (argv for the image, argv for the changed image or None)
        rows = {
            "nixfly .tar": (nixfly_push(image), nixfly_push(changed)),
            "skopeo .tar": (lambda h: ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                                       f"docker-archive:{image}", f"docker://{h}/bench:t"], None),
            "nixfly .tar.gz": (nixfly_push(image_gz), None),
            "nixfly stream script": (nixfly_push(scripts["image"]), nixfly_push(scripts["changed"])),
            "nixfly stdin (.tar.gz)": (lambda h: f"cat '{image_gz}' | '{nixfly}' push - --to {h}/bench --tag t", None),
        }
        keys = ["cold", "warm", "bytes", "rss", "fresh", "fresh_bytes", "fresh_uploaded",
                "changed", "changed_bytes", "changed_uploaded"]
        results = {name: {k: [] for k in keys} for name in rows}
        generation = []
        for run in range(args.runs):
            started = time.monotonic()
            subprocess.run([scripts["image"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            generation.append(time.monotonic() - started)
            order = list(rows) if run % 2 == 0 else list(reversed(list(rows)))
            for name in order:
                registry.start_empty()
                run_dir = work / f"run-{run}-{name.replace(' ', '_')}"
                env = isolated_env(run_dir)
                same, other = rows[name]
                argv = same(registry.host)
                shell = isinstance(argv, str)
                r = results[name]
                cold, rss_cold, _ = timed(argv, env, shell)
                pushed = registry.blob_bytes()
                warm, rss_warm, _ = timed(argv, env, shell)
                rss = [rss_cold, rss_warm]
                r["cold"].append(cold)
                r["warm"].append(warm)
                r["bytes"].append(pushed)
                line = f"run {run + 1} {name}: cold {cold:.2f}s warm {warm:.2f}s {pushed / 1e6:.1f} MB"
                if other:
                    fresh, rss_fresh, stdout = timed(argv, isolated_env(run_dir / "fresh"), shell)
                    r["fresh"].append(fresh)
                    r["fresh_bytes"].append(registry.blob_bytes() - pushed)
                    r["fresh_uploaded"].append(uploaded_layers(stdout))
                    before = registry.blob_bytes()
                    changed_s, rss_changed, stdout = timed(other(registry.host), isolated_env(run_dir / "changed"))
                    r["changed"].append(changed_s)
                    r["changed_bytes"].append(registry.blob_bytes() - before)
                    r["changed_uploaded"].append(uploaded_layers(stdout))
                    rss += [rss_fresh, rss_changed]
                    line += (f" | fresh {fresh:.2f}s {r['fresh_uploaded'][-1]} uploaded"
                             f" | one changed {changed_s:.2f}s {r['changed_bytes'][-1] / 1e6:.1f} MB")
                r["rss"].append(max(rss))
                print(line + f" | rss {max(rss) / 2**20:.0f} MiB", flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {name: {k: statistics.median(v) for k, v in r.items() if v} for name, r in results.items()}
    base = med["skopeo .tar"]
    cpus = os.cpu_count()
    print(f"\nImage: {layer_count} layers, {image_bytes / 1e6:.0f} MB uncompressed; {args.runs} runs, "
          f"medians; {cpus} cores shared with other work (load {os.getloadavg()[0]:.1f} at the end); "
          f"local docker-registry; skopeo {skopeo_version()}.\n")
    print("| source | cold push | vs skopeo | warm re-push | vs skopeo | pushed bytes | vs skopeo | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        ratio = lambda k: f"{m[k] / base[k]:.2f}x"
        print(f"| {name} | {m['cold']:.2f} s | {ratio('cold')} | {m['warm']:.2f} s | {ratio('warm')} | "
              f"{m['bytes'] / 1e6:.1f} MB | {ratio('bytes')} | {m['rss'] / 2**20:.0f} MiB |")
    print(f"\nFresh runner (empty cache), same tag; generating the stream alone takes "
          f"{statistics.median(generation):.2f} s:\n")
    print("| source | unchanged image | layers uploaded | bytes uploaded | one layer changed | bytes uploaded |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        if "fresh" in m:
            print(f"| {name} | {m['fresh']:.2f} s | {m['fresh_uploaded']:.0f} | {m['fresh_bytes'] / 1e6:.1f} MB | "
                  f"{m['changed']:.2f} s | {m['changed_bytes'] / 1e6:.1f} MB ({m['changed_uploaded']:.0f} layer) |")


def skopeo_version():
    return subprocess.run(["skopeo", "--version"], stdout=subprocess.PIPE, text=True).stdout.split()[-1]


if __name__ == "__main__":
    main()
