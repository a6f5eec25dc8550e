# mkLayerPlan { pkgs, image, nixfly, compression ? null, level ? null }: the layer plan of a
# dockerTools.streamLayeredImage image, or of the buildLayeredImage tarball of one (schema:
# docs/layer-plan.md). Nix builds no image
# tarball: one small derivation per layer records the layer's diff_id and the digest and size
# of its compressed blob, and `nixfly push` of the plan reads nothing for the layers the
# registry already has.
#
# Layers are grouped as nixpkgs groups them (`store_layers` of the image's `passthru.conf`).
# That grouping is only known once the conf is built, so it is read at evaluation time
# (import from derivation). Each layer derivation depends only on its store paths, the file
# ownership settings and nixfly: an unchanged layer is never rebuilt, and a binary cache can
# serve it.
{ lib }:
args:
let
  # Checked as mkFlyDeploy's are (checkArgs.nix): a typo or a wrong type names the attribute.
  spec = {
    pkgs = {
      type = "a nixpkgs package set (its runCommand builds the layer records)";
      check = v: builtins.isAttrs v && v ? runCommand;
    };
    image = {
      type = "a dockerTools.streamLayeredImage image, or the buildLayeredImage of one";
      check = builtins.isAttrs;
    };
    nixfly = {
      type = "the nixfly derivation that records the layers";
      check = v: builtins.isAttrs v && v ? outPath;
    };
    # What the digests are pinned for; `nixfly push` must compress the same way (null:
    # nixfly's defaults on both sides).
    compression = {
      type = "null, \"gzip\" or \"zstd\"";
      check = v: v == null || builtins.elem v [ "gzip" "zstd" ];
      default = null;
    };
    level = {
      type = "null or an integer compression level (gzip 1-12, zstd 1-19)";
      check = v: v == null || builtins.isInt v;
      default = null;
    };
  };
  inherit (lib.checkArgs "mkLayerPlan" spec args)
    pkgs
    image
    nixfly
    compression
    level
    ;

  # nixpkgs pkgs/build-support/docker/default.nix: streamLayeredImage has `passthru.conf` (since
  # PR #308822); buildLayeredImage compresses such a stream and keeps it as `passthru.stream`
  # (since PR #298239), whose conf describes the same layers.
  confFile =
    image.passthru.conf or image.conf or image.passthru.stream.conf or image.stream.conf or (throw
      "mkLayerPlan: the image has no passthru.conf (nor passthru.stream.conf). A layer plan needs a dockerTools.streamLayeredImage image, or the buildLayeredImage of one, from nixpkgs 24.11 or newer (streamLayeredImage exposes its conf since nixpkgs PR #308822, buildLayeredImage its stream since PR #298239): update nixpkgs, or use layering = \"stream\""
    );
  confText = builtins.readFile confFile;
  conf = builtins.fromJSON (builtins.unsafeDiscardStringContext confText);
  # fromJSON drops the context readFile gave the conf's store paths; each path gets its own
  # back, so that a layer derivation depends on exactly its paths.
  storePath = path: builtins.appendContext path { ${path}.path = true; };

  escaped = map lib.shellEscape;
  compressionFlags =
    (if compression != null then [ "--compression" compression ] else [ ])
    ++ (if level != null then [ "--level" (toString level) ] else [ ]);
  ownershipFlags = [
    "--mtime"
    (conf.mtime or conf.created)
    "--uid"
    (toString conf.uid)
    "--gid"
    (toString conf.gid)
    "--uname"
    (conf.uname or "root")
    "--gname"
    (conf.gname or "root")
  ];

  recordName = path: "nixfly-layer-${builtins.unsafeDiscardStringContext (baseNameOf path)}.json";

  storeLayer =
    paths:
    pkgs.runCommand (recordName (builtins.head paths))
      {
        storePaths = builtins.concatStringsSep "\n" (map storePath paths) + "\n";
        passAsFile = [ "storePaths" ];
      }
      ''
        ${lib.shellEscape "${nixfly}/bin/nixfly"} layer build --paths-from "$storePathsPath" \
          ${toString (escaped (ownershipFlags ++ compressionFlags))} --out "$out"
      '';

  customisationLayer = pkgs.runCommand (recordName conf.customisation_layer) { } ''
    ${lib.shellEscape "${nixfly}/bin/nixfly"} layer build \
      --tar ${lib.shellEscape "${storePath conf.customisation_layer}/layer.tar"} \
      ${toString (escaped compressionFlags)} --out "$out"
  '';

  # A base image (fromImage): one derivation records all its layers, so it is rebuilt only
  # when the base image or nixfly changes.
  baseLayers =
    if conf.from_image or null == null then
      null
    else
      pkgs.runCommand (recordName conf.from_image) { } ''
        ${lib.shellEscape "${nixfly}/bin/nixfly"} layer base \
          --image ${lib.shellEscape (storePath conf.from_image)} \
          ${toString (escaped compressionFlags)} --out "$out"
      '';

  layers = map storeLayer conf.store_layers ++ [ customisationLayer ];
in
pkgs.runCommand "${image.imageName or "image"}-layer-plan.json"
  {
    passthru = {
      inherit layers baseLayers;
      conf = confFile;
      streamImage = image;
    };
  }
  ''
    ${lib.shellEscape "${nixfly}/bin/nixfly"} layer plan --conf ${lib.shellEscape "${confFile}"} \
      ${if baseLayers != null then "--base-layers ${baseLayers}" else ""} \
      ${toString (map (layer: "--layer ${layer}") layers)} --out "$out"
  ''
