//! kvsync: watches key prefixes in Consul, etcd or a directory and renders them into files atomically.
//!
//! The run modes are the entry points, each taking what it needs and, for those that keep running, a
//! shutdown token (fire it to stop; the binary fires it on SIGTERM/SIGINT):
//! - [`run`]: watch, render, act, reload on SIGHUP or an edited config, until shutdown;
//! - [`once`]: render every output once (waiting for data), run actions, return;
//! - [`exec`]: render every output once, then supervise a child, restarting it as configured;
//! - [`check`]: validate a config and its templates without touching the network or the disk;
//! - [`status`]: ask a running daemon how it is doing;
//! - [`dry_run`], [`check_render`]: how every output would change, writing nothing;
//! - [`admin`]: `release` and `rollback` an output of a running daemon (or on disk).
#![forbid(unsafe_code)]

mod actions;
pub mod admin;
mod baseline;
mod check;
mod child;
pub mod cli;
mod commit;
pub mod config;
mod daemon;
mod diff;
mod dry_run;
mod endpoint;
mod format;
mod guard;
mod http_action;
mod keep;
pub mod logging;
mod metrics;
mod output;
mod pass;
mod process;
#[cfg(test)]
mod proptests;
mod reaper;
mod reload;
mod report;
mod service;
pub mod signals;
mod sources;
mod state;
mod status;
mod supervisor;
pub mod systemd;
mod template;
mod timefmt;
mod watches;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::config::{Config, ConfigError};
pub use crate::daemon::DaemonError;
use crate::daemon::RunMode;

/// The address `status` asks when none is given: `http.listen`'s default.
pub const DEFAULT_HTTP_ADDR: &str = status::DEFAULT_ADDR;

/// `kvsync run`: watches, renders and acts until `shutdown` fires; returns the exit code.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<i32, DaemonError> {
    service::serve(cfg, RunMode::Run, None, shutdown).await
}

/// `kvsync once`: renders every output once (waiting for data, at most `timeout`), runs the actions
/// and returns the exit code; `shutdown` stops it early.
pub async fn once(cfg: Config, timeout: Option<Duration>, shutdown: CancellationToken) -> Result<i32, DaemonError> {
    service::serve(cfg, RunMode::Once { timeout }, None, shutdown).await
}

/// `kvsync exec`: renders every output once, then starts `argv` (None: exec.command of the config)
/// as a supervised child and keeps watching, until `shutdown` fires or the child exits for good;
/// returns the exit code (the child's, when it decides).
pub async fn exec(cfg: Config, argv: Option<Vec<String>>, shutdown: CancellationToken) -> Result<i32, DaemonError> {
    let argv = match argv.or_else(|| cfg.exec.command.clone()) {
        Some(argv) => argv,
        None => return Err(DaemonError::NoCommand { config: cfg.path.clone() }),
    };
    service::serve(cfg, RunMode::Run, Some(argv), shutdown).await
}

/// What `check` found in a valid config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub sources: usize,
    pub outputs: usize,
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        write!(f, "ok ({} source{}, {} output{})", self.sources, s(self.sources), self.outputs, s(self.outputs))
    }
}

/// `kvsync check`: reads, parses and validates the config at `path` and compiles its templates.
pub fn check(path: &Path) -> Result<Checked, ConfigError> {
    let cfg = Config::load(path)?;
    Ok(Checked { sources: cfg.sources.len(), outputs: cfg.outputs.len() })
}

/// `kvsync status`: asks the daemon at `addr` and prints a table (or the JSON with `json`). Exit
/// status: 0 ready, 1 not ready, 2 unreachable.
pub fn status(addr: &str, json: bool) -> ExitCode {
    status::run(addr, json)
}

/// `kvsync once --dry-run`: renders every output from the live sources (waiting for their first
/// data, at most `timeout`) and prints how each would change what is on disk; writes nothing, runs
/// no action and no check. Returns the exit code: 0 nothing would change, 3 something would, 1 an
/// output could not be rendered.
pub async fn dry_run(cfg: Config, no_values: bool, timeout: Option<Duration>) -> Result<i32, String> {
    let guards: Vec<_> = cfg.outputs.iter().map(|o| o.guard.clone()).collect();
    Ok(dry_run::print(dry_run::live(&cfg, &guards, no_values, timeout).await?))
}

/// `kvsync check --render --snapshot FILE`: as [`dry_run`], offline, with the keys of a snapshot file.
pub fn check_render(path: &Path, snapshot: &Path, no_values: bool) -> Result<i32, String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let guards: Vec<_> = cfg.outputs.iter().map(|o| o.guard.clone()).collect();
    Ok(dry_run::print(dry_run::from_snapshot(&cfg, &guards, snapshot, no_values)?))
}
