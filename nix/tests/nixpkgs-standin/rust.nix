# rustPlatform.buildRustPackage with `cargoLock.lockFile`, as nixpkgs does it: every crate of
# Cargo.lock is a fixed-output derivation checked against the lock's sha256, then the crates are
# unpacked into a vendor directory that cargo uses offline. Where nixpkgs downloads a crate from
# crates.io, the stand-in copies it from the local cargo cache (NIXFLY_STANDIN_CRATES, filled by
# `cargo fetch`); Nix still verifies the checksum, so a wrong crate cannot slip in.
{
  lib,
  mkDerivation,
  onlyArgs,
  cargo,
  rustc,
  util-linux,
}:
let
  cratesDir =
    let
      d = builtins.getEnv "NIXFLY_STANDIN_CRATES";
    in
    if d != "" then
      d
    else
      throw "nixpkgs stand-in: set NIXFLY_STANDIN_CRATES to a directory of .crate files (cargo's registry/cache/<index>)";

  crateFromCache =
    pkg:
    mkDerivation {
      name = "crate-${pkg.name}-${pkg.version}.tar.gz";
      script = ''cp "${cratesDir}/${pkg.name}-${pkg.version}.crate" "$out"'';
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = pkg.checksum;
    };

  vendorCargoLock =
    lockFile:
    let
      packages = (builtins.fromTOML (builtins.readFile lockFile)).package;
      fromRegistry = builtins.filter (p: p ? source) packages;
      crates = map (
        p:
        if lib.hasPrefix "registry+" p.source then
          "${p.name}-${p.version} ${p.checksum} ${crateFromCache p}"
        else
          throw "nixpkgs stand-in: ${p.name} ${p.version} comes from ${p.source}; only registry crates are supported"
      ) fromRegistry;
    in
    mkDerivation {
      name = "cargo-vendor-dir";
      crates = builtins.concatStringsSep "\n" crates;
      script = ''
        mkdir -p "$out"
        while read -r dir checksum crate; do
          [ -n "$dir" ] || continue
          mkdir "$out/$dir"
          tar -xzf "$crate" -C "$out/$dir" --strip-components=1
          printf '{"files":{},"package":"%s"}' "$checksum" > "$out/$dir/.cargo-checksum.json"
        done <<< "$crates"
      '';
    };

  buildRustPackage =
    args:
    let
      a = onlyArgs "buildRustPackage" [
        "pname"
        "version"
        "src"
        "cargoLock"
        "nativeBuildInputs"
        "doCheck"
        "cargoTestFlags"
        "nativeCheckInputs"
        "postInstall"
        "meta"
        "passthru"
        "__darwinAllowLocalNetworking"
      ] args;
    in
    # pkgs/build-support/rust/build-rust-package/default.nix (commit
    # 1666f82b5d4eaeebab97fad801823d56febe5f3f): name "<pname>-<version>", cargoLock.lockFile
    # vendored by importCargoLock (pkgs/build-support/rust/import-cargo-lock.nix), the remaining
    # arguments passed on to stdenv.mkDerivation.
    mkDerivation {
      name = "${a.pname}-${a.version}";
      inherit (a) pname version src;
      # stdenv, with the C compiler: cargo links with cc, and crates with C in them compile it.
      cc = true;
      # build-rust-package/default.nix: the caller's nativeBuildInputs, then the cargo hooks
      # (which bring cargo) and rustc; pkgs/stdenv/generic/make-derivation.nix: with doCheck,
      # nativeCheckInputs join nativeBuildInputs (on PATH, setup hooks sourced) for the whole
      # build.
      nativeBuildInputs =
        a.nativeBuildInputs or [ ]
        ++ [
          cargo
          rustc
        ]
        ++ lib.optionals (a.doCheck or true) (a.nativeCheckInputs or [ ]);
      meta = a.meta or { };
      passthru = a.passthru or { };
      __darwinAllowLocalNetworking = a.__darwinAllowLocalNetworking or false;
      vendor = vendorCargoLock a.cargoLock.lockFile;
      # Optional cargo target dir outside the store, shared by every build on the machine like
      # a compiler cache: dependencies compile once, a new source only rebuilds its own crate.
      targetCache = builtins.getEnv "NIXFLY_STANDIN_CARGO_TARGET";
      # build-rust-package/default.nix: buildType defaults to "release", checkType to buildType.
      # The stand-in builds and checks as nixpkgs does with buildType = "debug": a cold release
      # build of nixfly in the sandbox took 248 s here against 124 s, and a fresh CI run 13
      # minutes against 7.
      cargoBuildType = "debug";
      # build-rust-package/default.nix: doCheck defaults to true.
      doCheck = if a.doCheck or true then "1" else "";
      cargoTestFlags = a.cargoTestFlags or [ ];
      postInstall = a.postInstall or "";
      script = ''
        cp -r --no-preserve=mode "$src" source
        cd source
        export CARGO_HOME="$TMPDIR/cargo-home"
        mkdir -p "$CARGO_HOME"
        target="''${targetCache:-$TMPDIR/target}"
        mkdir -p "$target"
        # One build at a time per cache: the binaries installed are the ones this build made.
        exec 9> "$target/.stand-in.lock"
        ${util-linux}/bin/flock 9
        # A shared target only grows: cargo never deletes what other Cargo.locks, toolchains
        # or incremental sessions left there (it reached 16 GB on one machine over weeks and
        # filled its disk). Past 8 GiB it starts again empty, and the next build compiles the
        # dependencies once more.
        if [ -n "$targetCache" ] && [ "$(du -sm "$target" | cut -f 1)" -gt 8192 ]; then
          find "$target" -mindepth 1 -maxdepth 1 ! -name .stand-in.lock -exec rm -rf {} +
        fi
        # Cargo's fingerprints record source paths: the vendored crates are reached through a
        # path that changes neither with the vendor directory's hash nor between builds.
        ln -sfn "$vendor" "$target/vendor"
        printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "%s"\n' \
          "$target/vendor" > "$CARGO_HOME/config.toml"
        # The hooks' `--target`: the Rust triple of the platform built for, here this machine's.
        triple=$(rustc -vV | sed -n 's/^host: //p')
        # pkgs/build-support/rust/hooks/cargo-build-hook.sh (commit
        # 0511cdb16e322fa57c28c93d1831185fecaf2ad2): `cargo build -j $NIX_BUILD_CORES --target
        # <triple> --offline`, with `--profile <cargoBuildType>` unless that is "debug", and the
        # profile's strip off (stdenv strips). `--locked` stands in for cargoSetupHook's
        # comparison of Cargo.lock with the vendored one. cargo's JSON messages name the
        # executables this package built, which the shared target directory holds among others.
        profileFlags=()
        if [ "$cargoBuildType" != debug ]; then profileFlags=(--profile "$cargoBuildType"); fi
        export "CARGO_PROFILE_''${cargoBuildType^^}_STRIP"=false
        cargo build -j "$NIX_BUILD_CORES" --target "$triple" --offline --locked "''${profileFlags[@]}" \
          --target-dir "$target" --message-format=json-render-diagnostics > "$TMPDIR/build.json"
        # pkgs/build-support/rust/hooks/cargo-check-hook.sh (commit
        # e2ed640e3d7219aec0bbdd9e6acf7b1caf111657): the check phase, which stdenv runs after
        # the build and before the install phase (and so before postInstall): `cargo test -j
        # $NIX_BUILD_CORES`, `--profile <cargoCheckType>` unless "debug", `--target <triple>
        # --frozen` and cargoTestFlags, then `-- --test-threads=$NIX_BUILD_CORES`.
        if [ -n "$doCheck" ]; then
          cargo test -j "$NIX_BUILD_CORES" "''${profileFlags[@]}" --target "$triple" --frozen \
            --target-dir "$target" $cargoTestFlags -- --test-threads="$NIX_BUILD_CORES"
        fi
        # pkgs/build-support/rust/hooks/cargo-install-hook.sh (commit
        # 16c4ef778e33334123bb80929bcc9b974c80065e): the built executables copied into $out/bin.
        mkdir -p "$out/bin"
        grep -o '"executable":"[^"]*"' "$TMPDIR/build.json" | sed 's/^"executable":"//; s/"$//' |
          while read -r exe; do cp "$exe" "$out/bin/"; done
        eval "$postInstall"
      '';
    };
in
{
  rustPlatform = { inherit buildRustPackage; };
}
