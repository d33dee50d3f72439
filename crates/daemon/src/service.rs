//! What runs around the render loop for the life of the process: orphan reaping, signals for the
//! child, the reload watcher, the HTTP endpoint and systemd's watchdog; the loop restarted on each
//! reload that needs it; and the orderly stop (loop, then child, then the rest).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{self, DaemonError, ExecSlot, RunMode, Session, Stopped};
use crate::{admin, endpoint, reaper, reload, signals, systemd};

/// Runs the daemon (and, for `exec`, the child `exec_argv`) until `shutdown` fires, `once` is done,
/// or the child exits for good; returns kvsync's exit code.
pub async fn serve(
    cfg: Config,
    mode: RunMode,
    exec_argv: Option<Vec<String>>,
    shutdown: CancellationToken,
) -> Result<i32, DaemonError> {
    let mut session = Session::default();
    let stop_helpers = CancellationToken::new();
    let mut helpers = tokio::task::JoinSet::new();
    if let Some(argv) = exec_argv {
        session.exec = Some(ExecSlot::new(argv, Arc::clone(&session.child_state)));
    }
    if reaper::take_on(session.exec.is_some()) {
        helpers.spawn(reaper::reap_orphans(Arc::clone(&session.child_state), stop_helpers.clone()));
    }
    // Under exec, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH go to the child.
    if let Some(exec) = &session.exec {
        helpers.spawn(signals::forward_to_child(exec.handle.clone(), stop_helpers.clone()));
    }
    // Reloads: SIGHUP and edits of the config or its templates.
    if mode == RunMode::Run {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        session.reloads = Some(rx);
        let (p, c, s) = (cfg.path.clone(), Config::load(&cfg.path), stop_helpers.clone());
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
        // Admin requests (`kvsync release`, `kvsync rollback`) reach the render loop through this.
        let (outbox, inbox) = admin::channel();
        session.admin = Some(inbox);
        ops.extend(
            endpoint::start(&cfg.http, current, Some(outbox.clone()), ops_stop.clone())
                .await
                .map_err(DaemonError::Endpoint)?,
        );
        if let Some(path) = &cfg.admin_socket {
            let listener = admin::bind(path).await.map_err(DaemonError::Endpoint)?;
            ops.push(tokio::spawn(admin::serve_socket(listener, path.clone(), outbox, ops_stop.clone())));
        }
        ops.extend(systemd::spawn_watchdog(ops_stop.clone()));
    }
    // --- end operations ---
    let mut cfg = Arc::new(cfg);
    // The config that ran before a reload, to go back to if the new one cannot be set up.
    let mut previous: Option<Arc<Config>> = None;
    let outcome = loop {
        match daemon::run(Arc::clone(&cfg), mode, &mut session, shutdown.clone()).await {
            Ok(Stopped::Reload(new)) => {
                tracing::info!("restarting sources and outputs with the new config (the child keeps running)");
                previous = Some(std::mem::replace(&mut cfg, Arc::new(*new)));
            }
            // A reloaded config that validated but cannot run (a source cannot be built): keep the
            // application up on the config that worked.
            Err(DaemonError::Setup(e)) if previous.is_some() => {
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
