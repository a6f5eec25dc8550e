# nixfly's Nix library: one function a file, each taking `pkgs` in its arguments, so the same
# functions work for every system and with the caller's own nixpkgs.
#
# pinnedNixfly: system -> the nixfly that nixfly's flake builds from its own pinned nixpkgs
# (a toolchain its tests ran with), or null. The flake passes it; `import ./nix/lib { }` has
# none, and mkFlyDeploy then builds nixfly with the caller's `pkgs`.
{
  pinnedNixfly ? _system: null,
}:
let
  self = {
    mkFlyDeploy = import ./mkFlyDeploy.nix {
      lib = self;
      inherit pinnedNixfly;
    };
    mkStreamImage = import ./mkStreamImage.nix;
    mkLayerPlan = import ./mkLayerPlan.nix { lib = self; };
    checkArgs = import ./checkArgs.nix;
    shellEscape = import ./shellEscape.nix;
  };
in
self
