"""The store layers of dockerTools.streamLayeredImage, as nixpkgs' default layering makes them.

usage: PYTHONHASHSEED=0 auto_layer.py ATTRS_JSON [AVAILABLE_LAYERS] > layers.json

ATTRS_JSON is the structured-attributes file of the derivation that runs it: `graph` (Nix's
exportReferencesGraph of the base JSON and the customisation layer: path, narSize, references),
`excludePaths` (those two, left out of the result) and `availableLayers` (how many layers the
store paths may take), which AVAILABLE_LAYERS overrides (the derivation counts them at build
time: maxLayers less the customisation layer and a base image's layers).

Follows nixpkgs' pkgs/build-support/docker/auto-layer.py, the layering streamLayeredImage uses
when it is given no `layeringPipeline` (the default since nixpkgs PR #355189), and
auto-layer.nix around it (the limit, the excluded paths, python3's setup hook exporting
PYTHONHASHSEED=0, on which the order of layers of equal closure size depends):
- every path starts in one layer; the largest path by narSize (on equal sizes, the one later in
  the graph) becomes a layer's "primary", one after another, while the number of layers stays
  within the limit;
- a path's layer is the set of primaries it belongs to: a new primary takes its dependencies,
  except those that something outside its own closure uses too, which keep the primaries they
  had without those the new primary is used by;
- layers come in order of closure size (smallest first, so dependencies before their users),
  paths in a layer by name and then hash; excluded paths are dropped, and layers left empty.
"""

import json
import os
import sys


def reachable(start, edges):
    """Every path reachable from `start` along `edges`, `start` included."""
    seen = set()
    todo = set(start)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.update(edges[path])
    return seen


def name_then_hash(path):
    hash_part, name = path.split("-", 1)
    return name, hash_part


def layers(graph, excluded, limit):
    size = {node["path"]: node["narSize"] for node in graph}
    refs = {node["path"]: node["references"] for node in graph}
    users = {path: set() for path in refs}
    for user, references in refs.items():
        for ref in references:
            users[ref].add(user)

    # Each path mapped to the primaries of its layer, in the graph's order (the order in which
    # the layers are first met below, and so the order of layers of equal closure size).
    split = {path: frozenset() for path in refs}
    candidates = sorted(graph, key=lambda node: node["narSize"])
    while candidates:
        primary = candidates.pop()["path"]
        below = reachable([primary], refs) - {primary}
        above = reachable([primary], users) - {primary}
        proposal = dict(split)
        proposal[primary] = frozenset([primary])
        for dep in below:
            owners = proposal[dep] - above
            if not owners & below:
                owners |= {primary}
            proposal[dep] = owners
        if len(set(proposal.values())) > limit:
            break
        split = proposal

    found = []
    for layer in set(split.values()):
        paths = {path for path, owners in split.items() if owners == layer}
        found.append((sum(size[p] for p in reachable(paths, refs)), sorted(paths, key=name_then_hash)))
    found.sort(key=lambda entry: entry[0])
    assert sum(size[p] for _, paths in found for p in paths) == sum(size.values())
    kept = ([p for p in paths if p not in excluded] for _, paths in found)
    return [paths for paths in kept if paths]


def main():
    # Without it, layers of equal closure size come out in another order than nixpkgs'.
    assert os.environ.get("PYTHONHASHSEED") == "0", "run with PYTHONHASHSEED=0, as nixpkgs does"
    attrs = json.load(open(sys.argv[1]))
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else attrs["availableLayers"]
    result = layers(attrs["graph"], set(attrs["excludePaths"]), limit)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
