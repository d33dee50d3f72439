//! The endpoint's serve loop: binds `http.listen`, accepts connections, answers each from the
//! [`Endpoint`], and drains requests in flight at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Endpoint;
use crate::config::HttpConfig;
use crate::state::Current;

/// A client gets this long to send its request headers; it stops idle or slow connections from
/// holding the endpoint's sockets forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Binds `http.listen` and serves it until `shutdown` fires; None when the endpoint is disabled
/// (`listen: ""`). The error names the address and what to change.
pub async fn start(
    cfg: &HttpConfig,
    current: Arc<Current>,
    admin: Option<crate::admin::Outbox>,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(listen) = cfg.listen.as_deref() else { return Ok(None) };
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        format!("http.listen: cannot listen on {listen}: {e}; choose a free address, or set http.listen to \"\" to disable the endpoint")
    })?;
    let addr = listener.local_addr().map_err(|e| format!("http.listen {listen}: {e}"))?;
    info!(addr = %addr, "http endpoint listening on http://{addr} (/healthz /readyz /metrics /status)");
    let mut endpoint = Endpoint::new(current, cfg.max_stale);
    if let Some(outbox) = admin {
        endpoint = endpoint.with_admin(outbox, addr);
    }
    let endpoint = Arc::new(endpoint);
    Ok(Some(tokio::spawn(serve(listener, endpoint, shutdown))))
}

/// Accepts connections on `listener` and answers them from `endpoint` until `shutdown` fires, then
/// lets requests in flight finish (for at most a few seconds).
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown: stop accepting.
            _ = shutdown.cancelled() => break,
            // A new connection.
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_connection(stream, peer, Arc::clone(&endpoint), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of spinning on the error.
                    warn!(error = %e, "http endpoint: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    if tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await.is_err() {
        debug!("http endpoint: connections still open at shutdown were closed");
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    let service = service_fn(move |req: Request<Incoming>| {
        let endpoint = Arc::clone(&endpoint);
        async move {
            let r = if req.uri().path().starts_with("/admin/") {
                endpoint.admin(&req, peer).await
            } else {
                endpoint.respond(&req)
            };
            Ok::<_, Infallible>(r)
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        // The client closed the connection, or it failed.
        r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "http endpoint: connection ended") },
        // Shutdown: finish the request in flight, then close.
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
