//! `kvsync`: watches key prefixes in Consul, etcd or a directory and renders them into files atomically.
#![forbid(unsafe_code)]

mod actions;
mod check;
mod commit;
mod config;
mod daemon;
mod format;
mod output;
mod process;
#[cfg(test)]
mod proptests;
mod sources;
mod state;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::RunMode;

#[derive(Parser, Debug)]
#[command(name = "kvsync", version, about = "Renders Consul, etcd or directory keys into files, atomically.")]
struct Cli {
    /// Log level (error, warn, info, debug, trace); overrides the config. KVSYNC_LOG works like RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format: text or json; overrides the config.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: watch, render, act.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Render every output once (waiting for data), run actions, exit.
    Once {
        #[arg(long, short)]
        config: PathBuf,
        /// Give up after this long (e.g. 30s), naming what was missing.
        #[arg(long, value_parser = parse_duration_arg)]
        timeout: Option<Duration>,
    },
    /// Validate the config and templates without touching the network or the disk.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::units::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvsync: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: Option<&Config>, cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = cli.log_level.clone().or_else(|| cfg.map(|c| c.log.level.clone())).unwrap_or_else(|| "info".into());
    let filter = std::env::var("KVSYNC_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info")));
    let json = match cli.log_format.as_deref() {
        Some(f) => f == "json",
        None => cfg.map(|c| c.log.json).unwrap_or(false),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Check { config } => {
            let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}: ok ({} source{}, {} output{})",
                config.display(),
                cfg.sources.len(),
                if cfg.sources.len() == 1 { "" } else { "s" },
                cfg.outputs.len(),
                if cfg.outputs.len() == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } | Command::Once { config, .. } => {
            let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            init_logging(Some(&cfg), &cli);
            let mode = match &cli.command {
                Command::Once { timeout, .. } => RunMode::Once { timeout: *timeout },
                _ => RunMode::Run,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async move {
                let cancel = CancellationToken::new();
                let c = cancel.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutting down");
                    c.cancel();
                });
                daemon::run(Arc::new(cfg), mode, cancel).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
