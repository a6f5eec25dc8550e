# The package set. Builders run in Nix's sandbox with the host's tools, because no compiler or
# coreutils can come from the missing nixpkgs: ./sandbox-paths lets in stdenv's tools, the C
# compiler, the Rust toolchain and the host tools of ./host-tools.json, and nothing else of the
# host (see there). Every function rejects arguments it does not implement, so nixfly's Nix code
# cannot silently depend on behaviour the tests never exercise.
{
  lib,
  system,
  machine,
  final,
}:
let
  # Where the host tools are looked up (read at evaluation with --impure): a PATH, the Rust
  # toolchain's bin first. ./sandbox-paths mounts what is found there.
  hostPath =
    let
      p = builtins.getEnv "NIXFLY_STANDIN_PATH";
    in
    if p != "" then
      p
    else
      throw "nixpkgs stand-in: set NIXFLY_STANDIN_PATH to the host PATH its tools come from (with the Rust toolchain's bin first) and evaluate with --impure";
  hostDirs = builtins.filter (d: builtins.isString d && d != "") (builtins.split ":" hostPath);
  # The first `<dir>/<exe>` of NIXFLY_STANDIN_PATH that exists, as `command -v` finds it; null
  # when none does.
  findHost =
    exe:
    let
      found = builtins.filter (d: builtins.pathExists "${d}/${exe}") hostDirs;
    in
    if found == [ ] then null else "${builtins.head found}/${exe}";

  # The sandbox's tool directories (./sandbox-paths): stdenvNoCC's PATH
  # (pkgs/stdenv/generic/common-path.nix) and the C compiler stdenv adds to it.
  stdenvPath = "/standin/stdenv/bin";
  ccPath = "/standin/cc/bin";
  # Every builder starts here: outside the sandbox, or without its paths, the tools are missing.
  requireSandbox = ''
    if [ ! -d ${stdenvPath} ]; then
      echo ${lib.escapeShellArg "nixpkgs stand-in: builders run in Nix's sandbox, with the host paths that nix/tests/nixpkgs-standin/sandbox-paths prints: run nix with --option sandbox true --option build-users-group '' --option extra-sandbox-paths \"$(nix/tests/nixpkgs-standin/sandbox-paths)\""} >&2
      exit 1
    fi
  '';

  # The builders' bash, and the shell of the scripts the set writes: the host's bash copied into
  # the store (as `<path>/bash`, a name shellcheck knows), where nixpkgs has its own. A script
  # that names /bin/bash fails in the sandbox as it does with nixpkgs.
  hostBash = findHost "bash";
  bash = "${
    builtins.path {
      name = "bash";
      path = /. + dirOf hostBash;
      filter = path: _type: path == hostBash;
    }
  }/bash";

  onlyArgs =
    fn: allowed: args:
    let
      unknown = builtins.filter (a: !(builtins.elem a allowed)) (builtins.attrNames args);
    in
    if unknown == [ ] then
      args
    else
      throw "nixpkgs stand-in: ${fn} does not implement ${builtins.concatStringsSep ", " unknown}";

  # Without build users, Nix 2.8 SIGKILLs the builder as soon as its log pipe closes, and
  # coreutils close stdout before they exit: a builder that bash ends by exec'ing `cp` or `touch`
  # is killed mid-exit. A trailing builtin keeps bash alive until the last tool has exited.
  keepBuilderAlive = "exit 0";

  # Where derivations are built: `system`, or this machine when the test names a `machine`
  # (see ./default.nix).
  buildSystem = if machine == null then system else builtins.currentSystem;
  foreign = machine != null && machine != system;

  # The interpreters in the shebangs of the scripts this package set writes: `<drv>/bin/<name>`.
  # Real nixpkgs points them at its own bash and python3, built for `system`: on a machine of
  # another system the kernel cannot execute them. A foreign set's interpreters refuse the
  # same way, except inside a build of a derivation of `system` (a builder of that system runs
  # it; such builds say so in NIXFLY_STANDIN_SYSTEM, below): a build for the machine itself
  # cannot run them either. Otherwise they run the host's.
  interpreter =
    name:
    "${
      runCommand "standin-${name}-for-${system}" {
        exe = name;
        hostExe = if name == "bash" then bash else findHost name;
        refusal = lib.optionalString foreign "cannot execute binary file: Exec format error (its interpreter is ${name} for ${system}; this machine is ${machine})";
      } ''
        mkdir -p "$out/bin"
        {
          printf '#!%s\n' ${bash}
          if [ -n "$refusal" ]; then
            printf 'if [ "''${NIXFLY_STANDIN_SYSTEM-}" != %q ]; then\n  echo "$1: %s" >&2\n  exit 126\nfi\n' ${system} "$refusal"
          fi
          printf 'exec %q "$@"\n' "$hostExe"
        } > "$out/bin/$exe"
        chmod +x "$out/bin/$exe"
      ''
    }/bin/${name}";
  # pkgs/top-level/all-packages.nix: runtimeShell is bash's `bin/bash`.
  runtimeShell = if foreign then interpreter "bash" else "${bash}";

  # lib/strings.nix (makeBinPath): <bin output, else out>/bin of each, joined with `:`.
  makeBinPath = inputs: builtins.concatStringsSep ":" (map (p: "${lib.getBin p}/bin") inputs);
  # pkgs/stdenv/generic/default.nix (shellDryRun): the stdenv's bash parsing without running,
  # with extglob on so that extended patterns parse.
  shellDryRun = "bash -n -O extglob";

  # stdenv.mkDerivation's part the tests need: stdenv's tools and the inputs' bin directories on
  # PATH (pkgs/stdenv/generic/setup.sh), setup hooks of the inputs sourced, bash strict mode,
  # passthru and meta on the result. `cc` (the stand-in's own) chooses between stdenv, whose PATH
  # has the C compiler, and stdenvNoCC, whose has not. As pkgs/stdenv/generic/make-derivation.nix
  # does, `__darwinAllowLocalNetworking` reaches the derivation only when it is built on darwin
  # (where Nix's sandbox reads it).
  mkDerivation =
    {
      name,
      script,
      nativeBuildInputs ? [ ],
      passthru ? { },
      meta ? { },
      __darwinAllowLocalNetworking ? false,
      cc ? false,
      ...
    }@args:
    let
      env =
        removeAttrs args [
          "script"
          "nativeBuildInputs"
          "passthru"
          "meta"
          "__darwinAllowLocalNetworking"
          "cc"
        ]
        // lib.optionalAttrs (lib.hasSuffix "-darwin" system) { inherit __darwinAllowLocalNetworking; };
      drv = derivation (
        env
        // {
          system = buildSystem;
          builder = "${bash}";
          args = [
            "-c"
            ''
              ${requireSandbox}
              set -euo pipefail
              for input in $nativeBuildInputs; do
                if [ -f "$input/nix-support/setup-hook" ]; then source "$input/nix-support/setup-hook"; fi
              done
              cd "$TMPDIR"
              # pkgs/stdenv/generic/setup.sh: a NIX_BUILD_CORES of 0 (or none) means every core.
              if [ "''${NIX_BUILD_CORES:-0}" -le 0 ]; then NIX_BUILD_CORES=$(nproc); fi
              export NIX_BUILD_CORES
              ${script}
              ${keepBuilderAlive}
            ''
          ];
          nativeBuildInputs = builtins.concatStringsSep " " (map toString nativeBuildInputs);
          # When the stand-in plays a machine, its builds say which system they stand for: the
          # interpreters above run only in builds of their own system.
          ${if machine != null then "NIXFLY_STANDIN_SYSTEM" else null} = system;
          PATH = builtins.concatStringsSep ":" (
            map (p: "${p}/bin") nativeBuildInputs ++ lib.optional cc ccPath ++ [ stdenvPath ]
          );
        }
      );
    in
    # As with mkDerivation, the result carries the stdenv it was built with, and its inputs as
    # the lists they were given (mkShell's inputsFrom reads them).
    drv // passthru // { inherit meta passthru stdenv nativeBuildInputs; };

  # pkgs/build-support/trivial-builders/default.nix (runCommand; commit
  # 00ee9b64aafebe333c3e33ffb093734092158728): stdenvNoCC.mkDerivation of `env` (nativeBuildInputs,
  # passthru, meta and the rest) with the script as its buildCommand, in the build directory.
  runCommand =
    name: env: script:
    mkDerivation (env // { inherit name script; });

  # pkgs/build-support/trivial-builders/default.nix (writeText, writeTextFile; commit
  # 00ee9b64aafebe333c3e33ffb093734092158728): $out is the file, holding the text exactly.
  writeText =
    name: text:
    runCommand name { inherit text; } ''printf '%s' "$text" > "$out"'';

  # lib/systems/default.nix: `system` and canExecute, which holds between the same kernel and a
  # compatible CPU; among the four systems nixfly names that is the same system.
  platform = {
    inherit system;
    canExecute = other: other.system == system;
  };
  stdenv = {
    hostPlatform = platform;
    buildPlatform = platform;
  };

  rust = import ./rust.nix {
    inherit lib mkDerivation onlyArgs;
    inherit (hostTools) cargo rustc util-linux;
  };
  python3Interpreter = interpreter "python3";
  docker = import ./docker {
    inherit python3Interpreter;
    inherit (hostTools) python3 pigz zstd lndir;
    inherit
      lib
      system
      buildSystem
      bash
      requireSandbox
      stdenvPath
      runtimeShell
      runCommand
      writeText
      onlyArgs
      ;
  };
  # The host's tools, as nixpkgs' packages of the same attribute names: a link `bin/<bin>` to
  # where NIXFLY_STANDIN_PATH finds `<host>` (Debian's name, when it differs), which
  # ./sandbox-paths mounts in the sandbox at that same place. ./host-tools.json lists them, for
  # both. pkgs/by-name/di/distribution/package.nix builds cmd/registry (mainProgram "registry"),
  # which Debian calls docker-registry; `util-linux` stands in for its flock.
  hostTools = builtins.mapAttrs (
    attr:
    {
      bin,
      host ? bin,
    }:
    # The names go in as `exe` and `target`: an attribute `bin` would stand for a `bin` output
    # (lib.getBin, makeBinPath).
    runCommand "host-${attr}"
      {
        exe = bin;
        target = findHost host;
        missing = "nixpkgs stand-in: ${attr} needs `${host}`, which is not on NIXFLY_STANDIN_PATH (${hostPath}); install it (scripts/test installs what the tests use)";
      }
      ''
        if [ -z "$target" ]; then echo "$missing" >&2; exit 1; fi
        mkdir -p "$out/bin"
        ln -s "$target" "$out/bin/$exe"
      ''
  ) (builtins.fromJSON (builtins.readFile ./host-tools.json));

in
hostTools
// {
  inherit lib runCommand writeText;

  # lib/customisation.nix (callPackageWith): the function (or the file it is imported from)
  # called with the package set's attributes it names, overridden by `overrides`; a named
  # argument with no default that neither provides fails.
  callPackage =
    fn: overrides:
    let
      f = if builtins.isFunction fn then fn else import fn;
      wanted = builtins.functionArgs f;
    in
    f (builtins.intersectAttrs wanted final // overrides);

  inherit stdenv runtimeShell;

  inherit (rust) rustPlatform;
  inherit (docker) dockerTools;

  # pkgs/by-name/in/installShellFiles/package.nix: a setup hook; the stand-in's holds only
  # installShellCompletion (./install-shell-files.sh).
  installShellFiles = runCommand "install-shell-files" { } ''
    mkdir -p "$out/nix-support"
    cp ${./install-shell-files.sh} "$out/nix-support/setup-hook"
  '';

  # pkgs/build-support/trivial-builders/default.nix (writeShellApplication; nixpkgs 26.05,
  # after NixOS/nixpkgs#499462, seen at a 26.05pre-git tree): writeTextFile to $out/bin/<name>,
  # executable, meta.mainProgram = name unless `meta` sets its own. The script: `#!runtimeShell`,
  # one `set -o` line for each of errexit, nounset and pipefail, a blank line and `export PATH=`
  # of the runtimeInputs' makeBinPath and `$PATH` (inheritPath, default true) joined by `:`,
  # present even with neither (`export PATH=""`), then a blank line, the text and a newline.
  # The build runs `bash -n -O extglob` (stdenv.shellDryRun) and shellcheck (shellcheck-minimal,
  # with `--exclude` and extraShellCheckFlags), where any finding, even an `info` one such as
  # SC2016, fails it. (Before #499462 the PATH line came only with runtimeInputs; commits
  # 77d57157 and 00ee9b64, where 00ee9b64 ran shellcheck as passthru.tests.shellcheck.)
  writeShellApplication =
    args:
    let
      a = onlyArgs "writeShellApplication" [
        "name"
        "text"
        "runtimeInputs"
        "meta"
        "passthru"
        "excludeShellChecks"
        "extraShellCheckFlags"
        "inheritPath"
      ] args;
      runtimeInputs = a.runtimeInputs or [ ];
      inheritPath = a.inheritPath or true;
      excludeShellChecks = a.excludeShellChecks or [ ];
      shellcheckFlags =
        lib.optionals (excludeShellChecks != [ ]) [
          "--exclude"
          (builtins.concatStringsSep "," excludeShellChecks)
        ]
        ++ a.extraShellCheckFlags or [ ];
    in
    runCommand a.name
      {
        passthru = a.passthru or { };
        meta = {
          mainProgram = a.name;
        }
        // a.meta or { };
        text =
          "#!${runtimeShell}\nset -o errexit\nset -o nounset\nset -o pipefail\n"
          + "\nexport PATH=\"${
            builtins.concatStringsSep ":" (
              lib.optionals (runtimeInputs != [ ]) [ (makeBinPath runtimeInputs) ]
              ++ lib.optionals inheritPath [ "$PATH" ]
            )
          }\"\n"
          + "\n${a.text}\n";
      }
      ''
        target="$out/bin/$name"
        mkdir -p "$out/bin"
        printf '%s' "$text" > "$target"
        chmod +x "$target"
        ${shellDryRun} "$target"
        ${hostTools.shellcheck}/bin/shellcheck ${toString (map lib.escapeShellArg shellcheckFlags)} "$target"
      '';

  # pkgs/build-support/trivial-builders/default.nix (writeShellScript; commit
  # 00ee9b64aafebe333c3e33ffb093734092158728): writeTextFile to $out itself, executable, the
  # text being `#!runtimeShell`, a newline, the script and a newline; the build runs
  # stdenv.shellDryRun on it. No meta.mainProgram (it is not under /bin).
  writeShellScript =
    name: text:
    runCommand name { text = "#!${runtimeShell}\n${text}\n"; } ''
      printf '%s' "$text" > "$out"
      chmod +x "$out"
      ${shellDryRun} "$out"
    '';

  # pkgs/build-support/mkshell/default.nix (commit 07c91341fd6e5f2ca8d0a6d62e6d0e1ecc94283d):
  # name defaults to "nix-shell"; nativeBuildInputs are `packages`, then the nativeBuildInputs
  # of the `inputsFrom` derivations, less those derivations themselves; shellHook joins theirs
  # (last first) and its own with newlines. The stand-in's derivations have no other kinds of
  # input, and its shell sets no INFOPATH or MANPATH.
  mkShell =
    args:
    let
      a = onlyArgs "mkShell" [ "name" "packages" "inputsFrom" "shellHook" ] args;
      inputsFrom = a.inputsFrom or [ ];
      fromInputs = builtins.concatLists (map (d: d.nativeBuildInputs or [ ]) inputsFrom);
    in
    runCommand (a.name or "nix-shell") {
      nativeBuildInputs = a.packages or [ ] ++ builtins.filter (d: !builtins.elem d inputsFrom) fromInputs;
      shellHook = builtins.concatStringsSep "\n" (
        map (d: d.shellHook) (builtins.filter (d: d ? shellHook) (lib.reverseList inputsFrom ++ [ a ]))
      );
    } ''echo "stand-in shell environment" > "$out"'';
}
