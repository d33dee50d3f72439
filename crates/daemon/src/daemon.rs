//! The daemon loop: waits for source changes, applies quiescence, runs render passes, then actions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvsync_watch::{Subscription, View};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::actions::{self, PassReport, Reach};
use crate::child::{self, ChildHandle, ChildSpec, Env, Requests};
use crate::config::{Config, ExecEnv};
use crate::output::{Outcome, OutputRuntime, OutputStats};
use crate::state::{ActionKind, ActionStats, ChildState, OutputState, Shared, SourceState};
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
}

/// The supervised child of `kvsync exec`, started once, kept across reloads.
pub struct ExecSlot {
    /// The command (from the CLI, else exec.command).
    pub argv: Vec<String>,
    pub handle: ChildHandle,
    /// The supervisor's end of `handle`, until the child is started.
    requests: Option<Requests>,
    /// The supervisor task: returns the exit code kvsync should exit with.
    task: Option<JoinHandle<i32>>,
    /// The environment from KV the child runs with (None before the first start).
    env: Option<Env>,
    /// Fired after the render loop has stopped, to stop the child.
    pub stop: CancellationToken,
    /// The kill_timeout the child was started with (a reload does not touch the running child).
    pub kill_timeout: Duration,
}

impl ExecSlot {
    pub fn new(argv: Vec<String>, state: Arc<ChildState>) -> ExecSlot {
        let (handle, requests) = ChildHandle::new(state);
        ExecSlot {
            argv,
            handle,
            requests: Some(requests),
            task: None,
            env: None,
            stop: CancellationToken::new(),
            kill_timeout: Duration::ZERO,
        }
    }

    /// Stops the child (kill_signal, kill_timeout, SIGKILL) and returns its exit code; None when it
    /// was never started.
    pub async fn shutdown(&mut self) -> Option<i32> {
        self.stop.cancel();
        let task = self.task.take()?;
        Some(task.await.unwrap_or(1))
    }
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
    /// The watch engine stopped by itself.
    #[error("{0}")]
    Engine(String),
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

/// Changes not yet rendered for one output: when the first and the last arrived.
#[derive(Debug, Clone, Copy)]
struct Dirty {
    first: Instant,
    last: Instant,
}

/// The running state of every output.
struct OutputSlot {
    subs: Vec<Subscription>,
    runtime: OutputRuntime,
    stats: Arc<OutputStats>,
    dirty: Option<Dirty>,
}

impl OutputSlot {
    fn ready(&self) -> bool {
        self.subs.iter().all(|s| s.latest().is_some())
    }
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
    let mut wanted = Wanted::new();
    for o in &cfg.outputs {
        for i in &o.inputs {
            wanted.entry(i.source.clone()).or_default().insert(i.prefix.clone());
        }
    }
    if let (Some(_), Some(e)) = (&session.exec, &cfg.exec.env) {
        wanted.entry(e.source.clone()).or_default().insert(e.prefix.clone());
    }
    session.watches.apply(&cfg, &wanted).await.map_err(DaemonError::Setup)?;
    let mut shared = Shared::new(Arc::clone(&session.actions), Arc::clone(&session.child_state));
    for (name, kind, stats) in session.watches.reported() {
        shared.sources.push(SourceState { name, kind, stats });
    }
    let mut slots = Vec::with_capacity(cfg.outputs.len());
    for o in &cfg.outputs {
        let mut subs = Vec::new();
        for i in &o.inputs {
            subs.push(session.watches.subscription(&i.source, &i.prefix).map_err(DaemonError::Setup)?);
        }
        let stats: Arc<OutputStats> = Arc::default();
        shared.outputs.push(OutputState {
            name: o.name.clone(),
            destination: o.destination.display().to_string(),
            stats: Arc::clone(&stats),
        });
        // Subscriptions of a source that kept running already hold a view: render it once with this
        // config (unchanged bytes are not rewritten).
        let now = Instant::now();
        let dirty = subs.iter().all(|s| s.latest().is_some()).then_some(Dirty { first: now, last: now });
        let runtime = match mode {
            RunMode::Run => OutputRuntime::new(),
            RunMode::Once { .. } => OutputRuntime::single_pass(),
        };
        slots.push(OutputSlot { subs, runtime, stats, dirty });
    }
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
    shared.set_pending(pending_inputs(&cfg, &slots));
    // The HTTP endpoint reports on this run from now on.
    session.current.publish(Arc::clone(&shared));
    // One wake-up channel for the change bells of every source; a source whose engine ends reports
    // its name through `engines`.
    let (ring_tx, mut ring) = mpsc::channel::<()>(1);
    let mut engines: JoinSet<String> = JoinSet::new();
    for (name, mut bell) in session.watches.bells() {
        let tx = ring_tx.clone();
        engines.spawn(async move {
            while bell.changed().await.is_ok() {
                // A full channel already holds a wake-up: nothing is lost.
                let _ = tx.try_send(());
            }
            name
        });
    }
    drop(ring_tx);
    let started = Instant::now();
    let deadline = match mode {
        RunMode::Once { timeout: Some(t) } => Some(tokio::time::Instant::now() + t),
        _ => None,
    };
    let mut pending_log = tokio::time::interval_at(tokio::time::Instant::now() + PENDING_LOG_EVERY, PENDING_LOG_EVERY);
    let mut all_rendered_logged = false;
    let result = loop {
        if !all_rendered_logged {
            // Keep what /readyz reports as pending current until every output has rendered.
            shared.set_pending(pending_inputs(&cfg, &slots));
        }
        // Note new views.
        let now = Instant::now();
        for slot in &mut slots {
            let mut changed = false;
            for s in &mut slot.subs {
                if s.has_changed() {
                    s.mark_seen();
                    changed = true;
                }
            }
            if changed {
                slot.dirty = Some(match slot.dirty {
                    Some(d) => Dirty { first: d.first, last: now },
                    None => Dirty { first: now, last: now },
                });
            }
        }
        // Render every output whose quiescence is over.
        let mut next_wake: Option<Instant> = None;
        let mut due = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let Some(d) = slot.dirty else { continue };
            if !slot.ready() {
                continue;
            }
            let w = cfg.outputs[i].wait;
            let at = if w.min.is_zero() { now } else { (d.last + w.min).min(d.first + w.max) };
            if at <= now {
                due.push(i);
            } else {
                next_wake = Some(next_wake.map_or(at, |n| n.min(at)));
            }
        }
        if !due.is_empty() {
            let report = render_pass(&cfg, &mut slots, &due, session);
            if let Err(e) = &report.1 {
                if matches!(mode, RunMode::Once { .. }) {
                    break Err(DaemonError::Render(e.clone()));
                }
            }
            if !report.0.written.is_empty() {
                let reach = Reach { child: session.exec.as_ref().map(|e| &e.handle), stats: &session.actions };
                tokio::select! {
                    // The actions of this pass, one after the other.
                    _ = actions::run(&cfg, &report.0, &reach) => {}
                    // Shutdown: a running command is killed (kill_on_drop); the commit is already done.
                    _ = cancel.cancelled() => break Ok(Stopped::Done),
                }
            }
            continue;
        }
        if !all_rendered_logged && slots.iter().all(|s| s.runtime.rendered) {
            all_rendered_logged = true;
            shared.set_ready();
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "every output has rendered");
            // First start, or the end of a reload that started a new loop.
            crate::systemd::ready(&format!("{} outputs rendered", slots.len()));
            if matches!(mode, RunMode::Once { .. }) {
                break Ok(Stopped::Done);
            }
        }
        // exec: start the child after the first full render, with its environment from KV; restart it
        // when that environment changes.
        if let Some(exec) = session.exec.as_mut() {
            let env_view = match &mut env_sub {
                Some(sub) => {
                    let changed = sub.has_changed();
                    sub.mark_seen();
                    sub.latest().map(|v| (v, changed))
                }
                None => None,
            };
            let env_ready = env_sub.is_none() || env_view.is_some();
            if exec.task.is_none() && all_rendered_logged && env_ready {
                let env = match (&env_view, &cfg.exec.env) {
                    (Some((v, _)), Some(e)) => env_from_view(v, e),
                    _ => Vec::new(),
                };
                start_child(exec, &cfg, env);
            } else if let (Some(_), Some((v, true)), Some(e)) = (&exec.task, &env_view, &cfg.exec.env) {
                let env = env_from_view(v, e);
                if exec.env.as_ref() != Some(&env) {
                    info!("the keys under exec.env changed; restarting the child with its new environment");
                    exec.env = Some(env.clone());
                    let handle = exec.handle.clone();
                    let stats = Arc::clone(&session.actions);
                    // In its own task: stopping the child may take kill_timeout; rendering goes on.
                    tokio::spawn(async move {
                        let r = handle.restart(Some(env)).await;
                        stats.record(ActionKind::Restart, r.is_ok());
                        if let Err(e) = r {
                            warn!("restarting the child for its new environment failed: {e}");
                        }
                    });
                }
            }
        }
        tokio::select! {
            // Checked first: on shutdown the engine's channels close at the same time.
            biased;
            // Shutdown requested.
            _ = cancel.cancelled() => break Ok(Stopped::Done),
            // The supervised child exited and is not to be restarted.
            code = join_child(session.exec.as_mut()) => break Ok(Stopped::ChildExited(code)),
            // A new, valid configuration (SIGHUP or an edited file).
            Some(new) = next_reload(session.reloads.as_mut()) => {
                if !same_watches(&cfg, &new) {
                    // Sources or what outputs read changed: the caller starts a new loop.
                    break Ok(Stopped::Reload(Box::new(new)));
                }
                // Only how outputs render or act changed (a template edit, new actions): keep every
                // source and subscription running and re-render everything with the new config.
                // Unchanged bytes are not rewritten, so only outputs that really changed are written.
                info!("the new config watches the same keys: sources keep running, every output is rendered again");
                cfg = Arc::new(new);
                let now = Instant::now();
                for slot in &mut slots {
                    slot.dirty = Some(Dirty { first: now, last: now });
                }
                crate::systemd::ready("configuration reloaded");
            }
            // A subscription received a new view.
            Some(()) = ring.recv() => {}
            // A source's engine ended by itself (it only does when cancelled).
            Some(ended) = engines.join_next(), if !engines.is_empty() => {
                let name = ended.unwrap_or_else(|_| "?".into());
                break Err(DaemonError::Engine(format!("the watch engine of source `{name}` stopped")));
            }
            // An output's quiescence period ends.
            _ = sleep_until(next_wake) => {}
            // Still waiting for first data: say exactly what for.
            _ = pending_log.tick() => {
                let pending = pending_inputs(&cfg, &slots);
                shared.set_pending(pending.clone());
                if !pending.is_empty() {
                    warn!("waiting for the first data of: {}", pending.join("; "));
                    crate::systemd::status(&format!("waiting for the first data of: {}", pending.join("; ")));
                }
            }
            // `once --timeout` ran out.
            _ = sleep_until_tokio(deadline) => {
                let mut pending = pending_inputs(&cfg, &slots);
                if pending.is_empty() {
                    pending = slots.iter().enumerate().filter(|(_, s)| !s.runtime.rendered)
                        .map(|(i, _)| format!("output `{}` has not rendered successfully", cfg.outputs[i].name)).collect();
                }
                let after = crate::config::units::format_duration(started.elapsed());
                break Err(DaemonError::Timeout { after, pending: format!("still waiting for {}", pending.join("; ")) });
            }
        }
    };
    // The bell forwarders end with this loop.
    engines.abort_all();
    // On a reload the sources stay for the next loop to keep or replace; otherwise they stop.
    if !matches!(result, Ok(Stopped::Reload(_))) {
        session.watches.stop_all().await;
    }
    result
}

/// Whether `new` watches exactly what `old` does (same sources, same outputs reading the same inputs
/// into the same destinations, same exec.env, limits, retry and cache), so that it can be applied
/// without restarting any source.
fn same_watches(old: &Config, new: &Config) -> bool {
    old.sources == new.sources
        && old.retry == new.retry
        && old.cache == new.cache
        && old.limits == new.limits
        && old.exec.env == new.exec.env
        && old.outputs.len() == new.outputs.len()
        && old
            .outputs
            .iter()
            .zip(&new.outputs)
            .all(|(a, b)| a.name == b.name && a.inputs == b.inputs && a.destination == b.destination)
}

/// Starts the supervisor of the child.
fn start_child(exec: &mut ExecSlot, cfg: &Config, env: Env) {
    let Some(requests) = exec.requests.take() else { return };
    let spec = ChildSpec { argv: exec.argv.clone(), exec: cfg.exec.clone() };
    exec.env = Some(env.clone());
    exec.kill_timeout = cfg.exec.kill_timeout;
    let state = exec.handle.state();
    exec.task = Some(tokio::spawn(child::supervise(spec, env, state, requests, exec.stop.clone())));
}

/// Resolves with the child's exit code once its supervisor returns; never without a child.
async fn join_child(exec: Option<&mut ExecSlot>) -> i32 {
    let Some(exec) = exec else { return std::future::pending().await };
    let Some(task) = exec.task.as_mut() else { return std::future::pending().await };
    let code = task.await.unwrap_or(1);
    // Polling a finished JoinHandle again panics: forget it.
    exec.task = None;
    code
}

/// The next reloaded configuration; never without a reload channel.
async fn next_reload(rx: Option<&mut mpsc::Receiver<Config>>) -> Option<Config> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The child's environment from the keys of `exec.env` (problems with single keys are logged).
fn env_from_view(view: &View, e: &ExecEnv) -> Env {
    let (env, problems) = child_env(view, e);
    for p in problems {
        warn!("exec.env: {p}");
    }
    env
}

/// One variable per key under the prefix: the name sanitized (or checked) and optionally upcased,
/// the value as it is. Keys that cannot become a variable are skipped, each with a problem saying why.
pub fn child_env(view: &View, e: &ExecEnv) -> (Env, Vec<String>) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    for (rel, value) in view.relative() {
        if rel.is_empty() || rel.ends_with('/') {
            continue; // folder markers
        }
        let key = format!("{}{rel}", e.prefix);
        let name = if e.sanitize {
            crate::format::env::name(rel, e.upcase)
        } else {
            let valid = rel.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && rel.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "key `{key}` is not a valid variable name (letters, digits and _, not starting with a digit); \
                     skipped. Set `sanitize: true` to turn other characters into _"
                ));
                continue;
            }
            if e.upcase {
                rel.to_ascii_uppercase()
            } else {
                rel.to_string()
            }
        };
        let Ok(v) = std::str::from_utf8(value) else {
            problems.push(format!("the value of `{key}` is not UTF-8; skipped"));
            continue;
        };
        if v.contains('\0') {
            problems.push(format!("the value of `{key}` holds a NUL byte, which an environment cannot; skipped"));
            continue;
        }
        if let Some(prev) = out.iter_mut().find(|(n, _)| *n == name) {
            problems.push(format!("key `{key}` gives variable {name} a second time; the later key wins"));
            prev.1 = v.to_string();
            continue;
        }
        out.push((name, v.to_string()));
    }
    (out, problems)
}

/// Renders the due outputs and commits them; returns what was written and the first error, if any.
fn render_pass(
    cfg: &Config,
    slots: &mut [OutputSlot],
    due: &[usize],
    session: &mut Session,
) -> (PassReport, Result<(), String>) {
    let mut report = PassReport::default();
    let mut first_error = Ok(());
    tokio::task::block_in_place(|| {
        for &i in due {
            let slot = &mut slots[i];
            let o = &cfg.outputs[i];
            slot.dirty = None;
            let views: Vec<View> = slot.subs.iter().filter_map(|s| s.latest()).collect();
            let first = !session.rendered.contains(&o.name);
            match slot.runtime.render_commit(o, &views, &cfg.limits, &slot.stats) {
                Ok(outcome) if views.iter().any(|v| v.stale) => {
                    let stale: Vec<&str> = views.iter().filter(|v| v.stale).map(|v| &*v.source).collect();
                    warn!(output = %o.name, sources = ?stale, ?outcome,
                        "rendered from the last-known-good cache: the backend has not answered since start");
                    session.rendered.insert(o.name.clone());
                    if outcome == Outcome::Written {
                        report.written.push(i);
                        if first {
                            report.first.push(i);
                        }
                    }
                }
                Ok(Outcome::Written) => {
                    let latency = slot.runtime.last_latency.unwrap_or_default();
                    info!(output = %o.name, destination = %o.destination.display(), latency_us = latency.as_micros() as u64, "rendered and written");
                    report.written.push(i);
                    if first {
                        report.first.push(i);
                    }
                    session.rendered.insert(o.name.clone());
                }
                Ok(Outcome::Unchanged) => {
                    session.rendered.insert(o.name.clone());
                    info!(output = %o.name, "rendered; content unchanged, not rewritten");
                }
                Err(e) => {
                    let msg = format!("output `{}`: {e}; the previous {} stays", o.name, o.destination.display());
                    // The sentence for people, the fields for log queries.
                    error!(output = %o.name, destination = %o.destination.display(), error = %e, "{msg}");
                    if first_error.is_ok() {
                        first_error = Err(msg);
                    }
                }
            }
        }
    });
    if !report.written.is_empty() {
        session.passes += 1;
        report.pass = session.passes;
    }
    (report, first_error)
}

/// "output `app` needs main:config/app/" for every input without a first snapshot.
fn pending_inputs(cfg: &Config, slots: &[OutputSlot]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        for (input, sub) in cfg.outputs[i].inputs.iter().zip(&slot.subs) {
            if sub.latest().is_none() {
                out.push(format!(
                    "output `{}` needs source `{}` prefix `{}`",
                    cfg.outputs[i].name, input.source, input.prefix
                ));
            }
        }
    }
    out
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_tokio(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(keys: &[(&str, &[u8])]) -> View {
        let entries = keys.iter().map(|(k, v)| (format!("env/{k}"), bytes::Bytes::copy_from_slice(v))).collect();
        View {
            source: "main".into(),
            prefix: "env/".into(),
            version: 1,
            entries: Arc::new(entries),
            received: Instant::now(),
            stale: false,
        }
    }

    fn env_cfg(sanitize: bool, upcase: bool) -> ExecEnv {
        ExecEnv { source: "main".into(), prefix: "env/".into(), sanitize, upcase }
    }

    #[test]
    fn child_env_sanitizes_and_upcases() {
        let v = view(&[("db-host", b"h"), ("app/port", b"80"), ("9lives", b"x"), ("dir/", b"")]);
        let (env, problems) = child_env(&v, &env_cfg(true, true));
        // In key order: 9lives, app/port, db-host.
        assert_eq!(
            env,
            vec![("_9LIVES".into(), "x".into()), ("APP_PORT".into(), "80".into()), ("DB_HOST".into(), "h".into())]
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn child_env_reports_what_it_skips() {
        let v = view(&[("db-host", b"h"), ("OK", b"1"), ("bin", b"\xff"), ("nul", b"a\0b")]);
        let (env, problems) = child_env(&v, &env_cfg(false, false));
        assert_eq!(env, vec![("OK".into(), "1".into())]);
        assert_eq!(
            problems,
            vec![
                "the value of `env/bin` is not UTF-8; skipped".to_string(),
                "key `env/db-host` is not a valid variable name (letters, digits and _, not starting with a digit); \
                 skipped. Set `sanitize: true` to turn other characters into _"
                    .to_string(),
                "the value of `env/nul` holds a NUL byte, which an environment cannot; skipped".to_string(),
            ]
        );
        let v = view(&[("a-b", b"1"), ("a.b", b"2")]);
        let (env, problems) = child_env(&v, &env_cfg(true, false));
        assert_eq!(env, vec![("a_b".into(), "2".into())]);
        assert_eq!(problems, vec!["key `env/a.b` gives variable a_b a second time; the later key wins".to_string()]);
    }
}
