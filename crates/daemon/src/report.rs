//! The `/status` document: what `kvsync status` reads. One set of types for the endpoint that writes
//! it and the command that reads it, so the two cannot drift apart.
//!
//! It names sources, outputs, destinations, versions, times and error messages; it never carries a
//! key's value or a token (error messages are written to name keys and files, not their content).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::state::Current;
use crate::timefmt::rfc3339;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The version of the kvsync that answered.
    pub kvsync_version: String,
    /// The daemon's clock when it answered (RFC 3339 UTC); ages in the table are taken against it.
    pub now: String,
    pub started: String,
    pub uptime_seconds: u64,
    /// The same verdict as /readyz, with its reasons.
    pub ready: bool,
    pub pending: Vec<String>,
    pub stale: Vec<String>,
    #[serde(default)]
    pub cached: Vec<String>,
    /// Outputs held by a guard or a rollback, each with its reason.
    #[serde(default)]
    pub held: Vec<String>,
    pub sources: Vec<SourceReport>,
    pub outputs: Vec<OutputReport>,
    /// The supervised child of `kvsync exec`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    /// consul | etcd | file
    pub kind: String,
    /// Whether the last request or stream to the backend succeeded.
    pub connected: bool,
    /// The last Consul index or etcd revision seen (for `file`, a count of reads).
    pub version: u64,
    pub requests: u64,
    pub errors: u64,
    pub reconnects: u64,
    /// When the source last delivered a change.
    pub last_change: Option<String>,
    pub last_error: Option<ErrorReport>,
    /// How long the source has been failing without a success in between.
    pub failing_seconds: Option<u64>,
    /// Outputs use the last-known-good cache because the backend has not answered since start.
    #[serde(default)]
    pub serving_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputReport {
    pub name: String,
    pub destination: String,
    pub renders: u64,
    pub writes: u64,
    pub skipped_unchanged: u64,
    pub failures: u64,
    pub last_render: Option<String>,
    pub last_write: Option<String>,
    pub last_failure: Option<FailureReport>,
    /// What holds the output (a guard, a rollback); absent when it follows upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
    /// Kept versions (`keep: N`), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldReport {
    /// min_keys | max_removed | max_changed | require | rolled_back
    pub guard: String,
    pub since: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptReport {
    /// 1 is the version the current one replaced; `kvsync rollback OUTPUT --to K`.
    pub version: u32,
    pub path: String,
    /// When it was published, and the render pass that wrote it (0: unknown).
    pub published: Option<String>,
    pub pass: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReport {
    pub at: String,
    /// limit | render | check | write
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildReport {
    /// None while no child runs (between a crash and its restart).
    pub pid: Option<u32>,
    pub restarts: u64,
    pub uptime_seconds: Option<u64>,
    /// Orphaned processes kvsync reaped as PID 1 or child subreaper.
    pub orphans_reaped: u64,
}

impl StatusReport {
    /// Takes the report from the daemon's shared state.
    pub fn take(current: &Current, max_stale: Duration) -> StatusReport {
        let shared = current.get();
        let readiness = shared.readiness(max_stale);
        let sources = shared
            .sources
            .iter()
            .map(|s| {
                let st = &s.stats;
                let last_error = st.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let last_change = *st.last_change.lock().unwrap_or_else(|e| e.into_inner());
                SourceReport {
                    name: s.name.clone(),
                    kind: s.kind.to_string(),
                    connected: st.is_connected(),
                    version: st.last_version.load(Ordering::Relaxed),
                    requests: st.requests.load(Ordering::Relaxed),
                    errors: st.errors_connect.load(Ordering::Relaxed)
                        + st.errors_status.load(Ordering::Relaxed)
                        + st.errors_other.load(Ordering::Relaxed),
                    reconnects: st.reconnects.load(Ordering::Relaxed),
                    last_change: last_change.map(rfc3339),
                    last_error: last_error.map(|(at, message)| ErrorReport { at: rfc3339(at), message }),
                    failing_seconds: st.failing_for().map(|d| d.as_secs()),
                    serving_cache: st.serving_cache.load(Ordering::Relaxed),
                }
            })
            .collect();
        let outputs = shared
            .outputs
            .iter()
            .map(|o| {
                let st = &o.stats;
                let time =
                    |m: &std::sync::Mutex<Option<SystemTime>>| m.lock().unwrap_or_else(|e| e.into_inner()).map(rfc3339);
                OutputReport {
                    name: o.name.clone(),
                    destination: o.destination.clone(),
                    renders: st.renders.load(Ordering::Relaxed),
                    writes: st.writes.load(Ordering::Relaxed),
                    skipped_unchanged: st.skipped_unchanged.load(Ordering::Relaxed),
                    failures: st.failures.iter().map(|f| f.load(Ordering::Relaxed)).sum(),
                    last_render: time(&st.last_render),
                    last_write: time(&st.last_write),
                    last_failure: st.last_failure().map(|f| FailureReport {
                        at: rfc3339(f.at),
                        reason: f.reason.as_str().to_string(),
                        message: f.message,
                    }),
                    held: o.hold.get().map(|h| HeldReport {
                        guard: h.guard.as_str().to_string(),
                        since: rfc3339(h.since),
                        message: h.message,
                    }),
                    kept: o
                        .kept
                        .list()
                        .into_iter()
                        .map(|k| KeptReport {
                            version: k.k,
                            path: k.path.display().to_string(),
                            published: k.published.map(|p| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(p.at))),
                            pass: k.published.map_or(0, |p| p.pass),
                        })
                        .collect(),
                }
            })
            .collect();
        // A child exists once `kvsync exec` has started it (after the first full render).
        let c = &shared.child;
        let started_at = c.started_at.load(Ordering::Relaxed);
        let child = (started_at != 0).then(|| {
            let pid = c.pid.load(Ordering::Relaxed);
            let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            ChildReport {
                pid: (pid != 0).then_some(pid),
                restarts: c.restarts.load(Ordering::Relaxed),
                uptime_seconds: (pid != 0).then(|| now.saturating_sub(started_at)),
                orphans_reaped: c.reaped.load(Ordering::Relaxed),
            }
        });
        StatusReport {
            kvsync_version: env!("CARGO_PKG_VERSION").to_string(),
            now: rfc3339(SystemTime::now()),
            started: rfc3339(current.started_at),
            uptime_seconds: current.started.elapsed().as_secs(),
            ready: readiness.ready,
            pending: readiness.pending,
            stale: readiness.stale,
            cached: readiness.cached,
            held: readiness.held,
            sources,
            outputs,
            child,
        }
    }
}
