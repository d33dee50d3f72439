//! `on_change` actions, run after a whole render pass is committed: deduplicated, in config order.

use std::time::Duration;

use tracing::{info, warn};

use crate::config::{Action, Config};

/// What one render pass changed, handed to the actions.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Indexes (into `Config::outputs`) of the outputs whose destination was written.
    pub written: Vec<usize>,
    /// Of those, the ones written for the first time since start.
    pub first: Vec<usize>,
    /// A counter of passes that wrote something.
    pub generation: u64,
}

/// Whether an action fires for an output's first render after start, by default.
fn fires_on_start(a: &Action) -> bool {
    matches!(a, Action::Command { .. } | Action::Http { .. })
}

/// The actions a pass triggers: each distinct action once, in the order of first appearance in the
/// config, honouring each output's `on_start`.
pub fn plan(cfg: &Config, report: &PassReport) -> Vec<Action> {
    let mut out: Vec<Action> = Vec::new();
    for (i, o) in cfg.outputs.iter().enumerate() {
        if !report.written.contains(&i) {
            continue;
        }
        let first = report.first.contains(&i);
        for a in &o.on_change {
            let fire = !first || o.on_start.unwrap_or_else(|| fires_on_start(a));
            if fire && !out.contains(a) {
                out.push(a.clone());
            }
        }
    }
    out
}

/// Runs the planned actions one after the other. A failure is logged, never fatal.
pub async fn run(cfg: &Config, report: &PassReport) {
    let actions = plan(cfg, report);
    if actions.is_empty() {
        return;
    }
    let names: Vec<&str> = report.written.iter().map(|i| cfg.outputs[*i].name.as_str()).collect();
    let dests: Vec<String> = report.written.iter().map(|i| cfg.outputs[*i].destination.display().to_string()).collect();
    for a in actions {
        match &a {
            Action::Command { argv, timeout } => {
                match run_command(argv, *timeout, &names.join(","), &dests.join(":"), report.generation).await {
                    Ok(()) => info!(command = %argv[0], "on_change command succeeded"),
                    Err(e) => warn!(command = %argv[0], "on_change command failed: {e}"),
                }
            }
            other => warn!(action = ?other, "this action kind needs `kvsync exec` and is not run here"),
        }
    }
}

async fn run_command(
    argv: &[String],
    timeout: Duration,
    outputs: &str,
    dests: &str,
    generation: u64,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("KVSYNC_OUTPUTS", outputs)
        .env("KVSYNC_DESTINATIONS", dests)
        .env("KVSYNC_GENERATION", generation.to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("could not start: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = crate::process::signal_group(pid, crate::process::SIGKILL);
            }
            let _ = child.kill().await;
            Err(format!("did not finish within {}; killed", crate::config::units::format_duration(timeout)))
        }
    }
}
