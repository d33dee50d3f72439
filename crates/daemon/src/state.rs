//! What the daemon is doing, shared with whoever reports on it (the HTTP endpoint, `status`, logs).
//! Never holds a key's value or a token.
#![allow(dead_code)] // read by the HTTP endpoint and `kvsync status`

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

/// The daemon's shared state.
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
}
