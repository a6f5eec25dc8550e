//! `nixfly layer`: the build-time half of layer plans, run inside Nix derivations by
//! `mkLayerPlan` (hidden from `--help`: users never type it).

use crate::blob::{self, Algorithm, Compression};
use crate::layer::plan::{
    BaseImage, LayerPlan, LayerSource, PLAN_VERSION, PlanKind, PlannedLayer, StreamConf,
};
use crate::layer::store_tar::TarOptions;
use crate::progress::Reporter;
use crate::registry::Digest;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct LayerArgs {
    #[command(subcommand)]
    pub command: LayerCommand,
}

#[derive(Subcommand, Debug)]
pub enum LayerCommand {
    /// Record one layer: tar its store paths (or read a ready layer tar), compress, and write
    /// the diff_id, digest and sizes as JSON. The blob itself is not kept.
    Build(BuildArgs),
    /// Record every layer of a base image (streamLayeredImage's `fromImage`, an uncompressed
    /// docker-archive): a JSON list of layer records, each checked against the diff_id the
    /// base's config gives it.
    Base(BaseArgs),
    /// Assemble a layer plan from streamLayeredImage's conf JSON and the layer records.
    Plan(PlanArgs),
}

#[derive(Args, Debug)]
pub struct BaseArgs {
    /// The base image: the conf's `from_image`, a docker-archive (`.tar`, `.tar.gz`, `.tar.zst`).
    #[arg(long, value_name = "FILE")]
    pub image: String,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Where to write the layer records (a JSON list).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// File listing the layer's store paths, one a line, in layer order.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "tar",
        conflicts_with = "tar"
    )]
    pub paths_from: Option<PathBuf>,
    /// An uncompressed layer tar that already exists (streamLayeredImage's customisation layer).
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
    /// File mtime in the tar: seconds since 1970, or an ISO 8601 time as in the conf.
    #[arg(long, default_value = "1", value_parser = parse_mtime)]
    pub mtime: u64,
    /// Owner user id of every file in the tar (the conf's `uid`).
    #[arg(long, default_value_t = 0)]
    pub uid: u64,
    /// Owner group id of every file in the tar (the conf's `gid`).
    #[arg(long, default_value_t = 0)]
    pub gid: u64,
    /// Owner user name of every file in the tar (the conf's `uname`).
    #[arg(long, default_value = "root")]
    pub uname: String,
    /// Owner group name of every file in the tar (the conf's `gname`).
    #[arg(long, default_value = "root")]
    pub gname: String,
    /// Read store paths under this directory (a chroot store); names in the tar stay as listed.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Where to write the layer record (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// The compression a plan pins (changing it changes every recorded digest), and how many
/// threads compress.
#[derive(Args, Debug, Clone)]
pub struct CompressionArgs {
    /// The compression the layer's digest is recorded for; `nixfly push` reuses the digest
    /// only when it compresses the same way.
    #[arg(long, value_enum, default_value_t = Algorithm::Gzip)]
    pub compression: Algorithm,
    /// Compression level: gzip 1 (fast) to 12 (small), default 2; zstd 1-19, default 3.
    #[arg(long)]
    pub level: Option<i32>,
    /// Compression threads. The output is the same for any value. Default: one per core.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

impl CompressionArgs {
    /// The compression and the number of threads to run it on.
    fn resolve(&self) -> anyhow::Result<(Compression, usize)> {
        let compression = Compression::new(self.compression, self.level)?;
        Ok((compression, self.jobs.unwrap_or_else(blob::default_workers)))
    }
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// streamLayeredImage's conf JSON (`passthru.conf` of the image).
    #[arg(long, value_name = "FILE")]
    pub conf: PathBuf,
    /// Layer records from `nixfly layer build`, bottom layer first: one per store layer of the
    /// conf, then the customisation layer.
    #[arg(long = "layer", value_name = "FILE", required = true)]
    pub layers: Vec<PathBuf>,
    /// The base image's layer records from `nixfly layer base`, when the conf has a
    /// `from_image`; they come first.
    #[arg(long, value_name = "FILE")]
    pub base_layers: Option<PathBuf>,
    /// Where to write the plan.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

fn parse_mtime(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(seconds) => Ok(seconds),
        Err(_) => crate::layer::plan::epoch_seconds(s).map_err(|e| e.to_string()),
    }
}

pub async fn run(args: LayerArgs, reporter: Reporter) -> anyhow::Result<()> {
    // Both commands are CPU and disk work with nothing to wait on concurrently.
    tokio::task::spawn_blocking(move || match args.command {
        LayerCommand::Build(args) => build(args, &reporter),
        LayerCommand::Base(args) => base(args, &reporter),
        LayerCommand::Plan(args) => plan(args, &reporter),
    })
    .await
    .context("the layer command stopped unexpectedly")?
}

fn build(args: BuildArgs, reporter: &Reporter) -> anyhow::Result<()> {
    let (compression, workers) = args.compression.resolve()?;
    let record = match (&args.paths_from, &args.tar) {
        (Some(list), _) => {
            let text = std::fs::read_to_string(list)
                .with_context(|| format!("cannot read the store path list {}", list.display()))?;
            let paths: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if paths.is_empty() {
                bail!("{} lists no store paths", list.display());
            }
            let options = TarOptions {
                mtime: args.mtime,
                uid: args.uid,
                gid: args.gid,
                uname: args.uname.clone(),
                gname: args.gname.clone(),
                root: None,
            };
            let source = LayerSource::store_paths(paths, &options);
            PlannedLayer::build(
                &source,
                args.root.as_deref(),
                compression,
                workers,
                reporter,
                |_| Ok(()),
            )?
        }
        (None, Some(tar)) => {
            let source = LayerSource::Tar {
                path: tar.display().to_string(),
            };
            PlannedLayer::build(&source, None, compression, workers, reporter, |_| Ok(()))?
        }
        (None, None) => unreachable!("clap requires --paths-from or --tar"),
    };
    reporter.info(format!(
        "layer {} ({} bytes) -> {} ({} bytes, {})",
        record.diff_id,
        record.size,
        record.digest,
        record.compressed_size,
        compression.key()
    ));
    write_json(&args.out, &record)
}

fn base(args: BaseArgs, reporter: &Reporter) -> anyhow::Result<()> {
    let (compression, workers) = args.compression.resolve()?;
    let records = BaseImage::records(&args.image, compression, workers, reporter)?;
    for record in &records {
        reporter.info(format!(
            "base layer {} ({} bytes) -> {} ({} bytes, {})",
            record.diff_id,
            record.size,
            record.digest,
            record.compressed_size,
            compression.key()
        ));
    }
    write_json(&args.out, &records)
}

fn plan(args: PlanArgs, reporter: &Reporter) -> anyhow::Result<()> {
    let conf = StreamConf::load(&args.conf)?;
    let base = match (&conf.from_image, &args.base_layers) {
        (Some(image), Some(records)) => {
            let base = BaseImage::open(image)?;
            let records: Vec<PlannedLayer> = read_json(records)?;
            check_base_layers(&base, &records)?;
            Some((base, records))
        }
        (Some(image), None) => bail!(
            "the conf's image is built on a base image ({image}): give its layer records with \
             --base-layers (made by `nixfly layer base --image {image}`)"
        ),
        (None, Some(records)) => bail!(
            "--base-layers {} was given, but the conf has no base image (from_image is null)",
            records.display()
        ),
        (None, None) => None,
    };
    let own = args
        .layers
        .iter()
        .map(|path| read_json::<PlannedLayer>(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_layers_match_conf(&conf, &own)?;
    let (base_config, mut layers) = match base {
        Some((image, records)) => (Some(image.config), records),
        None => (None, Vec::new()),
    };
    layers.extend(own);
    let plan = LayerPlan {
        kind: PlanKind::LayerPlan,
        version: PLAN_VERSION,
        config: conf.image_config(&layers, base_config.as_ref())?,
        layers,
    };
    // What `push` will check, checked now, where a mistake is cheapest to fix.
    let text = plan.to_json();
    LayerPlan::parse(text.as_bytes(), &args.out.display().to_string())?;
    std::fs::write(&args.out, text).with_context(|| format!("cannot write {}", args.out.display()))?;
    reporter.info(format!(
        "layer plan with {} layers, config {}",
        plan.layers.len(),
        Digest::sha256_of(plan.config.as_bytes())
    ));
    Ok(())
}

/// The layer records must be the conf's store layers, in order, then its customisation layer
/// (whose checksum streamLayeredImage has already computed).
fn check_layers_match_conf(conf: &StreamConf, layers: &[PlannedLayer]) -> anyhow::Result<()> {
    let expected = conf.store_layers.len() + 1;
    if layers.len() != expected {
        bail!(
            "the conf has {} store layers plus the customisation layer, but {} layer records were given",
            conf.store_layers.len(),
            layers.len()
        );
    }
    for (index, (paths, layer)) in conf.store_layers.iter().zip(layers).enumerate() {
        let recorded: Vec<&str> = layer.source.paths();
        if !matches!(layer.source, LayerSource::StorePaths { .. }) || recorded != *paths {
            bail!(
                "layer record {index} is for {recorded:?}, but the conf's store layer {index} is {paths:?}"
            );
        }
    }
    let custom = layers.last().expect("checked length");
    let custom_tar = format!("{}/layer.tar", conf.customisation_layer);
    if custom.source
        != (LayerSource::Tar {
            path: custom_tar.clone(),
        })
    {
        bail!(
            "the last layer record should be the customisation layer {custom_tar}, got {:?}",
            custom.source.paths()
        );
    }
    let checksum_file = Path::new(&conf.customisation_layer).join("checksum");
    if let Ok(checksum) = std::fs::read_to_string(&checksum_file) {
        let from_nixpkgs = format!("sha256:{}", checksum.trim());
        if custom.diff_id != from_nixpkgs.as_str() {
            bail!(
                "the customisation layer hashes to {}, but {} says {from_nixpkgs}",
                custom.diff_id,
                checksum_file.display()
            );
        }
    }
    Ok(())
}

/// The base layer records must be the base image's layers, in its manifest's order, with the
/// diff_ids its config gives them.
fn check_base_layers(base: &BaseImage, records: &[PlannedLayer]) -> anyhow::Result<()> {
    let sources = base.sources();
    if records.len() != sources.len() {
        bail!(
            "the base image has {} layers, but {} base layer records were given",
            sources.len(),
            records.len()
        );
    }
    for (index, ((record, source), diff_id)) in records.iter().zip(&sources).zip(&base.diff_ids).enumerate() {
        if record.diff_id == *diff_id
            && let (
                LayerSource::BaseLayer {
                    archive: recorded, ..
                },
                LayerSource::BaseLayer { archive, .. },
            ) = (&record.source, source)
            && recorded != archive
        {
            bail!(
                "base layer record {index} was made from the base image {recorded}, but the conf's \
                 base image is {archive}: the records must name it by the same path (make them \
                 with `nixfly layer base --image {archive}`)"
            );
        }
        if record.source != *source || record.diff_id != *diff_id {
            bail!(
                "base layer record {index} is for {} ({}), but the base image's layer {index} is {} ({diff_id})",
                record.source.describe(),
                record.diff_id,
                source.describe()
            );
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a nixfly layer record", path.display()))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("records serialise");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::fixture::{self, FakeStore};
    use std::io::Read as _;
    use std::sync::{Arc, Mutex};

    /// The fixture's layer compressed with `workers` threads: its record and the blob bytes.
    fn compress_fixture(
        store: &FakeStore,
        compression: Compression,
        workers: usize,
    ) -> (PlannedLayer, Vec<u8>) {
        let source = LayerSource::store_paths(FakeStore::all_paths(), &store.options());
        let blob = Arc::new(Mutex::new(Vec::new()));
        let sink_blob = blob.clone();
        let record = PlannedLayer::build(
            &source,
            Some(store.root()),
            compression,
            workers,
            &Reporter::plain(),
            move |chunk| {
                sink_blob.lock().unwrap().extend_from_slice(&chunk);
                Ok(())
            },
        )
        .unwrap();
        let blob = std::mem::take(&mut *blob.lock().unwrap());
        (record, blob)
    }

    /// Golden digests of the fixture layer's blob for the settings plans pin. The diff_id is the
    /// one `store_tar` pins (checked against Python's tarfile); the blob digests were pinned
    /// after checking that the blob decompresses, with an independent decoder, to that tar.
    #[test]
    fn golden_blob_digests_for_any_thread_count() {
        let store = fixture::build();
        let golden = [
            (Compression::new(Algorithm::Gzip, Some(1)).unwrap(), GOLDEN_GZIP1),
            (Compression::new(Algorithm::Gzip, Some(2)).unwrap(), GOLDEN_GZIP2),
            (Compression::new(Algorithm::Zstd, Some(3)).unwrap(), GOLDEN_ZSTD3),
        ];
        for (compression, (digest, size)) in golden {
            let (reference, blob) = compress_fixture(&store, compression, 1);
            assert_eq!(reference.diff_id, GOLDEN_DIFF_ID);
            assert_eq!(reference.size, 3_287_040);
            assert_eq!(Digest::sha256_of(&blob), reference.digest);
            assert_eq!(blob.len() as u64, reference.compressed_size);
            let mut tar = Vec::new();
            match compression.algorithm {
                Algorithm::Gzip => flate2::read::MultiGzDecoder::new(&blob[..])
                    .read_to_end(&mut tar)
                    .unwrap(),
                Algorithm::Zstd => zstd::stream::read::Decoder::new(&blob[..])
                    .unwrap()
                    .read_to_end(&mut tar)
                    .unwrap(),
            };
            assert_eq!(
                Digest::sha256_of(&tar),
                GOLDEN_DIFF_ID,
                "{compression:?} does not decompress to the tar"
            );
            assert_eq!(
                (reference.digest.as_str(), reference.compressed_size),
                (digest, size),
                "{compression:?}"
            );
            // 2 and 3 threads put different blocks on each compressor than 1 does.
            for workers in [2, 3] {
                let (record, _) = compress_fixture(&store, compression, workers);
                assert_eq!(record, reference, "{compression:?} with {workers} threads");
            }
        }
    }

    const GOLDEN_DIFF_ID: &str = "sha256:fbaed739b8f9a92ad7883e9fd641778ce7f4589db5eb5663b2c23ac8dc316aae";
    const GOLDEN_GZIP1: (&str, u64) = (
        "sha256:d8c47fe5c43209d90e295d3c424cf6e9e6381ac2859e421c4d730341b19715c8",
        1_247_549,
    );
    const GOLDEN_GZIP2: (&str, u64) = (
        "sha256:7450ee8d71391f0acbc1ad1a34c2446b5dd4e74a80febea88565ced582a18545",
        1_244_890,
    );
    const GOLDEN_ZSTD3: (&str, u64) = (
        "sha256:93f851fe9c7239d2e123dedaed0218100dc1404aecc4310017a01080b96c905f",
        1_233_020,
    );

    #[test]
    fn gzip_tool_decompresses_the_blob_to_the_same_tar() {
        let store = fixture::build();
        let (record, blob) = compress_fixture(&store, Compression::default(), 2);
        let path = store.root().join("layer.tar.gz");
        std::fs::write(&path, blob).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(Digest::sha256_of(&out.stdout), record.diff_id);
    }

    #[test]
    fn a_missing_store_path_is_an_error_not_a_short_layer() {
        let store = fixture::build();
        let mut paths = FakeStore::all_paths();
        paths.push("/nix/store/00000000000000000000000000000000-gone".into());
        let source = LayerSource::store_paths(paths, &store.options());
        let err = PlannedLayer::build(
            &source,
            Some(store.root()),
            Compression::default(),
            2,
            &Reporter::plain(),
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("-gone"), "{err:#}");
    }
}
