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
