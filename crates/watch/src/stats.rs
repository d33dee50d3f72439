//! Per-source counters, shared between a source task and whoever reports on it (/metrics, /status).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// What a source has done so far. Sources update it; the daemon reads it. Never holds a value or a token.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Whether the last request or stream to the backend succeeded.
    pub connected: AtomicBool,
    /// Requests (or stream creations) made to the backend.
    pub requests: AtomicU64,
    /// Failed requests, by kind: connection, timeout, http status, protocol.
    pub errors_connect: AtomicU64,
    pub errors_status: AtomicU64,
    pub errors_other: AtomicU64,
    /// Reconnects after a broken connection or stream.
    pub reconnects: AtomicU64,
    /// The last index or revision seen.
    pub last_version: AtomicU64,
    /// Resyncs (index resets, compactions).
    pub resyncs: AtomicU64,
    /// The last error, for /status and logs (message only; never a value or token).
    pub last_error: Mutex<Option<(SystemTime, String)>>,
    /// When the source last delivered a change.
    pub last_change: Mutex<Option<SystemTime>>,
    /// Outputs are being served from the last-known-good cache because the backend has not answered.
    pub serving_cache: AtomicBool,
}

/// The kind of a failed request, for the errors-by-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Status,
    Other,
}

impl SourceStats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ok(&self, version: u64) {
        self.connected.store(true, Ordering::Relaxed);
        self.last_version.store(version, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) {
        self.connected.store(false, Ordering::Relaxed);
        let counter = match kind {
            ErrorKind::Connect => &self.errors_connect,
            ErrorKind::Status => &self.errors_status,
            ErrorKind::Other => &self.errors_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((SystemTime::now(), message.into()));
    }

    pub fn changed(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    }

    /// Failed requests of every kind so far.
    pub fn errors_total(&self) -> u64 {
        self.errors_connect.load(Ordering::Relaxed)
            + self.errors_status.load(Ordering::Relaxed)
            + self.errors_other.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
