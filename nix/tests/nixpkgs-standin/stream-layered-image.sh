#!/bin/bash
# Writes the image as an uncompressed docker-archive to stdout; progress goes to stderr.
# --repo_tag/-t NAME:TAG overrides the tag, as with nixpkgs' stream script.
set -euo pipefail
export PATH='@hostPath@'
repo_tag='@repoTag@'
while [ $# -gt 0 ]; do
  case "$1" in
    --repo_tag|-t) repo_tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--repo_tag NAME:TAG]" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/skeleton/nix/store"
chmod 0755 "$work/skeleton/nix" "$work/skeleton/nix/store"
tar_fixed=(tar --format=gnu --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner --hard-dereference)

layer_names=()
diff_ids=()
history=()
add_layer() { # $1: the uncompressed layer tar; $2: a comment for the image history
  local sum
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  mkdir -p "$work/out/$sum"
  mv "$1" "$work/out/$sum/layer.tar"
  layer_names+=("$sum/layer.tar")
  diff_ids+=("\"sha256:$sum\"")
  history+=("{\"created\":\"@created@\",\"comment\":\"$2\"}")
  echo "layer sha256:$sum ($2)" >&2
}

while read -r -a paths; do
  relative=("${paths[@]#/}")
  "${tar_fixed[@]}" -cf "$work/layer.tar" -C "$work/skeleton" --no-recursion nix nix/store \
    -C / --recursion "${relative[@]}"
  add_layer "$work/layer.tar" "store paths: ${paths[*]}"
done < '@layers@'

cp '@customisationLayer@/layer.tar' "$work/layer.tar"
add_layer "$work/layer.tar" "customisation layer"

join() { local IFS=,; echo "$*"; }
config="{\"created\":\"@created@\",\"architecture\":\"@architecture@\",\"os\":\"linux\",\"config\":$(cat '@configJson@'),\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(join "${diff_ids[@]}")]},\"history\":[$(join "${history[@]}")]}"
config_sum=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" > "$work/out/$config_sum.json"
quoted_layers=()
for l in "${layer_names[@]}"; do quoted_layers+=("\"$l\""); done
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]' \
  "$config_sum" "$repo_tag" "$(join "${quoted_layers[@]}")" > "$work/out/manifest.json"

"${tar_fixed[@]/--sort=name/--no-recursion}" -cf - -C "$work/out" \
  "${layer_names[@]}" "$config_sum.json" manifest.json
