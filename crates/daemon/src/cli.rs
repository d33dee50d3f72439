//! The command line: one subcommand per run mode, and the logging overrides they share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kvsync", version, about = "Renders Consul, etcd or directory keys into files, atomically.")]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); overrides the config. KVSYNC_LOG works like RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format: text or json; overrides the config.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        #[arg(long, value_parser = crate::config::units::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Render every output once, then start CMD as a supervised child and keep watching.
    Exec {
        #[arg(long, short)]
        config: PathBuf,
        /// The child's command and arguments, after `--` (default: exec.command from the config).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Validate the config and templates without touching the network or the disk.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a running daemon how it is doing. Exit status: 0 ready, 1 not ready, 2 unreachable.
    Status {
        /// The daemon's http.listen address.
        #[arg(long, value_name = "ADDR", default_value = crate::DEFAULT_HTTP_ADDR)]
        http: String,
        /// Print the /status JSON as it came instead of a table.
        #[arg(long)]
        json: bool,
    },
}
