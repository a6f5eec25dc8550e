//! `nixfly push`: options and the command.

use super::AppOptions;
use crate::blob::{Algorithm, Compression};
use crate::cache::Cache;
use crate::image::SourceKind;
use crate::progress::Reporter;
use crate::push::{ManifestFormat, PushPlan, Pushed};
use crate::registry::{Reference, RegistryArgs, RegistryClient};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The image: a docker-archive (.tar, .tar.gz, .tar.zst), a streamLayeredImage script, an
    /// OCI layout directory, a nixfly layer plan, or - for stdin.
    pub source: String,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub options: PushOptions,
}

/// Options shared by `push` and `deploy`.
#[derive(Args, Debug, Clone, Default)]
pub struct PushOptions {
    /// Where to push: `host/repo[:tag]`. Default: registry.fly.io/<app> (FLY_REGISTRY_HOST
    /// overrides the host).
    #[arg(long, value_name = "REFERENCE")]
    pub to: Option<String>,
    /// Tag to set. Default: the tag in --to, else deployment-<ULID> (what flyctl uses).
    #[arg(long)]
    pub tag: Option<String>,
    /// Manifest format: Docker v2s2 (accepted everywhere) or OCI (needed for zstd).
    #[arg(long, value_enum, default_value_t, env = "NIXFLY_FORMAT")]
    pub format: ManifestFormat,
    /// Layer compression.
    #[arg(long, value_enum, default_value_t, env = "NIXFLY_COMPRESSION")]
    pub compression: Algorithm,
    /// Compression level: gzip (libdeflate) 1 = fastest to 12 = smallest, default 2 (chosen by
    /// measurement, see src/blob.rs); zstd 1-19, default 3.
    /// Layer plans precompute digests for the default level: another level re-uploads.
    #[arg(long, env = "NIXFLY_COMPRESSION_LEVEL")]
    pub level: Option<i32>,
    /// Layers compressed and uploaded at once (each one also uses every core). Default and
    /// maximum 4: more only adds memory (each holds compression blocks and a resend window).
    #[arg(short, long, env = "NIXFLY_JOBS", value_name = "N")]
    pub jobs: Option<usize>,
    /// What SOURCE is, when detection by content should not decide.
    #[arg(long, value_enum, default_value_t, env = "NIXFLY_SOURCE_KIND")]
    pub source_kind: SourceKind,
    /// Neither read nor write the local cache ($XDG_CACHE_HOME/nixfly, else ~/.cache/nixfly).
    /// Without it, a layer whose compressed digest the source does not state is compressed
    /// (and uploaded) even when the registry already has it.
    #[arg(long, env = "NIXFLY_NO_CACHE")]
    pub no_cache: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Layers in flight by default and at most: enough to overlap compression and uploads on 2-8
/// cores (each layer already compresses on every core), and what keeps peak RSS under 100 MB
/// whatever `--jobs` asks for (measured by bench/push.py).
const MAX_JOBS: usize = 4;

/// Resend window per upload (see `push_image`).
const UPLOAD_WINDOW: u64 = 8 << 20;

impl PushOptions {
    /// Where the image goes and how, from the flags, the app and fly.toml. No network.
    pub fn plan(&self, app: &AppOptions) -> anyhow::Result<(Reference, PushPlan)> {
        let reference = match &self.to {
            Some(to) => Reference::parse(to).with_context(|| format!("reading --to {to}"))?,
            None => {
                // fly.toml only when --app is not given; its warnings are the rollout's to show.
                let fly_toml = match (&app.app, app.fly_toml_path()) {
                    (None, Some(path)) => Some(crate::fly::appconfig::AppConfig::load(&path)?.0),
                    _ => None,
                };
                let app = app
                    .app_name(fly_toml.as_ref())
                    .context("nowhere to push: pass --to host/repository, or name a Fly app")?;
                let host = crate::registry::reference::default_registry_host();
                Reference::parse(&format!("{host}/{app}")).with_context(|| format!("app name {app:?}"))?
            }
        };
        if let Some(digest) = &reference.digest {
            anyhow::bail!("--to {reference} names a digest ({digest}); push to a repository or a tag");
        }
        let tag = self
            .tag
            .clone()
            .or_else(|| reference.tag.clone())
            .unwrap_or_else(|| format!("deployment-{}", ulid::Ulid::new()));
        anyhow::ensure!(
            crate::registry::reference::is_valid_tag(&tag),
            "invalid tag {tag:?}: use letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'"
        );
        let plan = PushPlan {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            tag: Some(tag),
            format: self.format,
            compression: Compression::new(self.compression, self.level)?,
            jobs: self.jobs.unwrap_or(MAX_JOBS).min(MAX_JOBS),
            workers: crate::blob::default_workers(),
        };
        plan.validate()?;
        Ok((reference, plan))
    }
}

/// Push `source` as `options` say; shared by `push` and `deploy`.
pub async fn push_image(
    source: &str,
    options: &PushOptions,
    app: &AppOptions,
    reporter: &Reporter,
) -> anyhow::Result<Pushed> {
    let (reference, plan) = options.plan(app)?;
    let is_fly = reference.registry == crate::registry::reference::default_registry_host();
    // The Fly token is the registry password for registry.fly.io; other registries never see it.
    let fly_token = if is_fly && options.registry.creds.is_none() {
        Some(
            app.fly_token()
                .context("pushing to the Fly registry needs a Fly token")?,
        )
    } else {
        None
    };
    let mut client_options = options.registry.client_options(&reference.registry, fly_token)?;
    // Every upload in flight keeps this much for resending after a cut: with `--jobs` uploads
    // at once it is most of the memory a push uses (peak RSS stays under 100 MB at 4 jobs).
    client_options.upload_window = client_options.upload_window.min(UPLOAD_WINDOW);
    let client = Arc::new(RegistryClient::new(
        &reference.registry,
        client_options,
        reporter.clone(),
    )?);
    let image_source = crate::image::detect(source, options.source_kind)?;
    let description = image_source.describe();
    reporter.info(format!(
        "pushing {description} to {}:{}",
        plan.name(),
        plan.tag.as_deref().unwrap_or("")
    ));
    let image = {
        let reporter = reporter.clone();
        tokio::task::spawn_blocking(move || image_source.open(&reporter))
            .await
            .context("opening the image")??
    };
    let cache = Arc::new(Cache::open(!options.no_cache, reporter.clone()));
    crate::push::push(client, image, &plan, cache, reporter.clone())
        .await
        .with_context(|| format!("pushing {description} to {}", plan.name()))
}

pub async fn run(args: PushArgs, reporter: Reporter) -> anyhow::Result<()> {
    let pushed = push_image(&args.source, &args.options, &args.app, &reporter).await?;
    reporter.result(&pushed.reference);
    Ok(())
}
