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
        /// Print how each output would change (a unified diff against disk) and write nothing, run
        /// no action and no check. Exit 0 when nothing would change, 3 when something would.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print only the changed keys and line counts, never a value.
        #[arg(long, requires = "dry_run")]
        no_values: bool,
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
        /// Also render every output from --snapshot and print how it would change what is on disk
        /// (as once --dry-run). Exit 0 when nothing would change, 3 when something would.
        #[arg(long, requires = "snapshot")]
        render: bool,
        /// A JSON object of full keys to values, e.g. {"config/app/db/host": "db1"}.
        #[arg(long, value_name = "FILE.json", requires = "render")]
        snapshot: Option<PathBuf>,
        /// With --render: print only the changed keys and line counts, never a value.
        #[arg(long, requires = "render")]
        no_values: bool,
    },
    /// Publish an output's held render once and follow upstream again (a guard or a rollback held it).
    Release {
        /// The output's name.
        output: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Publish a kept version of an output (keep: N) and hold it until `kvsync release`.
    Rollback {
        /// The output's name.
        output: String,
        /// The kept version: 1 is the one the current version replaced (see `kvsync status`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        to: u32,
        #[command(flatten)]
        target: AdminTarget,
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

/// Where an admin request goes: the running daemon's loopback endpoint or admin socket; with
/// --config, the daemon of that config, or the files themselves when no daemon answers.
#[derive(clap::Args, Debug)]
pub struct AdminTarget {
    /// The daemon's HTTP endpoint (a loopback address); default 127.0.0.1:9101.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// The daemon's admin socket (admin.socket in its config).
    #[arg(long, value_name = "PATH", conflicts_with = "http")]
    pub socket: Option<PathBuf>,
    /// The daemon's config: ask the daemon it describes, or act on disk when none answers.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl AdminTarget {
    pub fn target(&self) -> crate::admin::Target {
        crate::admin::Target { http: self.http.clone(), socket: self.socket.clone(), config: self.config.clone() }
    }
}
