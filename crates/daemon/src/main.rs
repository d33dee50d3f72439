//! `kvsync`: watches key prefixes in Consul, etcd or a directory and renders them into files atomically.
#![forbid(unsafe_code)]

mod actions;
mod check;
mod child;
mod commit;
mod config;
mod daemon;
mod endpoint;
mod format;
mod http_action;
mod metrics;
mod output;
mod process;
#[cfg(test)]
mod proptests;
mod reload;
mod report;
mod sources;
mod state;
mod status;
mod systemd;
mod template;
mod timefmt;
mod watches;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{ExecSlot, RunMode, Session, Stopped};

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
        #[arg(long, value_name = "ADDR", default_value = status::DEFAULT_ADDR)]
        http: String,
        /// Print the /status JSON as it came instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::units::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. } | Command::Exec { .. }) {
        // Before any thread starts: it reads and clears NOTIFY_SOCKET and WATCHDOG_*.
        systemd::init();
    }
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
        Command::Status { http, json } => Ok(status::run(http, *json)),
        Command::Run { config } | Command::Once { config, .. } | Command::Exec { config, .. } => {
            let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            init_logging(Some(&cfg), &cli);
            let mode = match &cli.command {
                Command::Once { timeout, .. } => RunMode::Once { timeout: *timeout },
                _ => RunMode::Run,
            };
            let exec_argv = match &cli.command {
                Command::Exec { command, .. } if !command.is_empty() => Some(command.clone()),
                Command::Exec { .. } => Some(cfg.exec.command.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "kvsync exec needs a command: give it after `--` (kvsync exec --config {} -- /usr/bin/app) \
                         or as exec.command in the config",
                        config.display()
                    )
                })?),
                _ => None,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let code = rt.block_on(serve(cfg, config.clone(), mode, exec_argv))?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

/// Runs the daemon (and, for `exec`, the child) until shutdown; returns kvsync's exit code.
async fn serve(cfg: Config, path: PathBuf, mode: RunMode, exec_argv: Option<Vec<String>>) -> anyhow::Result<i32> {
    let cancel = CancellationToken::new();
    let mut session = Session::default();
    let stop_helpers = CancellationToken::new();
    let mut helpers = tokio::task::JoinSet::new();
    if let Some(argv) = exec_argv {
        session.exec = Some(ExecSlot::new(argv, Arc::clone(&session.child_state)));
    }
    // PID 1 duty: reap the orphans re-parented to us. Under `exec`, kvsync also registers as child
    // subreaper so the orphans of the child's tree come to it even when it is not PID 1.
    let is_pid1 = rustix::process::getpid().is_init();
    if session.exec.is_some() || is_pid1 {
        if !is_pid1 {
            if let Err(e) = process::become_subreaper() {
                tracing::warn!("cannot register as child subreaper; orphans of the child go to PID 1: {e}");
            }
        }
        if !std::path::Path::new("/proc/self/stat").exists() {
            tracing::warn!("/proc is not mounted: orphaned processes cannot be found and will not be reaped");
        }
        helpers.spawn(reap_orphans(Arc::clone(&session.child_state), stop_helpers.clone()));
    }
    // Signals: SIGTERM/SIGINT shut down; under exec, the others are forwarded to the child.
    let handle = session.exec.as_ref().map(|e| e.handle.clone());
    helpers.spawn(handle_signals(handle, cancel.clone(), stop_helpers.clone()));
    // Reloads: SIGHUP and edits of the config or its templates.
    if mode == RunMode::Run {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        session.reloads = Some(rx);
        let (p, c, s) = (path.clone(), Config::load(&path), stop_helpers.clone());
        // The initial config object moves into the daemon; the watcher keeps its own copy.
        if let Ok(initial) = c {
            helpers.spawn(async move { reload::watch(p, &initial, tx, s).await });
        }
    }
    // --- operations: the HTTP endpoint and systemd's watchdog, for the life of the process (they
    // outlive reloads; http.* changes take effect at the next start). Not for `once`, a one-shot job.
    let ops_stop = CancellationToken::new();
    let mut ops = Vec::new();
    if !matches!(mode, RunMode::Once { .. }) {
        let current = Arc::clone(&session.current);
        ops.extend(endpoint::start(&cfg.http, current, ops_stop.clone()).await.map_err(|e| anyhow::anyhow!(e))?);
        ops.extend(systemd::spawn_watchdog(ops_stop.clone()));
    }
    // --- end operations ---
    let mut cfg = Arc::new(cfg);
    // The config that ran before a reload, to go back to if the new one cannot be set up.
    let mut previous: Option<Arc<Config>> = None;
    let outcome = loop {
        match daemon::run(Arc::clone(&cfg), mode, &mut session, cancel.clone()).await {
            Ok(Stopped::Reload(new)) => {
                tracing::info!("restarting sources and outputs with the new config (the child keeps running)");
                previous = Some(std::mem::replace(&mut cfg, Arc::new(*new)));
            }
            // A reloaded config that validated but cannot run (a source cannot be built): keep the
            // application up on the config that worked.
            Err(daemon::DaemonError::Setup(e)) if previous.is_some() => {
                tracing::error!("the new config cannot be applied: {e}; going back to the previous config");
                cfg = previous.take().unwrap_or(cfg);
            }
            Ok(Stopped::Done) => break Ok(None),
            Ok(Stopped::ChildExited(code)) => break Ok(Some(code)),
            Err(e) => break Err(e),
        }
    };
    systemd::stopping();
    ops_stop.cancel();
    for task in ops {
        let _ = task.await;
    }
    // The render loop has stopped (no commit is in flight): now stop the child, bounded by its
    // kill_timeout (the supervisor SIGKILLs at the end of it) plus a margin.
    let mut code = match &outcome {
        Ok(Some(code)) => *code,
        _ => 0,
    };
    if let Some(exec) = session.exec.as_mut() {
        let bound = exec.kill_timeout + Duration::from_secs(5);
        match tokio::time::timeout(bound, exec.shutdown()).await {
            Ok(Some(c)) if outcome.as_ref().is_ok_and(|o| o.is_none()) => {
                tracing::info!(code = c, "the child has stopped; exiting with its status");
                code = c;
            }
            Ok(_) => {}
            Err(_) => tracing::error!("the child did not stop within {bound:?}"),
        }
    }
    stop_helpers.cancel();
    while tokio::time::timeout(Duration::from_secs(2), helpers.join_next()).await.is_ok_and(|r| r.is_some()) {}
    outcome?;
    Ok(code)
}

/// SIGTERM/SIGINT cancel `cancel`; SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH go to the child, if any.
async fn handle_signals(child: Option<child::ChildHandle>, cancel: CancellationToken, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    // Forwarded only under exec: elsewhere these keep their default meaning.
    let forwarded = [
        (3, SignalKind::quit()),
        (10, SignalKind::user_defined1()),
        (12, SignalKind::user_defined2()),
        (28, SignalKind::window_change()),
    ];
    let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    let mut listeners = tokio::task::JoinSet::new();
    if child.is_some() {
        for (num, kind) in forwarded {
            let Ok(mut s) = signal(kind) else { continue };
            let tx = fwd_tx.clone();
            listeners.spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(num).is_err() {
                        break;
                    }
                }
            });
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); cancel.cancel(); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); cancel.cancel(); }
            Some(sig) = fwd_rx.recv() => {
                if let Some(c) = &child {
                    match c.signal(sig).await {
                        Ok(()) => tracing::info!("forwarded {} to the child", process::signal_name(sig)),
                        Err(e) => tracing::warn!("could not forward {} to the child: {e}", process::signal_name(sig)),
                    }
                }
            }
        }
    }
}

/// Reaps orphaned zombies on every SIGCHLD (and every few seconds, since signals coalesce).
async fn reap_orphans(state: Arc<state::ChildState>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut chld = signal(SignalKind::child()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { match chld.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = tick.tick() => {}
        }
        let n = tokio::task::spawn_blocking(process::reap_orphans).await.unwrap_or(0);
        if n > 0 {
            state.reaped.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(reaped = n, "reaped orphaned processes");
        }
    }
}
