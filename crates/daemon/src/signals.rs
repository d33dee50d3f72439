//! Signals: SIGTERM and SIGINT shut kvsync down; under `kvsync exec`, SIGQUIT, SIGUSR1, SIGUSR2 and
//! SIGWINCH are forwarded to the child. SIGHUP (reload) is handled by [`crate::reload`].

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::child::ChildHandle;
use crate::process;

/// Listens for SIGTERM and SIGINT (registered before this returns) and cancels `shutdown` on each.
/// The returned future runs until it is dropped.
pub fn cancel_on_termination(shutdown: CancellationToken) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.cancel(); }
            }
        }
    })
}

/// Forwards SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the child until `stop` fires. Only under exec:
/// elsewhere these keep their default meaning.
pub async fn forward_to_child(child: ChildHandle, stop: CancellationToken) {
    let forwarded = [
        (3, SignalKind::quit()),
        (10, SignalKind::user_defined1()),
        (12, SignalKind::user_defined2()),
        (28, SignalKind::window_change()),
    ];
    let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    let mut listeners = tokio::task::JoinSet::new();
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
    loop {
        tokio::select! {
            // kvsync is stopping.
            _ = stop.cancelled() => return,
            // A signal for the child.
            Some(sig) = fwd_rx.recv() => match child.signal(sig).await {
                Ok(()) => tracing::info!("forwarded {} to the child", process::signal_name(sig)),
                Err(e) => tracing::warn!("could not forward {} to the child: {e}", process::signal_name(sig)),
            },
        }
    }
}
