//! `lib.mkLayerPlan` built by Nix against the nixpkgs stand-in (offline), with the nixfly
//! under test as the pinned nixfly.

use crate::support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use support::nix::Nix;
use support::readback::{push, pushed_reference, read_back};
use support::registry::{AuthMode, Registry};
use support::{TestDir, assert_success, run};

/// The stand-in, nixfly's Nix library, the nixfly under test as a package, and a small app that
/// reads a data file. `greeting` goes into a store path of its own, so changing it changes that
/// layer (and the app and customisation layers that refer to it) but not the others.
fn with_app(greeting: &str, body: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = env!("CARGO_BIN_EXE_nixfly");
    format!(
        r#"let
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
             lib = import {root}/nix/lib {{ }};
             # Copied by content, so a rebuilt binary is a new store path.
             built = builtins.path {{ path = {bin}; name = "nixfly-under-test"; }};
             nixfly = pkgs.runCommand "nixfly" {{ }} ''mkdir -p $out/bin; cp ${{built}} $out/bin/nixfly'';
             greeting = pkgs.writeText "greeting" "{greeting}";
             data = pkgs.runCommand "data" {{ }} ''mkdir -p $out/share; seq 1 200000 > $out/share/numbers'';
             app = pkgs.writeShellApplication {{
               name = "web";
               text = "cat ${{greeting}}; wc -l ${{data}}/share/numbers";
             }};
           in {body}"#
    )
}

/// The image mkFlyDeploy would build for the app (`maxLayers` as nixpkgs takes it).
fn image_body(max_layers: u32) -> String {
    format!(
        r#"pkgs.dockerTools.streamLayeredImage {{
             name = "demo";
             contents = [ app ];
             config.Cmd = [ "/bin/web" ];
             maxLayers = {max_layers};
           }}"#
    )
}

/// The plan of that image.
fn plan_body(max_layers: u32) -> String {
    format!(
        "lib.mkLayerPlan {{ inherit pkgs nixfly; image = {}; }}",
        image_body(max_layers)
    )
}

fn plan_expr(greeting: &str) -> String {
    with_app(greeting, &plan_body(100))
}

/// Build `expr` and return the store path it points to.
fn build(nix: &Nix, t: &TestDir, expr: &str, link: &str) -> PathBuf {
    let out_link = t.join(link);
    let out = run(nix
        .command(&["build"])
        .args(["--print-build-logs", "--expr", expr, "--out-link"])
        .arg(&out_link));
    assert_success(&out);
    std::fs::canonicalize(&out_link).expect("nix build made the out link")
}

fn eval_json(nix: &Nix, expr: &str) -> Value {
    let out = run(nix.command(&["eval"]).args(["--json", "--expr", expr]));
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_plan_records_every_layer_of_the_image_and_unchanged_layers_are_not_rebuilt() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let plan_path = build(nix, &t, &plan_expr("hello"), "plan");
    let plan = read_json(&plan_path);
    assert_eq!(plan["kind"], "nixfly-layer-plan");
    let layers = plan["layers"].as_array().unwrap();

    // The layering is the image's own: its conf's store layers, then the customisation layer.
    let conf_path = eval_json(nix, &format!("({}).conf", plan_expr("hello")));
    let conf = read_json(Path::new(conf_path.as_str().unwrap()));
    let store_layers = conf["store_layers"].as_array().unwrap();
    assert_eq!(layers.len(), store_layers.len() + 1);
    for (layer, paths) in layers.iter().zip(store_layers) {
        assert_eq!(layer["source"]["type"], "store_paths");
        assert_eq!(&layer["source"]["paths"], paths);
    }
    let custom = layers.last().unwrap();
    let custom_dir = conf["customisation_layer"].as_str().unwrap();
    assert_eq!(custom["source"]["path"], format!("{custom_dir}/layer.tar"));
    let checksum = std::fs::read_to_string(Path::new(custom_dir).join("checksum")).unwrap();
    assert_eq!(custom["diff_id"], format!("sha256:{}", checksum.trim()));

    // The plan's config lists the layers' diff_ids and keeps the image's config.
    let config: Value = serde_json::from_str(plan["config"].as_str().unwrap()).unwrap();
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["diff_id"]).collect();
    assert_eq!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        diff_ids
    );
    assert_eq!(config["config"]["Cmd"][0], "/bin/web");
    assert_eq!(config["architecture"], conf["architecture"]);

    // Each layer is its own derivation: changing the greeting leaves the data layer's
    // derivation as it was, so Nix does not build it again.
    let layer_drvs = |greeting: &str| -> Vec<String> {
        let expr = format!("map (l: l.drvPath) ({}).layers", plan_expr(greeting));
        serde_json::from_value(eval_json(nix, &expr)).unwrap()
    };
    let before = layer_drvs("hello");
    let after = layer_drvs("bonjour");
    assert_eq!(before.len(), after.len());
    let kept = before.iter().filter(|d| after.contains(d)).count();
    let data_layer = layers
        .iter()
        .position(|l| l["source"]["paths"][0].as_str().unwrap().ends_with("-data"))
        .expect("a layer holds the data store path");
    assert!(after.contains(&before[data_layer]), "the data layer was rebuilt");
    assert!(kept < before.len(), "changing the greeting changed no layer");
}

/// The app's image over a base image (fromImage): a buildLayeredImage with `compressor`
/// ("none" makes the uncompressed docker-archive a pullImage leaves), whose Env shares a name
/// with the image's.
fn image_over_base(compressor: &str) -> String {
    format!(
        r#"let
             base = pkgs.dockerTools.buildLayeredImage {{
               name = "base";
               compressor = "{compressor}";
               contents = [ (pkgs.runCommand "base-tool" {{ }} ''
                 mkdir -p $out/bin
                 echo base > $out/bin/base-tool
               '') ];
               config.Env = [ "FROM_BASE=1" "SHARED=base" ];
             }};
           in pkgs.dockerTools.streamLayeredImage {{
             name = "demo";
             fromImage = base;
             contents = [ app ];
             config.Cmd = [ "/bin/web" ];
             config.Env = [ "SHARED=app" ];
           }}"#
    )
}

/// fromImage: the plan of an image built on a base image records the base's layers first
/// (`nixfly layer base`, one derivation for the base, untouched when the app changes) and
/// pushes the image the stream script writes: the same config digest and diff_ids, whether the
/// base archive is uncompressed (as pullImage leaves it) or gzip (buildLayeredImage's default),
/// which the stream script reads alike.
#[test]
fn a_plan_over_a_base_image_pushes_the_stream_image() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let stream = build(nix, &t, &with_app("hello", &image_over_base("none")), "stream");
    let archive = run(&mut std::process::Command::new(&stream));
    assert_success(&archive);
    let (stream_config, stream_diff_ids) = archive_image(&archive.stdout);

    let plan_of = |compressor: &str| {
        format!(
            "lib.mkLayerPlan {{ inherit pkgs nixfly; image = {}; }}",
            image_over_base(compressor)
        )
    };
    for compressor in ["none", "gz"] {
        // A registry of its own: every layer is read from the plan's sources, none mounted.
        let registry = Registry::start(AuthMode::htpasswd());
        let plan_path = build(nix, &t, &with_app("hello", &plan_of(compressor)), compressor);
        let plan = read_json(&plan_path);
        let layers = plan["layers"].as_array().unwrap();
        let bases = layers
            .iter()
            .take_while(|l| l["source"]["type"] == "base_layer")
            .count();
        assert!(
            bases >= 2,
            "the base's store layer and customisation layer: {plan}"
        );
        assert_eq!(layers.len(), stream_diff_ids.len());

        assert_plan_pushes(
            &t,
            &registry,
            &plan_path,
            compressor,
            &stream_config,
            &stream_diff_ids,
        );
    }

    let base_drv = |greeting: &str| {
        eval_json(
            nix,
            &with_app(greeting, &format!("({}).baseLayers.drvPath", plan_of("none"))),
        )
    };
    assert_eq!(
        base_drv("hello"),
        base_drv("bonjour"),
        "the base's records depend on the app"
    );
}

#[test]
fn mk_fly_deploy_with_plan_layering_deploys_the_plan() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let deploy = |layering: &str| {
        with_app(
            "hello",
            &format!(
                r#"lib.mkFlyDeploy {{
                     inherit pkgs nixfly;
                     app = "demo";
                     package = app;
                     layering = {layering};
                   }}"#
            ),
        )
    };
    let wrapper = build(nix, &t, &deploy(r#""plan""#), "deploy");
    let image = eval_json(nix, &format!("({}).image.outPath", deploy(r#""plan""#)));
    let image = image.as_str().unwrap();
    let script = std::fs::read_to_string(wrapper.join("bin/deploy-demo")).unwrap();
    assert!(script.contains(&format!("'deploy' '{image}'")), "{script}");
    let plan = read_json(Path::new(image));
    assert_eq!(plan["kind"], "nixfly-layer-plan");
    let config: Value = serde_json::from_str(plan["config"].as_str().unwrap()).unwrap();
    assert!(
        config["config"]["Entrypoint"][0]
            .as_str()
            .unwrap()
            .ends_with("/bin/web")
    );

    let out = run(nix.command(&["eval"]).args([
        "--raw",
        "--expr",
        &format!("({}).drvPath", deploy(r#""planned""#)),
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attribute `layering` must be"), "{stderr}");
}

/// The config blob and diff_ids of a docker-archive, read as `docker load` reads one:
/// manifest.json names the config, the config lists the diff_ids; each layer tar's sha256 is
/// checked against them.
/// The image the stand-in's stream script writes for the app with `maxLayers = 3` (one layer
/// for the most popular path, one for the rest, the customisation layer): its config and
/// diff_ids.
fn stream_image(nix: &Nix, t: &TestDir) -> (Vec<u8>, Vec<String>) {
    let stream = build(nix, t, &with_app("hello", &image_body(3)), "stream");
    let archive = run(&mut std::process::Command::new(&stream));
    assert_success(&archive);
    archive_image(&archive.stdout)
}

fn archive_image(archive: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut files = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        files.insert(name, body);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config = files[manifest[0]["Config"].as_str().unwrap()].clone();
    let layer_sums: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(&files[l.as_str().unwrap()]))
            )
        })
        .collect();
    let parsed: Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<String> = serde_json::from_value(parsed["rootfs"]["diff_ids"].clone()).unwrap();
    assert_eq!(
        layer_sums, diff_ids,
        "the archive's layers are not its config's diff_ids"
    );
    (config, diff_ids)
}

/// Issue 11: the image pushed from a plan is the image nixpkgs' stream script writes for the
/// same conf (the stand-in reproduces stream_layered_image.py): same config digest (image id)
/// and diff_ids, for an image whose last store layer holds several store paths. Switching
/// `layering` must not re-deploy anything.
#[test]
fn regression_issue_11_plan_push_is_the_stream_image() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let (stream_config, stream_diff_ids) = stream_image(nix, &t);
    let stream_config_json: Value = serde_json::from_slice(&stream_config).unwrap();
    let history = stream_config_json["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{stream_config_json}");
    assert!(
        history[1]["comment"]
            .as_str()
            .unwrap()
            .matches("/nix/store/")
            .count()
            > 1,
        "the last store layer should hold several paths: {stream_config_json}"
    );

    let plan = build(nix, &t, &with_app("hello", &plan_body(3)), "plan");
    let registry = Registry::start(AuthMode::htpasswd());
    assert_plan_pushes(&t, &registry, &plan, "demo", &stream_config, &stream_diff_ids);
}

/// Push `plan` to `repo` and read it back: it must be the stream's image, the same config
/// digest (image id) and diff_ids.
fn assert_plan_pushes(
    t: &TestDir,
    registry: &Registry,
    plan: &Path,
    repo: &str,
    stream_config: &[u8],
    stream_diff_ids: &[String],
) {
    let out = push(t, registry, plan.to_str().unwrap(), repo, "plan", &[]);
    let reference = pushed_reference(&out, &registry.host(), repo);
    let pushed = read_back(registry, &reference);
    assert_eq!(
        pushed.manifest["config"]["digest"],
        format!("sha256:{}", hex::encode(Sha256::digest(stream_config))),
        "{repo}: config digests differ; pushed:\n{}\nstream:\n{}",
        String::from_utf8_lossy(&pushed.config),
        String::from_utf8_lossy(stream_config)
    );
    assert_eq!(pushed.diff_ids, stream_diff_ids, "{repo}");
}

/// A buildLayeredImage tarball keeps the stream it compresses as `passthru.stream` (nixpkgs PR
/// #298239): its plan is the stream's plan, the same derivation, and building the plan does
/// not need the tarball.
#[test]
fn a_build_layered_image_has_the_plan_of_its_stream() {
    let Some(nix) = Nix::get() else { return };
    let tarball = image_body(100).replace("streamLayeredImage", "buildLayeredImage");
    let drv_paths = with_app(
        "hello",
        &format!(
            "map (image: (lib.mkLayerPlan {{ inherit pkgs nixfly image; }}).drvPath) [ ({tarball}) ({}) ]",
            image_body(100)
        ),
    );
    let drv_paths: Vec<String> = serde_json::from_value(eval_json(nix, &drv_paths)).unwrap();
    assert_eq!(drv_paths[0], drv_paths[1]);
}

/// buildLayeredImage pipes its stream through the command of its `compressor`, as nixpkgs'
/// default.nix defines them (`compressors`: "gz", the default, is `pigz -nTR`; "zstd" is
/// `zstd`; "none" is `cat`), and the stand-in runs those same commands. Each tarball pushes as
/// the image its stream writes: the same config digest (image id) and diff_ids. A compressor
/// nixpkgs does not have fails evaluation, with the error nixpkgs' expression gives.
#[test]
fn build_layered_image_tarballs_push_the_image_their_stream_writes() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let (stream_config, stream_diff_ids) = stream_image(nix, &t);
    let with_compressor = |compressor: &str| {
        with_app(
            "hello",
            &image_body(3).replace(
                "streamLayeredImage {",
                &format!("buildLayeredImage {{ compressor = \"{compressor}\";"),
            ),
        )
    };

    let registry = Registry::start(AuthMode::htpasswd());
    let gzip: &[u8] = &[0x1f, 0x8b];
    let zstd: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    for (compressor, ext, magic) in [
        ("gz", ".tar.gz", Some(gzip)),
        ("zstd", ".tar.zst", Some(zstd)),
        ("none", ".tar", None),
    ] {
        let tarball = build(nix, &t, &with_compressor(compressor), compressor);
        let name = tarball.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with(&format!("-demo{ext}")), "{name}");
        let head = std::fs::read(&tarball).unwrap()[..4].to_vec();
        match magic {
            Some(magic) => assert!(head.starts_with(magic), "{compressor}: {head:02x?}"),
            None => assert!(!head.starts_with(gzip) && !head.starts_with(zstd), "{head:02x?}"),
        }
        let out = push(&t, &registry, tarball.to_str().unwrap(), "demo", compressor, &[]);
        let reference = pushed_reference(&out, &registry.host(), "demo");
        let pushed = read_back(&registry, &reference);
        assert_eq!(
            pushed.manifest["config"]["digest"],
            format!("sha256:{}", hex::encode(Sha256::digest(&stream_config))),
            "{compressor}: the config differs from the stream's"
        );
        assert_eq!(pushed.diff_ids, stream_diff_ids, "{compressor}");
    }

    let out = run(nix.command(&["eval"]).args([
        "--raw",
        "--expr",
        &format!("({}).drvPath", with_compressor("bz2")),
    ]));
    assert!(!out.status.success());
    // nixpkgs' compressorForImage (pkgs/build-support/docker/default.nix) names them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("compressor must be one of: [gz none zstd]"),
        "{stderr}"
    );
}

/// mkLayerPlan checks its attributes as mkFlyDeploy does: a misspelt one, or a compression
/// nixfly lacks, is named at evaluation instead of Nix's bare "unexpected argument".
#[test]
fn a_wrong_attribute_is_named() {
    let Some(nix) = Nix::get() else { return };
    for (extra, expected) in [
        ("levle = 3;", "mkLayerPlan: unknown attribute `levle`"),
        (
            r#"compression = "xz";"#,
            r#"mkLayerPlan: attribute `compression` must be null, "gzip" or "zstd", got string "xz""#,
        ),
    ] {
        let expr = with_app(
            "hello",
            &format!(
                "(lib.mkLayerPlan {{ inherit pkgs nixfly; image = {}; {extra} }}).drvPath",
                image_body(100)
            ),
        );
        let out = run(nix.command(&["eval"]).args(["--raw", "--expr", &expr]));
        assert!(!out.status.success(), "{extra} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

/// mkFlyDeploy's `fromImage` builds the app's image over a base image, as streamLayeredImage's
/// does: the stream script (`layering = "stream"`) writes the base's layers first and its Env
/// under the app's, and the plan (`"plan"`) records them first. Beside a ready `image` it is
/// refused, as every attribute that describes an image to build is.
#[test]
fn mk_fly_deploy_builds_over_a_from_image() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();
    let deploy = |extra: &str| {
        with_app(
            "hello",
            &format!(
                r#"let
                     base = pkgs.dockerTools.buildLayeredImage {{
                       name = "base";
                       compressor = "none";
                       contents = [ (pkgs.runCommand "base-tool" {{ }} "mkdir -p $out/bin; echo base > $out/bin/base-tool") ];
                       config.Env = [ "FROM_BASE=1" ];
                     }};
                   in lib.mkFlyDeploy {{
                     inherit pkgs nixfly;
                     app = "demo";
                     package = app;
                     fromImage = base;
                     {extra}
                   }}"#
            ),
        )
    };
    let base_layers = 2; // base-tool's store layer and the base's customisation layer

    let stream = build(nix, &t, &format!("({}).image", deploy("")), "stream");
    let archive = run(&mut std::process::Command::new(&stream));
    assert_success(&archive);
    let (config, diff_ids) = archive_image(&archive.stdout);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"]["Env"][0], "FROM_BASE=1", "{config}");
    // The base's layers are named by their entries in the base archive, the app's by store paths.
    let comments: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["comment"].as_str().unwrap())
        .collect();
    let from_base = comments
        .iter()
        .take_while(|c| c.ends_with("/layer.tar']"))
        .count();
    assert_eq!(from_base, base_layers, "{config}");
    assert!(comments[base_layers].contains("/nix/store/"), "{config}");

    let plan = build(
        nix,
        &t,
        &format!("({}).image", deploy(r#"layering = "plan";"#)),
        "plan",
    );
    let plan = read_json(&plan);
    let layers = plan["layers"].as_array().unwrap();
    let planned: Vec<&str> = layers.iter().map(|l| l["diff_id"].as_str().unwrap()).collect();
    assert_eq!(planned, diff_ids, "the plan's layers are the stream's");
    assert!(
        layers[..base_layers]
            .iter()
            .all(|l| l["source"]["type"] == "base_layer")
    );

    let out = run(nix.command(&["eval"]).args([
        "--raw",
        "--expr",
        &format!("({}).drvPath", deploy("image = app;")),
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`image` is a ready image, so `"), "{stderr}");
}
