# Test-only stand-in for nixpkgs: the few functions nixfly's flake calls, built with the host's
# tools because nixpkgs cannot be downloaded where the tests run. See ./README.md.
{
  description = "nixfly test stand-in for the parts of nixpkgs its flake uses";

  outputs =
    { self }:
    let
      lib = import ./lib.nix;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs systems (system: import ./. { inherit system; });
    };
}
