//! The daemon loop: waits for source changes, applies quiescence, runs render passes, then actions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvsync_watch::{EngineBuilder, Subscription, View};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::actions::{self, PassReport};
use crate::config::Config;
use crate::output::{Outcome, OutputRuntime, OutputStats};
use crate::sources;
use crate::state::{OutputState, Shared, SourceState};

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

/// Why the daemon stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error("timed out after {after}: {pending}")]
    Timeout { after: String, pending: String },
    #[error("{0}")]
    Render(String),
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

/// Runs the daemon until `cancel` fires (or, for `once`, until every output has rendered).
pub async fn run(cfg: Arc<Config>, mode: RunMode, cancel: CancellationToken) -> Result<(), DaemonError> {
    let mut builder = EngineBuilder::new();
    if let Some(c) = &cfg.cache {
        builder.cache(kvsync_watch::Cache { dir: c.dir.clone(), max_age: c.max_age });
    }
    let mut shared = Shared::default();
    for s in &cfg.sources {
        let built = sources::build(&cfg, s).map_err(DaemonError::Setup)?;
        let kind = built.source.kind();
        shared.sources.push(SourceState { name: built.name.clone(), kind, stats: Arc::clone(&built.stats) });
        builder.add_source(&built.name, built.source, built.stats);
    }
    let mut slots = Vec::with_capacity(cfg.outputs.len());
    for o in &cfg.outputs {
        let mut subs = Vec::new();
        for i in &o.inputs {
            subs.push(builder.subscribe(&i.source, &i.prefix).map_err(|e| DaemonError::Setup(e.to_string()))?);
        }
        let stats: Arc<OutputStats> = Arc::default();
        shared.outputs.push(OutputState {
            name: o.name.clone(),
            destination: o.destination.display().to_string(),
            stats: Arc::clone(&stats),
        });
        slots.push(OutputSlot { subs, runtime: OutputRuntime::new(), stats, dirty: None });
    }
    let shared = Arc::new(shared);
    shared.set_pending(pending_inputs(&cfg, &slots));
    let mut bell = builder.changes();
    let engine_cancel = cancel.child_token();
    let engine = builder.start(engine_cancel.clone());
    let started = Instant::now();
    let deadline = match mode {
        RunMode::Once { timeout: Some(t) } => Some(tokio::time::Instant::now() + t),
        _ => None,
    };
    let mut pending_log = tokio::time::interval_at(tokio::time::Instant::now() + PENDING_LOG_EVERY, PENDING_LOG_EVERY);
    let mut generation = 0u64;
    let mut all_rendered_logged = false;
    let result = loop {
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
            let report = render_pass(&cfg, &mut slots, &due, &mut generation);
            if let Err(e) = &report.1 {
                if matches!(mode, RunMode::Once { .. }) {
                    break Err(DaemonError::Render(e.clone()));
                }
            }
            if !report.0.written.is_empty() {
                actions::run(&cfg, &report.0).await;
            }
            if !all_rendered_logged && slots.iter().all(|s| s.runtime.rendered) {
                all_rendered_logged = true;
                shared.set_ready();
                info!(elapsed_ms = started.elapsed().as_millis() as u64, "every output has rendered");
                if matches!(mode, RunMode::Once { .. }) {
                    break Ok(());
                }
            }
            continue;
        }
        tokio::select! {
            // Shutdown requested.
            _ = cancel.cancelled() => break Ok(()),
            // A subscription received a new view.
            r = bell.changed() => {
                if r.is_err() {
                    break Err(DaemonError::Setup("the watch engine stopped".into()));
                }
            }
            // An output's quiescence period ends.
            _ = sleep_until(next_wake) => {}
            // Still waiting for first data: say exactly what for.
            _ = pending_log.tick() => {
                let pending = pending_inputs(&cfg, &slots);
                shared.set_pending(pending.clone());
                if !pending.is_empty() {
                    warn!("waiting for the first data of: {}", pending.join("; "));
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
    engine_cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(5), engine.wait()).await.is_err() {
        warn!("sources did not stop within 5s");
    }
    result
}

/// Renders the due outputs and commits them; returns what was written and the first error, if any.
fn render_pass(
    cfg: &Config,
    slots: &mut [OutputSlot],
    due: &[usize],
    generation: &mut u64,
) -> (PassReport, Result<(), String>) {
    let mut report = PassReport::default();
    let mut first_error = Ok(());
    tokio::task::block_in_place(|| {
        for &i in due {
            let slot = &mut slots[i];
            let o = &cfg.outputs[i];
            slot.dirty = None;
            let views: Vec<View> = slot.subs.iter().filter_map(|s| s.latest()).collect();
            let first = !slot.runtime.rendered;
            match slot.runtime.render_commit(o, &views, &cfg.limits, &slot.stats) {
                Ok(outcome) if views.iter().any(|v| v.stale) => {
                    let stale: Vec<&str> = views.iter().filter(|v| v.stale).map(|v| &*v.source).collect();
                    warn!(output = %o.name, sources = ?stale, ?outcome,
                        "rendered from the last-known-good cache: the backend has not answered since start");
                    if outcome == Outcome::Written {
                        report.written.push(i);
                        if first {
                            report.first.push(i);
                        }
                    }
                }
                Ok(Outcome::Written) => {
                    let latency = views.iter().map(|v| v.received.elapsed()).max().unwrap_or_default();
                    info!(output = %o.name, destination = %o.destination.display(), latency_us = latency.as_micros() as u64, "rendered and written");
                    report.written.push(i);
                    if first {
                        report.first.push(i);
                    }
                }
                Ok(Outcome::Unchanged) => {
                    info!(output = %o.name, "rendered; content unchanged, not rewritten");
                }
                Err(e) => {
                    let msg = format!("output `{}`: {e}; the previous {} stays", o.name, o.destination.display());
                    error!("{msg}");
                    if first_error.is_ok() {
                        first_error = Err(msg);
                    }
                }
            }
        }
    });
    if !report.written.is_empty() {
        *generation += 1;
        report.generation = *generation;
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
