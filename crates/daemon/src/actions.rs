//! `on_change` actions, run after a whole render pass is committed: each distinct action once per
//! pass, in config order. A failed action is logged and counted, never fatal: the application must
//! never be collateral damage of a reload command that failed.

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::child::ChildHandle;
use crate::config::{Action, Config, Target};
use crate::process::{self, signal_name};
use crate::state::{ActionKind, ActionStats};

/// What one render pass changed, handed to the actions.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Indexes (into `Config::outputs`) of the outputs whose destination was written.
    pub written: Vec<usize>,
    /// Of those, the ones written for the first time since start.
    pub first: Vec<usize>,
    /// The number of this pass among the passes that wrote something (1, 2, ...).
    pub pass: u64,
}

/// Whether an action fires for an output's first render after start, by default: a command or an
/// http call usually tells something outside that the file exists; a signal or restart of a child
/// that was just started with the fresh file would only disturb it.
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

/// Where actions reach out to: the supervised child (in `kvsync exec`) and the counters.
pub struct Reach<'a> {
    pub child: Option<&'a ChildHandle>,
    pub stats: &'a ActionStats,
}

/// Runs the planned actions one after the other. A failure is logged and counted, never fatal.
pub async fn run(cfg: &Config, report: &PassReport, reach: &Reach<'_>) {
    let actions = plan(cfg, report);
    if actions.is_empty() {
        return;
    }
    let names: Vec<&str> = report.written.iter().map(|i| cfg.outputs[*i].name.as_str()).collect();
    let dests: Vec<String> = report.written.iter().map(|i| cfg.outputs[*i].destination.display().to_string()).collect();
    let context = ChangeContext { outputs: names.join(","), destinations: dests.join(":"), pass: report.pass };
    for a in actions {
        let (kind, what, result) = match &a {
            Action::Signal { signal, to } => (
                ActionKind::Signal,
                format!("{} to {}", signal_name(*signal), target_name(to)),
                send_signal(*signal, to, reach.child).await,
            ),
            Action::Command { argv, timeout } => {
                (ActionKind::Command, format!("command {:?}", argv[0]), run_command(argv, *timeout, &context).await)
            }
            Action::Http { url, method, timeout, retries } => {
                let r =
                    crate::http_action::call(url, method, *timeout, *retries).await.map(|s| format!("answered {s}"));
                (ActionKind::Http, format!("http {method} {url}"), r)
            }
            Action::Restart => {
                let r = match reach.child {
                    Some(c) => c.restart(None).await.map(|()| "restarted".to_string()),
                    None => Err(no_child()),
                };
                (ActionKind::Restart, "restart child".to_string(), r)
            }
        };
        reach.stats.record(kind, result.is_ok());
        match result {
            Ok(how) => info!(outputs = %context.outputs, "on_change {what}: {how}"),
            Err(e) => warn!(outputs = %context.outputs, "on_change {what} failed: {e}"),
        }
    }
}

/// What the commands learn about the pass through their environment.
struct ChangeContext {
    /// KVSYNC_OUTPUTS: names of the outputs written, comma-separated.
    outputs: String,
    /// KVSYNC_DESTINATIONS: their destinations, colon-separated.
    destinations: String,
    /// KVSYNC_GENERATION (the variable keeps its published name): the number of the render pass
    /// that wrote, not a `files` generation directory.
    pass: u64,
}

fn no_child() -> String {
    "there is no supervised child: `to: child` and `restart: child` work under `kvsync exec`".into()
}

fn target_name(t: &Target) -> String {
    match t {
        Target::Child => "child".into(),
        Target::Pidfile(p) => format!("pidfile:{}", p.display()),
        Target::Pid(p) => format!("pid:{p}"),
        Target::Process(n) => format!("process:{n}"),
    }
}

/// Sends `sig` to the target; Ok says whom it reached.
async fn send_signal(sig: i32, to: &Target, child: Option<&ChildHandle>) -> Result<String, String> {
    match to {
        Target::Child => {
            let c = child.ok_or_else(no_child)?;
            c.signal(sig).await.map(|()| "sent".to_string())
        }
        Target::Pidfile(path) => {
            let pid = read_pidfile(path)?;
            process::signal(pid, sig).map_err(|e| format!("pid {pid} from {}: {e}", path.display()))?;
            Ok(format!("sent to pid {pid}"))
        }
        Target::Pid(pid) => {
            let pid = u32::try_from(*pid).map_err(|_| format!("pid {pid} is not valid"))?;
            process::signal(pid, sig).map_err(|e| format!("pid {pid}: {e}"))?;
            Ok(format!("sent to pid {pid}"))
        }
        Target::Process(name) => {
            let pids = process::find_by_name(name);
            if pids.is_empty() {
                return Err(format!(
                    "no process named `{name}` (matched against /proc/*/comm and argv[0]); is it running, and in \
                     kvsync's PID namespace (shareProcessNamespace in a Pod)?"
                ));
            }
            let mut errors = Vec::new();
            for &p in &pids {
                if let Err(e) = process::signal(p, sig) {
                    errors.push(format!("pid {p}: {e}"));
                }
            }
            if errors.len() == pids.len() {
                return Err(errors.join("; "));
            }
            Ok(format!("sent to pid {pids:?}"))
        }
    }
}

/// The pid in a pidfile: a positive number, surrounding whitespace allowed.
fn read_pidfile(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read pidfile {}: {e}", path.display()))?;
    let t = text.trim();
    t.parse::<u32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("pidfile {} holds {t:?}, not a process id (a number above 1)", path.display()))
}

/// Runs a command (no shell) in its own process group; on timeout the whole group is killed.
async fn run_command(argv: &[String], timeout: Duration, ctx: &ChangeContext) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("KVSYNC_OUTPUTS", &ctx.outputs)
        .env("KVSYNC_DESTINATIONS", &ctx.destinations)
        .env("KVSYNC_GENERATION", ctx.pass.to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = process::spawn_tracked(|| cmd.spawn(), |c| c.id()).map_err(|e| format!("could not start: {e}"))?;
    let pid = child.id();
    let result = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok("succeeded".to_string()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            // The group: a shell wrapper's own children must not outlive the command.
            if let Some(pid) = pid {
                let _ = process::signal_group(pid, process::SIGKILL);
            }
            let _ = child.kill().await;
            Err(format!(
                "did not finish within {}; killed with its process group",
                crate::config::units::format_duration(timeout)
            ))
        }
    };
    if let Some(pid) = pid {
        process::untrack(pid);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        assert!(read_pidfile(&p).unwrap_err().starts_with(&format!("cannot read pidfile {}", p.display())));
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(
            read_pidfile(&p).unwrap_err(),
            format!("pidfile {} holds \"abc\", not a process id (a number above 1)", p.display())
        );
        std::fs::write(&p, "1\n").unwrap();
        assert!(read_pidfile(&p).is_err());
        std::fs::write(&p, " 4242\n").unwrap();
        assert_eq!(read_pidfile(&p).unwrap(), 4242);
    }

    #[tokio::test]
    async fn child_targets_need_exec() {
        let e = send_signal(1, &Target::Child, None).await.unwrap_err();
        assert!(e.contains("kvsync exec"), "{e}");
        let e = send_signal(1, &Target::Process("no-such-process-kvsync".into()), None).await.unwrap_err();
        assert!(e.starts_with("no process named `no-such-process-kvsync`"), "{e}");
    }
}
