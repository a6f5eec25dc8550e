"""Writes the image of a streamLayeredImage conf to stdout as an uncompressed docker-archive,
byte for byte as nixpkgs' pkgs/build-support/docker/stream_layered_image.py does.
usage: stream.py CONF [--repo_tag NAME:TAG]

The rules, each from that file:
- Python's tarfile in stream mode ("w|"), its default PAX format, for the image and for every
  layer; a layer is hashed on a first pass and written on a second.
- A store layer holds `/nix` and `/nix/store` (directories, mode 0755) first, then for each
  store path in the conf's order the path and everything below it, sorted as pathlib paths,
  absolute names; hardlinks become regular files; mtime/uid/gid/uname/gname from the conf.
- Entry `<sha256>/layer.tar` per layer (mtime from the conf), then the customisation layer's
  ready `layer.tar` under the name its `checksum` file gives, then `<sha256>.json` (the config)
  and `manifest.json` last, both `json.dumps(indent=4)`.
- History comments are `store paths: <Python list repr>`; the customisation layer's list
  holds its directory. `created` goes through datetime.fromisoformat(...).isoformat(), and
  "now" is read once, when the script starts.
- A base image (`from_image`, a docker-archive such as pullImage's): its layers come first,
  each entry copied as the base archive has it (name, mode, owner, mtime: skopeo's
  `<hex>.tar`), in its manifest's order, with the diff_ids of its config, numbered from 1; the
  store layers are numbered after them. The history comment of a base layer is the list of its
  entry name. The config's Env is the base config's Env followed by the conf's, one entry per
  variable name, the last value winning, in order of first appearance; other base config keys
  are not carried over.
- The same progress lines on stderr ("No 'fromImage' provided" or "Adding base layer N from
  NAME", "Creating layer N from
  paths: [...]", "... with customisation...", "Adding manifests...", "Done.") and the same
  checks (store paths under store_dir, a 64-character checksum).
"""

import argparse
import hashlib
import io
import json
import os
import pathlib
import sys
import tarfile
import threading
from datetime import datetime, timezone


def write_layer(out, paths, owner):
    def stamp(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = owner
        return info

    with tarfile.open(fileobj=out, mode="w|") as tar:
        for top in ("/nix", "/nix/store"):
            info = tarfile.TarInfo(top)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(stamp(info))
        for store_path in map(pathlib.Path, paths):
            entries = [store_path]
            if not store_path.is_symlink():
                entries += store_path.rglob("*")
            for entry in sorted(entries):
                info = tar.gettarinfo(entry)
                info.name = "/" + info.name
                if info.islnk():
                    info.type, info.linkname, info.size = tarfile.REGTYPE, "", entry.stat().st_size
                stamp(info)
                if info.isfile():
                    with open(entry, "rb") as body:
                        tar.addfile(info, body)
                else:
                    tar.addfile(info)


class Hasher:
    def __init__(self):
        self.sha, self.size = hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)


def add_store_layer(image, paths, owner):
    hasher = Hasher()
    write_layer(hasher, paths, owner)
    name = f"{hasher.sha.hexdigest()}/layer.tar"
    info = tarfile.TarInfo(name)
    info.size, info.mtime = hasher.size, owner[0]
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader, open(write_end, "wb") as writer:

        def produce():
            write_layer(writer, paths, owner)
            writer.close()

        threading.Thread(target=produce).start()
        image.addfile(info, reader)
    return hasher.sha.hexdigest(), name, paths


def add_customisation_layer(image, directory, mtime):
    checksum = open(os.path.join(directory, "checksum")).read().strip()
    assert len(checksum) == 64, f"Invalid sha256 at {directory}/checksum."
    tar_path = os.path.join(directory, "layer.tar")
    info = image.gettarinfo(tar_path)
    info.name, info.mtime = f"{checksum}/layer.tar", mtime
    with open(tar_path, "rb") as body:
        image.addfile(info, body)
    return checksum, info.name, [directory]


def add_base_layers(image, from_image):
    """The base image's layers, copied entry for entry; None when there is no base image."""
    if from_image is None:
        print("No 'fromImage' provided", file=sys.stderr)
        return [], None
    base = tarfile.open(from_image)
    manifest = json.load(base.extractfile(base.getmember("manifest.json")))
    config = json.load(base.extractfile(base.getmember(manifest[0]["Config"])))
    layers = []
    names = manifest[0]["Layers"]
    for number, (name, diff_id) in enumerate(zip(names, config["rootfs"]["diff_ids"]), start=1):
        info = base.getmember(name)
        image.addfile(info, base.extractfile(info))
        print("Adding base layer", number, "from", info.path, file=sys.stderr)
        layers.append((diff_id.removeprefix("sha256:"), info.path, [info.path]))
    base.close()
    return layers, config


def with_base_env(base_image_config, config):
    """The base config's Env, then the conf's; one entry per name, the last value winning.
    `base_image_config` is the base image's whole config (None without a base image): its
    `config` is read only here, so a base whose `config` is null or missing fails as nixpkgs'
    `overlay_base_config` does."""
    if base_image_config is None:
        return config
    base_config = base_image_config["config"]
    env = base_config.get("Env", []) + config.get("Env", [])
    if env:
        by_name = {}
        for entry in env:
            by_name[entry.split("=", 1)[0]] = entry
        config["Env"] = list(by_name.values())
    return config


def add_bytes(image, name, data, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    image.addfile(info, io.BytesIO(data))


# One clock reading for the whole run: "now" is the same instant for `created` and `mtime`.
NOW = datetime.now(tz=timezone.utc)


def when(text):
    return NOW if text == "now" else datetime.fromisoformat(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("conf")
    parser.add_argument("--repo_tag", "-t")
    args = parser.parse_args()
    conf = json.load(open(args.conf))
    created = when(conf["created"]).isoformat()
    mtime = int(when(conf["mtime"]).timestamp())
    owner = (mtime, int(conf["uid"]), int(conf["gid"]), conf["uname"], conf["gname"])

    with tarfile.open(mode="w|", fileobj=sys.stdout.buffer) as image:
        layers, base_image_config = add_base_layers(image, conf["from_image"])
        for number, paths in enumerate(conf["store_layers"], start=len(layers) + 1):
            print("Creating layer", number, "from paths:", paths, file=sys.stderr)
            outside = [p for p in paths if not p.startswith(conf["store_dir"])]
            assert not outside, f"Expecting absolute paths from {conf['store_dir']}, but got: {outside}"
            layers.append(add_store_layer(image, paths, owner))
        print("Creating layer", len(layers) + 1, "with customisation...", file=sys.stderr)
        layers.append(add_customisation_layer(image, conf["customisation_layer"], mtime))
        print("Adding manifests...", file=sys.stderr)
        config = {
            "created": created,
            "architecture": conf["architecture"],
            "os": "linux",
            "config": with_base_env(base_image_config, conf["config"]),
            "rootfs": {"diff_ids": [f"sha256:{sha}" for sha, _, _ in layers], "type": "layers"},
            "history": [
                {"created": created, "comment": f"store paths: {paths}"} for _, _, paths in layers
            ],
        }
        config_json = json.dumps(config, indent=4).encode()
        config_name = f"{hashlib.sha256(config_json).hexdigest()}.json"
        add_bytes(image, config_name, config_json, mtime)
        manifest = [
            {
                "Config": config_name,
                "RepoTags": [args.repo_tag or conf["repo_tag"]],
                "Layers": [name for _, name, _ in layers],
            }
        ]
        add_bytes(image, "manifest.json", json.dumps(manifest, indent=4).encode(), mtime)
        print("Done.", file=sys.stderr)


main()
