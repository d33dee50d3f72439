//! Per-source counters, shared between a source task and whoever reports on it (/metrics, /status).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

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
    /// When the current run of failures began: set by the first error after a success, cleared by the
    /// next success. /readyz compares it with `http.max_stale`; None while the source is healthy.
    pub failing_since: Mutex<Option<Instant>>,
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
        *self.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) {
        self.connected.store(false, Ordering::Relaxed);
        let counter = match kind {
            ErrorKind::Connect => &self.errors_connect,
            ErrorKind::Status => &self.errors_status,
            ErrorKind::Other => &self.errors_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.failing_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
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

    /// How long the source has been failing without a success in between; None while it is healthy.
    pub fn failing_for(&self) -> Option<std::time::Duration> {
        self.failing_since.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_spans_a_run_of_errors_and_clears_on_success() {
        let s = SourceStats::default();
        assert!(s.failing_for().is_none());
        s.error(ErrorKind::Connect, "refused");
        let first = s.failing_since.lock().unwrap().expect("set by the first error");
        s.error(ErrorKind::Status, "503");
        // A second error does not restart the clock.
        assert_eq!(*s.failing_since.lock().unwrap(), Some(first));
        assert_eq!(s.errors_connect.load(Ordering::Relaxed), 1);
        assert_eq!(s.errors_status.load(Ordering::Relaxed), 1);
        assert!(!s.is_connected());
        s.ok(7);
        assert!(s.failing_for().is_none());
        assert!(s.is_connected());
        assert_eq!(s.last_version.load(Ordering::Relaxed), 7);
    }
}
