//! `quiverctl canary pause|resume|promote|abort NAME`: manual control of a running canary
//! (docs/canary.md). The action is in the canary's status and event list at once.

use clap::{Args, Subcommand};
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Hold the current weight; checks stop until resumed.
    Pause(Target),
    /// Continue a paused canary at its step (the step's window starts again).
    Resume(Target),
    /// Skip the remaining steps: all traffic to the canary subset now.
    Promote(Target),
    /// Roll back now: all traffic to the stable subset.
    Abort(Target),
}

#[derive(Debug, Args)]
pub struct Target {
    /// The Canary's name.
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Why (kept in the canary's event list).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    conn: Connection,
}

pub async fn run(cmd: CanaryCommand) -> anyhow::Result<()> {
    let (verb, t) = match cmd {
        CanaryCommand::Pause(t) => ("paused", t),
        CanaryCommand::Resume(t) => ("resumed", t),
        CanaryCommand::Promote(t) => ("promoted", t),
        CanaryCommand::Abort(t) => ("aborted", t),
    };
    let req = v1::CanaryActionRequest {
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        reason: t.reason.clone(),
    };
    let mut c = client::connect(&t.conn).await?;
    let done = match verb {
        "paused" => c.pause_canary(req).await,
        "resumed" => c.resume_canary(req).await,
        "promoted" => c.promote_canary(req).await,
        _ => c.abort_canary(req).await,
    }
    .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
    .into_inner();
    let status = done.status.unwrap_or_default();
    println!(
        "canary {}/{} {verb}: {} at {}% ({})",
        t.namespace, t.name, status.phase, status.canary_weight, status.message
    );
    Ok(())
}
