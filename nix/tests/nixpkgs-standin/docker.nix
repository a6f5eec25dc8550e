# dockerTools.streamLayeredImage: the result is a script that writes an uncompressed
# docker-archive to stdout, entries in nixpkgs' order (one `<diff_id>/layer.tar` per store layer,
# then the customisation layer, then `<sha256>.json`, then `manifest.json` last). Layers are real
# tars of the store paths, sorted, with fixed mtime and owner. Layering is simpler than nixpkgs'
# popularity heuristic: one store path per layer, sorted, the rest grouped into the last one.
{
  system,
  hostPath,
  runCommand,
  writeText,
  onlyArgs,
}:
let
  goArch =
    {
      x86_64 = "amd64";
      aarch64 = "arm64";
    }
    .${builtins.head (builtins.split "-" system)};

  streamLayeredImage =
    args:
    let
      a = onlyArgs "dockerTools.streamLayeredImage" [
        "name"
        "tag"
        "contents"
        "config"
        "created"
        "maxLayers"
        "passthru"
      ] args;
      contents = a.contents or [ ];
      config = a.config or { };
      created = a.created or "1970-01-01T00:00:01Z";
      maxLayers = a.maxLayers or 100;
      tag = if a.tag or null == null then "latest" else a.tag;
      configJson = writeText "${a.name}-config.json" (builtins.toJSON config);

      # As in nixpkgs: the layer's tar and its sha256, made at build time.
      customisationLayer = runCommand "${a.name}-customisation-layer" { inherit contents; } ''
        mkdir -p "$out" root
        for c in $contents; do cp -rsf "$c/." root/; done
        (cd root && find . -mindepth 1 -maxdepth 1 -printf '%P\n') > top-level
        tar --format=gnu --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner \
          -cf "$out/layer.tar" -C root -T top-level
        sha256sum "$out/layer.tar" | cut -d' ' -f1 > "$out/checksum"
      '';

      # One line per layer, its store paths separated by spaces.
      layers =
        runCommand "${a.name}-layers"
          {
            exportReferencesGraph = [
              "graph"
              configJson
              "contents"
              customisationLayer
            ];
            exclude = "${configJson} ${customisationLayer}";
            inherit maxLayers;
          }
          ''
            # The graph lists each path, its deriver, a count, then that many references.
            paths=$(awk 'expect == 0 { print; state = 1; expect = -1; next }
                         state == 1 { state = 2; next }
                         state == 2 { expect = $1; state = 0; next }
                         { expect-- }' graph contents | sort -u | grep -vxF -e "''${exclude// /$'\n'}" || true)
            # nixpkgs keeps one layer for the customisation layer.
            room=$((maxLayers - 1))
            printf '%s\n' "$paths" | awk -v room="$room" 'NF { if (NR < room) print; else rest = rest (rest ? " " : "") $0 }
              END { if (rest) print rest }' > "$out"
          '';

      # The keys nixpkgs' conf has (uid and gid are strings there too: jq --arg).
      conf =
        runCommand "${a.name}-conf.json"
          {
            inherit layers customisationLayer created configJson;
            architecture = goArch;
            repoTag = "${a.name}:${tag}";
          }
          ''
            {
              printf '{"architecture":"%s","config":' "$architecture"
              cat "$configJson"
              printf ',"os":"linux","store_dir":"/nix/store","from_image":null,"store_layers":['
              awk '{ printf "%s[", (NR > 1 ? "," : ""); for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? "," : ""), $i; printf "]" }' "$layers"
              printf '],"customisation_layer":"%s","repo_tag":"%s","created":"%s","mtime":"%s",' \
                "$customisationLayer" "$repoTag" "$created" "$created"
              printf '"uid":"0","gid":"0","uname":"root","gname":"root"}\n'
            } > "$out"
          '';

      script =
        runCommand "stream-${a.name}"
          {
            inherit
              layers
              customisationLayer
              created
              configJson
              ;
            repoTag = "${a.name}:${tag}";
            architecture = goArch;
            inherit hostPath;
            passthru = (a.passthru or { }) // {
              inherit conf;
              isExe = true;
              imageName = a.name;
              imageTag = tag;
            };
          }
          ''
            substitute() { sed -e "s|@$1@|$2|g"; }
            substitute hostPath "$hostPath" < ${./stream-layered-image.sh} \
              | substitute layers "$layers" \
              | substitute customisationLayer "$customisationLayer" \
              | substitute configJson "$configJson" \
              | substitute created "$created" \
              | substitute architecture "$architecture" \
              | substitute repoTag "$repoTag" > "$out"
            chmod +x "$out"
          '';
    in
    script;
in
{
  dockerTools = { inherit streamLayeredImage; };
}
