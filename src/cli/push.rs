//! `nixfly push`: options and the command.

use super::AppOptions;
use crate::progress::Reporter;
use clap::Args;

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
    /// Tag to set. Default for Fly: deployment-<ULID>.
    #[arg(long)]
    pub tag: Option<String>,
}

pub async fn run(args: PushArgs, reporter: Reporter) -> anyhow::Result<()> {
    let _ = (args, reporter);
    anyhow::bail!("nixfly push is not implemented yet")
}
