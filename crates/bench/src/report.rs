//! The benchmark's results: a table for people, JSON for machines, PASS/FAIL against the targets.

use std::time::Duration;

use serde_json::json;

use crate::measure::{ms, summarize, Summary};

/// Change-to-disk latency of one mode, next to its reference.
pub struct LatencyRow {
    pub mode: String,
    pub reference: String,
    pub subject: Vec<Duration>,
    pub baseline: Vec<Duration>,
    /// Changes written; the subject may have coalesced some (poll modes).
    pub changes: usize,
    /// Target on the difference to the reference: (p50 ms, p99 ms).
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
    pub peak_rss: u64,
    pub one_change: Duration,
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
}

#[derive(Default)]
pub struct Report {
    pub latency: Vec<LatencyRow>,
    pub burst: Vec<BurstRow>,
    pub scale: Vec<ScaleRow>,
    pub idle: Vec<IdleRow>,
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
    pub fn summaries(&self) -> (Summary, Summary) {
        (summarize(&self.subject), summarize(&self.baseline))
    }

    /// (p50 diff, p99 diff) in ms.
    pub fn diffs(&self) -> (f64, f64) {
        let (s, b) = self.summaries();
        (ms(s.p50) - ms(b.p50), ms(s.p99) - ms(b.p99))
    }

    pub fn pass(&self) -> Option<bool> {
        let (d50, d99) = self.diffs();
        self.target.map(|(t50, t99)| d50 <= t50 && d99 <= t99)
    }
}

impl Report {
    pub fn print(&self) {
        if !self.latency.is_empty() {
            println!("\n## Change-to-disk latency (ms; kvsync vs reference on the same writes)\n");
            println!("| mode | reference | n | p50 | p90 | p99 | max | ref p50 | ref p99 | Δp50 | Δp99 | target |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.latency {
                let (s, b) = r.summaries();
                let (d50, d99) = r.diffs();
                let target = match (r.target, r.pass()) {
                    (Some((t50, t99)), Some(ok)) => format!("{} (Δ ≤ {t50}/{t99})", verdict(ok)),
                    _ => "-".into(),
                };
                println!(
                    "| {} | {} | {}/{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {} |",
                    r.mode,
                    r.reference,
                    s.n,
                    r.changes,
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.p99),
                    ms(s.max),
                    ms(b.p50),
                    ms(b.p99),
                    d50,
                    d99,
                    target
                );
            }
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
            println!("| backend | format | keys | raw data | initial sync | peak RSS | RSS target (3x raw + 20 MiB) | one change at that size | targets (sync ≤ 1 s, change ≤ 50 ms) |");
            println!("|---|---|---|---|---|---|---|---|---|");
            for s in &self.scale {
                let rss_ok = mib(s.peak_rss) <= 3.0 * mib(s.raw_bytes) + 20.0;
                let ok = s.initial_sync <= Duration::from_secs(1) && ms(s.one_change) <= 50.0;
                println!(
                    "| {} | {} | {} | {:.1} MiB | {:.0} ms | {:.1} MiB | {} | {:.1} ms | {} |",
                    s.backend,
                    s.format,
                    s.keys,
                    mib(s.raw_bytes),
                    ms(s.initial_sync),
                    mib(s.peak_rss),
                    verdict(rss_ok),
                    ms(s.one_change),
                    verdict(ok)
                );
            }
        }
        if !self.idle.is_empty() {
            println!("\n## Idle (3 prefixes, no changes)\n");
            println!("| backend | mode | seconds | RSS | CPU | TCP connections | requests/min | targets (RSS < 10 MiB, CPU < 0.5 %) |");
            println!("|---|---|---|---|---|---|---|---|");
            for i in &self.idle {
                let cpu_pct = i.cpu.as_secs_f64() / i.seconds.max(1) as f64 * 100.0;
                println!(
                    "| {} | {} | {} | {:.1} MiB | {:.2} s ({:.2} %) | {} | {} | {} |",
                    i.backend,
                    i.mode,
                    i.seconds,
                    mib(i.rss),
                    i.cpu.as_secs_f64(),
                    cpu_pct,
                    i.connections,
                    i.requests_per_min.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
                    verdict(mib(i.rss) < 10.0 && cpu_pct < 0.5)
                );
            }
            println!("\n## Fleet arithmetic (from the idle figures)\n");
            println!("| backend | mode | sidecars | requests/s on the cluster | connections |");
            println!("|---|---|---|---|---|");
            for i in &self.idle {
                for n in [100u64, 1_000, 10_000] {
                    println!(
                        "| {} | {} | {} | {} | {} |",
                        i.backend,
                        i.mode,
                        n,
                        i.requests_per_min
                            .map(|r| format!("{:.1}", r / 60.0 * n as f64))
                            .unwrap_or_else(|| "0 (one stream each)".into()),
                        i.connections as u64 * n
                    );
                }
            }
        }
        for n in &self.notes {
            println!("\nnote: {n}");
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let sum = |s: Summary| json!({"n": s.n, "p50_ms": ms(s.p50), "p90_ms": ms(s.p90), "p99_ms": ms(s.p99), "max_ms": ms(s.max)});
        json!({
            "latency": self.latency.iter().map(|r| {
                let (s, b) = r.summaries();
                json!({"mode": r.mode, "reference": r.reference, "changes": r.changes, "kvsync": sum(s), "reference_summary": sum(b), "pass": r.pass()})
            }).collect::<Vec<_>>(),
            "burst": self.burst.iter().map(|b| json!({"backend": b.backend, "changes": b.changes, "keys": b.keys,
                "write_ms": ms(b.write_time), "final_after_ms": ms(b.final_after), "renders": b.renders, "peak_rss": b.peak_rss})).collect::<Vec<_>>(),
            "scale": self.scale.iter().map(|s| json!({"backend": s.backend, "format": s.format, "keys": s.keys, "raw_bytes": s.raw_bytes,
                "initial_sync_ms": ms(s.initial_sync), "peak_rss": s.peak_rss, "one_change_ms": ms(s.one_change)})).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(|i| json!({"backend": i.backend, "mode": i.mode, "seconds": i.seconds, "rss": i.rss,
                "cpu_s": i.cpu.as_secs_f64(), "connections": i.connections, "requests_per_min": i.requests_per_min})).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}
