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
uploaded (nixfly's JSON events), peak RSS (GNU time), the CPU-seconds of a cold push in the
client (GNU time; a shell row's include its stream's generator) and in the registry (/proc),
for each stream source how long generating its stream alone takes (`cat` for the script,
`gzip -dc` for a .tar.gz), the compression floor: nixfly's compressor alone on the whole
image, every core, no registry, and the stream floor: what the `cat` script costs before any
hashing, read through a pipe by a reader that does nothing else, and SHA-256 of the image and of
its largest layer on one core (OpenSSL, through Python's hashlib).
skopeo 1.9 reads only an uncompressed seekable archive, so the comparison is on the .tar;
`--level 1`, OCI layout (gzip blobs written by skopeo), the same blobs as Docker 29's
`docker save` writes them, .tar.gz, stream-script and stdin runs are nixfly-only rows.

With `--delay-ms N` every request goes through bench/delay_proxy.py, N ms each way: the
registry answers a round trip later, as a distant one does (registry.fly.io from a CI runner).

    bench/push.py [--runs N] [--dirs DIR ...] [--delay-ms N]
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

    def __init__(self, work, delay_ms=0):
        self.work = work
        self.delay_ms = delay_ms
        self.proc = None
        self.proxy = None
        self.port = None  # the registry's
        self.listen = None  # where clients connect: the registry's, or the delay line's

    def start_empty(self):
        self.stop()
        storage = self.work / "registry"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir()
        os.sync()  # no writeback of an earlier run's files during this one
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
        wait_for_port(self.port, "docker-registry")
        self.listen = self.port
        if self.delay_ms:
            self.proxy, self.listen = delay_line(self.port, self.delay_ms)

    def cpu_seconds(self):
        """CPU time (user + system) the registry has used so far, from /proc."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def blob_bytes(self):
        total = 0
        for dirpath, _, files in os.walk(self.work / "registry/docker/registry/v2/blobs"):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if f == "data")
        return total

    def stop(self):
        stop_all(self.proxy, self.proc)
        self.proc = self.proxy = None

    @property
    def host(self):
        return f"127.0.0.1:{self.listen}"


def delay_line(port, delay_ms):
    """bench/delay_proxy.py in front of loopback `port`, `delay_ms` each way: (its process, the
    port to connect to)."""
    listen = free_port()
    proc = subprocess.Popen([sys.executable, Path(__file__).parent / "delay_proxy.py", str(listen),
                             str(port), str(delay_ms)])
    wait_for_port(listen, "the delay proxy")
    return proc, listen


def stop_all(*procs):
    """Terminate and wait for each process started (None: not started)."""
    for proc in procs:
        if proc:
            proc.terminate()
            proc.wait(timeout=10)


def wait_for_port(port, what):
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def timed(argv, env, shell=False):
    """Run under GNU time; returns (wall seconds, peak RSS bytes, stdout, CPU seconds: user +
    system of the command and its children)."""
    stats = tempfile.NamedTemporaryFile(delete=False)
    cmd = ["/usr/bin/time", "-o", stats.name, "-f", "%e %M %U %S"]
    cmd += ["sh", "-c", argv] if shell else argv
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        raise SystemExit(f"failed: {argv}")
    _, rss_kb, user, system = open(stats.name).read().split()[-4:]
    os.unlink(stats.name)
    return wall, int(rss_kb) * 1024, result.stdout.decode(errors="replace"), float(user) + float(system)


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


class Row:
    """One way of pushing the image: argv for the image and for its changed copy (functions of
    the registry's host; a str is run by sh), and for a stream source the command that only
    generates its stream, into /dev/null (what an unchanged push from a fresh runner is held to)."""

    def __init__(self, image, changed=None, generate=None):
        self.image, self.changed, self.generate = image, changed, generate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS)
    parser.add_argument("--delay-ms", type=int, default=0,
                        help="put a delay line of this many ms each way before the registry")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--bin", "nixfly", "--example", "bench_image",
                    "--example", "measure_levels"], cwd=ROOT, check=True)
    nixfly = ROOT / "target/release/nixfly"
    work = Path(tempfile.mkdtemp(prefix="nixfly-bench-"))
    registry = Registry(work, args.delay_ms)
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
        gz, scripts, layouts, saves = {}, {}, {}, {}
        for name, tar in [("image", image), ("changed", changed)]:
            gz[name] = work / f"{name}.tar.gz"
            with open(gz[name], "wb") as out_gz:  # what buildLayeredImage does (pigz -nTR, level 6)
                subprocess.run(["gzip", "-6", "-n", "-c", tar], stdout=out_gz, check=True)
            scripts[name] = work / f"stream-{name}"
            scripts[name].write_text(f"#!/bin/sh\necho 'Creating layer 1' >&2\nexec cat '{tar}'\n")
            scripts[name].chmod(0o755)
            # An OCI layout of the same image, gzip layers written by skopeo.
            layouts[name] = work / f"layout-{name}"
            subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{tar}", f"oci:{layouts[name]}:t"],
                           check=True)
            # The same blobs as Docker 29's `docker save` writes them (containerd store).
            saves[name] = work / f"{name}-docker-save.tar"
            containerd_save(layouts[name], saves[name])
        # The images just written (several GB) are still being written back to disk, on the
        # same cores: wait for that before timing anything (it made one floor 6.74 s, 5.18 s
        # when measured again on the quiet machine).
        os.sync()
        floor = compression_floor(image)
        pipe = pipe_floor(scripts["image"])
        sha = sha256_floor(image)

        def nixfly_push(source, *extra):
            return lambda h: [str(nixfly), "push", str(source), "--to", f"{h}/bench", "--tag", "t", *extra]

        def stdin_push(source):
            return lambda h: f"cat '{source}' | '{nixfly}' push - --to {h}/bench --tag t"

        rows = {
            "nixfly .tar": Row(nixfly_push(image), nixfly_push(changed)),
            "skopeo .tar": Row(lambda h: ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                                          f"docker-archive:{image}", f"docker://{h}/bench:t"]),
            "nixfly .tar --level 1": Row(nixfly_push(image, "--level", "1")),
            "nixfly OCI layout (gzip blobs)": Row(nixfly_push(layouts["image"], "--format", "oci"),
                                                  nixfly_push(layouts["changed"], "--format", "oci")),
            "nixfly docker save (containerd store, gzip blobs)": Row(nixfly_push(saves["image"]),
                                                                     nixfly_push(saves["changed"])),
            "nixfly .tar.gz": Row(nixfly_push(gz["image"]), nixfly_push(gz["changed"]),
                                  f"gzip -dc '{gz['image']}' > /dev/null"),
            "nixfly stream script": Row(nixfly_push(scripts["image"]), nixfly_push(scripts["changed"]),
                                        f"'{scripts['image']}' > /dev/null 2>&1"),
            "nixfly stdin (.tar.gz)": Row(stdin_push(gz["image"]), stdin_push(gz["changed"]),
                                          f"gzip -dc '{gz['image']}' > /dev/null"),
        }
        keys = ["cold", "cold_cpu", "cold_registry_cpu", "warm", "bytes", "rss", "fresh",
                "fresh_bytes", "fresh_uploaded", "changed", "changed_bytes", "changed_uploaded",
                "generation"]
        results = {name: {k: [] for k in keys} for name in rows}
        for run in range(args.runs):
            order = list(rows) if run % 2 == 0 else list(reversed(list(rows)))
            for name in order:
                row, r = rows[name], results[name]
                if row.generate:
                    started = time.monotonic()
                    subprocess.run(["sh", "-c", row.generate], check=True)
                    r["generation"].append(time.monotonic() - started)
                registry.start_empty()
                run_dir = work / f"run-{run}-{name.replace(' ', '_')}"
                env = isolated_env(run_dir)
                argv = row.image(registry.host)
                shell = isinstance(argv, str)
                registry_cpu = registry.cpu_seconds()
                cold, rss_cold, _, cpu = timed(argv, env, shell)
                r["cold_cpu"].append(cpu)
                r["cold_registry_cpu"].append(registry.cpu_seconds() - registry_cpu)
                pushed = registry.blob_bytes()
                warm, rss_warm, _, _ = timed(argv, env, shell)
                rss = [rss_cold, rss_warm]
                r["cold"].append(cold)
                r["warm"].append(warm)
                r["bytes"].append(pushed)
                line = f"run {run + 1} {name}: cold {cold:.2f}s warm {warm:.2f}s {pushed / 1e6:.1f} MB"
                if row.changed:
                    fresh, rss_fresh, stdout, _ = timed(argv, isolated_env(run_dir / "fresh"), shell)
                    r["fresh"].append(fresh)
                    r["fresh_bytes"].append(registry.blob_bytes() - pushed)
                    r["fresh_uploaded"].append(uploaded_layers(stdout))
                    before = registry.blob_bytes()
                    other = row.changed(registry.host)
                    changed_s, rss_changed, stdout, _ = timed(other, isolated_env(run_dir / "changed"),
                                                           isinstance(other, str))
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
    delay = f" behind a {args.delay_ms} ms delay line each way" if args.delay_ms else ""
    print(f"\nImage: {layer_count} layers, {image_bytes / 1e6:.0f} MB uncompressed; {args.runs} runs, "
          f"medians; {cpus} cores (load {os.getloadavg()[0]:.1f} at the end); "
          f"local docker-registry{delay}; skopeo {skopeo_version()}.\n")
    print("| source | cold push | vs skopeo | warm re-push | vs skopeo | pushed bytes | vs skopeo | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        ratio = lambda k: f"{m[k] / base[k]:.2f}x"
        print(f"| {name} | {m['cold']:.2f} s | {ratio('cold')} | {m['warm']:.2f} s | {ratio('warm')} | "
              f"{m['bytes'] / 1e6:.1f} MB | {ratio('bytes')} | {m['rss'] / 2**20:.0f} MiB |")
    print(f"\nCompression floor: nixfly's compressor (libdeflate level 2, every core, both SHA-256s) on "
          f"the whole image with no registry: {floor:.2f} s = {floor / base['cold']:.2f}x skopeo's cold push.")
    print(f"\nWhere a cold push's time goes: CPU-seconds (user + system) of the client and of the "
          f"registry, which shares the {cpus} cores, and how much of the cores' time over the push "
          f"that is (1.00: every core busy throughout, the push is bound by CPU):\n")
    print("| source | client CPU | registry CPU | of the cores' time |")
    print("|---|---:|---:|---:|")
    for name, m in med.items():
        busy = (m["cold_cpu"] + m["cold_registry_cpu"]) / (m["cold"] * cpus)
        print(f"| {name} | {m['cold_cpu']:.2f} s | {m['cold_registry_cpu']:.2f} s | {busy:.2f} |")
    print("\nFresh runner (empty cache), same tag; a stream is held to the time it takes to generate "
          "(into /dev/null):\n")
    print("| source | unchanged image | over generation | layers uploaded | bytes uploaded "
          "| one layer changed | bytes uploaded |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        if "fresh" in m:
            over = (f"{m['fresh'] - m['generation']:+.2f} s (of {m['generation']:.2f} s)"
                    if "generation" in m else "-")
            print(f"| {name} | {m['fresh']:.2f} s | {over} | {m['fresh_uploaded']:.0f} | "
                  f"{m['fresh_bytes'] / 1e6:.1f} MB | {m['changed']:.2f} s | "
                  f"{m['changed_bytes'] / 1e6:.1f} MB ({m['changed_uploaded']:.0f} layer) |")
    generation = med["nixfly stream script"]["generation"]
    pipe_wall, pipe_cpu = pipe
    print(f"\nStream floor: the script read through a pipe by a reader that does nothing else (the pipe "
          f"widened to 1 MiB, page-aligned 1 MiB reads, as nixfly reads it) takes {pipe_wall:.2f} s, "
          f"{pipe_wall - generation:+.2f} s over `cat` into /dev/null, and {pipe_cpu:.2f} CPU-seconds. "
          f"SHA-256 on one core takes {sha[0]:.2f} s for the whole image, {sha[1]:.2f} s for its "
          f"largest layer (which one core must hash alone). With the pipe's CPU-seconds and the hash "
          f"spread over all {cpus} cores, an unchanged stream takes at least "
          f"{max(pipe_wall, sha[1], (pipe_cpu + sha[0]) / cpus):.2f} s, "
          f"{max(pipe_wall, sha[1], (pipe_cpu + sha[0]) / cpus) - generation:+.2f} s over generation.")


def containerd_save(layout, out):
    """Write the OCI layout's image as containerd's exporter writes a `docker save` (Docker 29's
    default store; core/images/archive/exporter.go): the layout's files, and a manifest.json
    naming the config and layer blobs at `blobs/sha256/<hex>`."""
    import io
    import json
    import tarfile
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: f"blobs/sha256/{digest.split(':', 1)[1]}"
    manifest = json.loads((layout / blob(index["manifests"][0]["digest"])).read_text())
    docker = [{"Config": blob(manifest["config"]["digest"]), "RepoTags": ["bench:t"],
               "Layers": [blob(layer["digest"]) for layer in manifest["layers"]]}]
    manifest_json = json.dumps(docker).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(layout.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=str(path.relative_to(layout)))
        entry = tarfile.TarInfo("manifest.json")
        entry.size = len(manifest_json)
        archive.addfile(entry, io.BytesIO(manifest_json))


# Reads stdin as nixfly reads a stream script's stdout (src/image/pipe.rs, blob::LayerHasher): the
# pipe widened to 1 MiB, one read per page-aligned 1 MiB buffer; and does nothing with the bytes.
PIPE_READER = """
import fcntl, mmap, os
try:
    fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ
except OSError:
    pass
buf = memoryview(mmap.mmap(-1, 1 << 20))
while os.readv(0, [buf]):
    pass
"""


def pipe_floor(script, runs=3):
    """(wall seconds, CPU seconds) of `script | a reader that only reads` (median of `runs`): a
    fresh runner's unchanged stream costs at least this before nixfly hashes a byte."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, _, _, cpu = timed(f"'{script}' 2>/dev/null | python3 -c '{PIPE_READER}'", os.environ, shell=True)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def sha256_floor(image):
    """(seconds for the whole image, seconds for its largest layer): SHA-256 on one core
    (OpenSSL, SHA-NI where the CPU has it) over the archive's bytes, already in memory."""
    import hashlib
    import mmap
    import tarfile
    with tarfile.open(image) as archive:
        largest = max(archive.getmembers(), key=lambda m: m.size)
    with open(image, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = memoryview(mapped)
        hashlib.sha256(data).digest()  # into memory, not timed
        started = time.monotonic()
        hashlib.sha256(data).digest()
        whole = time.monotonic() - started
        started = time.monotonic()
        hashlib.sha256(data[largest.offset_data:largest.offset_data + largest.size]).digest()
        layer = time.monotonic() - started
        data.release()
        return whole, layer


def compression_floor(image):
    """Seconds nixfly's compressor takes for the whole image on every core, with nothing else
    running: the least a cold push can take (median of 3)."""
    out = subprocess.run([ROOT / "target/release/examples/measure_levels", "--floor", image],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return float(out.split()[0])


def skopeo_version():
    return subprocess.run(["skopeo", "--version"], stdout=subprocess.PIPE, text=True).stdout.split()[-1]


if __name__ == "__main__":
    main()
