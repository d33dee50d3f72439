//! `/metrics`: the daemon's counters in the Prometheus text exposition format (version 0.0.4).
//!
//! Sources and outputs keep their own atomics (they are updated on hot paths and also read by
//! /status), so instead of registering one prometheus-client metric per counter, a [`Collector`]
//! reads them at scrape time. Label values are source, output and destination names and fixed
//! words; never a key or a value, so the number of series stays bounded by the config.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::output::FailureReason;
use crate::state::{ActionKind, Current};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry the endpoint encodes on each scrape.
pub fn registry(current: Arc<Current>, max_stale: Duration) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SharedCollector { current, max_stale }));
    r
}

/// Encodes `registry` as Prometheus text.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Reads the shared state at scrape time.
#[derive(Debug)]
struct SharedCollector {
    /// The running render loop's state, looked up at each scrape (a reload replaces it).
    current: Arc<Current>,
    /// `http.max_stale`, for `kvsync_source_stale`.
    max_stale: Duration,
}

/// Writes one metric: `family!(enc, name, help, Counter|Gauge, samples)` with samples as
/// (labels, value) pairs, or `family!(single enc, name, help, Counter|Gauge, value)` without labels.
/// Counter names get their `_total` suffix from the encoder.
macro_rules! family {
    (single $enc:expr, $name:expr, $help:expr, $kind:ident, $v:expr) => {{
        let m = $enc.encode_descriptor($name, $help, None, MetricType::$kind)?;
        family!(@one $kind, m, $v);
    }};
    (@one Counter, $m:expr, $v:expr) => { ConstCounter::new($v as u64).encode($m)? };
    (@one Gauge, $m:expr, $v:expr) => { ConstGauge::new($v as i64).encode($m)? };
    ($enc:expr, $name:expr, $help:expr, $kind:ident, $samples:expr) => {{
        let mut m = $enc.encode_descriptor($name, $help, None, MetricType::$kind)?;
        for (labels, v) in $samples {
            family!(@one $kind, m.encode_family(&labels)?, v);
        }
    }};
}

impl Collector for SharedCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let shared = self.current.get();
        let s = &*shared;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

        family!(
            enc,
            "kvsync_build_info",
            "The kvsync version that is running (always 1).",
            Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], 1)]
        );
        family!(single
            enc,
            "kvsync_ready",
            "1 when every output has rendered once and no source is stale (as /readyz).",
            Gauge,
            s.readiness(self.max_stale).ready as i64
        );

        // Sources.
        let src = |f: &dyn Fn(&kvsync_watch::SourceStats) -> u64| {
            s.sources.iter().map(move |x| ([("source", x.name.as_str())], f(&x.stats))).collect::<Vec<_>>()
        };
        family!(
            enc,
            "kvsync_source_info",
            "A configured source and its backend type (always 1).",
            Gauge,
            s.sources.iter().map(|x| ([("source", x.name.as_str()), ("type", x.kind)], 1))
        );
        family!(
            enc,
            "kvsync_source_connected",
            "1 when the source's last request or stream to its backend succeeded.",
            Gauge,
            src(&|st| st.is_connected() as u64)
        );
        family!(
            enc,
            "kvsync_source_requests",
            "Requests (or stream creations, or directory reads) made to the backend.",
            Counter,
            src(&|st| load(&st.requests))
        );
        let errors = s.sources.iter().flat_map(|x| {
            let st = &x.stats;
            [
                ([("source", x.name.as_str()), ("kind", "connect")], load(&st.errors_connect)),
                ([("source", x.name.as_str()), ("kind", "status")], load(&st.errors_status)),
                ([("source", x.name.as_str()), ("kind", "other")], load(&st.errors_other)),
            ]
        });
        family!(
            enc,
            "kvsync_source_errors",
            "Failed requests, by kind: connect (connection or TLS), status (an error answer), other.",
            Counter,
            errors
        );
        family!(
            enc,
            "kvsync_source_reconnects",
            "Reconnects after a broken connection or stream.",
            Counter,
            src(&|st| load(&st.reconnects))
        );
        family!(
            enc,
            "kvsync_source_resyncs",
            "Full re-reads forced by the backend (Consul index reset, etcd compaction).",
            Counter,
            src(&|st| load(&st.resyncs))
        );
        family!(
            enc,
            "kvsync_source_last_version",
            "The last Consul index or etcd revision seen (file sources: a count of reads).",
            Gauge,
            src(&|st| load(&st.last_version))
        );
        family!(
            enc,
            "kvsync_source_stale",
            "1 while the source has been failing for longer than http.max_stale (outputs keep old data).",
            Gauge,
            src(&|st| st.failing_for().is_some_and(|d| d > self.max_stale) as u64)
        );

        family!(
            enc,
            "kvsync_source_serving_cache",
            "1 while the source's outputs come from the last-known-good cache (its backend has not answered since start).",
            Gauge,
            src(&|st| st.serving_cache.load(Ordering::Relaxed) as u64)
        );

        // Outputs.
        let out = |f: &dyn Fn(&crate::output::OutputStats) -> u64| {
            s.outputs.iter().map(move |x| ([("output", x.name.as_str())], f(&x.stats))).collect::<Vec<_>>()
        };
        family!(
            enc,
            "kvsync_output_info",
            "A configured output and its destination (always 1).",
            Gauge,
            s.outputs.iter().map(|x| ([("output", x.name.as_str()), ("destination", x.destination.as_str())], 1))
        );
        family!(enc, "kvsync_output_renders", "Render attempts.", Counter, out(&|st| load(&st.renders)));
        family!(
            enc,
            "kvsync_output_writes",
            "Renders that changed the destination on disk.",
            Counter,
            out(&|st| load(&st.writes))
        );
        family!(
            enc,
            "kvsync_output_skipped_unchanged",
            "Renders whose result matched the destination, so nothing was written.",
            Counter,
            out(&|st| load(&st.skipped_unchanged))
        );
        let failures = s.outputs.iter().flat_map(|x| {
            FailureReason::ALL.map(|r| ([("output", x.name.as_str()), ("reason", r.as_str())], x.stats.failures(r)))
        });
        family!(
            enc,
            "kvsync_output_failures",
            "Renders that left the previous content in place, by reason: limit, render, check, write.",
            Counter,
            failures
        );
        let held = s.outputs.iter().flat_map(|x| {
            let now = x.hold.get().map(|h| h.guard);
            crate::guard::GuardKind::ALL
                .map(|g| ([("output", x.name.as_str()), ("guard", g.as_str())], (now == Some(g)) as u64))
        });
        family!(
            enc,
            "kvsync_output_held",
            "1 while the output is held by this guard (or rolled_back): its destination keeps the last good version.",
            Gauge,
            held
        );
        family!(
            enc,
            "kvsync_output_last_success_timestamp_seconds",
            "Unix time of the last successful render (written or unchanged); 0 before the first.",
            Gauge,
            out(&|st| load(&st.last_success))
        );
        {
            let mut m = enc.encode_descriptor(
                "kvsync_change_to_disk_latency_seconds",
                "Seconds from a source receiving a change to the commit that put it on disk.",
                None,
                MetricType::Histogram,
            )?;
            for x in &s.outputs {
                x.stats.latency.encode(m.encode_family(&[("output", x.name.as_str())])?)?;
            }
        }

        // Actions and the supervised child.
        let actions = ActionKind::ALL.into_iter().flat_map(|k| {
            let (ok, failed) = s.actions.get(k);
            [([("kind", k.name()), ("result", "ok")], ok), ([("kind", k.name()), ("result", "failed")], failed)]
        });
        family!(enc, "kvsync_actions", "on_change actions run, by kind and result (ok, failed).", Counter, actions);
        // Only under `kvsync exec`, once the child has started.
        if s.child.started_at.load(Ordering::Relaxed) != 0 {
            family!(single
                enc,
                "kvsync_child_up",
                "1 while the supervised child runs.",
                Gauge,
                (s.child.pid.load(Ordering::Relaxed) != 0) as i64
            );
            family!(single
                enc,
                "kvsync_child_restarts",
                "Restarts of the supervised child.",
                Counter,
                load(&s.child.restarts)
            );
            family!(single
                enc,
                "kvsync_orphans_reaped",
                "Orphaned processes reaped as PID 1 or child subreaper.",
                Counter,
                load(&s.child.reaped)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{OutputState, SourceState};

    #[test]
    fn exports_sources_outputs_actions_in_prometheus_text() {
        let mut shared = crate::state::Shared::default();
        shared.sources.push(SourceState { name: "main".into(), kind: "file", stats: Arc::default() });
        shared.outputs.push(OutputState {
            name: "app".into(),
            destination: "/etc/app.conf".into(),
            stats: Arc::default(),
            hold: Arc::default(),
            kept: Default::default(),
        });
        shared.sources[0].stats.request();
        shared.sources[0].stats.ok(12);
        shared.outputs[0].stats.writes.fetch_add(2, Ordering::Relaxed);
        shared.outputs[0].stats.latency.observe(0.003);
        shared.actions.record(ActionKind::Command, true);
        let current = Current::default();
        current.publish(Arc::new(shared));
        let text = encode(&registry(Arc::new(current), Duration::from_secs(60))).unwrap();
        for line in [
            "# TYPE kvsync_source_requests_total counter",
            "kvsync_source_requests_total{source=\"main\"} 1",
            "kvsync_source_last_version{source=\"main\"} 12",
            "kvsync_source_connected{source=\"main\"} 1",
            "kvsync_source_errors_total{source=\"main\",kind=\"connect\"} 0",
            "kvsync_output_writes_total{output=\"app\"} 2",
            "kvsync_output_failures_total{output=\"app\",reason=\"check\"} 0",
            "kvsync_change_to_disk_latency_seconds_bucket{output=\"app\",le=\"0.005\"} 1",
            "kvsync_change_to_disk_latency_seconds_count{output=\"app\"} 1",
            "kvsync_actions_total{kind=\"command\",result=\"ok\"} 1",
            "kvsync_actions_total{kind=\"signal\",result=\"failed\"} 0",
            "kvsync_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Not supervising a child: no child series.
        assert!(!text.contains("kvsync_child"), "{text}");
    }
}
