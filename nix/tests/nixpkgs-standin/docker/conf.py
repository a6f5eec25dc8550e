"""The conf of dockerTools.streamLayeredImage, as nixpkgs writes it.

usage: conf.py LAYERS BASE_JSON CUSTOMISATION_LAYER REPO_TAG CREATED MTIME UID GID UNAME GNAME FROM_IMAGE

LAYERS is the store layers auto_layer.py chose (a JSON list of lists of store paths). Follows
pkgs/build-support/docker/default.nix (streamLayeredImage's `conf`): the base JSON's keys
(builtins.toJSON: sorted), then store_dir, from_image (the base image's path, or null when
FROM_IMAGE is empty), store_layers, customisation_layer,
repo_tag, created, mtime, uid, gid, uname and gname, every string as jq's `--arg` passes it (so
uid and gid are strings), written as jq prints (two-space indent, UTF-8).
"""

import json
import sys


def main():
    (layers, base_json, custom, repo_tag, created, mtime, uid, gid, uname, gname, from_image) = sys.argv[1:]
    conf = json.load(open(base_json))
    conf.update(
        store_dir="/nix/store",
        from_image=from_image or None,
        store_layers=json.load(open(layers)),
        customisation_layer=custom,
        repo_tag=repo_tag,
        created=created,
        mtime=mtime,
        uid=uid,
        gid=gid,
        uname=uname,
        gname=gname,
    )
    print(json.dumps(conf, indent=2, ensure_ascii=False))


main()
