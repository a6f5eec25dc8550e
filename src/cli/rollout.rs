//! `nixfly rollout`: options and the command.

use super::AppOptions;
use crate::progress::Reporter;
use clap::Args;

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// The image to deploy, already in a registry: host/repo@sha256:... (a tag is resolved to
    /// its digest first; the machines always get the digest).
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub options: RolloutOptions,
}

/// Options shared by `rollout` and `deploy`.
#[derive(Args, Debug, Clone, Default)]
pub struct RolloutOptions {
    /// Print what the deploy would do and change nothing.
    #[arg(long)]
    pub plan: bool,
}

pub async fn run(args: RolloutArgs, reporter: Reporter) -> anyhow::Result<()> {
    let _ = (args, reporter);
    anyhow::bail!("nixfly rollout is not implemented yet")
}
