//! The nixpkgs stand-in's scripts against nixpkgs' own answers: the Nix tests are only as real
//! as the images the stand-in builds.

use crate::support::TestDir;
use serde_json::Value;
use std::process::Command;

/// Layering: the stand-in's `docker/auto_layer.py` gives the layers nixpkgs' `auto-layer.py`
/// (streamLayeredImage's default layering) gave on 42 random store graphs, recorded in
/// `tests/fixtures/auto-layer/cases.json` by its `generate.py`; 10 of them come out otherwise
/// under another hash seed, so the PYTHONHASHSEED=0 nixpkgs runs it with matters too.
#[test]
fn auto_layer_matches_nixpkgs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fixture = format!("{root}/tests/fixtures/auto-layer/cases.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(cases.len(), 42);
    let t = TestDir::new();
    let mut multi_path_layers = 0;
    for (i, case) in cases.iter().enumerate() {
        let attrs = t.join(&format!("case-{i}.json"));
        std::fs::write(&attrs, case.to_string()).unwrap();
        let out = Command::new("python3")
            .arg(format!("{root}/nix/tests/nixpkgs-standin/docker/auto_layer.py"))
            .arg(&attrs)
            .env("PYTHONHASHSEED", "0")
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "case {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layers: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(layers, case["expected"], "case {i}");
        let layers = layers.as_array().unwrap();
        multi_path_layers += layers.iter().filter(|l| l.as_array().unwrap().len() > 1).count();
    }
    assert!(multi_path_layers > 40, "{multi_path_layers}");
}

/// The archive: the stand-in's `docker/stream.py` streams the bytes nixpkgs'
/// `stream_layered_image.py` (streamLayeredImage's script) streamed of 5 confs over store-like
/// trees (file sizes and modes, symlinks, hardlinks, long and non-ASCII names, several layers,
/// a customisation layer, other owners and dates, a base image in skopeo's docker-archive
/// layout as `fromImage`), recorded in
/// `tests/fixtures/stream-image/cases.json` by its `generate.py`. `generate.py --run` builds
/// the same trees at the same fixed path, runs stream.py on the same confs and describes each
/// stream as it described nixpkgs'; the first difference in that description names the entry
/// and field that differ, then the sha256 of the whole stream must match too. Not as root, the
/// customisation layer's entry (which takes its owner from the file) is compared without its
/// owner, and the whole stream's hash not at all. A sixth conf with `created` and `mtime`
/// "now", which has no recorded answer, must give one instant, read once, everywhere.
#[test]
fn stream_script_matches_nixpkgs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fixtures = format!("{root}/tests/fixtures/stream-image");
    let recorded: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/cases.json")).unwrap()).unwrap();
    assert_eq!(recorded.len(), 5);
    let before = jiff::Timestamp::now();
    let out = Command::new("python3")
        .arg(format!("{fixtures}/generate.py"))
        .arg("--run")
        .arg(format!("{root}/nix/tests/nixpkgs-standin/docker/stream.py"))
        .output()
        .expect("python3");
    let after = jiff::Timestamp::now();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let now = answers.pop().unwrap();
    assert_eq!(now["name"], "now");
    assert_eq!(answers.len(), recorded.len());
    for (nixpkgs, answer) in recorded.iter().zip(answers) {
        let case = nixpkgs["name"].as_str().unwrap();
        let (as_root, python) = (answer["euid"] == 0, answer["python"].clone());
        let bytes = |described: &Value| (described["sha256"].clone(), described["size"].clone());
        let (nixpkgs_bytes, standin_bytes) = (bytes(nixpkgs), bytes(&answer));
        let mut nixpkgs = nixpkgs.clone();
        let mut standin = answer;
        for described in [&mut nixpkgs, &mut standin] {
            let described = described.as_object_mut().unwrap();
            for volatile in ["euid", "python", "sha256", "size"] {
                described.remove(volatile);
            }
            if !as_root {
                let entries = described["entries"].as_array_mut().unwrap();
                let custom = entries
                    .iter_mut()
                    .rfind(|e| e["name"].as_str().unwrap().ends_with("/layer.tar"))
                    .unwrap();
                for owner in ["uid", "gid", "uname", "gname"] {
                    custom.as_object_mut().unwrap().remove(owner);
                }
            }
        }
        if let Some(difference) = first_difference(&nixpkgs, &standin, String::new()) {
            panic!(
                "case {case}: {difference}\n(nixpkgs' answers were recorded under Python 3.11.7; \
                 this run used Python {python})"
            );
        }
        if as_root {
            assert_eq!(
                nixpkgs_bytes, standin_bytes,
                "case {case}: every entry and field is the same, but not the bytes (sha256, size)"
            );
        } else {
            eprintln!("case {case}: not run as root, so not compared byte for byte");
        }
    }

    // "now": read once, the same instant (to the second for mtimes) in every place it shows.
    let entries = now["entries"].as_array().unwrap();
    let config: Value = serde_json::from_str(entries[entries.len() - 2]["text"].as_str().unwrap()).unwrap();
    let created = config["created"].as_str().unwrap();
    assert!(created.ends_with("+00:00"), "{created}");
    let created: jiff::Timestamp = created.parse().unwrap();
    assert!(
        before.as_second() <= created.as_second() && created <= after,
        "{created} not between {before} and {after}"
    );
    for history in config["history"].as_array().unwrap() {
        assert_eq!(history["created"], config["created"]);
    }
    // Every outer entry, and every entry of the store layers (the customisation layer's
    // layer.tar, third from last, keeps its own).
    let store_layers = &entries[..entries.len() - 3];
    let mtimes = entries.iter().chain(
        store_layers
            .iter()
            .flat_map(|layer| layer["members"].as_array().unwrap()),
    );
    for entry in mtimes {
        assert_eq!(entry["mtime"], created.as_second(), "{}", entry["name"]);
    }
}

/// The customisation layer links `contents` as nixpkgs' symlinkJoin does (`lndir -silent` of
/// each in order): the first content to have a name keeps it, and a symlink is copied with
/// its own target, not linked to.
#[test]
fn contents_are_joined_as_symlink_join_does() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let layer = customisation_layer(
        nix,
        r#"first = pkgs.runCommand "first" { } ''
             mkdir -p $out/bin $out/share/doc
             echo first > $out/bin/tool
             ln -s tool $out/bin/alias
             echo x > $out/share/doc/x
           '';
           second = pkgs.runCommand "second" { } ''
             mkdir -p $out/bin $out/share/doc
             echo second > $out/bin/tool
             echo other > $out/bin/other
             echo y > $out/share/doc/y
           '';"#,
        "[ first second ]",
    );
    let link = |name: &str| {
        layer
            .link(name)
            .unwrap_or_else(|| panic!("no link {name} in:\n{}", layer.listing))
    };
    assert!(link("bin/tool").ends_with("-first/bin/tool"), "{}", layer.listing);
    assert_eq!(link("bin/alias"), "tool", "{}", layer.listing);
    assert!(
        link("bin/other").ends_with("-second/bin/other"),
        "{}",
        layer.listing
    );
    assert!(
        link("share/doc/x").ends_with("-first/share/doc/x"),
        "{}",
        layer.listing
    );
    assert!(
        link("share/doc/y").ends_with("-second/share/doc/y"),
        "{}",
        layer.listing
    );
}

/// A buildEnv-style content (top-level `bin`, `lib`, `share`, `etc` that are links to another
/// store path's directories) keeps its links: lndir.c's `dodir` lstat()s each entry, so a link
/// is never a directory to it and is copied as a link. A later content's `bin` directory then
/// meets a link ("bin: is a link instead of a directory") and its `bin/tool` is left out,
/// where merging the link into a directory would have added it.
#[test]
fn a_link_to_a_directory_stays_a_link_as_lndir_copies_it() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let layer = customisation_layer(
        nix,
        r#"target = pkgs.runCommand "target" { } ''
             mkdir -p $out/bin $out/lib $out/share $out/etc
             echo hello > $out/bin/hello
             echo lib > $out/lib/libx
             echo share > $out/share/y
             echo etc > $out/etc/z
           '';
           env = pkgs.runCommand "env" { inherit target; } ''
             mkdir $out
             for dir in bin lib share etc; do ln -s $target/$dir $out/$dir; done
           '';
           other = pkgs.runCommand "other" { } ''
             mkdir -p $out/bin
             echo tool > $out/bin/tool
           '';"#,
        "[ env other ]",
    );
    for dir in ["bin", "lib", "share", "etc"] {
        let to = layer
            .link(dir)
            .unwrap_or_else(|| panic!("./{dir} is not a link in:\n{}", layer.listing));
        assert!(to.ends_with(&format!("-target/{dir}")), "{}", layer.listing);
    }
    assert_eq!(
        layer.names(),
        ["./", "./bin", "./etc", "./lib", "./share"],
        "nothing under the links, the other content's bin/tool neither:\n{}",
        layer.listing
    );
}

/// lndir skips names ending in `~` and revision-control directories (RCS, CVS, .git, ...).
#[test]
fn lndir_skips_backup_files_and_revision_control_directories() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let layer = customisation_layer(
        nix,
        r#"content = pkgs.runCommand "content" { } ''
             mkdir -p $out/etc $out/RCS
             echo a > $out/etc/a~
             echo b > $out/etc/b
             echo x > $out/RCS/x
           '';"#,
        "[ content ]",
    );
    assert_eq!(layer.names(), ["./", "./etc/", "./etc/b"], "{}", layer.listing);
}

/// symlinkJoin's lndir refuses a content that is not a directory (failOnMissing is true
/// without a stripPrefix), so a `writeText` in `contents` fails the build.
#[test]
fn a_content_that_is_not_a_directory_fails_the_build() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let t = TestDir::new();
    let out = build_standin(
        nix,
        &t,
        r#"(pkgs.dockerTools.streamLayeredImage {
             name = "file";
             contents = [ (pkgs.writeText "not-a-directory" "text") ];
           }).conf"#,
        "conf",
    );
    assert!(!out.status.success(), "a file in contents was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-not-a-directory: Not a directory"), "{stderr}");
}

/// The conf has the keys nixpkgs' has, in its order: the base JSON's (builtins.toJSON sorts
/// them; `variant` is there since nixpkgs writes `inherit config architecture variant` into
/// it, empty off 32-bit ARM), then the ones default.nix's jq program adds. An empty `tag` is
/// kept (`imageTag="${tag}"`), not replaced by the conf's hash as a missing one is.
#[test]
fn the_conf_has_nixpkgs_keys_and_an_empty_tag_stays_empty() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let t = TestDir::new();
    let out = build_standin(
        nix,
        &t,
        r#"(pkgs.dockerTools.streamLayeredImage { name = "Keys"; tag = ""; }).conf"#,
        "conf",
    );
    crate::support::assert_success(&out);
    let text = std::fs::read_to_string(t.join("conf")).unwrap();
    // conf.py writes two-space indented JSON, as jq does: the top-level keys start their lines.
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("  \""))
        .filter_map(|rest| rest.split_once('"').map(|(key, _)| key))
        .collect();
    assert_eq!(
        keys,
        [
            "architecture",
            "config",
            "os",
            "variant",
            "store_dir",
            "from_image",
            "store_layers",
            "customisation_layer",
            "repo_tag",
            "created",
            "mtime",
            "uid",
            "gid",
            "uname",
            "gname",
        ],
        "{text}"
    );
    let conf: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(conf["variant"], "");
    assert_eq!(conf["repo_tag"], "keys:");
    assert_eq!(conf["created"], "1970-01-01T00:00:01+00:00");
}

/// streamLayeredImage asserts `maxLayers > 1` at evaluation, with nixpkgs' message, for
/// buildLayeredImage (which streams through it) too.
#[test]
fn max_layers_of_one_fails_at_evaluation() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    for function in ["streamLayeredImage", "buildLayeredImage"] {
        let out = eval_standin(
            nix,
            &format!(r#"(pkgs.dockerTools.{function} {{ name = "one"; maxLayers = 1; }}).drvPath"#),
        );
        assert!(!out.status.success(), "{function}: maxLayers = 1 was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "the maxLayers argument of dockerTools.buildLayeredImage function must be \
                 greather than 1 (current value: 1)"
            ),
            "{function}: {stderr}"
        );
    }
}

/// `tar -tv` of a customisation layer.
struct LayerListing {
    listing: String,
}

impl LayerListing {
    /// Each entry as its type letter (`-`, `d`, `l`), name (`./...`, the layer is a tar of `.`)
    /// and link target.
    fn entries(&self) -> impl Iterator<Item = (char, &str, Option<&str>)> {
        self.listing.lines().map(|line| {
            let kind = line.chars().next().unwrap();
            let name = &line[line.find(" ./").expect("a name under ./") + 1..];
            match name.split_once(" -> ") {
                Some((name, to)) => (kind, name, Some(to)),
                None => (kind, name, None),
            }
        })
    }

    /// Every entry's name, in the archive's (sorted) order.
    fn names(&self) -> Vec<&str> {
        self.entries().map(|(_, name, _)| name).collect()
    }

    /// The target of the symlink `./<name>`, if the layer has one.
    fn link(&self, name: &str) -> Option<String> {
        let name = format!("./{name}");
        self.entries()
            .find(|(kind, n, _)| *kind == 'l' && *n == name)
            .and_then(|(_, _, to)| to.map(str::to_owned))
    }
}

/// Builds the conf of an image of `contents` (a Nix list over `bindings`, which are `let`
/// bindings with the stand-in as `pkgs`) and lists its customisation layer.
fn customisation_layer(nix: &crate::support::nix::Nix, bindings: &str, contents: &str) -> LayerListing {
    let t = TestDir::new();
    let out = build_standin(
        nix,
        &t,
        &format!(
            "let {bindings} in (pkgs.dockerTools.streamLayeredImage {{ name = \"joined\"; contents = {contents}; }}).conf"
        ),
        "conf",
    );
    crate::support::assert_success(&out);
    let conf: Value = serde_json::from_slice(&std::fs::read(t.join("conf")).unwrap()).unwrap();
    let layer = format!("{}/layer.tar", conf["customisation_layer"].as_str().unwrap());
    let out = Command::new("tar").args(["-tvf", &layer]).output().unwrap();
    assert!(out.status.success());
    LayerListing {
        listing: String::from_utf8(out.stdout).unwrap(),
    }
}

/// nixpkgs' `distribution` installs the registry as `bin/registry` (its mainProgram), not as
/// Debian's `docker-registry`.
#[test]
fn distribution_installs_the_registry_as_registry() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let t = TestDir::new();
    let out = crate::support::run(
        nix.command(&["build"])
            .args([
                "--expr",
                &format!("(import {root}/nix/tests/nixpkgs-standin {{ }}).distribution"),
                "--out-link",
            ])
            .arg(t.join("distribution")),
    );
    crate::support::assert_success(&out);
    let bin: Vec<String> = std::fs::read_dir(t.join("distribution/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bin, ["registry"]);
}

/// Where two descriptions first differ, as `path: nixpkgs …, stream.py …`. Contents come
/// first, then names, other fields, names made of hashes and the hashes themselves: a
/// difference inside a layer changes its name and diff_id too, but says less there.
fn first_difference(nixpkgs: &Value, standin: &Value, path: String) -> Option<String> {
    fn rank(key: &str, value: &Value) -> u8 {
        let hash_named = |name: &str| {
            let (hash, rest) = name.as_bytes().split_at(name.len().min(64));
            hash.len() == 64 && hash.iter().all(u8::is_ascii_hexdigit) && !rest.is_empty()
        };
        match key {
            "entries" | "members" | "text" | "stderr" | "conf" => 0,
            "name" if value.as_str().is_some_and(hash_named) => 3,
            "name" => 1,
            "diff_id" | "sha256" => 4,
            _ => 2,
        }
    }
    match (nixpkgs, standin) {
        (Value::Object(a), Value::Object(b)) => {
            let mut fields: Vec<_> = a.iter().collect();
            fields.sort_by_key(|(key, value)| rank(key, value));
            let differing = fields.into_iter().find_map(|(key, value)| match b.get(key) {
                Some(other) => first_difference(value, other, format!("{path}.{key}")),
                None => Some(format!("{path}.{key}: not in stream.py's answer")),
            });
            differing.or_else(|| {
                let extra = b.keys().find(|key| !a.contains_key(*key))?;
                Some(format!("{path}.{extra}: only in stream.py's answer"))
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            let named = |entry: &Value| {
                entry["name"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            };
            let differing = a
                .iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}[{i}]{}", named(x))));
            differing.or_else(|| {
                let (longer, whose) = if a.len() > b.len() { (a, "nixpkgs'") } else { (b, "stream.py's") };
                let first_extra = longer.get(a.len().min(b.len()))?;
                Some(format!(
                    "{path}: {} in nixpkgs' answer, {} in stream.py's; the first only in {whose}: {first_extra}",
                    a.len(),
                    b.len()
                ))
            })
        }
        _ if nixpkgs == standin => None,
        (Value::String(a), Value::String(b)) if a.contains('\n') => {
            fn line(text: &str, n: usize) -> Option<&str> {
                text.split('\n').nth(n)
            }
            let n = (0..).find(|&n| line(a, n) != line(b, n)).unwrap();
            let (a_line, b_line) = (line(a, n), line(b, n));
            Some(format!(
                "{path}, line {}:\n  nixpkgs:   {a_line:?}\n  stream.py: {b_line:?}",
                n + 1
            ))
        }
        _ => Some(format!("{path}:\n  nixpkgs:   {nixpkgs}\n  stream.py: {standin}")),
    }
}

/// `fromImage`: the stand-in's streamLayeredImage takes a base image as nixpkgs' does. Its conf
/// names the base (default.nix: `from_image`), and the store paths get the layers maxLayers
/// leaves after the customisation layer and the base's own (auto-layer.nix: `usedLayers` is 1
/// plus the base manifest's layer count, and must stay below maxLayers, with nixpkgs' error
/// otherwise). The stream puts the base's layers first; nixfly pushes it, and skopeo reads
/// back the base's diff_ids, then the image's own.
#[test]
fn a_base_image_takes_its_layers_from_max_layers() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let t = TestDir::new();
    let images = t.join("images.nix");
    std::fs::write(
        &images,
        format!(
            r#"let
                 pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
                 tool = name: pkgs.runCommand name {{ }} ''
                   mkdir -p $out/bin
                   echo ${{name}} > $out/bin/${{name}}
                 '';
                 lib = tool "base-lib";
                 base = pkgs.dockerTools.buildLayeredImage {{
                   name = "base";
                   compressor = "none";
                   contents = [ (pkgs.runCommand "base-app" {{ inherit lib; }} ''
                     mkdir -p $out/bin
                     ln -s $lib/bin/base-lib $out/bin/app
                   '') ];
                   config.Env = [ "FROM_BASE=1" "SHARED=base" ];
                 }};
                 app = maxLayers: pkgs.dockerTools.streamLayeredImage {{
                   name = "on-base";
                   fromImage = base;
                   inherit maxLayers;
                   contents = [ (tool "one") (tool "two") (tool "three") ];
                   config.Env = [ "SHARED=app" ];
                 }};
               in {{ inherit base app; }}"#
        ),
    )
    .unwrap();
    // `expr` over the file's set `s`, linked at t/<link>.
    let build = |expr: &str, link: &str| {
        crate::support::run(
            nix.command(&["build"])
                .args([
                    "--impure",
                    "--expr",
                    &format!("let s = import {}; in {expr}", images.display()),
                ])
                .arg("--out-link")
                .arg(t.join(link)),
        )
    };

    let out = build("s.base", "base");
    crate::support::assert_success(&out);
    let listing = Command::new("tar")
        .arg("-xOf")
        .arg(t.join("base"))
        .arg("manifest.json")
        .output()
        .unwrap();
    assert!(listing.status.success());
    let base_manifest: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let base_layers = base_manifest[0]["Layers"].as_array().unwrap().len();
    assert!(
        base_layers >= 2,
        "store layers and the customisation layer: {base_manifest}"
    );

    // The customisation layer and the base's: a maxLayers of that many leaves none.
    let taken = base_layers + 1;
    let out = build(&format!("(s.app {taken}).conf"), "full.conf");
    assert!(
        !out.status.success(),
        "maxLayers = {taken} over a {base_layers}-layer base was accepted"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refusal = format!(
        "Error: usedLayers {taken} layers to store 'fromImage' and 'extraCommands', but only \
         maxLayers={taken} were allowed. At least 1 layer is required to store contents."
    );
    assert!(stderr.contains(&refusal), "{stderr}");

    // One more leaves one layer for the three tools; 100 leaves each its own.
    for (attr, max_layers, store_layers) in [("fits", taken + 1, 1), ("roomy", 100, 3)] {
        let out = build(&format!("(s.app {max_layers}).conf"), &format!("{attr}.conf"));
        crate::support::assert_success(&out);
        let conf: Value =
            serde_json::from_slice(&std::fs::read(t.join(&format!("{attr}.conf"))).unwrap()).unwrap();
        let base_path = std::fs::canonicalize(t.join("base")).unwrap();
        assert_eq!(conf["from_image"], base_path.to_str().unwrap(), "{attr}");
        let layers = conf["store_layers"].as_array().unwrap();
        assert_eq!(layers.len(), store_layers, "{attr}: {layers:?}");
        let paths: Vec<&str> = layers
            .iter()
            .flat_map(|l| l.as_array().unwrap())
            .map(|p| p.as_str().unwrap())
            .collect();
        for name in ["-one", "-two", "-three"] {
            assert!(paths.iter().any(|p| p.ends_with(name)), "{attr}: {paths:?}");
        }
    }

    let out = build(&format!("s.app {}", taken + 1), "fits");
    crate::support::assert_success(&out);
    let registry = crate::support::registry::Registry::start(crate::support::registry::AuthMode::htpasswd());
    let script = t.join("fits");
    let out = crate::support::readback::push(&t, &registry, script.to_str().unwrap(), "on-base", "v1", &[]);
    let reference = crate::support::readback::pushed_reference(&out, &registry.host(), "on-base");
    let back = crate::support::readback::read_back(&registry, &reference);
    let base_config = {
        let name = base_manifest[0]["Config"].as_str().unwrap();
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(t.join("base"))
            .arg(name)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let base_diff_ids: Vec<&str> = base_config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(back.diff_ids.len(), base_layers + 2, "{:?}", back.diff_ids);
    assert_eq!(back.diff_ids[..base_layers], base_diff_ids[..]);
    let config: Value = serde_json::from_slice(&back.config).unwrap();
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["FROM_BASE=1", "SHARED=app"]),
        "the base's Env, then the image's, the image's value winning"
    );
}

/// Evaluates `expr` to JSON, with `pkgs` (the stand-in) and `lib` (its lib.nix) in scope.
fn eval_standin(nix: &crate::support::nix::Nix, expr: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    crate::support::run(nix.command(&["eval"]).args([
        "--json",
        "--expr",
        &format!(
            "let lib = import {root}/nix/tests/nixpkgs-standin/lib.nix; \
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }}; in {expr}"
        ),
    ]))
}

/// Builds `expr` (over `pkgs`, the stand-in) linked at `t/<link>`.
fn build_standin(
    nix: &crate::support::nix::Nix,
    t: &TestDir,
    expr: &str,
    link: &str,
) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    crate::support::run(
        nix.command(&["build"])
            .args([
                "--expr",
                &format!("let pkgs = import {root}/nix/tests/nixpkgs-standin {{ }}; in {expr}"),
                "--out-link",
            ])
            .arg(t.join(link)),
    )
}

/// The scripts trivial-builders/default.nix writes, byte for byte: writeShellApplication's
/// `set -o` lines, a blank line before `export PATH` of each input's bin (not of an attribute
/// the input happens to call `bin`) and `$PATH`, written even without inputs (nixpkgs 26.05,
/// NixOS/nixpkgs#499462) and without `$PATH` under `inheritPath = false`, a blank line, the
/// text and a newline, and the caller's
/// meta.mainProgram over the name; writeShellScript's shebang, text and a trailing newline,
/// dry-run with extglob on (stdenv.shellDryRun) so that an extended pattern parses.
#[test]
fn shell_scripts_are_written_as_trivial_builders_writes_them() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let t = TestDir::new();
    let app =
        r#"pkgs.writeShellApplication { name = "app"; text = "echo hi"; runtimeInputs = [ pkgs.python3 ]; }"#;
    let out = build_standin(nix, &t, app, "app");
    crate::support::assert_success(&out);

    let script = std::fs::read_to_string(t.join("app/bin/app")).unwrap();
    let path_line = script.lines().nth(5).unwrap().to_string();
    // runtimeShell: the package set's bash, a store path.
    let (shebang, rest) = script.split_once('\n').unwrap();
    assert!(
        shebang.starts_with("#!/nix/store/") && shebang.ends_with("-bash/bash"),
        "{script:?}"
    );
    assert!(
        rest.starts_with("set -o errexit\nset -o nounset\nset -o pipefail\n\nexport PATH=\"/nix/store/"),
        "{script:?}"
    );
    assert!(path_line.ends_with("-host-python3/bin:$PATH\""), "{script:?}");
    assert!(script.ends_with(":$PATH\"\n\necho hi\n"), "{script:?}");
    let header = |script: &str| script.split_once('\n').unwrap().1.to_string();
    for (expr, link, expected) in [
        (
            r#"pkgs.writeShellApplication { name = "bare"; text = "echo hi"; }"#,
            "bare",
            "set -o errexit\nset -o nounset\nset -o pipefail\n\nexport PATH=\"$PATH\"\n\necho hi\n",
        ),
        (
            r#"pkgs.writeShellApplication { name = "sealed"; text = "echo hi"; inheritPath = false; }"#,
            "sealed",
            "set -o errexit\nset -o nounset\nset -o pipefail\n\nexport PATH=\"\"\n\necho hi\n",
        ),
    ] {
        let out = build_standin(nix, &t, expr, link);
        crate::support::assert_success(&out);
        let script = std::fs::read_to_string(t.join(&format!("{link}/bin/{link}"))).unwrap();
        assert_eq!(header(&script), expected);
    }

    let meta = crate::support::run(nix.command(&["eval"]).args([
        "--raw",
        "--expr",
        &format!(
            "let pkgs = import {}/nix/tests/nixpkgs-standin {{ }}; in (pkgs.writeShellApplication {{ name = \"app\"; text = \"\"; meta.mainProgram = \"other\"; }}).meta.mainProgram",
            env!("CARGO_MANIFEST_DIR")
        ),
    ]));
    crate::support::assert_success(&meta);
    assert_eq!(String::from_utf8_lossy(&meta.stdout), "other");

    let script = r#"pkgs.writeShellScript "globbing" "shopt -s extglob\nls -d /@(bin|usr) > /dev/null""#;
    let out = build_standin(nix, &t, script, "globbing");
    crate::support::assert_success(&out);
    let text = std::fs::read_to_string(t.join("globbing")).unwrap();
    assert_eq!(
        text,
        format!("{shebang}\nshopt -s extglob\nls -d /@(bin|usr) > /dev/null\n")
    );
}

/// lib/strings.nix's escapeShellArg leaves a word of safe characters bare; lib/meta.nix's
/// getExe falls back, with a warning, to the package's name when it has no meta.mainProgram.
#[test]
fn lib_escapes_and_finds_executables_as_nixpkgs_lib_does() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let out = eval_standin(
        nix,
        r#"let tool = pkgs.runCommand "tool-1.0" { } ""; in [
             (lib.escapeShellArg "/nix/store/x-y/bin:a,b@c%d+e")
             (lib.escapeShellArg "")
             (lib.escapeShellArg "a b")
             (lib.escapeShellArg "it's")
             (lib.getExe tool == "${tool}/bin/tool")
           ]"#,
    );
    crate::support::assert_success(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!(["/nix/store/x-y/bin:a,b@c%d+e", "''", "'a b'", "'it'\\''s'", true])
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mainProgram"),
        "no warning"
    );
}

/// mkshell/default.nix: the shell's nativeBuildInputs are `packages`, then those of each
/// `inputsFrom` derivation, less the `inputsFrom` derivations themselves; the shellHooks of
/// `inputsFrom` (last first) and the shell's own are joined by newlines. nixfly's dev shell takes
/// the package's inputs this way.
#[test]
fn mk_shell_takes_the_inputs_of_inputs_from() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let out = eval_standin(
        nix,
        r#"let
             tool = name: pkgs.runCommand name { } "";
             first = pkgs.runCommand "first" { nativeBuildInputs = [ (tool "a") (tool "b") ]; shellHook = "hook first"; } "";
             second = pkgs.runCommand "second" { nativeBuildInputs = [ first (tool "c") ]; shellHook = "hook second"; } "";
             shell = pkgs.mkShell { packages = [ (tool "p") ]; inputsFrom = [ first second ]; shellHook = "own hook"; };
           in { inputs = map (d: d.name) shell.nativeBuildInputs; inherit (shell) shellHook; }"#,
    );
    crate::support::assert_success(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({
            "inputs": ["p", "a", "b", "c"],
            "shellHook": "hook second\nhook first\nown hook",
        })
    );
}

/// buildRustPackage's check phase sees nativeCheckInputs on PATH (make-derivation.nix adds
/// them to nativeBuildInputs when doCheck), and runs before postInstall; a tool only the
/// check inputs provide must be found by the tests.
#[test]
fn rust_tests_see_native_check_inputs() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let t = TestDir::new();
    let src = t.join("crate");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(
        src.join("Cargo.toml"),
        "[package]\nname = \"checked\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        src.join("Cargo.lock"),
        "version = 3\n\n[[package]]\nname = \"checked\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(
        src.join("src/main.rs"),
        "fn main() {}\n#[test]\nfn tool_on_path() {\n    let out = std::process::Command::new(\"standin-check-tool\").output().expect(\"standin-check-tool on PATH\");\n    assert_eq!(String::from_utf8_lossy(&out.stdout), \"checked\\n\");\n}\n",
    )
    .unwrap();
    let expr = format!(
        r#"pkgs.rustPlatform.buildRustPackage {{
             pname = "checked";
             version = "0.1.0";
             src = {src};
             cargoLock.lockFile = {src}/Cargo.lock;
             nativeCheckInputs = [ (pkgs.runCommand "check-tool" {{ }} ''
               mkdir -p $out/bin
               printf '#!/bin/sh\necho checked\n' > $out/bin/standin-check-tool
               chmod +x $out/bin/standin-check-tool
             '') ];
             postInstall = "standin-check-tool > $out/checked";
           }}"#,
        src = src.display()
    );
    let out = build_standin(nix, &t, &expr, "checked");
    crate::support::assert_success(&out);
    assert_eq!(
        std::fs::read_to_string(t.join("checked/checked")).unwrap(),
        "checked\n"
    );
}

/// Builders run as nixpkgs' do in NixOS' sandbox (nix/tests/nixpkgs-standin/sandbox-paths): on
/// PATH only stdenv's tools and the declared inputs, no /usr/bin/env, a network of their own,
/// and of the store only the paths the derivation's inputs bring. Each of the four builds below
/// passes with the host's tools, network and whole store in view, as the stand-in's builders
/// had them before; each has a twin that does it right and builds.
#[test]
fn builders_see_what_the_nixos_sandbox_shows_them() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let t = TestDir::new();
    // Each build is new (its own `nonce`): a result built before would say nothing.
    let nonce = t.join("").display().to_string();
    let build = |expr: &str, link: &str| {
        let expr = format!("let nonce = \"{nonce}\"; in {expr}");
        build_standin(nix, &t, &expr, link)
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let log = |out: &std::process::Output| {
        // The failed builder's log: `nix build` names its derivation ("builder for '<drv>'
        // failed"), `nix log` prints it.
        let text = stderr(out);
        let drv = text
            .split_once("builder for '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(drv, _)| drv.to_owned())
            .unwrap_or_else(|| panic!("no failed builder named in: {text}"));
        let log = crate::support::run(nix.command(&["log"]).arg(&drv));
        String::from_utf8_lossy(&log.stdout).into_owned()
    };

    // A tool the derivation does not declare is not on PATH; declared, it is.
    let undeclared = r#"pkgs.runCommand "undeclared" { inherit nonce; } "python3 -c 'print(1)' > $out""#;
    let out = build(undeclared, "undeclared");
    assert!(!out.status.success(), "an undeclared python3 ran");
    assert!(
        log(&out).contains("python3: command not found"),
        "{}",
        stderr(&out)
    );
    let declared = r#"pkgs.runCommand "declared" { inherit nonce; nativeBuildInputs = [ pkgs.python3 ]; } "python3 -c 'print(1)' > $out""#;
    crate::support::assert_success(&build(declared, "declared"));

    // A script that asks /usr/bin/env for its interpreter does not run; runtimeShell does.
    let env_script = r#"pkgs.runCommand "env-script" { inherit nonce; } ''
        printf '#!/usr/bin/env bash\necho ran\n' > script; chmod +x script; ./script > $out
      ''"#;
    let out = build(env_script, "env-script");
    assert!(!out.status.success(), "a /usr/bin/env script ran");
    assert!(
        // bash 5.2 (Debian 12 and nixpkgs alike) when the interpreter is missing.
        log(&out).contains("./script: cannot execute: required file not found"),
        "{}",
        stderr(&out)
    );
    let shell_script = r#"pkgs.runCommand "shell-script" { inherit nonce; } ''
        printf '#!%s\necho ran\n' ${pkgs.runtimeShell} > script; chmod +x script; ./script > $out
      ''"#;
    crate::support::assert_success(&build(shell_script, "shell-script"));

    // The host's loopback is not the builder's: a server listening on it (the registry of a
    // test, say) is out of reach, while the builder's own loopback works (nixfly's unit tests
    // bind and connect there).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_server = format!(
        r#"pkgs.runCommand "host-server" {{ inherit nonce; }} "exec 3<>/dev/tcp/127.0.0.1/{port}; touch $out""#
    );
    let out = build(&host_server, "host-server");
    assert!(!out.status.success(), "the host's loopback was reached");
    assert!(log(&out).contains("Connection refused"), "{}", stderr(&out));
    let own_server = r#"pkgs.runCommand "own-server" { inherit nonce; nativeBuildInputs = [ pkgs.python3 ]; } ''
        python3 -c 'import socket; s = socket.create_server(("127.0.0.1", 0)); socket.create_connection(s.getsockname())'
        touch $out
      ''"#;
    crate::support::assert_success(&build(own_server, "own-server"));
    drop(listener);

    // A store path whose context was dropped (builtins.unsafeDiscardStringContext, as
    // mkLayerPlan must undo with appendContext) is not in the sandbox; with its context it is.
    let store_read = |name: &str, path: &str| {
        format!(
            r#"let text = pkgs.writeText "read-me" "in the store"; in pkgs.runCommand "{name}" {{ inherit nonce; }} "cat ${{{path}}} > $out""#
        )
    };
    let expr = store_read("dropped", "builtins.unsafeDiscardStringContext \"${text}\"");
    let out = build(&expr, "dropped");
    assert!(!out.status.success(), "a path without its context was read");
    assert!(
        log(&out).contains("read-me: No such file or directory"),
        "{}",
        stderr(&out)
    );
    let out = build(&store_read("kept", "text"), "kept");
    crate::support::assert_success(&out);
    assert_eq!(std::fs::read_to_string(t.join("kept")).unwrap(), "in the store");
}

/// A base image whose config's `config` is null fails the stand-in's stream as it fails
/// nixpkgs' `stream_layered_image.py`, whose `overlay_base_config` calls `.get("Env", [])` on it
/// (an AttributeError); the stand-in used to stream such an image.
#[test]
fn a_base_image_with_a_null_config_fails_as_in_nixpkgs() {
    let dir = tempfile::tempdir().unwrap();
    let setup = r#"
import hashlib, io, json, os, sys, tarfile
d = sys.argv[1]
def add(tar, name, data):
    info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
config = json.dumps({"architecture": "amd64", "os": "linux", "config": None,
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
with tarfile.open(os.path.join(d, "base.tar"), "w") as tar:
    add(tar, "config.json", config)
    add(tar, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [], "Layers": []}]).encode())
custom = os.path.join(d, "custom"); os.mkdir(custom)
with tarfile.open(os.path.join(custom, "layer.tar"), "w"):
    pass
digest = hashlib.sha256(open(os.path.join(custom, "layer.tar"), "rb").read()).hexdigest()
open(os.path.join(custom, "checksum"), "w").write(digest)
conf = {"store_dir": "/nix/store", "from_image": os.path.join(d, "base.tar"),
        "created": "1970-01-01T00:00:01+00:00", "mtime": "1970-01-01T00:00:01+00:00",
        "uid": "0", "gid": "0", "uname": "root", "gname": "root", "store_layers": [],
        "customisation_layer": custom, "architecture": "amd64",
        "config": {"Env": ["PATH=/bin"]}, "repo_tag": "base:latest"}
json.dump(conf, open(os.path.join(d, "conf.json"), "w"))
"#;
    let out = Command::new("python3")
        .args(["-c", setup])
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/nix/tests/nixpkgs-standin/docker/stream.py"))
        .arg(dir.path().join("conf.json"))
        .stdout(std::process::Stdio::null())
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "streamed a base image whose config is null: {stderr}"
    );
    assert!(
        stderr.contains("AttributeError") && stderr.contains("'NoneType' object has no attribute 'get'"),
        "{stderr}"
    );
}
