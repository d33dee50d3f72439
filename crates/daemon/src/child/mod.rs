//! The supervised child of `kvsync exec`: started in its own process group, signalled, restarted,
//! stopped, and its exit status turned into kvsync's.
//!
//! One task ([`supervise`]) owns the process. Everyone else talks to it through a [`ChildHandle`]
//! (signal it, restart it), so a restart and a signal can never race over a stale pid.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod env;

pub use env::env_from_view;

use crate::config::{ExecConfig, RestartPolicy};
use crate::process::{self, signal_name};
use crate::state::ChildState;

/// Environment variables from KV (`exec.env`), in the order they are set.
pub type Env = Vec<(String, String)>;

/// How long after its start a child counts as having run well: a crash after that starts the restart
/// backoff from its first step again.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// A request to the supervisor, with where to send the outcome.
enum Request {
    /// Send this signal to the child.
    Signal(i32, oneshot::Sender<Result<(), String>>),
    /// Stop the child and start it again, with this environment from KV if given.
    Restart(Option<Env>, oneshot::Sender<Result<(), String>>),
}

/// A way to reach the supervised child. Cheap to clone.
#[derive(Clone)]
pub struct ChildHandle {
    tx: mpsc::Sender<Request>,
    state: Arc<ChildState>,
}

impl ChildHandle {
    /// A handle and the receiving end the supervisor will read.
    pub fn new(state: Arc<ChildState>) -> (ChildHandle, Requests) {
        let (tx, rx) = mpsc::channel(64);
        (ChildHandle { tx, state }, Requests(rx))
    }

    /// The child's reported state.
    pub fn state(&self) -> Arc<ChildState> {
        Arc::clone(&self.state)
    }

    /// Whether a child is running right now.
    pub fn running(&self) -> bool {
        self.state.pid.load(Ordering::Relaxed) != 0
    }

    /// Sends `sig` to the child.
    pub async fn signal(&self, sig: i32) -> Result<(), String> {
        if !self.running() {
            return Err("the child is not running".into());
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Signal(sig, tx)).await.map_err(|_| "the child's supervisor has stopped".to_string())?;
        rx.await.map_err(|_| "the child's supervisor has stopped".to_string())?
    }

    /// Stops the child and starts it again (with a new environment from KV if given). Returns once the
    /// new child has started.
    pub async fn restart(&self, env: Option<Env>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Restart(env, tx)).await.map_err(|_| "the child's supervisor has stopped".to_string())?;
        rx.await.map_err(|_| "the child's supervisor has stopped".to_string())?
    }
}

/// The receiving end of a [`ChildHandle`], given to [`supervise`].
pub struct Requests(mpsc::Receiver<Request>);

/// How to run the child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub argv: Vec<String>,
    pub exec: ExecConfig,
}

/// kvsync's exit code for a child's exit status: its code, or 128+N when signal N killed it.
pub fn exit_code(s: ExitStatus) -> i32 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// The running child and when it started.
struct Running {
    child: Child,
    pid: u32,
    started: Instant,
}

/// Runs the child until it exits for good (restart policy `never`, or `on-failure` and it succeeded)
/// or `cancel` fires (then stops it with `kill_signal`, bounded by `kill_timeout`); returns the exit
/// code kvsync should exit with.
pub async fn supervise(
    spec: ChildSpec,
    mut env: Env,
    state: Arc<ChildState>,
    Requests(mut rx): Requests,
    cancel: CancellationToken,
) -> i32 {
    let exec = &spec.exec;
    let mut backoff = kvsync_watch::Backoff::new(exec.restart_backoff.0, exec.restart_backoff.1, None);
    let mut first = true;
    // Requests that arrived while we were busy restarting; handled once the new child runs.
    let mut queued: Vec<Request> = Vec::new();
    loop {
        // Start (or start again).
        if !first {
            state.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let mut running = match start(&spec.argv, &env, &state) {
            Ok(r) => r,
            Err(e) => {
                error!("cannot start the child {:?}: {e}", spec.argv[0]);
                if exec.restart == RestartPolicy::Never {
                    // The shell's convention: 127 for "not found", 126 for "found but not runnable".
                    return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                }
                let delay = backoff.next_delay().unwrap_or(exec.restart_backoff.1);
                warn!(delay_ms = delay.as_millis() as u64, "starting the child again after a delay");
                tokio::select! {
                    // Shutdown while waiting: nothing runs, nothing to stop.
                    _ = cancel.cancelled() => return 0,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        // Serve what queued up during the restart (signals go to the new child).
        for r in queued.drain(..) {
            serve_now(r, &running);
        }
        // Watch the child, serve requests, until it exits, a restart is asked for, or shutdown.
        let status = loop {
            tokio::select! {
                // Shutdown: stop the child with kill_signal and exit with its status.
                _ = cancel.cancelled() => {
                    info!(pid = running.pid, signal = %signal_name(exec.kill_signal), "stopping the child");
                    let s = stop(&mut running, exec.kill_signal, exec.kill_timeout).await;
                    state.pid.store(0, Ordering::Relaxed);
                    return s.map(exit_code).unwrap_or(1);
                }
                // The child exited by itself.
                s = running.child.wait() => break Some(s),
                // A signal or restart request from an action, a forwarded signal or an env change.
                r = rx.recv(), if !rx.is_closed() => {
                    match r {
                        None => {}
                        Some(Request::Restart(new_env, reply)) => {
                            if let Some(e) = new_env {
                                env = e;
                            }
                            let mut replies = vec![reply];
                            // Never restart more often than min_restart_interval.
                            let since = running.started.elapsed();
                            if since < exec.min_restart_interval {
                                let wait = exec.min_restart_interval - since;
                                info!(wait_ms = wait.as_millis() as u64, "restart requested; waiting for min_restart_interval");
                                tokio::select! {
                                    _ = cancel.cancelled() => continue, // the shutdown branch handles it
                                    _ = tokio::time::sleep(wait) => {}
                                }
                            }
                            // Restart requests that came meanwhile are served by this one restart.
                            while let Ok(r) = rx.try_recv() {
                                match r {
                                    Request::Restart(e, reply) => {
                                        if let Some(e) = e {
                                            env = e;
                                        }
                                        replies.push(reply);
                                    }
                                    other => queued.push(other),
                                }
                            }
                            info!(pid = running.pid, signal = %signal_name(exec.kill_signal), "restarting the child");
                            let s = stop(&mut running, exec.kill_signal, exec.kill_timeout).await;
                            state.pid.store(0, Ordering::Relaxed);
                            if let Ok(s) = s {
                                info!(status = %s, "the child stopped for its restart");
                            }
                            for r in replies {
                                let _ = r.send(Ok(()));
                            }
                            break None;
                        }
                        Some(other) => serve_now(other, &running),
                    }
                }
            }
        };
        // None: restarted on request; start again right away (the interval was honoured above).
        let Some(status) = status else { continue };
        process::untrack(running.pid);
        state.pid.store(0, Ordering::Relaxed);
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                error!("lost track of the child: {e}");
                return 1;
            }
        };
        let code = exit_code(status);
        let again = match exec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        if !again {
            info!(status = %status, code, "the child exited; kvsync exits with its status");
            return code;
        }
        if running.started.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay().unwrap_or(exec.restart_backoff.1).max(exec.min_restart_interval);
        warn!(status = %status, delay_ms = delay.as_millis() as u64, "the child exited; starting it again after a delay");
        // Wait out the backoff; signals meanwhile have no child to reach, a restart request ends the wait.
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return code,
                _ = tokio::time::sleep_until(deadline) => break,
                r = rx.recv(), if !rx.is_closed() => match r {
                    Some(Request::Signal(_, reply)) => { let _ = reply.send(Err("the child is not running (waiting to restart it)".into())); }
                    Some(Request::Restart(e, reply)) => {
                        if let Some(e) = e { env = e; }
                        let _ = reply.send(Ok(()));
                        break;
                    }
                    None => {}
                },
            }
        }
    }
}

/// Answers a request that needs no restart.
fn serve_now(r: Request, running: &Running) {
    match r {
        Request::Signal(sig, reply) => {
            let res = process::signal(running.pid, sig).map_err(|e| format!("pid {}: {e}", running.pid));
            let _ = reply.send(res);
        }
        // Only reached for requests queued while a restart was under way: that restart served them.
        Request::Restart(_, reply) => {
            let _ = reply.send(Ok(()));
        }
    }
}

/// Starts the child in its own process group with kvsync's environment plus `env`.
fn start(argv: &[String], env: &Env, state: &ChildState) -> std::io::Result<Running> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v))).process_group(0);
    let child = process::spawn_tracked(|| cmd.spawn(), |c| c.id())?;
    let pid = child.id().unwrap_or(0);
    state.pid.store(pid, Ordering::Relaxed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    state.started_at.store(now, Ordering::Relaxed);
    info!(pid, command = %argv[0], "started the child");
    Ok(Running { child, pid, started: Instant::now() })
}

/// Sends `sig` to the child, waits up to `timeout` for it to exit, then SIGKILLs its whole process
/// group. Returns its exit status.
async fn stop(r: &mut Running, sig: i32, timeout: Duration) -> std::io::Result<ExitStatus> {
    if let Err(e) = process::signal(r.pid, sig) {
        warn!(pid = r.pid, "could not send {} to the child: {e}", signal_name(sig));
    }
    let status = match tokio::time::timeout(timeout, r.child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            warn!(pid = r.pid, "the child did not exit within kill_timeout; sending SIGKILL to its process group");
            let _ = process::signal_group(r.pid, process::SIGKILL);
            let _ = r.child.start_kill();
            r.child.wait().await
        }
    };
    process::untrack(r.pid);
    status
}
