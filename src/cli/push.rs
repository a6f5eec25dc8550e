//! `nixfly push`: options, and turning them into one `ResolvedPush` before any network call.

use super::AppOptions;
use super::registry::RegistryOptions;
use crate::blob::{Algorithm, Compression};
use crate::cache::Cache;
use crate::error::{EXIT_INTERRUPTED, ExitCodeError};
use crate::fly::FlyToken;
use crate::fly::appconfig::units::parse_go_duration;
use crate::image::{Image, SourceKind};
use crate::progress::Reporter;
use crate::push::{ManifestFormat, PushSpec, Pushed};
use crate::registry::client::UploadMode;
use crate::registry::reference::Tag;
use crate::registry::{Reference, RegistryClient};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The image: a docker-archive (.tar, .tar.gz, .tar.zst), a streamLayeredImage script, an
    /// OCI layout directory, a nixfly layer plan, or - for stdin.
    pub source: String,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub options: PushOptions,
    /// Machines API base URL. Pushing to a Fly app's repository (no --to), nixfly asks it
    /// which images the app's machines run and reuses their layers, as `deploy` does.
    #[arg(long, env = "FLY_FLAPS_BASE_URL", default_value = crate::fly::api::DEFAULT_MACHINES_URL, value_name = "URL", help_heading = "Fly app")]
    pub api_url: String,
}

/// Options shared by `push` and `deploy`.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Image")]
pub struct PushOptions {
    /// Where to push: `host/repo[:tag]`. Default: registry.fly.io/<app> (FLY_REGISTRY_HOST
    /// overrides the host).
    #[arg(long, value_name = "REFERENCE")]
    pub to: Option<String>,
    /// Tag to set. Default: the tag in --to, else deployment-<ULID> (what flyctl uses).
    #[arg(long)]
    pub tag: Option<String>,
    /// Manifest format: Docker v2s2 (accepted everywhere) or OCI (needed for zstd). Default:
    /// docker; oci when the compression is zstd and comes from fly.toml.
    #[arg(long, value_enum, env = "NIXFLY_FORMAT")]
    pub format: Option<ManifestFormat>,
    /// Layer compression. Default: `[build] compression` in fly.toml (deploy), else gzip.
    #[arg(long, value_enum, env = "NIXFLY_COMPRESSION")]
    pub compression: Option<Algorithm>,
    /// Compression level: gzip (libdeflate) 1 = fastest to 12 = smallest, default 2 (chosen by
    /// measurement, see src/blob.rs); zstd 1-19, default 3. Default: `[build]
    /// compression_level` in fly.toml (deploy) when it is one of these.
    /// Layer plans precompute digests for the default level: another level re-uploads.
    #[arg(long, env = "NIXFLY_COMPRESSION_LEVEL")]
    pub level: Option<i32>,
    /// Layers read and compressed at once (each one also uses every core), while one more
    /// upload may be committing. Default 2, at most 3: more only adds memory (each holds
    /// compression blocks and a resend window).
    #[arg(short, long, env = "NIXFLY_JOBS", value_name = "N")]
    pub jobs: Option<usize>,
    /// What SOURCE is, when detection by content should not decide.
    #[arg(long, value_enum, default_value_t, env = "NIXFLY_SOURCE_KIND")]
    pub source_kind: SourceKind,
    /// How long a stream script may write nothing before it is stopped (with its whole process
    /// group) and the push fails (e.g. 90s, 10m). Default 10m.
    #[arg(
        long,
        value_name = "DURATION",
        env = "NIXFLY_STREAM_TIMEOUT",
        value_parser = parse_go_duration
    )]
    pub stream_timeout: Option<Duration>,
    /// Neither read nor write the local cache ($XDG_CACHE_HOME/nixfly, else ~/.cache/nixfly).
    /// Layers of images the registry already has (the target tag's, --reuse-from, on deploy
    /// the app's running image) are still found without it.
    #[arg(long, env = "NIXFLY_NO_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cache: bool,
    /// An image in the same registry (`repo:tag`, `repo@sha256:...`, or with the host) whose
    /// layers this push may reuse: layers with the same diff_id are neither read nor
    /// compressed nor uploaded. Repeatable. The target tag's current image is always used, and
    /// `deploy` adds the image the app's machines run now.
    #[arg(long, value_name = "REFERENCE")]
    pub reuse_from: Vec<String>,
    /// Push an image whose config names another platform than linux/amd64, which is all Fly
    /// Machines run. Without it such an image is refused before any upload; a stream (a
    /// streamLayeredImage script, stdin, a compressed archive) carries its config last, so its
    /// layers are uploaded first and the refusal comes before the manifest: the tag does not move.
    #[arg(long, env = "NIXFLY_ALLOW_ARCH", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_arch: bool,
    /// How layer data is uploaded: one streamed PATCH (what docker does), acknowledged chunks,
    /// or one monolithic PUT.
    #[arg(long, value_enum, default_value_t = UploadMode::Stream, value_name = "MODE", help_heading = "Registry")]
    pub upload_mode: UploadMode,
    #[command(flatten)]
    pub registry: RegistryOptions,
}

/// Layers read at once by default: each layer already compresses on every core, so more only
/// overlaps uploads (and one more upload may be committing, `push::upload::Uploads`).
/// Measured on the benchmark image (2 cores, loopback), when a layer's turn lasted until its
/// upload ended: 1 job 7.5 s / 32 MB peak RSS, 2 jobs 8.5 s / 52 MB, 4 jobs 9.2 s / 91-96 MB;
/// with the committing upload, 2 jobs peak at 60-62 MB and 3 at 80 MB. Two keep a second
/// upload going for a registry across a network, where one stream rarely fills the link.
const DEFAULT_JOBS: usize = 2;
/// And at most: about 20 MB per layer in flight (compression blocks, the resend window), so
/// three keep peak RSS well under 100 MB whatever `--jobs` asks for; four came within 4 MB.
const MAX_JOBS: usize = 3;

/// Resend window per upload: every upload keeps this much for resending after a cut, until
/// the registry has its whole body; with `--jobs` uploads at once it is most of the memory a
/// push uses (peak RSS stays under 100 MB at 4 jobs).
const UPLOAD_WINDOW: u64 = 8 << 20;

/// A sha256 no registry needs to hold: asking for it checks access and changes nothing.
const PROBE_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A push with everything decided: where, how, with which credentials. Made without any
/// network call; `check_access` is the first request, `run_after` does the push.
pub struct ResolvedPush {
    pub source: String,
    pub source_kind: SourceKind,
    /// How long a stream script may stay silent.
    pub stream_timeout: Duration,
    pub spec: PushSpec,
    pub client: Arc<RegistryClient>,
    pub use_cache: bool,
}

impl PushOptions {
    /// `--reuse-from` as (repository, tag or digest), all on `registry`.
    fn reuse_from_images(&self, registry: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.reuse_from
            .iter()
            .map(|text| {
                let reference = Reference::parse_with_default_host(text, registry)
                    .with_context(|| format!("reading --reuse-from {text}"))?;
                anyhow::ensure!(
                    reference.registry == registry,
                    "--reuse-from {text} is on {}, not on {registry} where the image goes: \
                     layers are only reused within one registry",
                    reference.registry
                );
                let target = reference.tag_or_digest().unwrap_or("latest").to_string();
                Ok((reference.repository, target))
            })
            .collect()
    }

    /// Resolve the push of `source`. `app` names the repository when `--to` is not given;
    /// `fly_token` is asked for only when the registry is Fly's.
    pub fn resolve(
        &self,
        source: &str,
        app: Option<&str>,
        fly_token: impl FnOnce() -> anyhow::Result<FlyToken>,
        reporter: &Reporter,
    ) -> anyhow::Result<ResolvedPush> {
        let reference = match (&self.to, app) {
            (Some(to), _) => Reference::parse(to).with_context(|| format!("reading --to {to}"))?,
            (None, Some(app)) => {
                let host = crate::registry::reference::default_registry_host();
                Reference::parse(&format!("{host}/{app}")).with_context(|| format!("app name {app:?}"))?
            }
            (None, None) => {
                anyhow::bail!(
                    "nowhere to push: pass --to host/repository, or name a Fly app (--app, FLY_APP or app in fly.toml)"
                )
            }
        };
        if let Some(digest) = &reference.digest {
            anyhow::bail!("--to {reference} names a digest ({digest}); push to a repository or a tag");
        }
        let tag = match &self.tag {
            Some(tag) => tag.parse::<Tag>()?,
            None => match &reference.tag {
                Some(tag) => tag.clone(),
                None => format!("deployment-{}", ulid::Ulid::new())
                    .parse()
                    .expect("a ULID tag is valid"),
            },
        };
        let spec = PushSpec {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            tag: Some(tag),
            format: self.format.unwrap_or_default(),
            compression: Compression::new(self.compression.unwrap_or_default(), self.level)?,
            jobs: self.jobs.unwrap_or(DEFAULT_JOBS).min(MAX_JOBS),
            workers: crate::blob::default_workers(),
            reuse_from: self.reuse_from_images(&reference.registry)?,
            allow_arch: self.allow_arch,
        };
        spec.validate()?;
        // Whether SOURCE exists and is an image is known without reading it: a dry run or a
        // deploy must not get past this with a typo in the path.
        crate::image::detect(source, self.source_kind)?;
        let mut client_options = self.registry.client_options(&reference.registry, fly_token)?;
        client_options.upload_mode = self.upload_mode;
        client_options.upload_window = client_options.upload_window.min(UPLOAD_WINDOW);
        let client = RegistryClient::new(&reference.registry, client_options, reporter.clone())?;
        Ok(ResolvedPush {
            source: source.to_string(),
            source_kind: self.source_kind,
            stream_timeout: positive(
                "--stream-timeout",
                self.stream_timeout.unwrap_or(Duration::from_secs(
                    crate::image::script::DEFAULT_IDLE_TIMEOUT_SECS,
                )),
            )?,
            spec,
            client: Arc::new(client),
            use_cache: !self.no_cache,
        })
    }
}

/// A timeout of zero would give up before anything could happen.
pub(crate) fn positive(flag: &str, timeout: Duration) -> anyhow::Result<Duration> {
    anyhow::ensure!(!timeout.is_zero(), "{flag} must be above 0, like 30s or 2m");
    Ok(timeout)
}

impl ResolvedPush {
    /// `host/repo:tag`, where the image goes.
    pub fn target(&self) -> String {
        format!(
            "{}:{}",
            self.spec.name(),
            self.spec.tag.as_deref().unwrap_or("latest")
        )
    }

    /// Ask the registry about a blob with push access, before any layer is read: bad
    /// credentials, a refused token or an unreachable registry end the command here, not
    /// after minutes of compressing.
    pub async fn check_access(&self) -> anyhow::Result<()> {
        self.client
            .blob_exists(
                &self.spec.repository,
                &PROBE_DIGEST.parse().expect("a well-formed digest"),
            )
            .await
            .with_context(|| format!("checking push access to {}", self.spec.name()))?;
        Ok(())
    }

    /// Push the image once `before` has passed: a deploy's checks, which also give the images
    /// whose layers the push may reuse (the app's running images; those on another registry
    /// are left out). The image is opened meanwhile and a stream read ahead
    /// ([`crate::push::read_ahead`]), so that a stream script's generation overlaps the
    /// round trips to Fly and the registry; nothing reaches the registry's upload endpoints
    /// before `before` ends. If it fails, its error is the command's, and the script is
    /// stopped.
    pub async fn run_after(
        &self,
        reporter: &Reporter,
        before: impl Future<Output = anyhow::Result<Vec<String>>>,
    ) -> anyhow::Result<Pushed> {
        // Before a stream script starts or any session opens: a Ctrl-C or SIGTERM then ends the
        // push here, with the script's process group killed and every session cancelled,
        // rather than killing nixfly with uploads open in the registry.
        let mut signals = crate::signals::Signals::install(reporter)?;
        let image_source = crate::image::detect_with(&self.source, self.source_kind, self.stream_timeout)?;
        let description = image_source.describe();
        let mut open = Some({
            let reporter = reporter.clone();
            tokio::task::spawn_blocking(move || image_source.open(&reporter).map(crate::push::read_ahead))
        });
        let ended = tokio::select! {
            ended = self.push(&mut open, before, &description, reporter) => ended,
            signal = signals.recv() => {
                crate::image::script::kill_running_script();
                Ended::Interrupted(signal)
            }
        };
        // Refused, or interrupted, while the image was still being opened: its script is
        // stopped (one that started after the kill above too) and waited for.
        if let Some(open) = open.take() {
            abandon(open).await;
        }
        // Whatever ended the push, no upload session stays open in the registry: those a
        // failure or a signal stopped, and those a mount attempt opened and nothing used. A
        // second signal stops the cleanup; distribution purges sessions after a week.
        let mut late_signal = None;
        let cancelled = tokio::select! {
            cancelled = self.client.cancel_open_sessions() => Some(cancelled),
            signal = signals.recv() => {
                reporter.warn(format!(
                    "{signal}: stopped cancelling upload sessions; the registry purges them itself later"
                ));
                late_signal = Some(signal);
                None
            }
        };
        if let Some(cancelled @ 1..) = cancelled {
            reporter.debug(format!("cancelled {cancelled} upload session(s) left open"));
        }
        match ended {
            Ended::Refused(err) => Err(err),
            // The push is done, but the user asked to stop: `deploy` must not go on to the
            // machines.
            Ended::Pushed(Ok(pushed)) if let Some(signal) = late_signal => Err(ExitCodeError {
                code: EXIT_INTERRUPTED,
                message: format!(
                    "interrupted by {signal} after the push: {} is in the registry and tagged \
                     {}; nothing was deployed",
                    pushed.reference,
                    self.target()
                ),
            }
            .into()),
            Ended::Pushed(pushed) => {
                pushed.with_context(|| format!("pushing {description} to {}", self.spec.name()))
            }
            Ended::Interrupted(signal) => Err(ExitCodeError {
                code: EXIT_INTERRUPTED,
                message: format!(
                    "push of {description} to {} interrupted by {signal}: {}{}",
                    self.target(),
                    if self.client.manifest_sent() {
                        "the signal came as the manifest went out, so the tag may point at the new \
                         image (complete: the manifest comes after every blob)"
                    } else {
                        "nothing was tagged"
                    },
                    match cancelled {
                        Some(0) => String::new(),
                        Some(n) => format!(", and the {n} upload session(s) it had open were cancelled"),
                        None => ", and upload sessions may be left open".into(),
                    }
                ),
            }
            .into()),
        }
    }

    /// Wait for `before` while the image opens, then push it. `open` is taken here once it
    /// has ended; if `before` fails first, the caller stops it.
    async fn push(
        &self,
        open: &mut Option<Opening>,
        before: impl Future<Output = anyhow::Result<Vec<String>>>,
        description: &str,
        reporter: &Reporter,
    ) -> Ended {
        // The blocking open goes on by itself meanwhile (a script's open returns once its first
        // bytes arrive, which nixpkgs' script writes only after hashing a layer).
        let reuse = match before.await {
            Ok(reuse) => reuse,
            Err(err) => return Ended::Refused(err),
        };
        let opened = open
            .as_mut()
            .expect("the image is opened once")
            .await
            .context("opening the image")
            .and_then(|opened| Ok(opened?));
        *open = None;
        let pushed = async {
            let image = opened?;
            reporter.info(format!("pushing {description} to {}", self.target()));
            let mut spec = self.spec.clone();
            reuse_images(&mut spec, &reuse);
            let cache = Arc::new(Cache::open(self.use_cache, reporter.clone()));
            Ok(crate::push::push(self.client.clone(), image, &spec, cache, reporter.clone()).await?)
        };
        Ended::Pushed(pushed.await)
    }
}

/// The image being opened, on a blocking thread.
type Opening = tokio::task::JoinHandle<Result<Image, crate::image::ImageError>>;

/// How long a refused push waits for the image's open to end after stopping its script.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// What had to pass before the push failed, or a signal came, while the image was being
/// opened: a stream script is stopped (its output ends, and the open with it) and waited for,
/// so that none is left running. The failure is the story, not how the script ended.
async fn abandon(open: Opening) {
    crate::image::script::kill_running_script();
    match tokio::time::timeout(ABANDON_WAIT, open).await {
        Ok(Ok(Ok(Image::Stream(stream)))) => {
            let _ = tokio::task::spawn_blocking(move || (stream.finish)(false)).await;
        }
        // Failed to open, or an indexed image: nothing runs.
        Ok(_) => {}
        // Still opening: a script that started after the kill above is stopped now (its
        // open then ends and drops it); stdin that has sent nothing is left to nixfly's exit.
        Err(_) => crate::image::script::kill_running_script(),
    }
}

/// Also reuse the layers of these images (the app's running images); those on another
/// registry cannot serve and are left out.
fn reuse_images(spec: &mut PushSpec, images: &[String]) {
    for image in images {
        if let Ok(reference) = Reference::parse(image)
            && reference.registry == spec.registry
            && let Some(target) = reference.tag_or_digest()
        {
            spec.reuse_from
                .push((reference.repository.clone(), target.to_string()));
        }
    }
}

/// How a push ended: refused before it began (the error of what had to pass first), by
/// itself (pushed or failed), or by a signal.
enum Ended {
    Refused(anyhow::Error),
    Pushed(anyhow::Result<Pushed>),
    Interrupted(&'static str),
}

/// The images Fly app `app`'s machines run; none without a Fly token (the registry
/// credentials may come from elsewhere).
async fn running_images(args: &PushArgs, app: &str, reporter: &Reporter) -> Vec<String> {
    let Ok(token) = args.app.fly_token() else {
        reporter.debug("no Fly token: the layers of the app's running image are not looked up");
        return Vec::new();
    };
    match crate::fly::api::FlyHttp::new(&args.api_url, token, reporter.clone()) {
        Ok(http) => {
            super::rollout::running_images(&crate::fly::api::MachinesApi::new(http, app), reporter).await
        }
        Err(err) => {
            reporter.warn(format!(
                "not reusing the layers of the running image: {}",
                crate::error::chain_text(&err)
            ));
            Vec::new()
        }
    }
}

pub async fn run(args: PushArgs, reporter: Reporter) -> anyhow::Result<()> {
    // fly.toml only names the repository: it is not read when --to or --app says where.
    let app = match (&args.options.to, &args.app.app) {
        (Some(_), _) => None,
        (None, Some(app)) => Some(app.clone()),
        (None, None) => {
            let fly_toml = args.app.fly_toml(&reporter)?;
            Some(
                args.app
                    .app_name(fly_toml.as_ref())
                    .context("nowhere to push: pass --to host/repository, or name a Fly app")?,
            )
        }
    };
    let push = args.options.resolve(
        &args.source,
        app.as_deref(),
        || Ok(args.app.fly_token()?),
        &reporter,
    )?;
    // A new deployment-<ULID> tag has no image yet: on a fresh runner the app's machines are
    // what tells which layers the registry already holds, as for `deploy`.
    let running = async {
        Ok(match &app {
            Some(app) => running_images(&args, app, &reporter).await,
            None => Vec::new(),
        })
    };
    let pushed = push.run_after(&reporter, running).await?;
    reporter.result(&pushed.reference.to_string());
    Ok(())
}
