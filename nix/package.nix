# nixfly itself, built from Cargo.lock with nixpkgs' Rust tooling.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
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
  ];
  underKept =
    path:
    let
      relative = lib.removePrefix (toString root + "/") (toString path);
    in
    builtins.any (k: relative == k || lib.hasPrefix (k + "/") relative) keep;
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

  # The integration tests need a registry, skopeo and Nix itself; CI runs them with `cargo test`.
  doCheck = false;

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
