//! The daemon loop: it only waits and chooses. Each wake-up (a source changed, a quiescence period
//! ended, a new config, the child exited, shutdown) leads to one of: a render pass
//! ([`RenderPass`]) and its actions, a step of the exec supervisor ([`ExecSlot`]), a reload
//! decision ([`reload::plan`]), or the end of the loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::actions::{self, Reach};
use crate::config::Config;
use crate::pass::RenderPass;
use crate::reload::{self, Plan};
use crate::state::{ActionStats, ChildState, Shared, SourceState};
pub use crate::supervisor::ExecSlot;
use crate::watches::{Wanted, Watches};

/// How often the daemon says what it is still waiting for before the first render.
const PENDING_LOG_EVERY: Duration = Duration::from_secs(5);

/// What the daemon should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Keep watching until cancelled.
    Run,
    /// Render every output once, run actions, and return; give up after `timeout`.
    Once { timeout: Option<Duration> },
}

/// What outlives one run of the render loop: a config reload starts a new loop (new sources, new
/// outputs) with the same session, so counters, the child and what has rendered carry over.
#[derive(Default)]
pub struct Session {
    /// Actions by kind and result.
    pub actions: Arc<ActionStats>,
    /// The supervised child as reported.
    pub child_state: Arc<ChildState>,
    /// Names of the outputs that have rendered since kvsync started: their next write is not a
    /// "first render" for `on_start`, even after a reload.
    pub rendered: BTreeSet<String>,
    /// Render passes that wrote something (given to commands as KVSYNC_GENERATION).
    pub passes: u64,
    /// `kvsync exec`: the child to start after the first full render.
    pub exec: Option<ExecSlot>,
    /// Validated new configurations (SIGHUP, an edited config or template file).
    pub reloads: Option<mpsc::Receiver<Config>>,
    /// The running sources, kept across reloads when unchanged.
    pub watches: Watches,
    /// What the HTTP endpoint reports from: each run publishes its `Shared` here.
    pub current: Arc<crate::state::Current>,
    /// Admin requests (`kvsync release`, `kvsync rollback`) from the endpoint and the admin socket.
    pub admin: Option<crate::admin::Inbox>,
}

/// Why the render loop returned.
#[derive(Debug)]
pub enum Stopped {
    /// Cancelled (shutdown), or `once` finished.
    Done,
    /// A new valid configuration is to be applied.
    Reload(Box<Config>),
    /// The child exited and is not to be restarted: exit with this code.
    ChildExited(i32),
}

/// Why the daemon stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be put to work (a source could not be built); nothing ran.
    #[error("{0}")]
    Setup(String),
    /// A source's watch engine stopped by itself (its source gave up).
    #[error(transparent)]
    Engine(#[from] kvsync_watch::EngineStopped),
    #[error("timed out after {after}: {pending}")]
    Timeout { after: String, pending: String },
    #[error("{0}")]
    Render(String),
    /// The HTTP endpoint could not start (the message names the address and what to change).
    #[error("{0}")]
    Endpoint(String),
    /// `kvsync exec` without a command on the command line or in the config.
    #[error(
        "kvsync exec needs a command: give it after `--` (kvsync exec --config {} -- /usr/bin/app) \
         or as exec.command in the config",
        config.display()
    )]
    NoCommand { config: std::path::PathBuf },
}

/// Runs the daemon until `cancel` fires (or, for `once`, until every output has rendered), a new
/// configuration arrives, or the supervised child exits for good.
pub async fn run(
    mut cfg: Arc<Config>,
    mode: RunMode,
    session: &mut Session,
    cancel: CancellationToken,
) -> Result<Stopped, DaemonError> {
    // What this config watches; sources that are already running with the same settings and
    // prefixes keep running (a reload does not reconnect them).
    session.watches.apply(&cfg, &wanted(&cfg, session.exec.is_some())).await.map_err(DaemonError::Setup)?;
    let mut shared = Shared::new(Arc::clone(&session.actions), Arc::clone(&session.child_state));
    for (name, kind, stats) in session.watches.reported() {
        shared.sources.push(SourceState { name, kind, stats });
    }
    let mut pass = RenderPass::new(&cfg, mode, session, &mut shared)?;
    // exec.env: the child's environment comes from a prefix of its own.
    let mut env_sub = match (&session.exec, &cfg.exec.env) {
        (Some(_), Some(e)) => Some(
            session
                .watches
                .subscription(&e.source, &e.prefix)
                .map_err(|err| DaemonError::Setup(format!("exec.env: {err}")))?,
        ),
        _ => None,
    };
    let shared = Arc::new(shared);
    shared.set_pending(pass.pending_inputs(&cfg));
    // The HTTP endpoint reports on this run from now on.
    session.current.publish(Arc::clone(&shared));
    let started = Instant::now();
    let deadline = match mode {
        RunMode::Once { timeout: Some(t) } => Some(started + t),
        _ => None,
    };
    let wake = session.watches.wake();
    let mut pending_log = tokio::time::interval_at(started + PENDING_LOG_EVERY, PENDING_LOG_EVERY);
    let mut all_rendered_logged = false;
    let result = loop {
        if !all_rendered_logged {
            // Keep what /readyz reports as pending current until every output has rendered.
            shared.set_pending(pass.pending_inputs(&cfg));
        }
        // Note new views, then render every output whose quiescence is over.
        let now = Instant::now();
        pass.note_changes(now);
        let due = pass.due(&cfg, now);
        if !due.outputs.is_empty() {
            let (report, outcome) = pass.render(&cfg, &due.outputs, session);
            if let (Err(e), RunMode::Once { .. }) = (outcome, mode) {
                break Err(DaemonError::Render(e));
            }
            if !report.written.is_empty() {
                let reach = Reach { child: session.exec.as_ref().map(|e| &e.handle), stats: &session.actions };
                tokio::select! {
                    // The actions of this pass, one after the other.
                    _ = actions::run(&cfg, &report, &reach) => {}
                    // Shutdown: a running command is killed (kill_on_drop); the commit is already done.
                    _ = cancel.cancelled() => break Ok(Stopped::Done),
                }
            }
            continue;
        }
        if !all_rendered_logged && pass.all_rendered() {
            all_rendered_logged = true;
            shared.set_ready();
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "every output has rendered");
            // First start, or the end of a reload that started a new loop.
            crate::systemd::ready(&format!("{} outputs rendered", pass.len()));
            if matches!(mode, RunMode::Once { .. }) {
                break Ok(Stopped::Done);
            }
        }
        // exec: start the child after the first full render; restart it when its environment changes.
        if let Some(exec) = session.exec.as_mut() {
            exec.step(&cfg, env_sub.as_mut(), all_rendered_logged, &session.actions);
        }
        tokio::select! {
            // Checked first: on shutdown the sources stop at the same time.
            biased;
            // Shutdown requested.
            _ = cancel.cancelled() => break Ok(Stopped::Done),
            // The supervised child exited and is not to be restarted.
            code = crate::supervisor::exited(session.exec.as_mut()) => break Ok(Stopped::ChildExited(code)),
            // A new, valid configuration (SIGHUP or an edited file).
            Some(new) = next_reload(session.reloads.as_mut()) => match reload::plan(&cfg, &new) {
                Plan::Restart => break Ok(Stopped::Reload(Box::new(new))),
                Plan::Rerender => {
                    info!("the new config watches the same keys: sources keep running, every output is rendered again");
                    cfg = Arc::new(new);
                    pass.touch_all(Instant::now());
                    crate::systemd::ready("configuration reloaded");
                }
            },
            // An admin request: release or roll back an output.
            Some(req) = next_admin(session.admin.as_mut()) => {
                let reach = Reach { child: session.exec.as_ref().map(|e| &e.handle), stats: &session.actions };
                let answer = pass.admin(&cfg, req.action, &reach, &mut session.passes).await;
                let _ = req.answer.send(answer);
            }
            // A source published a new view.
            () = wake.rung() => {}
            // A source's engine ended by itself (it only does when its source gives up).
            stopped = session.watches.stopped() => break Err(DaemonError::Engine(stopped)),
            // An output's quiescence period ends.
            _ = sleep_until(due.next) => {}
            // Still waiting for first data: say exactly what for.
            _ = pending_log.tick() => {
                let pending = pass.pending_inputs(&cfg);
                shared.set_pending(pending.clone());
                if !pending.is_empty() {
                    warn!("waiting for the first data of: {}", pending.join("; "));
                    crate::systemd::status(&format!("waiting for the first data of: {}", pending.join("; ")));
                }
            }
            // `once --timeout` ran out.
            _ = sleep_until(deadline) => {
                let mut pending = pass.pending_inputs(&cfg);
                if pending.is_empty() {
                    pending = pass.not_rendered(&cfg);
                }
                let after = crate::config::units::format_duration(started.elapsed());
                break Err(DaemonError::Timeout { after, pending: format!("still waiting for {}", pending.join("; ")) });
            }
        }
    };
    // On a reload the sources stay for the next loop to keep or replace; otherwise they stop.
    if !matches!(result, Ok(Stopped::Reload(_))) {
        session.watches.stop_all().await;
    }
    result
}

/// For each source, the prefixes this config reads from it (outputs, and exec.env under exec).
fn wanted(cfg: &Config, exec: bool) -> Wanted {
    let mut wanted = Wanted::new();
    for o in &cfg.outputs {
        for i in &o.inputs {
            wanted.entry(i.source.clone()).or_default().insert(i.prefix.clone());
        }
    }
    if let (true, Some(e)) = (exec, &cfg.exec.env) {
        wanted.entry(e.source.clone()).or_default().insert(e.prefix.clone());
    }
    wanted
}

/// The next admin request; never without an inbox.
async fn next_admin(rx: Option<&mut crate::admin::Inbox>) -> Option<crate::admin::Request> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next reloaded configuration; never without a reload channel.
async fn next_reload(rx: Option<&mut mpsc::Receiver<Config>>) -> Option<Config> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
