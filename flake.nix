{
  description = "nixfly: deploy Nix-built container images to Fly.io with no Docker daemon";

  # The only input. The lock pins a nixos-26.05 revision; `nix flake update` moves it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      nixflyFor = pkgs: pkgs.callPackage ./nix/package.nix { };
    in
    {
      # Functions that take `pkgs` in their arguments: the same on every system. mkFlyDeploy
      # runs the nixfly built here (this flake's pinned nixpkgs) unless given another.
      lib = import ./nix/lib { pinnedNixfly = system: self.packages.${system}.nixfly or null; };

      overlays.default = final: _prev: { nixfly = nixflyFor final; };

      packages = forAllSystems (pkgs: {
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.nixfly;
        nixfly = nixflyFor pkgs;
      });

      # `nix run github:nixfly/nixfly#deploy -- ./result --app myapp`: any image, no flake of your own.
      apps = forAllSystems (
        pkgs:
        let
          nixfly = self.packages.${pkgs.stdenv.hostPlatform.system}.nixfly;
        in
        {
          deploy = {
            type = "app";
            program = "${pkgs.writeShellScript "nixfly-deploy" ''exec ${nixfly}/bin/nixfly deploy "$@"''}";
            meta.description = "Push an image and roll it out on a Fly app (nixfly deploy)";
          };
          default = {
            type = "app";
            program = "${nixfly}/bin/nixfly";
            meta.description = "nixfly: push Nix-built images to a registry and deploy them to Fly";
          };
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.nixfly ];
          # What the test suite runs: the real registry (nixpkgs' `distribution` installs it as
          # `registry`), skopeo, htpasswd, openssl, Nix itself and Python (the tar and JSON oracles).
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            skopeo
            distribution
            apacheHttpd
            openssl
            nix
            python3
          ];
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
        in
        import ./nix/tests/checks.nix {
          inherit pkgs nixpkgs self;
          inherit (self) lib;
          nixfly = self.packages.${system}.nixfly;
        }
        // {
          # nixfly's unit tests, in Nix's sandbox (the package is built without them).
          unit-tests = pkgs.callPackage ./nix/package.nix { runUnitTests = true; };
          # The overlay's nixfly is the same derivation as the package.
          overlay =
            let
              fromOverlay =
                (import nixpkgs {
                  inherit system;
                  overlays = [ self.overlays.default ];
                }).nixfly;
            in
            if fromOverlay.drvPath == self.packages.${system}.nixfly.drvPath then
              fromOverlay
            else
              throw "overlays.default builds a different nixfly (${fromOverlay.drvPath}) than packages.${system}.nixfly";
        }
      );

      templates.default = {
        path = ./templates/default;
        description = "A small web app deployed to Fly with nixfly.lib.mkFlyDeploy";
        welcomeText = ''
          A web app deployed to Fly by nixfly. Set the app name in fly.toml (flake.nix reads it), then:

              export FLY_API_TOKEN=$(fly tokens create deploy -a <app>)
              nix run .#deploy
        '';
      };
    };
}
