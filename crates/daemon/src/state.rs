//! What the daemon is doing, shared with whoever reports on it (the HTTP endpoint, `status`, logs).
//! Never holds a key's value or a token.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use kvsync_watch::SourceStats;

use crate::output::OutputStats;

/// One source as reported.
#[derive(Debug)]
pub struct SourceState {
    pub name: String,
    /// consul | etcd | file
    pub kind: &'static str,
    pub stats: Arc<SourceStats>,
}

/// One output as reported.
#[derive(Debug)]
pub struct OutputState {
    pub name: String,
    pub destination: String,
    pub stats: Arc<OutputStats>,
    /// Whether a guard or a rollback holds it.
    pub hold: Arc<crate::guard::HoldState>,
    /// Where its kept versions are (`keep: N`).
    pub kept: crate::keep::KeepSpec,
}

/// Whether the daemon is ready to serve, and if not, why (the body of /readyz).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Outputs that have not rendered once yet, each saying what it waits for.
    pub pending: Vec<String>,
    /// Sources that have been failing for longer than `http.max_stale`.
    pub stale: Vec<String>,
    /// Sources whose outputs were rendered from the last-known-good cache because the backend has
    /// not answered since start. Informational: a backend that stays away also shows up in `stale`
    /// once `http.max_stale` has passed.
    pub cached: Vec<String>,
    /// Outputs held by a guard or a rollback: their destination keeps the last good version.
    /// Absent while none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

/// The state of one run of the render loop (a config reload starts a new one); the counters that
/// outlive it (actions, the child) are shared with the next run.
#[derive(Debug, Default)]
pub struct Shared {
    pub sources: Vec<SourceState>,
    pub outputs: Vec<OutputState>,
    /// Every output has rendered once.
    ready: AtomicBool,
    /// What the first render still waits for ("output `app` needs source `main` prefix `app/`").
    pending: Mutex<Vec<String>>,
    /// Actions run, by kind and result (kept across config reloads).
    pub actions: Arc<ActionStats>,
    /// The supervised child of `kvsync exec` (kept across config reloads).
    pub child: Arc<ChildState>,
}

/// What the endpoint reports from: the [`Shared`] of the render loop that runs now, replaced when a
/// reload starts a new loop, and when the process started. Lives as long as the process, so the
/// endpoint keeps serving (and keeps its port) across reloads.
#[derive(Debug)]
pub struct Current {
    shared: RwLock<Arc<Shared>>,
    /// When kvsync started (monotonic for uptime, wall clock for /status).
    pub started: Instant,
    pub started_at: SystemTime,
}

impl Default for Current {
    fn default() -> Self {
        Current { shared: RwLock::default(), started: Instant::now(), started_at: SystemTime::now() }
    }
}

impl Current {
    /// The running loop's state.
    pub fn get(&self) -> Arc<Shared> {
        Arc::clone(&self.shared.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called by each run of the render loop when it starts.
    pub fn publish(&self, shared: Arc<Shared>) {
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = shared;
    }
}

/// Counters of actions by kind (signal, command, http, restart) and result (ok, failed).
#[derive(Debug, Default)]
pub struct ActionStats {
    /// Indexed by `ActionKind as usize`; [ok, failed].
    counts: [[AtomicU64; 2]; 4],
}

/// The kinds of `on_change` action, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Signal = 0,
    Command = 1,
    Http = 2,
    Restart = 3,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [ActionKind::Signal, ActionKind::Command, ActionKind::Http, ActionKind::Restart];

    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Signal => "signal",
            ActionKind::Command => "command",
            ActionKind::Http => "http",
            ActionKind::Restart => "restart",
        }
    }
}

impl ActionStats {
    pub fn record(&self, kind: ActionKind, ok: bool) {
        self.counts[kind as usize][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// (succeeded, failed) for one kind.
    pub fn get(&self, kind: ActionKind) -> (u64, u64) {
        let c = &self.counts[kind as usize];
        (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed))
    }
}

/// The supervised child as reported.
#[derive(Debug, Default)]
pub struct ChildState {
    /// Its pid while it runs; 0 when there is none.
    pub pid: AtomicU32,
    /// How many times it was started again after the first start.
    pub restarts: AtomicU64,
    /// Unix seconds of its last start; 0 = never started.
    pub started_at: AtomicU64,
    /// Orphaned zombies reaped (PID 1 / subreaper duty).
    pub reaped: AtomicU64,
}

impl Shared {
    /// State for one run of the render loop, sharing the counters that outlive it.
    pub fn new(actions: Arc<ActionStats>, child: Arc<ChildState>) -> Shared {
        Shared { actions, child, ..Shared::default() }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn pending(&self) -> Vec<String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_pending(&self, p: Vec<String>) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Ready once every output has rendered, and while no source has been failing for longer than
    /// `max_stale` (its outputs would be serving old data without anyone noticing).
    pub fn readiness(&self, max_stale: Duration) -> Readiness {
        let mut pending = Vec::new();
        if !self.is_ready() {
            let waiting = self.pending();
            for o in &self.outputs {
                if o.stats.last_success.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                let prefix = format!("output `{}` ", o.name);
                let mine: Vec<&String> = waiting.iter().filter(|p| p.starts_with(&prefix)).collect();
                if !mine.is_empty() {
                    pending.extend(mine.into_iter().cloned());
                } else if let Some(f) = o.stats.last_failure() {
                    pending.push(format!(
                        "output `{}` has not rendered yet: {} failed: {}",
                        o.name,
                        f.reason.as_str(),
                        f.message
                    ));
                } else {
                    pending.push(format!("output `{}` has not rendered yet", o.name));
                }
            }
        }
        let stale = self.stale_sources(max_stale);
        let cached = self
            .sources
            .iter()
            .filter(|s| s.stats.serving_cache.load(Ordering::Relaxed))
            .map(|s| format!("source `{}` is served from the cache until its backend answers", s.name))
            .collect();
        let held: Vec<String> = self.outputs.iter().filter_map(|o| o.hold.get()).map(|h| h.message).collect();
        Readiness { ready: self.is_ready() && stale.is_empty() && held.is_empty(), pending, stale, cached, held }
    }

    /// "source `main` has been failing for 12s (over http.max_stale 10s): cannot read ..." for every
    /// source failing longer than `max_stale`.
    pub fn stale_sources(&self, max_stale: Duration) -> Vec<String> {
        let mut stale = Vec::new();
        for s in &self.sources {
            let Some(failing) = s.stats.failing_for() else { continue };
            if failing <= max_stale {
                continue;
            }
            let last = s.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let why = last.map(|(_, m)| format!(": {m}")).unwrap_or_default();
            stale.push(format!(
                "source `{}` has been failing for {} (over http.max_stale {}){why}",
                s.name,
                crate::timefmt::human(failing),
                crate::config::units::format_duration(max_stale)
            ));
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_watch::stats::ErrorKind;

    fn shared() -> Shared {
        let mut s = Shared::default();
        s.sources.push(SourceState { name: "main".into(), kind: "file", stats: Arc::default() });
        s.outputs.push(OutputState {
            name: "app".into(),
            destination: "/x".into(),
            stats: Arc::default(),
            hold: Arc::default(),
            kept: Default::default(),
        });
        s
    }

    #[test]
    fn pending_names_what_each_output_waits_for() {
        let s = shared();
        s.set_pending(vec!["output `app` needs source `main` prefix `app/`".into()]);
        let r = s.readiness(Duration::from_secs(60));
        assert!(!r.ready);
        assert_eq!(r.pending, vec!["output `app` needs source `main` prefix `app/`"]);
        s.set_pending(vec![]);
        assert_eq!(s.readiness(Duration::from_secs(60)).pending, vec!["output `app` has not rendered yet"]);
        s.outputs[0].stats.last_success.store(1, Ordering::Relaxed);
        s.set_ready();
        assert_eq!(
            s.readiness(Duration::from_secs(60)),
            Readiness { ready: true, pending: vec![], stale: vec![], cached: vec![], held: vec![] }
        );
        s.sources[0].stats.serving_cache.store(true, Ordering::Relaxed);
        let r = s.readiness(Duration::from_secs(60));
        assert!(r.ready);
        assert_eq!(r.cached, vec!["source `main` is served from the cache until its backend answers"]);
    }

    #[test]
    fn a_source_failing_longer_than_max_stale_makes_it_unready() {
        let s = shared();
        s.set_ready();
        s.sources[0].stats.error(ErrorKind::Connect, "connection refused");
        // Within max_stale: still ready.
        assert!(s.readiness(Duration::from_secs(60)).ready);
        std::thread::sleep(Duration::from_millis(20));
        let r = s.readiness(Duration::from_millis(10));
        assert!(!r.ready);
        assert_eq!(r.stale.len(), 1);
        assert!(r.stale[0].starts_with("source `main` has been failing for 0s (over http.max_stale 10ms)"), "{r:?}");
        assert!(r.stale[0].ends_with(": connection refused"), "{r:?}");
        s.sources[0].stats.ok(2);
        assert!(s.readiness(Duration::from_millis(10)).ready);
    }
}
