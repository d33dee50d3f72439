//! The scenarios, per backend. Each starts its own backend and its own kvsync process.

mod burst;
mod consul;
mod etcd;
pub mod etcd_metrics;
mod file;
pub mod fleet;
mod scale;

pub use scale::CHANGES as SCALE_CHANGES;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::report::Report;
use crate::Args;

/// Runs every scenario the arguments ask for.
pub async fn run_all(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if args.backend("file") {
        file::run(args, &mut report)?;
    }
    if args.backend("etcd") {
        etcd::run(args, &mut report).await?;
    }
    if args.backend("consul") {
        consul::run(args, &mut report).await?;
    }
    if args.wants("fleet") {
        fleet::run(args, &mut report).await?;
    }
    scale::release();
    Ok(report)
}

/// Counts for a full or a quick run.
pub struct Counts {
    pub latency_changes: usize,
    pub latency_rate_per_s: u64,
    pub poll_changes: usize,
    pub burst_changes: usize,
    pub burst_keys: usize,
    pub scale_keys: usize,
    pub idle_seconds: u64,
}

impl Counts {
    pub fn of(args: &Args) -> Counts {
        if args.quick {
            Counts {
                latency_changes: 200,
                latency_rate_per_s: 200,
                poll_changes: 5,
                burst_changes: 1_000,
                burst_keys: 100,
                scale_keys: 10_000,
                idle_seconds: 5,
            }
        } else {
            Counts {
                latency_changes: 2_000,
                latency_rate_per_s: 200,
                poll_changes: 20,
                burst_changes: 10_000,
                burst_keys: 1_000,
                scale_keys: 100_000,
                idle_seconds: 30,
            }
        }
    }
}

/// Sleeps until `start + n * period` (steady pacing without drift).
pub fn pace(start: Instant, n: u64, per_s: u64) {
    let due = start + Duration::from_micros(n * 1_000_000 / per_s.max(1));
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Waits (bounded) until `cond` holds.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        anyhow::ensure!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Writes a kvsync config file with logging at info, no HTTP endpoint, in `etc/` under `dir`: a
/// directory of its own. kvsync watches its config file's directory for edits (reload), so anything
/// written beside the config (its own log, an output) would wake that watcher on every render, a
/// cost of the layout that no deployment with the config in /etc pays.
pub fn write_config(dir: &Path, sources: &str, outputs: &str) -> anyhow::Result<std::path::PathBuf> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let p = etc.join("kvsync.yaml");
    std::fs::write(
        &p,
        format!("sources:\n{sources}outputs:\n{outputs}http: {{ listen: \"\" }}\nlog: {{ level: info }}\n"),
    )?;
    Ok(p)
}

/// One JSON output named `app` of `prefix` from `source` into `dest` (a line of a config's `outputs`).
pub fn json_output(source: &str, prefix: &str, dest: &Path) -> String {
    format!("  - {{ name: app, source: {source}, prefix: {prefix}, format: json, destination: {} }}\n", dest.display())
}

/// The directory outputs go to: `out/` under `dir`, apart from the config (see `write_config`).
/// The prefixes of the idle scenario.
pub const IDLE_PREFIXES: [&str; 3] = ["a", "b", "c"];

/// One JSON output per idle prefix of `source`, into `out`.
pub fn idle_outputs(source: &str, out: &Path) -> String {
    IDLE_PREFIXES
        .iter()
        .map(|p| {
            format!(
                "  - {{ name: {p}, source: {source}, prefix: {p}/, format: json, destination: {}/{p}.json }}\n",
                out.display()
            )
        })
        .collect()
}

pub fn out_dir(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    Ok(out)
}
