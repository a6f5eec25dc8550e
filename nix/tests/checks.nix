# `nix flake check`: small builds that fail when something regresses, each ending in `touch $out`.
{
  pkgs,
  lib,
  nixfly,
  nixpkgs,
  self,
}:
let
  # Fly runs x86_64-linux images: the image's packages come from there on every system.
  imagePkgs = nixpkgs.legacyPackages.x86_64-linux;
  hello = imagePkgs.writeShellApplication {
    name = "hello-nixfly";
    text = ''echo "hello from nixfly's example image"'';
  };
  example = lib.mkFlyDeploy {
    inherit pkgs imagePkgs nixfly;
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
  # The same app deployed from a layer plan (docs/layer-plan.md).
  examplePlan = lib.mkFlyDeploy {
    inherit pkgs imagePkgs nixfly;
    app = "nixfly-example";
    package = hello;
    config.Env = [ "PORT=8080" ];
    tag = "v1";
    layering = "plan";
  };

  # The template as `nix flake init -t` gives it, with this flake and its nixpkgs as inputs.
  template = (import ../../templates/default/flake.nix).outputs {
    inherit nixpkgs;
    nixfly = self;
  };
in
{
  inherit nixfly;
  deploy-example = example;
  deploy-example-plan = examplePlan;
  template-deploy = template.packages.${pkgs.stdenv.hostPlatform.system}.deploy;

  # Issue 11: switching `layering` must not change the image. The plan's config is the stream
  # script's config byte for byte (same image id) and its layers are the stream's diff_ids.
  nonRegressionIssue11-plan-is-the-stream-image =
    imagePkgs.runCommand "nixfly-issue-11-plan-is-the-stream-image"
      {
        nativeBuildInputs = [ imagePkgs.python3 ];
        plan = examplePlan.image;
        stream = example.image;
      }
      ''
        "$stream" > image.tar
        python3 - "$plan" image.tar <<'EOF'
        import json, sys, tarfile
        plan = json.load(open(sys.argv[1]))
        image = tarfile.open(sys.argv[2])
        manifest = json.load(image.extractfile("manifest.json"))
        config = image.extractfile(manifest[0]["Config"]).read()
        assert plan["config"].encode() == config, "the plan's config differs from the stream's"
        diff_ids = [layer["diff_id"] for layer in plan["layers"]]
        assert diff_ids == json.loads(config)["rootfs"]["diff_ids"], diff_ids
        EOF
        touch $out
      '';

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

  # The wrapper runs `nixfly deploy <source> --settings <file> <extraFlags> "$@"`, nothing else:
  # <source> is the image's stream script, or on a machine that cannot run it (a Mac) the same
  # script run by that machine's python3.
  deploy-wrapper-command = pkgs.runCommand "nixfly-deploy-wrapper-command" { } ''
    expected="exec '${nixfly}/bin/nixfly' 'deploy' '${example.source}' '--settings' '${example.settingsFile}' '--output=plain' \"\$@\""
    grep -qxF "$expected" ${example}/bin/deploy-nixfly-example || {
      echo "expected the line: $expected" >&2; cat ${example}/bin/deploy-nixfly-example >&2; exit 1
    }
    touch $out
  '';

  # What nixfly streams, on this machine, is a docker-archive whose last entry is manifest.json,
  # with the entrypoint and the store path of the app inside.
  example-image-streams = pkgs.runCommand "nixfly-example-image-streams" { } ''
    ${example.source} > image.tar
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
