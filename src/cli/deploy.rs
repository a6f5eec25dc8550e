//! `nixfly deploy`: push, then roll the pushed digest out. What `nix run .#deploy` runs.

use super::DeployArgs;
use crate::progress::Reporter;

pub async fn run(args: DeployArgs, reporter: Reporter) -> anyhow::Result<()> {
    if args.rollout.plan {
        // A plan changes nothing, and a push would change the registry: show where the image
        // would go and plan the rollout against that tag instead of a digest.
        let (_, push_plan) = args.push.plan(&args.app)?;
        let image = format!(
            "{}:{}",
            push_plan.name(),
            push_plan.tag.as_deref().unwrap_or("latest")
        );
        reporter.info(format!("plan: push {} to {image} (nothing pushed)", args.source));
        return super::rollout::rollout_image(&args.app, &args.rollout, Some(image), reporter).await;
    }
    // Fail on a missing token before minutes of uploading, not after.
    args.app.fly_token()?;
    let pushed = super::push::push_image(&args.source, &args.push, &args.app, &reporter).await?;
    super::rollout::rollout_image(
        &args.app,
        &args.rollout,
        Some(pushed.reference.to_string()),
        reporter.clone(),
    )
    .await?;
    reporter.result(&pushed.reference.to_string());
    Ok(())
}
