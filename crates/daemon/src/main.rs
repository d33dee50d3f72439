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
        Command::Check { config, snapshot: Some(snapshot), no_values, .. } => {
            return report(kvsync::check_render(config, snapshot, *no_values).map_err(anyhow::Error::msg))
        }
        Command::Check { config, .. } => {
            return report(kvsync::check(config).map(|ok| println!("{}: {ok}", config.display())).map(|()| 0))
        }
        Command::Release { output, target } => {
            return kvsync::admin::run_client(
                kvsync::admin::Action::Release { output: output.clone() },
                target.target(),
            )
        }
        Command::Rollback { output, to, target } => {
            let action = kvsync::admin::Action::Rollback { output: output.clone(), to: *to };
            return kvsync::admin::run_client(action, target.target());
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
            Command::Once { timeout, dry_run: true, no_values, .. } => {
                kvsync::dry_run(cfg, no_values, timeout).await.map_err(anyhow::Error::msg)
            }
            Command::Once { timeout, .. } => kvsync::once(cfg, timeout, shutdown).await.map_err(anyhow::Error::from),
            Command::Exec { command, .. } => {
                kvsync::exec(cfg, Some(command).filter(|c| !c.is_empty()), shutdown).await.map_err(anyhow::Error::from)
            }
            _ => kvsync::run(cfg, shutdown).await.map_err(anyhow::Error::from),
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
