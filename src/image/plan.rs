//! A nixfly layer plan (`mkFlyDeploy` with `layering = "plan"`): the config and every layer's
//! diff_id and compressed digest were recorded at build time, so push asks the registry about
//! every layer at once and reads nothing for the ones it has. A missing layer is made again
//! from its store paths, and its content is checked against the plan before the upload is
//! committed: a store path that changed since the plan was built is an error naming it, never
//! a corrupt image.

use super::{
    BlobEncoding, Image, ImageError, ImageSource, IndexedImage, IndexedParts, KnownBlob, KnownLayer,
    LayerForm,
};
use crate::layer::plan::{LayerPlan, LayerSource, PlanKind};
use crate::progress::Reporter;
use crate::registry::Digest;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a JSON image file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonImage {
    /// A layer plan: a JSON object whose `kind` is `nixfly-layer-plan`.
    Plan,
    /// A nix2container image JSON (nix2container's `buildImage`): an object with
    /// `image-config` and `layers`, whose layers nix2container's own Go code tars at push
    /// time. nixfly does not make those tars (their digests are nix2container's bytes), so it
    /// says what to do instead.
    Nix2Container,
}

/// What the file whose first bytes are `head` is, when it is a JSON image of either kind.
/// Only JSON objects are read whole, once (plans are a few KiB).
pub fn json_image(path: &Path, head: &[u8]) -> Option<JsonImage> {
    #[derive(serde::Deserialize)]
    struct Keys {
        kind: Option<PlanKind>,
        #[serde(rename = "image-config")]
        image_config: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    if !head.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let keys: Keys = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if keys.kind.is_some() {
        Some(JsonImage::Plan)
    } else if keys.image_config.is_some() && keys.layers.is_some() {
        Some(JsonImage::Nix2Container)
    } else {
        None
    }
}

pub struct PlanFile {
    path: PathBuf,
}

impl PlanFile {
    pub fn new(path: &Path) -> Self {
        PlanFile {
            path: path.to_path_buf(),
        }
    }
}

impl ImageSource for PlanFile {
    fn describe(&self) -> String {
        format!("layer plan {}", self.path.display())
    }

    fn open(self: Box<Self>, reporter: &Reporter) -> Result<Image, ImageError> {
        let description = self.describe();
        let plan = LayerPlan::load(&self.path).map_err(|err| ImageError::Malformed {
            source_name: description.clone(),
            entry: "the plan".into(),
            detail: format!("{:#}", anyhow::Error::from(err)),
        })?;
        Ok(Image::Indexed(Arc::new(PlanImage::new(
            description,
            plan,
            reporter.clone(),
        ))))
    }
}

struct PlanImage {
    parts: IndexedParts,
    sources: Vec<LayerSource>,
    reporter: Reporter,
}

impl PlanImage {
    fn new(description: String, plan: LayerPlan, reporter: Reporter) -> Self {
        let layers = plan
            .layers
            .iter()
            .map(|layer| KnownLayer {
                diff_id: layer.diff_id.clone(),
                uncompressed_size: Some(layer.size),
                blob: Some(KnownBlob {
                    digest: layer.digest.clone(),
                    size: layer.compressed_size,
                    encoding: BlobEncoding::Reproducible(layer.compression),
                }),
            })
            .collect();
        PlanImage {
            parts: IndexedParts {
                description,
                config: Bytes::from(plan.config),
                layers,
            },
            sources: plan.layers.into_iter().map(|layer| layer.source).collect(),
            reporter,
        }
    }
}

impl IndexedImage for PlanImage {
    fn parts(&self) -> &IndexedParts {
        &self.parts
    }

    fn open_layer(&self, index: usize, form: LayerForm) -> Result<Box<dyn Read + Send>, ImageError> {
        let source = &self.sources[index];
        let unsupported = |detail: String| ImageError::Unsupported {
            source_name: self.parts.description.clone(),
            detail,
        };
        if form == LayerForm::Stored {
            return Err(unsupported(format!(
                "layer {index} has no stored blob: a plan keeps only digests"
            )));
        }
        let tar = source
            .open(None, &self.reporter)
            .map_err(|err| ImageError::Read {
                source_name: self.parts.description.clone(),
                source: io::Error::other(err),
            })?;
        let layer = &self.parts.layers[index];
        Ok(Box::new(Verified {
            inner: tar,
            hasher: Sha256::new(),
            read: 0,
            expected_diff_id: layer.diff_id.clone(),
            expected_size: layer.uncompressed_size.unwrap_or_default(),
            what: format!("layer {index} ({})", source.describe()),
        }))
    }
}

/// The layer's bytes, hashed on the way; the read that reaches the end fails if they are not
/// what the plan recorded. Push also checks the diff_id, but only this error can say which
/// store paths changed and what to do about it.
struct Verified {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    read: u64,
    expected_diff_id: Digest,
    expected_size: u64,
    what: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{what} has {actual} ({actual_size} bytes), but the plan recorded {expected} \
     ({expected_size} bytes): the store paths changed after the plan was built; rebuild the plan \
     (nix build) rather than push an image that differs from it"
)]
pub struct PlanMismatch {
    what: String,
    expected: Digest,
    expected_size: u64,
    actual: Digest,
    actual_size: u64,
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if n == 0 && !buf.is_empty() {
            let actual = Digest::from_hasher(self.hasher.clone());
            if actual != self.expected_diff_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    PlanMismatch {
                        what: self.what.clone(),
                        expected: self.expected_diff_id.clone(),
                        expected_size: self.expected_size,
                        actual,
                        actual_size: self.read,
                    },
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Compression;
    use crate::image::{SourceKind, detect};
    use crate::layer::plan::{PLAN_VERSION, PlanKind, PlannedLayer, StreamConf};
    use crate::layer::store_tar::TarOptions;
    use std::fs;

    /// Two "store paths" at real locations in a temp dir, a plan recording them as two layers,
    /// and the plan file.
    struct Fixture {
        dir: tempfile::TempDir,
        plan_file: PathBuf,
        layers: Vec<PlannedLayer>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("store/aaaa-base");
        let app = dir.path().join("store/bbbb-app");
        fs::create_dir_all(base.join("lib")).unwrap();
        fs::write(base.join("lib/libbase.so"), vec![3u8; 300_000]).unwrap();
        fs::create_dir_all(app.join("bin")).unwrap();
        fs::write(app.join("bin/app"), "echo app\n".repeat(1000)).unwrap();
        let layers: Vec<PlannedLayer> = [&base, &app]
            .iter()
            .map(|path| {
                let source =
                    LayerSource::store_paths(vec![path.display().to_string()], &TarOptions::default());
                PlannedLayer::build(
                    &source,
                    None,
                    Compression::default(),
                    2,
                    &Reporter::plain(),
                    |_| Ok(()),
                )
                .unwrap()
            })
            .collect();
        let conf: StreamConf = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "config": {"Cmd": ["/bin/app"]},
            "created": "1970-01-01T00:00:01+00:00", "store_layers": [],
            "customisation_layer": "/nix/store/unused",
        }))
        .unwrap();
        let plan = LayerPlan {
            kind: PlanKind::LayerPlan,
            version: PLAN_VERSION,
            config: conf.image_config(&layers, None).unwrap(),
            layers: layers.clone(),
        };
        let plan_file = dir.path().join("plan.json");
        fs::write(&plan_file, plan.to_json()).unwrap();
        Fixture {
            dir,
            plan_file,
            layers,
        }
    }

    fn open(f: &Fixture) -> Arc<dyn IndexedImage> {
        let source = detect(f.plan_file.to_str().unwrap(), SourceKind::Auto).unwrap();
        assert_eq!(source.describe(), format!("layer plan {}", f.plan_file.display()));
        match source.open(&Reporter::plain()).unwrap() {
            Image::Indexed(image) => image,
            Image::Stream(_) => panic!("a plan is an indexed image"),
        }
    }

    fn read_layer(image: &dyn IndexedImage, index: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        image
            .open_layer(index, LayerForm::Uncompressed)
            .unwrap()
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    #[test]
    fn a_plan_is_detected_and_knows_every_digest_before_reading() {
        let f = fixture();
        let image = open(&f);
        let layers = image.layers();
        assert_eq!(layers.len(), 2);
        for (known, planned) in layers.iter().zip(&f.layers) {
            assert_eq!(known.diff_id, planned.diff_id);
            assert_eq!(known.uncompressed_size, Some(planned.size));
            let blob = known.blob.as_ref().unwrap();
            assert_eq!(blob.digest, planned.digest);
            assert_eq!(blob.size, planned.compressed_size);
            assert_eq!(blob.encoding, BlobEncoding::Reproducible(Compression::default()));
        }
        let config: serde_json::Value = serde_json::from_slice(&image.config()).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][1], f.layers[1].diff_id.as_str());
        let bytes = read_layer(image.as_ref(), 1).unwrap();
        assert_eq!(Digest::sha256_of(&bytes), f.layers[1].diff_id);
        assert!(image.open_layer(0, LayerForm::Stored).is_err());
    }

    #[test]
    fn a_changed_store_path_fails_the_read_and_names_the_paths() {
        let f = fixture();
        let image = open(&f);
        fs::write(f.dir.path().join("store/bbbb-app/bin/app"), "echo tampered\n").unwrap();
        let err = read_layer(image.as_ref(), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let message = err.to_string();
        assert!(message.contains("layer 1 (store paths "), "{message}");
        assert!(message.contains("bbbb-app"), "{message}");
        assert!(message.contains(f.layers[1].diff_id.as_str()), "{message}");
        assert!(message.contains("rebuild the plan"), "{message}");
        // The untouched layer still reads.
        assert!(read_layer(image.as_ref(), 0).is_ok());
    }

    #[test]
    fn a_missing_store_path_fails_the_read_with_its_name() {
        let f = fixture();
        let image = open(&f);
        fs::remove_dir_all(f.dir.path().join("store/aaaa-base")).unwrap();
        let err = read_layer(image.as_ref(), 0).unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(err)).contains("aaaa-base"));
    }

    #[test]
    fn a_broken_plan_is_reported_with_its_path_and_problem() {
        let f = fixture();
        let mut plan: serde_json::Value = serde_json::from_slice(&fs::read(&f.plan_file).unwrap()).unwrap();
        plan["layers"][0]["digest"] = "sha256:nothex".into();
        fs::write(&f.plan_file, plan.to_string()).unwrap();
        let source = detect(f.plan_file.to_str().unwrap(), SourceKind::Auto).unwrap();
        let err = source.open(&Reporter::plain()).err().unwrap();
        let message = err.to_string();
        assert!(message.contains("plan.json"), "{message}");
        // Digests are checked as the plan is parsed: the message names the bad one.
        assert!(message.contains("invalid digest \"sha256:nothex\""), "{message}");
    }

    #[test]
    fn other_json_is_not_taken_for_a_plan() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("settings.json", "{\"app\": \"x\"}"),
            ("other-kind.json", "{\"kind\": \"something\", \"version\": 1}"),
            ("not-json.json", "{\"kind\": \"nixfly-layer-plan\""),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            assert_eq!(json_image(&path, text.as_bytes()), None, "{name}");
            assert!(
                detect(path.to_str().unwrap(), SourceKind::Auto).is_err(),
                "{name}"
            );
        }
    }
}
