# dockerTools.streamLayeredImage as nixpkgs' pkgs/build-support/docker/default.nix defines it,
# for the arguments nixfly uses: the result is a script that writes the docker-archive to
# stdout, with `passthru.conf` (the JSON the script reads), `imageName`, `imageTag`, `isExe`.
# The conf comes from ./conf.py (popularity grouping, keys and formatting), the archive from
# ./stream.py (stream_layered_image.py's bytes); both say which nixpkgs file each rule follows.
{
  lib,
  system,
  hostPath,
  runCommand,
  writeText,
  onlyArgs,
}:
let
  # default.nix: `defaultArchitecture = go.GOARCH` of the package set's platform.
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
        "architecture"
        "created"
        "mtime"
        "uid"
        "gid"
        "uname"
        "gname"
        "maxLayers"
        "passthru"
      ] args;
      # default.nix's defaults.
      contents = a.contents or [ ];
      maxLayers = a.maxLayers or 100;
      created = a.created or "1970-01-01T00:00:01Z";
      mtime = a.mtime or "1970-01-01T00:00:01Z";
      baseName = baseNameOf a.name;

      # default.nix: `baseJson`, builtins.toJSON of config, architecture and os.
      baseJson = writeText "${baseName}-base.json" (
        builtins.toJSON {
          config = a.config or { };
          architecture = a.architecture or goArch;
          os = "linux";
        }
      );

      # default.nix: a symlinkJoin of the contents (real directories, links to the files),
      # packed with `tar --sort name --numeric-owner --mtime @$SOURCE_DATE_EPOCH
      # --hard-dereference` under fakeroot (here: as root, owner 0), and its sha256sum.
      customisationLayer = runCommand "${baseName}-customisation-layer" { inherit contents; } ''
        mkdir root
        for c in $contents; do
          (cd "$c" && find . -mindepth 1 -type d) | while read -r d; do mkdir -p "root/$d"; done
          (cd "$c" && find . ! -type d) | while read -r f; do ln -sfn "$c/''${f#./}" "root/$f"; done
        done
        mkdir "$out"
        (cd root && tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 \
          --mtime=@315532800 --hard-dereference -cf "$out/layer.tar" .)
        sha256sum "$out/layer.tar" | cut -f 1 -d ' ' > "$out/checksum"
      '';

      # default.nix: the closure whose paths are grouped into layers.
      closure = writeText "closure" "${baseJson} ${customisationLayer}";

      tag = if a.tag or null != null then a.tag else null;
      conf =
        runCommand "${baseName}-conf.json"
          {
            exportReferencesGraph = [
              "graph"
              closure
            ];
            imageName = lib.toLower a.name;
            inherit
              baseJson
              customisationLayer
              closure
              maxLayers
              created
              mtime
              ;
            imageTag = if tag == null then "" else tag;
            uid = toString (a.uid or 0);
            gid = toString (a.gid or 0);
            uname = a.uname or "root";
            gname = a.gname or "root";
          }
          ''
            # default.nix: no tag means the conf's own hash; times through `date -Iseconds`.
            [ -n "$imageTag" ] || imageTag=$(basename "$out" | cut -d - -f 1)
            iso() { if [ "$1" = now ]; then echo now; else TZ=UTC date -Iseconds -d "$1"; fi; }
            python3 ${./conf.py} graph "$maxLayers" "$baseJson" "$customisationLayer" "$closure" \
              "$imageName:$imageTag" "$(iso "$created")" "$(iso "$mtime")" \
              "$uid" "$gid" "$uname" "$gname" > "$out"
          '';
      imageTag =
        if tag != null then
          tag
        else
          builtins.head (builtins.split "-" (baseNameOf (builtins.unsafeDiscardStringContext conf.outPath)));
    in
    # default.nix: `makeWrapper ${streamScript} $out --add-flags ${conf}`.
    runCommand "stream-${baseName}"
      {
        inherit conf hostPath;
        imageName = conf.imageName;
        passthru = (a.passthru or { }) // {
          inherit conf imageTag;
          isExe = true;
        };
      }
      ''
        printf '#!/bin/bash\nexport PATH=%q\nexec python3 %q %q "$@"\n' \
          "$hostPath" ${./stream.py} "$conf" > "$out"
        chmod +x "$out"
      '';
in
{
  dockerTools = { inherit streamLayeredImage; };
}
