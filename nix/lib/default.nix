# nixfly's Nix library: one function a file, each taking `pkgs` in its arguments, so the same
# functions work for every system and with the caller's own nixpkgs.
let
  self = {
    mkFlyDeploy = import ./mkFlyDeploy.nix { lib = self; };
    mkStreamImage = import ./mkStreamImage.nix;
    mkLayerPlan = import ./mkLayerPlan.nix { lib = self; };
    checkArgs = import ./checkArgs.nix;
    shellEscape = import ./shellEscape.nix;
  };
in
self
