"""The conf of dockerTools.streamLayeredImage, as nixpkgs computes it.

usage: conf.py GRAPH MAX_LAYERS BASE_JSON CUSTOMISATION_LAYER CLOSURE REPO_TAG CREATED MTIME UID GID UNAME GNAME

GRAPH is the closure of the CLOSURE file (Nix's exportReferencesGraph text format: path,
deriver, reference count, references). Follows nixpkgs:
- pkgs/build-support/references-by-popularity/closure-graph.py for the order of the paths
  (most popular first, ties by package name with the hash moved to the end);
- pkgs/build-support/docker/default.nix (streamLayeredImage's `conf`) for what is left out
  (the base JSON, the closure file and the customisation layer), the grouping (one path per
  layer for the first maxLayers - 2, every other path in the last store layer, as
  `(.[:$n-1] | map([.])) + [.[$n-1:]]` with n = maxLayers - 1) and the keys: the base JSON's
  (builtins.toJSON: sorted), then store_dir ... gname, uid and gid as strings (jq --arg),
  written as jq prints (two-space indent, UTF-8).
"""

import json
import sys
from collections import defaultdict


def read_graph(path):
    """{store path: references without itself}, in file order."""
    lines = open(path).read().split("\n")
    graph = {}
    i = 0
    while i < len(lines) and lines[i]:
        store_path, count = lines[i], int(lines[i + 2])
        refs = lines[i + 3 : i + 3 + count]
        graph[store_path] = [r for r in refs if r != store_path]
        i += 3 + count
    return graph


def popularity(graph):
    """Each path's popularity: 1 per path from a root that reaches it, plus 1 per edge
    below it on that path (closure-graph.py's graph_popularity_contest over the tree
    that repeats shared paths)."""
    referenced = {r for refs in graph.values() for r in refs}
    memo = {}

    def below(path):
        if path not in memo:
            counts = defaultdict(int)
            for ref in graph[path]:
                counts[ref] += 1
                for sub, n in below(ref).items():
                    counts[sub] += n + 1
            memo[path] = counts
        return memo[path]

    total = defaultdict(int)
    for root in (p for p in graph if p not in referenced):
        total[root] += 1
        for sub, n in below(root).items():
            total[sub] += n + 1
    return total


def name_first(path):
    """Sort key: the name, then the hash (`<hash>-<name>` becomes `<name>-<hash>`)."""
    head, _, rest = path.partition("-")
    return f"{rest}-{head}" if rest else head


def by_popularity(graph):
    counts = popularity(graph)
    ordered = []
    for score in sorted(set(counts.values()), reverse=True):
        ordered.extend(sorted((p for p in counts if counts[p] == score), key=name_first))
    ordered += sorted(set(graph) - set(ordered))
    return ordered


def main():
    (graph_file, max_layers, base_json, custom, closure, repo_tag, created, mtime,
     uid, gid, uname, gname) = sys.argv[1:]
    # default.nix filters with `grep -v <path>`: a substring match.
    unwanted = [base_json, closure, custom]
    paths = [p for p in by_popularity(read_graph(graph_file)) if not any(u in p for u in unwanted)]
    available = int(max_layers) - 1  # one layer is the customisation layer
    groups = [[p] for p in paths[: available - 1]] + [paths[available - 1 :]]
    conf = json.load(open(base_json))
    conf.update(
        store_dir="/nix/store",
        from_image=None,
        store_layers=[g for g in groups if g],
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
