#!/usr/bin/env python3
"""Layer-plan benchmark: what a fresh CI runner pays to push an image nixfly planned at build time.

Same image as bench/push.py (one layer per directory of real files, >= 500 MB), as a layer plan
whose layer records are made with `nixfly layer build` (what mkLayerPlan's derivations run).
Rows, each on a local docker-registry, medians of several runs:
  plan cold      - empty registry, empty cache: every layer regenerated, compressed, uploaded
  skopeo cold    - the same files as an uncompressed docker-archive, for scale
  plan unchanged - image already in the registry, fresh runner (empty nixfly cache, no tarball):
                   wall time, bytes read from layer files (openat of any file under a layer's
                   directories, counted with strace in a separate run), bytes uploaded
  plan 1 changed - one layer's store path changed (a copy of one directory with one file
                   edited), fresh runner: wall time and bytes uploaded, against the time
                   `nixfly layer build` takes to tar and compress that layer alone

    bench/layer_plan.py [--runs N] [--dirs DIR ...] [--changed INDEX] [--no-build]
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
from push import DEFAULT_DIRS, ROOT, Registry, isolated_env, skopeo_version, timed  # noqa: E402



def layer_record(nixfly, work, name, source_args):
    """`nixfly layer build`: returns (record path, seconds)."""
    out = work / f"{name}.json"
    started = time.monotonic()
    subprocess.run([nixfly, "layer", "build", *source_args, "--out", out], check=True,
                   stderr=subprocess.DEVNULL)
    return out, time.monotonic() - started


def make_plan(nixfly, work, layer_dirs, custom_dir):
    """Records for every layer, then the plan. Returns (plan path, plan JSON, seconds per layer)."""
    work.mkdir(parents=True, exist_ok=True)
    records, seconds = [], []
    for index, directory in enumerate(layer_dirs):
        paths = work / f"layer-{index}.paths"
        paths.write_text(f"{directory}\n")
        record, took = layer_record(nixfly, work, f"layer-{index}", ["--paths-from", paths])
        records.append(record)
        seconds.append(took)
    record, took = layer_record(nixfly, work, "custom", ["--tar", custom_dir / "layer.tar"])
    records.append(record)
    seconds.append(took)
    conf = {
        "architecture": "amd64", "config": {"Cmd": ["/usr/bin/true"]},
        "created": "1970-01-01T00:00:01+00:00",
        "store_layers": [[str(d)] for d in layer_dirs],
        "customisation_layer": str(custom_dir), "from_image": None,
    }
    (work / "conf.json").write_text(json.dumps(conf))
    plan = work / "plan.json"
    argv = [nixfly, "layer", "plan", "--conf", work / "conf.json", "--out", plan]
    for record in records:
        argv += ["--layer", record]
    subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
    return plan, json.loads(plan.read_text()), seconds


def files_opened_under(nixfly_argv, env, dirs, trace_file):
    """Run once under strace; the files under `dirs` it opened (none = no layer byte read)."""
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", trace_file, *nixfly_argv],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefixes = tuple(f'"{d}/' for d in dirs) + tuple(f'"{d}"' for d in dirs)
    opened = []
    for line in open(trace_file):
        if "openat(" in line and "= -1" not in line:
            path = line.split(", ", 2)[1]
            if path.startswith(prefixes):
                opened.append(path.strip('"'))
    return opened


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS)
    parser.add_argument("--changed", type=int, default=3, help="index of the layer to change")
    parser.add_argument("--no-build", action="store_true", help="use target/release as it is")
    args = parser.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "nixfly", "--example", "bench_image"],
                       cwd=ROOT, check=True)
    nixfly = str(ROOT / "target/release/nixfly")
    work = Path(tempfile.mkdtemp(prefix="nixfly-bench-plan-"))
    registry = Registry(work)
    try:
        dirs = [Path(d) for d in args.dirs]
        # The customisation layer: a ready layer.tar, as streamLayeredImage leaves it.
        custom = work / "customisation-layer"
        custom.mkdir()
        (work / "root/bin").mkdir(parents=True)
        os.symlink("/usr/bin/true", work / "root/bin/app")
        subprocess.run(["tar", "--sort=name", "--mtime=@1", "--owner=0", "--group=0", "--numeric-owner",
                        "-cf", custom / "layer.tar", "-C", work / "root", "bin"], check=True)

        plan, plan_json, build_seconds = make_plan(nixfly, work / "plan-1", dirs, custom)
        image_bytes = sum(layer["size"] for layer in plan_json["layers"])
        blob_bytes = sum(layer["compressed_size"] for layer in plan_json["layers"])

        # The changed image: one directory copied to a new "store path" with one file edited.
        changed_dir = work / "changed-store-path"
        shutil.copytree(dirs[args.changed], changed_dir, symlinks=True)
        edited = next(p for p in sorted(changed_dir.rglob("*")) if p.is_file() and not p.is_symlink())
        edited.chmod(0o644)
        with open(edited, "ab") as f:
            f.write(b"\n# one-line change\n")
        changed_dirs = dirs[:args.changed] + [changed_dir] + dirs[args.changed + 1:]
        plan2, plan2_json, build2_seconds = make_plan(nixfly, work / "plan-2", changed_dirs, custom)
        changed_layer = plan2_json["layers"][args.changed]
        compress_one = build2_seconds[args.changed]

        tar = work / "image.tar"
        subprocess.run([ROOT / "target/release/examples/bench_image", tar, *args.dirs], check=True,
                       stdout=subprocess.DEVNULL)

        def push(source, host, tag):
            return [nixfly, "push", str(source), "--to", f"{host}/bench", "--tag", tag]

        rows = {k: {"time": [], "bytes": []} for k in ["plan cold", "skopeo cold", "plan unchanged", "plan 1 changed"]}
        opened = []
        for run in range(args.runs):
            run_dir = work / f"run-{run}"
            registry.start_empty()
            wall, _, _ = timed(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                             f"docker-archive:{tar}", f"docker://{registry.host}/skopeo:t"], isolated_env(run_dir / "s", "plain"))
            rows["skopeo cold"]["time"].append(wall)
            rows["skopeo cold"]["bytes"].append(registry.blob_bytes())

            registry.start_empty()
            wall, _, _ = timed(push(plan, registry.host, "v1"), isolated_env(run_dir / "cold", "plain"))
            rows["plan cold"]["time"].append(wall)
            rows["plan cold"]["bytes"].append(registry.blob_bytes())

            stored = registry.blob_bytes()
            wall, _, _ = timed(push(plan, registry.host, "v2"), isolated_env(run_dir / "fresh-1", "plain"))
            rows["plan unchanged"]["time"].append(wall)
            rows["plan unchanged"]["bytes"].append(registry.blob_bytes() - stored)
            opened.append(files_opened_under(push(plan, registry.host, "v3"), isolated_env(run_dir / "fresh-2", "plain"),
                                             dirs + [custom], run_dir / "strace.txt"))

            stored = registry.blob_bytes()
            wall, _, _ = timed(push(plan2, registry.host, "v4"), isolated_env(run_dir / "fresh-3", "plain"))
            rows["plan 1 changed"]["time"].append(wall)
            rows["plan 1 changed"]["bytes"].append(registry.blob_bytes() - stored)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v['time'][-1]:.2f}s {v['bytes'][-1] / 1e6:.1f} MB"
                                                 for k, v in rows.items()), flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    skopeo = med["skopeo cold"]["time"]
    print(f"\nImage: {len(plan_json['layers'])} layers, {image_bytes / 1e6:.0f} MB uncompressed, "
          f"{blob_bytes / 1e6:.0f} MB as gzip blobs; {args.runs} runs, medians; {os.cpu_count()} cores; "
          f"local docker-registry; skopeo {skopeo_version()}.")
    print(f"Build time of the layer records (nixfly layer build, one layer after another): "
          f"{sum(build_seconds):.1f} s.\n")
    print("| push | wall time | vs skopeo cold | uploaded | layer files opened |")
    print("|---|---:|---:|---:|---:|")
    for name, m in med.items():
        files = f"{statistics.median(len(o) for o in opened):.0f}" if name == "plan unchanged" else ""
        print(f"| {name} | {m['time']:.2f} s | {m['time'] / skopeo:.2f}x | {m['bytes'] / 1e6:.2f} MB | {files} |")
    print(f"\nFiles under layer directories opened by the unchanged push: {sorted(set(sum(opened, [])))} "
          "(files the process itself needs, e.g. the dynamic loader's /etc/ld.so.cache when /etc is a layer; no layer tar is made).")
    print(f"\nChanged layer: {changed_layer['size'] / 1e6:.0f} MB uncompressed, "
          f"{changed_layer['compressed_size'] / 1e6:.1f} MB blob; tar + compress alone "
          f"(nixfly layer build) {compress_one:.2f} s; target for the push: <= {compress_one + 1:.2f} s.")


if __name__ == "__main__":
    main()
