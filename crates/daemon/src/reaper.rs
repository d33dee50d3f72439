//! Orphan reaping: as PID 1, or as child subreaper under `kvsync exec`, kvsync collects the zombies
//! of processes re-parented to it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::process;
use crate::state::ChildState;

/// Reaps orphaned zombies on every SIGCHLD (and every few seconds, since signals coalesce) until
/// `stop` fires; counts them in `state`.
pub async fn reap_orphans(state: Arc<ChildState>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut chld = signal(SignalKind::child()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            // kvsync is stopping.
            _ = stop.cancelled() => return,
            // A child changed state (SIGCHLD).
            _ = async { match chld.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            // Signals coalesce: look anyway from time to time.
            _ = tick.tick() => {}
        }
        let n = tokio::task::spawn_blocking(process::reap_orphans).await.unwrap_or(0);
        if n > 0 {
            state.reaped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(reaped = n, "reaped orphaned processes");
        }
    }
}

/// Makes kvsync the reaper of the orphans that concern it: as PID 1 always; under exec, as child
/// subreaper, so the orphans of the child's tree come to it even when it is not PID 1. Returns
/// whether reaping is due.
pub fn take_on(exec: bool) -> bool {
    let is_pid1 = rustix::process::getpid().is_init();
    if !exec && !is_pid1 {
        return false;
    }
    if !is_pid1 {
        if let Err(e) = process::become_subreaper() {
            tracing::warn!("cannot register as child subreaper; orphans of the child go to PID 1: {e}");
        }
    }
    if !std::path::Path::new("/proc/self/stat").exists() {
        tracing::warn!("/proc is not mounted: orphaned processes cannot be found and will not be reaped");
    }
    true
}
