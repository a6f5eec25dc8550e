# The default image: nixpkgs' streamLayeredImage, so Nix builds only a script that writes the
# docker-archive when nixfly runs it; no tarball lands in the store.
{
  pkgs,
  name,
  tag,
  entrypoint,
  contents,
  config,
  fromImage ? null,
  maxLayers,
}:
pkgs.dockerTools.streamLayeredImage {
  inherit
    name
    tag
    contents
    fromImage
    maxLayers
    ;
  config = config // { Entrypoint = entrypoint; };
}
