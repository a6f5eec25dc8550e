{
  description = "A small web app, deployed to Fly with nixfly";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    nixfly = {
      url = "github:nixfly/nixfly";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    { nixpkgs, nixfly, ... }:
    let
      # Fly runs Linux images. On macOS, build with a Linux builder (see nixfly's docs/API.md).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          app = pkgs.rustPlatform.buildRustPackage {
            pname = "hello-fly";
            version = "0.1.0";
            src = ./.;
            cargoLock.lockFile = ./Cargo.lock;
            meta.mainProgram = "hello-fly";
          };
        in
        {
          default = app;
          # `nix run .#deploy`: build the image, push it, roll it out. Needs FLY_API_TOKEN.
          deploy = nixfly.lib.mkFlyDeploy {
            inherit pkgs;
            app = "hello-fly";
            package = app;
            config = {
              Env = [ "PORT=8080" ];
              ExposedPorts."8080/tcp" = { };
            };
            flyToml = ./fly.toml;
          };
        }
      );
    };
}
