//! The benchmark's results: a table for people, JSON for machines, PASS/FAIL against the targets.

use std::time::Duration;

use serde_json::json;

use crate::measure::{ms, summarize, Summary};

/// A reference observer of the same writes (a bare watcher, a peer client).
pub struct Reference {
    pub name: String,
    pub samples: Vec<Duration>,
}

/// Change-to-disk latency of one mode, next to its references (same writes, same run).
pub struct LatencyRow {
    pub mode: String,
    /// The first is the floor the target is measured against; any others are shown for context.
    pub references: Vec<Reference>,
    pub subject: Vec<Duration>,
    /// Changes written (one latency each: see `Recorder::latencies`).
    pub changes: usize,
    /// Distinct versions kvsync put on disk; fewer than `changes` means it coalesced some.
    pub versions: usize,
    /// Target on the difference to the first reference: (p50 ms, p99 ms).
    pub target: Option<(f64, f64)>,
}

pub struct BurstRow {
    pub backend: String,
    pub changes: usize,
    pub keys: usize,
    pub write_time: Duration,
    pub final_after: Duration,
    pub renders: usize,
    pub peak_rss: u64,
}

pub struct ScaleRow {
    pub backend: String,
    pub format: String,
    pub keys: usize,
    pub raw_bytes: u64,
    pub initial_sync: Duration,
    /// Peak RSS when the first render was done (the target), and after the changes.
    pub peak_rss: u64,
    pub peak_rss_after_changes: u64,
    /// What the backend alone takes to deliver one change to any watcher at that size, where that
    /// grows with the prefix (Consul answers a blocking query with the whole listing).
    pub backend_floor: Option<Duration>,
    /// Change-to-disk latency of each change made at that size, once kvsync had settled.
    pub changes: Vec<Duration>,
    /// A bare program doing the same disk work, on the same file system in the same run: writing the
    /// whole output, and writing what one change needs (see scenarios/scale.rs).
    pub floor_initial: Duration,
    pub floor_change: Duration,
}

impl ScaleRow {
    /// The median change.
    pub fn one_change(&self) -> Duration {
        let mut v = self.changes.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    pub fn max_change(&self) -> Duration {
        self.changes.iter().max().copied().unwrap_or_default()
    }
}

pub struct IdleRow {
    pub backend: String,
    pub mode: String,
    pub seconds: u64,
    pub rss: u64,
    pub cpu: Duration,
    pub connections: usize,
    /// Requests to the backend per minute (None where the backend cannot count them).
    pub requests_per_min: Option<f64>,
    /// How the requests were counted.
    pub requests_counted_by: String,
    /// Targets that apply to this backend and mode (beyond RSS and CPU, which apply to all).
    pub target_connections: Option<usize>,
    pub target_requests_per_min: Option<f64>,
}

#[derive(Default)]
pub struct Report {
    pub latency: Vec<LatencyRow>,
    pub burst: Vec<BurstRow>,
    pub scale: Vec<ScaleRow>,
    pub idle: Vec<IdleRow>,
    pub fleet: Vec<crate::scenarios::fleet::FleetRow>,
    pub notes: Vec<String>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

impl LatencyRow {
    pub fn subject_summary(&self) -> Summary {
        summarize(&self.subject)
    }

    /// (p50 diff, p99 diff) in ms against reference `i`.
    pub fn diffs(&self, i: usize) -> (f64, f64) {
        let s = self.subject_summary();
        let b = self.references.get(i).map(|r| summarize(&r.samples)).unwrap_or_default();
        (ms(s.p50) - ms(b.p50), ms(s.p99) - ms(b.p99))
    }

    /// Against the first reference. A sample that does not cover every change written is not judged.
    pub fn pass(&self) -> Option<bool> {
        let (d50, d99) = self.diffs(0);
        let complete = self.subject.len() == self.changes
            && self.references.first().is_some_and(|r| r.samples.len() == self.changes);
        self.target.map(|(t50, t99)| complete && d50 <= t50 && d99 <= t99)
    }
}

impl IdleRow {
    fn cpu_pct(&self) -> f64 {
        self.cpu.as_secs_f64() / self.seconds.max(1) as f64 * 100.0
    }

    /// Every idle target that applies, with the names of those missed.
    fn verdict(&self) -> String {
        let mut missed = Vec::new();
        if mib(self.rss) >= 10.0 {
            missed.push("RSS");
        }
        if self.cpu_pct() >= 0.5 {
            missed.push("CPU");
        }
        if self.target_connections.is_some_and(|t| self.connections > t) {
            missed.push("connections");
        }
        if let (Some(t), Some(r)) = (self.target_requests_per_min, self.requests_per_min) {
            if r > t {
                missed.push("requests");
            }
        }
        if missed.is_empty() {
            "PASS".into()
        } else {
            format!("FAIL ({})", missed.join(", "))
        }
    }

    fn targets(&self) -> String {
        let mut t = vec!["RSS < 10 MiB".to_string(), "CPU < 0.5 %".to_string()];
        if let Some(c) = self.target_connections {
            t.push(format!("≤ {c} conn."));
        }
        if let Some(r) = self.target_requests_per_min {
            t.push(format!("≤ {r:.0} req/min"));
        }
        t.join(", ")
    }
}

impl Report {
    pub fn print(&self) {
        if !self.latency.is_empty() {
            println!("\n## Change-to-disk latency (ms; kvsync vs references on the same writes)\n");
            println!(
                "| mode | n | kvsync p50 | p90 | p99 | max | reference | ref p50 | ref p99 | Δp50 | Δp99 | target |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.latency {
                let s = r.subject_summary();
                for (i, reference) in r.references.iter().enumerate() {
                    let b = summarize(&reference.samples);
                    let (d50, d99) = r.diffs(i);
                    let target = match (i, r.target, r.pass()) {
                        (0, Some((t50, t99)), Some(ok)) => format!("{} (Δ ≤ {t50}/{t99})", verdict(ok)),
                        _ => "-".into(),
                    };
                    println!(
                        "| {} | {} / {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:+.3} | {:+.3} | {} |",
                        r.mode,
                        r.changes,
                        r.versions,
                        ms(s.p50),
                        ms(s.p90),
                        ms(s.p99),
                        ms(s.max),
                        reference.name,
                        ms(b.p50),
                        ms(b.p99),
                        d50,
                        d99,
                        target
                    );
                }
            }
            println!(
                "\nn = changes written / distinct versions kvsync put on disk. Every change written is one \
                 sample: from the backend's acknowledgement to the first moment the observer held that \
                 version or a newer one (a version that was coalesced away counts until the newer one \
                 appeared), so kvsync and each reference are measured over the same n changes. Δ = kvsync \
                 minus reference; targets apply to the first reference of a mode; PASS needs every change \
                 covered."
            );
        }
        if !self.burst.is_empty() {
            println!("\n## Burst (changes as fast as the backend takes them)\n");
            println!("| backend | changes | keys | writing took | final state on disk after last ack | renders | peak RSS | target (≤ 10 ms) |");
            println!("|---|---|---|---|---|---|---|---|");
            for b in &self.burst {
                println!(
                    "| {} | {} | {} | {:.0} ms | {:.2} ms | {} | {:.1} MiB | {} |",
                    b.backend,
                    b.changes,
                    b.keys,
                    ms(b.write_time),
                    ms(b.final_after),
                    b.renders,
                    mib(b.peak_rss),
                    verdict(ms(b.final_after) <= 10.0)
                );
            }
        }
        if !self.scale.is_empty() {
            println!("\n## Scale (one prefix)\n");
            println!("| backend | format | keys | raw data | initial sync | disk floor | peak RSS (first render / after changes) | RSS target (3x raw + 20 MiB) | one change (median / max of {}) | disk floor | backend floor | targets (sync ≤ 1 s, change ≤ 50 ms) |", crate::scenarios::SCALE_CHANGES);
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for s in &self.scale {
                let rss_ok = mib(s.peak_rss) <= 3.0 * mib(s.raw_bytes) + 20.0;
                let mut missed = Vec::new();
                if s.initial_sync > Duration::from_secs(1) {
                    missed.push("sync");
                }
                if ms(s.one_change()) > 50.0 {
                    missed.push("change");
                }
                let ok = if missed.is_empty() { "PASS".to_string() } else { format!("FAIL ({})", missed.join(", ")) };
                println!(
                    "| {} | {} | {} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.1} / {:.1} MiB | {} | {:.1} / {:.1} ms | {:.1} ms | {} | {} |",
                    s.backend,
                    s.format,
                    s.keys,
                    mib(s.raw_bytes),
                    ms(s.initial_sync),
                    ms(s.floor_initial),
                    mib(s.peak_rss),
                    mib(s.peak_rss_after_changes),
                    verdict(rss_ok),
                    ms(s.one_change()),
                    ms(s.max_change()),
                    ms(s.floor_change),
                    s.backend_floor.map_or("-".to_string(), |d| format!("{:.1} ms", ms(d))),
                    ok
                );
            }
        }
        if !self.idle.is_empty() {
            println!("\n## Idle (3 prefixes, no changes)\n");
            println!("| backend | mode | seconds | RSS | CPU | TCP connections | requests/min (counted by) | targets | verdict |");
            println!("|---|---|---|---|---|---|---|---|---|");
            for i in &self.idle {
                println!(
                    "| {} | {} | {} | {:.1} MiB | {:.2} s ({:.2} %) | {} | {} | {} | {} |",
                    i.backend,
                    i.mode,
                    i.seconds,
                    mib(i.rss),
                    i.cpu.as_secs_f64(),
                    i.cpu_pct(),
                    i.connections,
                    i.requests_per_min
                        .map(|r| format!("{r:.1} ({})", i.requests_counted_by))
                        .unwrap_or_else(|| format!("- ({})", i.requests_counted_by)),
                    i.targets(),
                    i.verdict()
                );
            }
            println!("\n## Fleet arithmetic (from the idle figures)\n");
            println!("| backend | mode | sidecars | requests/s on the cluster | connections |");
            println!("|---|---|---|---|---|");
            // The file source talks to no server: nothing to multiply.
            for i in self.idle.iter().filter(|i| i.backend != "file") {
                for n in [100u64, 1_000, 10_000] {
                    println!(
                        "| {} | {} | {} | {} | {} |",
                        i.backend,
                        i.mode,
                        n,
                        i.requests_per_min.map(|r| format!("{:.1}", r / 60.0 * n as f64)).unwrap_or_else(|| "-".into()),
                        i.connections as u64 * n
                    );
                }
            }
        }
        crate::scenarios::fleet::print(&self.fleet);
        for n in &self.notes {
            println!("\nnote: {n}");
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let sum = |s: Summary| json!({"n": s.n, "p50_ms": ms(s.p50), "p90_ms": ms(s.p90), "p99_ms": ms(s.p99), "max_ms": ms(s.max)});
        json!({
            "latency": self.latency.iter().map(|r| {
                json!({"mode": r.mode, "changes": r.changes, "versions_on_disk": r.versions,
                    "kvsync": sum(r.subject_summary()),
                    "references": r.references.iter().map(|x| json!({"name": x.name, "summary": sum(summarize(&x.samples))})).collect::<Vec<_>>(),
                    "target_delta_ms": r.target.map(|(a, b)| json!({"p50": a, "p99": b})), "pass": r.pass()})
            }).collect::<Vec<_>>(),
            "burst": self.burst.iter().map(|b| json!({"backend": b.backend, "changes": b.changes, "keys": b.keys,
                "write_ms": ms(b.write_time), "final_after_ms": ms(b.final_after), "renders": b.renders, "peak_rss": b.peak_rss})).collect::<Vec<_>>(),
            "scale": self.scale.iter().map(|s| json!({"backend": s.backend, "format": s.format, "keys": s.keys, "raw_bytes": s.raw_bytes,
                "initial_sync_ms": ms(s.initial_sync), "peak_rss": s.peak_rss, "one_change_ms": ms(s.one_change()),
                "changes_ms": s.changes.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "peak_rss_after_changes": s.peak_rss_after_changes, "backend_floor_ms": s.backend_floor.map(ms),
                "floor_initial_ms": ms(s.floor_initial), "floor_change_ms": ms(s.floor_change)})).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(|i| json!({"backend": i.backend, "mode": i.mode, "seconds": i.seconds, "rss": i.rss,
                "cpu_s": i.cpu.as_secs_f64(), "connections": i.connections, "requests_per_min": i.requests_per_min,
                "requests_counted_by": i.requests_counted_by, "verdict": i.verdict()})).collect::<Vec<_>>(),
            "fleet": crate::scenarios::fleet::to_json(&self.fleet),
            "notes": self.notes,
        })
    }
}
