# dockerTools.streamLayeredImage as nixpkgs' pkgs/build-support/docker/default.nix defines it,
# for the arguments nixfly uses: the result is a script that writes the docker-archive to
# stdout, with `passthru.conf` (the JSON the script reads), `passthru.streamScript` (the Python
# script the wrapper runs on it), `imageName`, `imageTag`, `isExe`.
# The layers come from ./auto_layer.py (auto-layer.py, nixpkgs' default layering), the conf from
# ./conf.py (keys and formatting), the archive from ./stream.py (stream_layered_image.py's
# bytes); each says which nixpkgs file its rules follow.
{
  lib,
  system,
  buildSystem,
  bash,
  requireSandbox,
  stdenvPath,
  python3,
  pigz,
  zstd,
  lndir,
  runtimeShell,
  python3Interpreter,
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
        "variant"
        "created"
        "mtime"
        "uid"
        "gid"
        "uname"
        "gname"
        "maxLayers"
        "fromImage"
        "meta"
        "passthru"
      ] args;
      # default.nix's defaults.
      contents = a.contents or [ ];
      maxLayers = a.maxLayers or 100;
      fromImage = a.fromImage or null;
      created = a.created or "1970-01-01T00:00:01Z";
      mtime = a.mtime or "1970-01-01T00:00:01Z";
      baseName = baseNameOf a.name;

      # default.nix: `baseJson`, builtins.toJSON of config, architecture, variant and os.
      # `variant ? defaultVariant`, "v${go.GOARM}" when GOARM is set: empty on x86_64 and
      # aarch64, the only systems this set knows. The stream script does not copy it into the
      # image config; it stays in the conf (a key nixfly's layer plans ignore).
      baseJson = writeText "${baseName}-base.json" (
        builtins.toJSON {
          config = a.config or { };
          architecture = a.architecture or goArch;
          variant = a.variant or "";
          os = "linux";
        }
      );

      # default.nix: `customisationLayer`, a symlinkJoin of the contents packed with `tar --sort
      # name --numeric-owner --mtime @$SOURCE_DATE_EPOCH --hard-dereference` under fakeroot
      # (here: as root, owner 0), and its sha256sum. symlinkJoin
      # (pkgs/build-support/trivial-builders/default.nix) runs `${lndir}/bin/lndir -silent $i $out`
      # for each path in order, failOnMissing (true when there is no stripPrefix) letting lndir
      # fail: a content that is not a directory stops the build with "<path>: Not a directory".
      # lndir is xorg's (lndir.c, here Debian's xutils-dev). Its `dodir` lstat()s each entry: a
      # real directory becomes a directory shared by the contents that have one of that name;
      # anything else is linked, a file as a link to it, a symlink (to a directory too, as buildEnv
      # writes them) as a copy of its target. A name already there keeps its first link, and a
      # later content's directory that meets a link prints "<name>: is a link instead of a
      # directory" and adds none of its files. Names ending in `~` are skipped, and so are
      # revision-control directories (RCS, SCCS, CVS, CVS.adm, .svn, .git, BitKeeper).
      customisationLayer = runCommand "${baseName}-customisation-layer" { inherit contents; } ''
        mkdir root
        for c in $contents; do ${lndir}/bin/lndir -silent "$c" root; done
        mkdir "$out"
        (cd root && tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 \
          --mtime=@315532800 --hard-dereference -cf "$out/layer.tar" .)
        sha256sum "$out/layer.tar" | cut -f 1 -d ' ' > "$out/checksum"
      '';

      # auto-layer.nix (the default when no layeringPipeline is given): Nix's reference graph
      # of the base JSON and the customisation layer, with narSize (structured attributes),
      # split by ./auto_layer.py, both roots left out, into the layers maxLayers leaves: one is
      # the customisation layer's, and a base image (fromImage) takes as many as its
      # manifest.json lists (auto-layer.nix counts them with `tar -xOf ... manifest.json | jq
      # '.[0].Layers | length'`; here Python's tarfile, which reads a compressed base too, as
      # GNU tar does). python3's setup hook in nixpkgs exports PYTHONHASHSEED=0, which the
      # layer order needs.
      layers = derivation {
        name = "layers.json";
        system = buildSystem;
        builder = "${bash}";
        __structuredAttrs = true;
        exportReferencesGraph.graph = [
          baseJson
          customisationLayer
        ];
        excludePaths = [
          "${baseJson}"
          "${customisationLayer}"
        ];
        inherit maxLayers;
        # auto-layer.nix's nativeBuildInputs, with this script's python3 in place of its jq.
        PATH = "${python3}/bin:${stdenvPath}";
        fromImage = if fromImage == null then "" else "${fromImage}";
        args = [
          "-c"
          ''
            ${requireSandbox}
            # As nixpkgs' builder scripts begin (pkgs/build-support/fetchgit/builder.sh): the
            # attributes are $NIX_ATTRS_SH_FILE, else .attrs.sh in the build directory (Nix 2.8
            # in the sandbox names the host's build directory in the variable); .attrs.json
            # likewise.
            if [ -e "''${NIX_ATTRS_SH_FILE-}" ]; then source "$NIX_ATTRS_SH_FILE"; else source .attrs.sh; fi
            attrsJson=.attrs.json
            if [ -e "''${NIX_ATTRS_JSON_FILE-}" ]; then attrsJson=$NIX_ATTRS_JSON_FILE; fi
            export PYTHONHASHSEED=0
            usedLayers=1
            if [ -n "$fromImage" ]; then
              baseImageLayersCount=$(python3 -c 'import json, sys, tarfile
            print(len(json.load(tarfile.open(sys.argv[1]).extractfile("manifest.json"))[0]["Layers"]))' "$fromImage")
              (( usedLayers += baseImageLayersCount ))
            fi
            if ! (( usedLayers < maxLayers )); then
              echo >&2 "Error: usedLayers $usedLayers layers to store 'fromImage' and" \
                "'extraCommands', but only maxLayers=$maxLayers were" \
                "allowed. At least 1 layer is required to store contents."
              exit 1
            fi
            python3 ${./auto_layer.py} "$attrsJson" $(( maxLayers - usedLayers )) > "''${outputs[out]}"
          ''
        ];
      };

      tag = if a.tag or null != null then a.tag else null;
      conf =
        runCommand "${baseName}-conf.json"
          {
            # default.nix builds the conf with jq; ./conf.py is this set's jq program.
            nativeBuildInputs = [ python3 ];
            imageName = lib.toLower a.name;
            inherit
              baseJson
              customisationLayer
              layers
              created
              mtime
              ;
            # default.nix: `--argjson from_image`, the base image's store path or null.
            fromImage = if fromImage == null then "" else "${fromImage}";
            # `tag ? null`: only null means the conf's hash; an empty tag stays empty, as in
            # nixpkgs' `imageTag="${tag}"` (mkFlyDeploy refuses one).
            imageTag = if tag == null then "" else tag;
            tagFromHash = tag == null;
            uid = toString (a.uid or 0);
            gid = toString (a.gid or 0);
            uname = a.uname or "root";
            gname = a.gname or "root";
          }
          ''
            # default.nix: no tag means the conf's own hash; times through `date -Iseconds`, in
            # the builder's time zone as nixpkgs leaves it (UTC in the sandbox, which has no
            # /etc/localtime and no TZ).
            [ -z "$tagFromHash" ] || imageTag=$(basename "$out" | cut -d - -f 1)
            iso() { if [ "$1" = now ]; then echo now; else date -Iseconds -d "$1"; fi; }
            python3 ${./conf.py} "$layers" "$baseJson" "$customisationLayer" \
              "$imageName:$imageTag" "$(iso "$created")" "$(iso "$mtime")" \
              "$uid" "$gid" "$uname" "$gname" "$fromImage" > "$out"
          '';
      imageTag =
        if tag != null then
          tag
        else
          builtins.head (builtins.split "-" (baseNameOf (builtins.unsafeDiscardStringContext conf.outPath)));

      # default.nix: `writePython3 "stream" { } ./stream_layered_image.py`, an executable file
      # whose shebang is this package set's python3.
      streamScript = runCommand "stream" { } ''
        { printf '#!%s\n' ${python3Interpreter}; cat ${./stream.py}; } > "$out"
        chmod +x "$out"
      '';
    in
    # default.nix: streamLayeredImage's assertion at evaluation, with its message (spelling
    # too): maxLayers > 1, which newer nixpkgs asks only when no layeringPipeline is given (this
    # set takes none).
    assert lib.assertMsg (maxLayers > 1)
      "the maxLayers argument of dockerTools.buildLayeredImage function must be greather than 1 (current value: ${toString maxLayers})";
    # default.nix: `makeWrapper $streamScript $out --add-flags $conf`, a script of this package
    # set's shell.
    runCommand "stream-${baseName}"
      {
        inherit conf streamScript;
        imageName = conf.imageName;
        meta = a.meta or { };
        passthru = (a.passthru or { }) // {
          inherit conf imageTag streamScript;
          isExe = true;
        };
      }
      ''
        printf '#!%s\nexec %q %q "$@"\n' ${runtimeShell} "$streamScript" "$conf" > "$out"
        chmod +x "$out"
      '';

  # default.nix: `compressors`, the commands buildLayeredImage pipes the stream through, as
  # nixpkgs writes them, with the nativeInputs each brings (pigz and zstd are the host's here,
  # nixpkgs' own there).
  compressors = {
    none = {
      ext = "";
      nativeInputs = [ ];
      compress = "cat";
    };
    gz = {
      ext = ".gz";
      nativeInputs = [ pigz ];
      compress = "pigz -p$NIX_BUILD_CORES -nTR";
    };
    zstd = {
      ext = ".zst";
      nativeInputs = [ zstd ];
      compress = "zstd -T$NIX_BUILD_CORES";
    };
  };
  # default.nix: `compressorForImage`; an unknown compressor fails evaluation with the list of
  # compressors (`toString (builtins.attrNames compressors)`: older nixpkgs applied `toString`
  # to the function itself and failed with "cannot coerce the built-in function 'attrNames' to
  # a string" instead).
  compressorForImage =
    compressor: imageName:
    compressors.${compressor}
      or (throw "in docker image ${imageName}: compressor must be one of: [${toString (builtins.attrNames compressors)}]");

  # default.nix: the stream piped through the compressor ("gz" by default) into
  # `<name>.tar<ext>`, with `imageName` and `meta`, and the stream's passthru (`conf`,
  # `streamScript`, `isExe = true` too: nixpkgs PR #509625, 2026) with `imageTag` and
  # `stream` (PR #298239) over it.
  buildLayeredImage =
    args:
    let
      stream = streamLayeredImage (removeAttrs args [ "compressor" "meta" ]);
      compress = compressorForImage (args.compressor or "gz") args.name;
    in
    runCommand "${baseNameOf args.name}.tar${compress.ext}" {
      inherit (stream) imageName;
      meta = args.meta or { };
      nativeBuildInputs = compress.nativeInputs;
      passthru = stream.passthru // {
        inherit (stream) imageTag;
        inherit stream;
      };
    } "${stream} | ${compress.compress} > $out";
in
{
  dockerTools = { inherit streamLayeredImage buildLayeredImage; };
}
