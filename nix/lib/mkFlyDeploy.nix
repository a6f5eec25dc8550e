# mkFlyDeploy { pkgs, app, ... }: a runnable derivation that pushes an image built by Nix and
# rolls it out on a Fly app with nixfly. Every attribute is documented in docs/API.md.
#
# Two package sets: `pkgs` is the machine that runs `nix run` (the wrapper, nixfly), and
# `imagePkgs` builds the image for x86_64-linux, the only platform Fly Machines run, whatever
# that machine is. A streamLayeredImage is a script of imagePkgs (its bash and python3), which
# another machine cannot execute: there nixfly runs the image's stream script with the
# machine's own python3 instead (`streamOnHost`).
{ lib, pinnedNixfly }:
args:
let
  inherit (builtins)
    elem
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isPath
    isString
    all
    ;
  isDerivation = v: isAttrs v && v.type or null == "derivation";
  nullOr = check: v: v == null || check v;
  listOf = check: v: isList v && all check v;
  isPathLike = v: isPath v || isString v || isDerivation v;
  # What nixfly reads: Go durations with a unit (a bare number is refused, as flyctl does),
  # micro-seconds also as Go spells them (U+00B5 and U+03BC, time/format.go unitMap).
  # Above 0, as nixfly's settings check wants it (src/settings.rs): 0 would fail every machine.
  isDuration =
    v:
    isString v
    && builtins.match "([0-9]+(\\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+" v != null
    && builtins.match "(0+(\\.0+)?(ns|us|µs|μs|ms|s|m|h))+" v == null;
  strategies = [
    "rolling"
    "immediate"
    "canary"
    "bluegreen"
  ];

  # Flags that carry credentials (src/cli/mod.rs `--access-token`/`-t`, src/registry/client.rs
  # `--creds`), and the prefixes of Fly tokens (fly-go tokens/tokens.go: macaroons fm1r_, fm1a_,
  # fm2_, OAuth fo1_), in a flag or its value.
  credentialFlags = [
    "-t"
    "--access-token"
    "--creds"
  ];
  secretIn =
    flag:
    let
      name = builtins.head (builtins.split "=" flag);
    in
    if elem name credentialFlags || builtins.match "-t.+" flag != null then
      "the credential flag `${if builtins.match "-t.+" name != null then "-t" else name}`"
    else if builtins.match ".*(FlyV1 |fm1r_|fm1a_|fm2_|fo1_).*" flag != null then
      "what looks like a Fly token"
    else
      null;

  flyPlatform = "x86_64-linux";
  systemOf = p: p.stdenv.hostPlatform.system or null;

  spec = {
    pkgs = {
      type = "the nixpkgs package set of the machine that runs `nix run` (e.g. nixpkgs.legacyPackages.\${system})";
      check = v: isAttrs v && v ? writeShellApplication;
    };
    imagePkgs = {
      type = "null or the ${flyPlatform} nixpkgs package set that builds the image (e.g. nixpkgs.legacyPackages.${flyPlatform}; null: `pkgs`, when that is ${flyPlatform})";
      check = nullOr (v: isAttrs v && v ? dockerTools && systemOf v == flyPlatform);
      default = null;
    };
    app = {
      type = "the Fly app name, a non-empty string";
      check = v: isString v && v != "";
    };
    image = {
      type = "null or a ready image: a dockerTools result (tarball or stream script), a layer plan (lib.mkLayerPlan), or an OCI layout (derivation or path)";
      check = nullOr isPathLike;
      default = null;
    };
    package = {
      type = "null or the derivation that runs the app";
      check = nullOr isDerivation;
      default = null;
    };
    entrypoint = {
      type = "null or a list of strings (the image's Entrypoint)";
      check = nullOr (listOf isString);
      default = null;
    };
    contents = {
      type = "a list of derivations linked into the image's root";
      check = listOf isDerivation;
      default = [ ];
    };
    config = {
      type = "an attribute set (OCI image config: Env, ExposedPorts, WorkingDir, User, Cmd, ...)";
      check = v: isAttrs v && !(v ? Entrypoint);
      default = { };
    };
    layering = {
      type = ''"stream" (a streamLayeredImage script, run at push time) or "plan" (per-layer digests recorded at build time, docs/layer-plan.md)'';
      check = v: v == "stream" || v == "plan";
      default = "stream";
    };
    fromImage = {
      type = "null or a base image: a docker-archive, such as dockerTools.pullImage's (its layers go first, and count against maxLayers)";
      check = nullOr isPathLike;
      default = null;
    };
    maxLayers = {
      type = "an integer between 2 and 125";
      check = v: isInt v && v >= 2 && v <= 125;
      default = 100;
    };
    flyToml = {
      type = "null, a path, or a string path relative to where `nix run` runs (the app's fly.toml)";
      check = nullOr isPathLike;
      default = null;
    };
    registry = {
      type = "null or a string `host/repository` to push to";
      check = nullOr isString;
      default = null;
    };
    tag = {
      type = "null or a string (the image tag)";
      check = nullOr (v: isString v && builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}" v != null);
      default = null;
    };
    strategy = {
      type = "null or one of ${builtins.concatStringsSep ", " strategies}";
      check = nullOr (v: elem v strategies);
      default = null;
    };
    maxUnavailable = {
      type = "null or a number above 0: below 1 a fraction of the group, from 1 a count of machines (1.5 is 1, as flyctl reads it)";
      check = nullOr (v: (isInt v || isFloat v) && v > 0);
      default = null;
    };
    waitTimeout = {
      type = "null or a duration above 0 like \"90s\", \"5m\" or \"1h30m\"";
      check = nullOr isDuration;
      default = null;
    };
    releaseCommandTimeout = {
      type = "null or a duration above 0 like \"90s\", \"5m\" or \"1h30m\"";
      check = nullOr isDuration;
      default = null;
    };
    rollback = {
      type = "a bool (false: leave failed machines as they are)";
      check = isBool;
      default = true;
    };
    skipRelease = {
      type = "a bool (true: create no release record)";
      check = isBool;
      default = false;
    };
    extraFlags = {
      type = "a list of strings (extra `nixfly deploy` flags)";
      check = listOf isString;
      default = [ ];
      findSecret =
        flags:
        let
          found = builtins.filter (s: s != null) (map secretIn flags);
        in
        if found == [ ] then null else builtins.head found;
    };
    nixfly = {
      type = "null or the nixfly derivation to run (null: the one nixfly's flake builds from its own pinned nixpkgs)";
      check = nullOr isDerivation;
      default = null;
    };
  };

  a = lib.checkArgs "mkFlyDeploy" spec args;
  inherit (a) pkgs app;
  hostSystem = systemOf pkgs;

  imagePkgs =
    if a.imagePkgs != null then
      a.imagePkgs
    else if hostSystem == flyPlatform then
      pkgs
    else
      throw "mkFlyDeploy: Fly Machines run ${flyPlatform} images, and `pkgs` is for ${hostSystem}: pass `imagePkgs = nixpkgs.legacyPackages.${flyPlatform};` and build `package` with it (building needs an ${flyPlatform} builder on this machine, see nixfly's README)";

  # An app built for the machine running `nix run` would not start on Fly: say so at evaluation.
  # Where the package runs is its stdenv's host platform (a cross-built package's `system` is
  # the machine that builds it).
  platformOf = d: d.stdenv.hostPlatform.system or d.system or flyPlatform;
  wrongPlatform = builtins.filter (d: platformOf d != flyPlatform) (
    (if a.package != null then [ a.package ] else [ ]) ++ a.contents
  );

  # nixfly's own pinned build by default: the toolchain nixfly was tested with, whatever
  # nixpkgs the image comes from.
  nixfly =
    if a.nixfly != null then
      a.nixfly
    else if pinnedNixfly hostSystem != null then
      pinnedNixfly hostSystem
    else
      pkgs.callPackage ../package.nix { };

  buildsImage = a.package != null || a.entrypoint != null;
  imageOnly = [
    "package"
    "entrypoint"
    "contents"
    "config"
    "fromImage"
    "maxLayers"
  ];
  conflicting = builtins.filter (name: args ? ${name}) imageOnly;

  # What nixfly is given. A stream script of another platform (a streamLayeredImage result
  # is `makeWrapper <its stream_layered_image.py> $out --add-flags <conf>` of imagePkgs,
  # nixpkgs pkgs/build-support/docker/default.nix) is run instead as this machine's python3 on
  # the same Python script (standard library only) and conf: the same bytes come out.
  # A buildLayeredImage tarball is no stream, although nixpkgs gives it its stream's passthru
  # (`isExe = true` too, since nixpkgs PR #509625); it keeps the stream as `passthru.stream`
  # (PR #298239), which no stream has.
  source = if isForeignStream image then streamOnHost image else image;
  isForeignStream =
    d: isDerivation d && d.isExe or false && !(d ? stream) && platformOf d != hostSystem;
  streamOnHost =
    stream:
    if stream ? streamScript && stream ? conf then
      pkgs.writeShellScript "${app}-stream-on-${hostSystem}" ''
        exec ${lib.shellEscape "${pkgs.python3}/bin/python3"} ${lib.shellEscape stream.streamScript} ${lib.shellEscape stream.conf} "$@"
      ''
    else
      throw "mkFlyDeploy: the image's stream script (${stream.name}) is built for ${platformOf stream} and cannot run on ${hostSystem}, and it has no passthru.streamScript and passthru.conf to run with this machine's python3 (nixpkgs' streamLayeredImage has them since nixpkgs PR #308822, 24.11): update the nixpkgs of `imagePkgs`, or give a tarball image (dockerTools.buildLayeredImage)";

  # `config.Env` goes into the image config, which is in the Nix store (world-readable) and in
  # the registry: a value that looks like a secret is warned about, by the rule nixfly applies
  # to fly.toml's [env] (src/fly/appconfig/parse.rs `looks_like_secret`, after flyctl's
  # internal/command/deploy/common_secrets.go).
  warn =
    msg: v:
    if builtins ? warn then builtins.warn msg v else builtins.trace "evaluation warning: ${msg}" v;
  looksSecret =
    name:
    !(elem name [
      "AWS_ACCESS_KEY_ID"
      "TIGRIS_ACCESS_KEY_ID"
    ])
    && builtins.match ".*(KEY|PRIVATE|DATABASE_URL|PASSWORD|SECRET).*" name != null;
  envName = entry: builtins.head (builtins.split "=" entry);
  warnSecretEnv =
    config:
    let
      secretNames = builtins.filter looksSecret (
        map envName (builtins.filter isString (config.Env or [ ]))
      );
    in
    if secretNames == [ ] then
      config
    else
      warn "mkFlyDeploy: config.Env sets ${builtins.concatStringsSep ", " secretNames}, which may hold a sensitive value: the image config is in the Nix store, readable by every user of the machine, and in the registry. Set it as a Fly secret (`fly secrets set`) and remove it from config.Env" config;

  # With layering = "plan", what is pushed is the plan of this same image (same layers).
  image =
    if wrongPlatform != [ ] then
      throw "mkFlyDeploy: ${(builtins.head wrongPlatform).name} is built for ${platformOf (builtins.head wrongPlatform)}, but Fly runs ${flyPlatform} images: build `package` and `contents` with `imagePkgs` (nixpkgs.legacyPackages.${flyPlatform})"
    else if a.layering == "plan" then
      lib.mkLayerPlan {
        inherit pkgs nixfly;
        image = streamImage;
      }
    else
      streamImage;

  streamImage =
    if a.image != null then
      if conflicting != [ ] then
        throw "mkFlyDeploy: `image` is a ready image, so `${builtins.head conflicting}` cannot be used with it; give either `image` or what to put in one (`package`, `entrypoint`, ...)"
      else
        a.image
    else if !buildsImage then
      throw "mkFlyDeploy: give `image` (a ready image) or `package` (the app to put in one)"
    else
      lib.mkStreamImage {
        pkgs = imagePkgs;
        name = app;
        inherit (a)
          tag
          contents
          fromImage
          maxLayers
          ;
        config = warnSecretEnv a.config;
        entrypoint =
          if a.entrypoint != null then
            a.entrypoint
          else if a.package.meta ? mainProgram then
            [ "${a.package}/bin/${a.package.meta.mainProgram}" ]
          else
            throw "mkFlyDeploy: `package` ${a.package.name} has no meta.mainProgram; set `entrypoint`";
      };

  # The schema is docs/settings.schema.json, mirrored by nixfly's src/settings.rs.
  settings = removeNulls {
    version = 1;
    inherit app;
    config = if a.flyToml == null then null else "${a.flyToml}";
    push = removeNulls {
      to = a.registry;
      inherit (a) tag;
    };
    rollout = removeNulls {
      inherit (a) strategy;
      max_unavailable = a.maxUnavailable;
      wait_timeout = a.waitTimeout;
      release_command_timeout = a.releaseCommandTimeout;
      # Only what differs from nixfly's defaults.
      rollback = if a.rollback then null else false;
      skip_release = if a.skipRelease then true else null;
    };
  };
  # Unset settings are left out, so nixfly's own defaults (and fly.toml) apply.
  removeNulls =
    attrs: removeAttrs attrs (builtins.filter (n: attrs.${n} == null || attrs.${n} == { }) (builtins.attrNames attrs));
  settingsFile = pkgs.writeText "${app}-nixfly-settings.json" (builtins.toJSON settings);

  command = [
    "${nixfly}/bin/nixfly"
    "deploy"
    source
    "--settings"
    settingsFile
  ]
  ++ a.extraFlags;
  # writeShellApplication runs shellcheck on the script (nixpkgs' checkPhase), and any finding
  # fails the build. Every word is single-quoted to pass as written, which shellcheck reports
  # when a word holds `$` or a backquote (SC2016) or a backslash before a closing quote
  # (SC1003): here that is what is meant. A directive works with every nixpkgs, unlike
  # `excludeShellChecks`.
  holds = char: builtins.any (word: builtins.replaceStrings [ char ] [ "" ] (toString word) != toString word) command;
  meantAsWritten =
    (if holds "$" || holds "`" then [ "SC2016" ] else [ ]) ++ (if holds "\\" then [ "SC1003" ] else [ ]);
in
pkgs.writeShellApplication {
  name = "deploy-${app}";
  text =
    (
      if meantAsWritten != [ ] then
        "# shellcheck disable=${builtins.concatStringsSep "," meantAsWritten}\n"
      else
        ""
    )
    + ''
      exec ${builtins.concatStringsSep " " (map lib.shellEscape command)} "$@"
    '';
  passthru = {
    inherit
      image
      source
      imagePkgs
      settings
      settingsFile
      nixfly
      ;
  };
  meta.description = "Deploy the ${app} image to Fly with nixfly";
}
