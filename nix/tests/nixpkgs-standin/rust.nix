# rustPlatform.buildRustPackage with `cargoLock.lockFile`, as nixpkgs does it: every crate of
# Cargo.lock is a fixed-output derivation checked against the lock's sha256, then the crates are
# unpacked into a vendor directory that cargo uses offline. Where nixpkgs downloads a crate from
# crates.io, the stand-in copies it from the local cargo cache (NIXFLY_STANDIN_CRATES, filled by
# `cargo fetch`); Nix still verifies the checksum, so a wrong crate cannot slip in.
{
  lib,
  mkDerivation,
  onlyArgs,
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
    mkDerivation {
      name = "${a.pname}-${a.version}";
      inherit (a) pname version src;
      nativeBuildInputs = a.nativeBuildInputs or [ ];
      meta = a.meta or { };
      passthru = a.passthru or { };
      __darwinAllowLocalNetworking = a.__darwinAllowLocalNetworking or false;
      vendor = vendorCargoLock a.cargoLock.lockFile;
      # Optional cargo target dir outside the store, shared by every build on the machine like
      # a compiler cache: dependencies compile once, a new source only rebuilds its own crate.
      # Debug profile for test speed; nixpkgs builds release.
      targetCache = builtins.getEnv "NIXFLY_STANDIN_CARGO_TARGET";
      doCheck = if a.doCheck or true then "1" else "";
      cargoTestFlags = a.cargoTestFlags or [ ];
      checkPath = builtins.concatStringsSep ":" (map (p: "${p}/bin") (a.nativeCheckInputs or [ ]));
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
        flock 9
        # Cargo's fingerprints record source paths: the vendored crates are reached through a
        # path that changes neither with the vendor directory's hash nor between builds.
        ln -sfn "$vendor" "$target/vendor"
        printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "%s"\n' \
          "$target/vendor" > "$CARGO_HOME/config.toml"
        cargo install --offline --locked --debug --path . --root "$out" --target-dir "$target"
        rm -f "$out/.crates.toml" "$out/.crates2.json"
        # As nixpkgs' cargoCheckHook: `cargo test` with cargoTestFlags, nativeCheckInputs on PATH.
        if [ -n "$doCheck" ]; then
          PATH="${checkPath:+$checkPath:}$PATH" cargo test --offline --locked --target-dir "$target" $cargoTestFlags
        fi
        eval "$postInstall"
      '';
    };
in
{
  rustPlatform = { inherit buildRustPackage; };
}
