//! kvsync-bench: measures kvsync against reference clients in the same run.
//!
//! Every figure is taken side by side with its reference: change-to-disk latency against a bare
//! watcher of the same backend, bursts (coalescing), scale (100,000 keys), and idle cost. It prints a
//! table, writes JSON (`--json FILE`) and draws latency CDFs as SVG (`--svg FILE`). It is not a test:
//! it prints PASS/FAIL against the targets and exits 0 whatever they say.
#![forbid(unsafe_code)]

mod dest;
mod guard;
mod kvsync_proc;
mod measure;
mod plot;
mod procstat;
mod report;
mod scenarios;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "kvsync-bench", about = "Benchmarks kvsync against references in the same run")]
pub struct Args {
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distributions (one CDF per mode) to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Smaller counts everywhere (a smoke run of a few seconds).
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (latency, burst, scale, idle, fleet); default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these backends (file, etcd, consul); default: all.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Sidecars in the fleet scenario (default 200; 20 with --quick).
    #[arg(long)]
    fleet: Option<usize>,
}

impl Args {
    pub fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    pub fn backend(&self, b: &str) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|s| s == b)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kvsync_proc::binary()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    guard::install(&rt)?;
    let report = rt.block_on(scenarios::run_all(&args))?;
    report.print();
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report.to_json())?)?;
        println!("\nJSON written to {}", p.display());
    }
    if let Some(p) = &args.svg {
        plot::cdf(p, &report.latency)?;
        println!("CDF plot written to {}", p.display());
    }
    Ok(())
}
