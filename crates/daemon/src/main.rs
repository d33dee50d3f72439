//! `kvsync`: parses the command line, builds the config, runs the mode asked for, and maps the
//! outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kvsync::cli::{Cli, Command};
use kvsync::Config;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Check { config } => {
            return report(kvsync::check(config).map(|ok| println!("{}: {ok}", config.display())).map(|()| 0))
        }
        Command::Status { http, json } => return kvsync::status(http, *json),
        Command::Run { config } | Command::Once { config, .. } | Command::Exec { config, .. } => config,
    };
    if !matches!(cli.command, Command::Once { .. }) {
        // Before any thread starts: it reads and clears NOTIFY_SOCKET and WATCHDOG_*.
        kvsync::systemd::init();
    }
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return report(Err(e)),
    };
    kvsync::logging::init(Some(&cfg), cli.log_level.as_deref(), cli.log_format.as_deref().map(|f| f == "json"));
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(Err(anyhow::anyhow!("cannot start the async runtime: {e}"))),
    };
    report(rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = kvsync::signals::cancel_on_termination(shutdown.clone()).map(tokio::spawn);
        let code = match cli.command {
            Command::Once { timeout, .. } => kvsync::once(cfg, timeout, shutdown).await,
            Command::Exec { command, .. } => kvsync::exec(cfg, Some(command).filter(|c| !c.is_empty()), shutdown).await,
            _ => kvsync::run(cfg, shutdown).await,
        };
        signals.map(|t| t.abort()).ok();
        code
    }))
}

/// The exit code of an outcome; an error is printed with its chain of causes.
fn report<E: Into<anyhow::Error>>(outcome: Result<i32, E>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("kvsync: {:#}", e.into());
            ExitCode::from(1)
        }
    }
}
