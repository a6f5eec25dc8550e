# `import nixpkgs { system; overlays; }`, as with the real thing.
{
  system ? builtins.currentSystem,
  overlays ? [ ],
}:
let
  lib = import ./lib.nix;
  base = final: import ./pkgs.nix { inherit lib system final; };
  applyOverlays = final: builtins.foldl' (prev: overlay: prev // overlay final prev) (base final) overlays;
in
lib.fix applyOverlays
