# `nix flake check`: small builds that fail when something regresses, each ending in `touch $out`.
{
  pkgs,
  lib,
  nixfly,
}:
let
  hello = pkgs.writeShellApplication {
    name = "hello-nixfly";
    text = ''echo "hello from nixfly's example image"'';
  };
  example = lib.mkFlyDeploy {
    inherit pkgs nixfly;
    app = "nixfly-example";
    package = hello;
    config.Env = [ "PORT=8080" ];
    flyToml = ./fly-example.toml;
    tag = "v1";
    strategy = "canary";
    maxUnavailable = 0.5;
    waitTimeout = "90s";
    releaseCommandTimeout = "2m";
    rollback = false;
    extraFlags = [ "--output=plain" ];
  };
in
{
  inherit nixfly;
  deploy-example = example;

  completions-installed = pkgs.runCommand "nixfly-completions-installed" { } ''
    for f in share/bash-completion/completions/nixfly.bash share/zsh/site-functions/_nixfly \
             share/fish/vendor_completions.d/nixfly.fish; do
      test -s ${nixfly}/$f || { echo "missing $f in ${nixfly}" >&2; exit 1; }
    done
    touch $out
  '';

  # What mkFlyDeploy writes is what nixfly accepts, every rollout setting included.
  settings-accepted-by-nixfly =
    assert example.settings.rollout == {
      strategy = "canary";
      max_unavailable = 0.5;
      wait_timeout = "90s";
      release_command_timeout = "2m";
      rollback = false;
    };
    pkgs.runCommand "nixfly-settings-accepted" { nativeBuildInputs = [ nixfly ]; } ''
      nixfly settings check ${example.settingsFile}
      touch $out
    '';

  # The wrapper runs `nixfly deploy <image> --settings <file> <extraFlags> "$@"`, nothing else.
  deploy-wrapper-command = pkgs.runCommand "nixfly-deploy-wrapper-command" { } ''
    expected="exec '${nixfly}/bin/nixfly' 'deploy' '${example.image}' '--settings' '${example.settingsFile}' '--output=plain' \"\$@\""
    grep -qxF "$expected" ${example}/bin/deploy-nixfly-example || {
      echo "expected the line: $expected" >&2; cat ${example}/bin/deploy-nixfly-example >&2; exit 1
    }
    touch $out
  '';

  # The image script writes a docker-archive whose last entry is manifest.json, with the
  # entrypoint and the store path of the app inside.
  example-image-streams = pkgs.runCommand "nixfly-example-image-streams" { } ''
    ${example.image} > image.tar
    tar -tf image.tar > entries
    test "$(tail -n 1 entries)" = manifest.json
    # JSON spacing differs between nixpkgs' Python and other writers: compare without it.
    tar -xf image.tar manifest.json
    tr -d ' \n' < manifest.json | grep -qF '"RepoTags":["nixfly-example:v1"]'
    config=$(grep -o '[0-9a-f]\{64\}\.json' manifest.json)
    tar -xf image.tar "$config"
    tr -d ' \n' < "$config" | grep -qF '"Entrypoint":["${hello}/bin/hello-nixfly"]' 
    found=""
    for layer in $(grep '/layer.tar$' entries); do
      tar -xf image.tar "$layer"
      if tar -tf "$layer" | sed "s|^/||" | grep -qxF "${builtins.substring 1 (-1) "${hello}"}/bin/hello-nixfly"; then found=1; fi
    done
    test -n "$found" || { echo "no layer holds ${hello}" >&2; exit 1; }
    touch $out
  '';
}
