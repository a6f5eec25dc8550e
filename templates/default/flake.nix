{
  description = "A small web app, deployed to Fly with nixfly";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # nixfly builds itself with the nixpkgs it pins (the toolchain it was tested with); your
    # nixpkgs builds only the image. `nixfly.inputs.nixpkgs.follows = "nixpkgs";` would save
    # one nixpkgs download but build nixfly with yours.
    nixfly.url = "github:nixfly/nixfly";
  };

  outputs =
    { nixpkgs, nixfly, ... }:
    let
      inherit (nixpkgs) lib;
      # The app name, read once from fly.toml (which fly and nixfly read too).
      app = (builtins.fromTOML (builtins.readFile ./fly.toml)).app;
      cargoToml = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package;

      # Fly Machines run x86_64 Linux: the server and its image are built for it from any
      # machine (aarch64-linux and macOS need an x86_64-linux builder, see nixfly's README).
      imagePkgs = nixpkgs.legacyPackages.x86_64-linux;
      server = imagePkgs.rustPlatform.buildRustPackage {
        pname = cargoToml.name;
        inherit (cargoToml) version;
        # Only what cargo reads: target/, result links and editor files stay out of the store.
        src = builtins.path {
          name = "${cargoToml.name}-source";
          path = ./.;
          filter =
            path: _type:
            let
              relative = lib.removePrefix (toString ./. + "/") (toString path);
            in
            builtins.elem relative [
              "Cargo.toml"
              "Cargo.lock"
              "src"
            ]
            || lib.hasPrefix "src/" relative;
        };
        cargoLock.lockFile = ./Cargo.lock;
        meta.mainProgram = cargoToml.name;
      };

      # Where `nix run .#deploy` can run: nixfly and the deploy script are built for it.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      deploy = lib.genAttrs systems (
        system:
        nixfly.lib.mkFlyDeploy {
          pkgs = nixpkgs.legacyPackages.${system};
          inherit imagePkgs app;
          package = server;
          config = {
            Env = [ "PORT=8080" ];
            ExposedPorts."8080/tcp" = { };
          };
          flyToml = ./fly.toml;
        }
      );
    in
    {
      # The server is an x86_64-linux program: the default package only where it runs, so that a
      # bare `nix build` or `nix run` on a Mac does not build a Linux binary it cannot execute.
      packages = lib.genAttrs systems (
        system:
        {
          inherit server;
          deploy = deploy.${system};
        }
        // lib.optionalAttrs (system == "x86_64-linux") { default = server; }
      );
      # `nix run .#deploy`: build the image, push it, roll it out. Needs FLY_API_TOKEN.
      apps = lib.genAttrs systems (system: {
        deploy = {
          type = "app";
          program = lib.getExe deploy.${system};
          meta.description = "Build the ${app} image, push it to Fly and roll it out";
        };
      });
    };
}
