//! The exec supervisor of `kvsync exec`: starts the child once every output has rendered (with its
//! environment from KV, when `exec.env` is set), restarts it when that environment changes, and stops
//! it at shutdown. The process itself is run by [`crate::child::supervise`].

use std::sync::Arc;
use std::time::Duration;

use kvsync_watch::Subscription;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::child::{self, env_from_view, ChildHandle, ChildSpec, Env, Requests};
use crate::config::Config;
use crate::state::{ActionKind, ActionStats, ChildState};

/// The supervised child of `kvsync exec`, started once, kept across reloads.
pub struct ExecSlot {
    /// The command (from the CLI, else exec.command).
    pub argv: Vec<String>,
    pub handle: ChildHandle,
    /// The supervisor's end of `handle`, until the child is started.
    requests: Option<Requests>,
    /// The supervisor task: returns the exit code kvsync should exit with.
    task: Option<JoinHandle<i32>>,
    /// The environment from KV the child runs with (None before the first start).
    env: Option<Env>,
    /// Fired after the render loop has stopped, to stop the child.
    pub stop: CancellationToken,
    /// The kill_timeout the child was started with (a reload does not touch the running child).
    pub kill_timeout: Duration,
}

impl ExecSlot {
    pub fn new(argv: Vec<String>, state: Arc<ChildState>) -> ExecSlot {
        let (handle, requests) = ChildHandle::new(state);
        ExecSlot {
            argv,
            handle,
            requests: Some(requests),
            task: None,
            env: None,
            stop: CancellationToken::new(),
            kill_timeout: Duration::ZERO,
        }
    }

    /// Starts the child after the first full render (`all_rendered`), once its environment is known;
    /// restarts it when the keys under `exec.env` (read through `env_sub`) give a new environment.
    pub fn step(
        &mut self,
        cfg: &Config,
        env_sub: Option<&mut Subscription>,
        all_rendered: bool,
        stats: &Arc<ActionStats>,
    ) {
        let has_env_sub = env_sub.is_some();
        let env_view = env_sub.and_then(|sub| {
            let changed = sub.has_changed();
            sub.mark_seen();
            sub.latest().map(|v| (v, changed))
        });
        let env_ready = !has_env_sub || env_view.is_some();
        if self.task.is_none() && all_rendered && env_ready {
            let env = match (&env_view, &cfg.exec.env) {
                (Some((v, _)), Some(e)) => env_from_view(v, e),
                _ => Vec::new(),
            };
            self.start(cfg, env);
        } else if let (Some(_), Some((v, true)), Some(e)) = (&self.task, &env_view, &cfg.exec.env) {
            let env = env_from_view(v, e);
            if self.env.as_ref() != Some(&env) {
                info!("the keys under exec.env changed; restarting the child with its new environment");
                self.env = Some(env.clone());
                let handle = self.handle.clone();
                let stats = Arc::clone(stats);
                // In its own task: stopping the child may take kill_timeout; rendering goes on.
                tokio::spawn(async move {
                    let r = handle.restart(Some(env)).await;
                    stats.record(ActionKind::Restart, r.is_ok());
                    if let Err(e) = r {
                        warn!("restarting the child for its new environment failed: {e}");
                    }
                });
            }
        }
    }

    /// Starts the supervisor of the child (once).
    fn start(&mut self, cfg: &Config, env: Env) {
        let Some(requests) = self.requests.take() else { return };
        let spec = ChildSpec { argv: self.argv.clone(), exec: cfg.exec.clone() };
        self.env = Some(env.clone());
        self.kill_timeout = cfg.exec.kill_timeout;
        let state = self.handle.state();
        self.task = Some(tokio::spawn(child::supervise(spec, env, state, requests, self.stop.clone())));
    }

    /// Stops the child (kill_signal, kill_timeout, SIGKILL) and returns its exit code; None when it
    /// was never started.
    pub async fn shutdown(&mut self) -> Option<i32> {
        self.stop.cancel();
        let task = self.task.take()?;
        Some(task.await.unwrap_or(1))
    }
}

/// Resolves with the child's exit code once its supervisor returns; never without a child.
pub async fn exited(exec: Option<&mut ExecSlot>) -> i32 {
    let Some(exec) = exec else { return std::future::pending().await };
    let Some(task) = exec.task.as_mut() else { return std::future::pending().await };
    let code = task.await.unwrap_or(1);
    // Polling a finished JoinHandle again panics: forget it.
    exec.task = None;
    code
}
