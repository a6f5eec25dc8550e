# `import nixpkgs { system; overlays; }`, as with the real thing.
#
# `machine` is the stand-in's own (tests only, no nixpkgs argument): the system of the machine
# that runs what this package set makes. With it, derivations for any `system` are built on
# this machine (standing in for a builder of that system), and the executables the stand-in
# writes refuse to run, as a foreign binary does, when `system` is not `machine`. So a test can
# play a Mac (`machine = "aarch64-darwin"`) deploying an x86_64-linux image.
{
  system ? builtins.currentSystem,
  overlays ? [ ],
  # NIXFLY_STANDIN_MACHINE (read with --impure) sets it for every import, the flake's
  # legacyPackages included, so that a whole flake can be checked as on, say, a Mac.
  machine ?
    let
      m = builtins.getEnv "NIXFLY_STANDIN_MACHINE";
    in
    if m == "" then null else m,
}:
let
  lib = import ./lib.nix;
  base = final: import ./pkgs.nix { inherit lib system machine final; };
  applyOverlays = final: builtins.foldl' (prev: overlay: prev // overlay final prev) (base final) overlays;
in
lib.fix applyOverlays
