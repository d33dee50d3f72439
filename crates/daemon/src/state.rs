//! What the daemon is doing, shared with whoever reports on it (the HTTP endpoint, `status`, logs).
//! Never holds a key's value or a token.
#![allow(dead_code)] // read by the HTTP endpoint and `kvsync status`

use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Shared {
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
