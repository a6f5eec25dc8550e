# nixfly itself, built from Cargo.lock with nixpkgs' Rust tooling.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
  python3,
  # Run the unit tests in the build: the flake's `checks.<system>.unit-tests` does; the package
  # users build does not (see `doCheck` below).
  runUnitTests ? false,
}:

let
  root = ../.;
  cargoToml = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));
  # Only what cargo reads: editing docs, Nix files or tests does not rebuild nixfly.
  keep = [
    "Cargo.toml"
    "Cargo.lock"
    "src"
    # Workspace members (dev-only test crates): cargo reads their manifests to resolve the
    # workspace even when it builds nixfly alone.
    "crates"
    # What the unit tests read (fly.toml cases, the settings schema).
    "tests/fixtures/flytoml"
    "docs/settings.schema.json"
  ];
  underKept =
    path:
    let
      relative = lib.removePrefix (toString root + "/") (toString path);
    in
    # A kept path, something inside one, or a directory on the way to one.
    builtins.any (
      k: relative == k || lib.hasPrefix (k + "/") relative || lib.hasPrefix (relative + "/") k
    ) keep;
in
rustPlatform.buildRustPackage {
  pname = "nixfly";
  inherit (cargoToml.package) version;

  src = builtins.path {
    name = "nixfly-source";
    path = root;
    filter = path: _type: underKept path;
  };

  cargoLock.lockFile = root + "/Cargo.lock";

  nativeBuildInputs = [ installShellFiles ];

  # The package a deploy runs is built without its tests. Wherever no binary cache holds it (a
  # fresh CI runner, the first `nix run` on a laptop), that build comes before the deploy, and
  # in release (nixpkgs' checkType follows buildType) the unit tests cost as much again: on 2
  # cores (measured with cargo), 179 s to build, then 170 s more to build and run the tests. They run where nixfly is
  # developed instead: in `nix flake check` (`checks.<system>.unit-tests`, this file with
  # runUnitTests) and in `cargo test`, as crane's flakes keep tests in `checks`.
  # The unit tests (`--lib`) need no network, but some use loopback sockets (the Fly API
  # client's retry tests bind and connect on 127.0.0.1), which darwin's sandbox allows only
  # with __darwinAllowLocalNetworking; Python is their tar and JSON oracle. The integration
  # tests (tests/it) need a registry, skopeo and Nix itself, so CI runs them with `cargo test`
  # instead.
  doCheck = runUnitTests;
  cargoTestFlags = [ "--lib" ];
  nativeCheckInputs = [ python3 ];
  __darwinAllowLocalNetworking = runUnitTests;

  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd nixfly \
      --bash <($out/bin/nixfly completions bash) \
      --fish <($out/bin/nixfly completions fish) \
      --zsh <($out/bin/nixfly completions zsh)
  '';

  meta = {
    inherit (cargoToml.package) description;
    homepage = cargoToml.package.repository;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "nixfly";
  };
}
