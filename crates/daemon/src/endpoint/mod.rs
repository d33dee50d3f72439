//! The HTTP endpoint (`http.listen`): `/healthz`, `/readyz`, `/metrics`, `/status`.
//!
//! HTTP/1.1 on hyper, plain text over a loopback or pod-network address: it serves probes and
//! scrapes, nothing that changes the daemon. Every answer is built from [`Shared`], which holds
//! names, counters and messages, never a key's value or a token.
//!
//! Like every long-running task here, [`serve`] takes what it listens on and a shutdown token, so a
//! test binds port 0 and stops it when it likes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::report::StatusReport;
use crate::state::Current;

/// A client gets this long to send its request headers; it stops idle or slow connections from
/// holding the endpoint's sockets forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// What the endpoint answers from.
pub struct Endpoint {
    /// The running render loop's state (replaced on reload) and the process's start.
    current: Arc<Current>,
    /// `http.max_stale`: how long a source may fail before /readyz turns 503.
    max_stale: Duration,
    registry: Registry,
}

impl Endpoint {
    pub fn new(current: Arc<Current>, max_stale: Duration) -> Self {
        let registry = crate::metrics::registry(Arc::clone(&current), max_stale);
        Endpoint { current, max_stale, registry }
    }

    /// Answers one request. Only GET and HEAD; the query string is ignored.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served\n");
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            // The process is up and answering: the liveness probe.
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // Every output rendered once, no source stale: the readiness probe.
            "/readyz" => {
                let r = self.current.get().readiness(self.max_stale);
                let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                json(code, &r)
            }
            "/metrics" => match crate::metrics::encode(&self.registry) {
                Ok(body) => with_type(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n"),
            },
            "/status" => json(StatusCode::OK, &StatusReport::take(&self.current, self.max_stale)),
            _ => text(StatusCode::NOT_FOUND, "not found; kvsync serves /healthz /readyz /metrics /status\n"),
        }
    }
}

fn with_type(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    // Every answer describes this moment; a cache in between must not replay it.
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

fn text(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(code, "text/plain; charset=utf-8", body.to_string())
}

fn json(code: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            with_type(code, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode the answer: {e}\n")),
    }
}

/// Binds `http.listen` and serves it until `shutdown` fires; None when the endpoint is disabled
/// (`listen: ""`). The error names the address and what to change.
pub async fn start(
    cfg: &HttpConfig,
    current: Arc<Current>,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(listen) = cfg.listen.as_deref() else { return Ok(None) };
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        format!("http.listen: cannot listen on {listen}: {e}; choose a free address, or set http.listen to \"\" to disable the endpoint")
    })?;
    let addr = listener.local_addr().map_err(|e| format!("http.listen {listen}: {e}"))?;
    info!(addr = %addr, "http endpoint listening on http://{addr} (/healthz /readyz /metrics /status)");
    let endpoint = Arc::new(Endpoint::new(current, cfg.max_stale));
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
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&endpoint), shutdown.clone()));
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

async fn serve_connection(stream: TcpStream, endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    let service = service_fn(move |req: Request<Incoming>| {
        let r = endpoint.respond(&req);
        async move { Ok::<_, Infallible>(r) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{OutputState, SourceState};
    use std::sync::atomic::Ordering;

    fn get(ep: &Endpoint, path: &str) -> (StatusCode, String) {
        let r = ep.respond(&Request::get(path).body(()).unwrap());
        let code = r.status();
        let body = body_text(r);
        (code, body)
    }

    fn body_text(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn endpoint() -> (Arc<crate::state::Shared>, Endpoint) {
        let mut s = crate::state::Shared::default();
        s.sources.push(SourceState { name: "main".into(), kind: "file", stats: Arc::default() });
        s.outputs.push(OutputState { name: "app".into(), destination: "/etc/app.conf".into(), stats: Arc::default() });
        s.set_pending(vec!["output `app` needs source `main` prefix `app/`".into()]);
        let s = Arc::new(s);
        let current = Arc::new(Current::default());
        current.publish(Arc::clone(&s));
        (s, Endpoint::new(current, Duration::from_secs(60)))
    }

    #[test]
    fn readyz_is_503_with_what_is_pending_then_200() {
        let (shared, ep) = endpoint();
        let (code, body) = get(&ep, "/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["pending"][0], "output `app` needs source `main` prefix `app/`");
        shared.outputs[0].stats.last_success.store(1, Ordering::Relaxed);
        shared.set_ready();
        let (code, body) = get(&ep, "/readyz");
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(get(&ep, "/healthz"), (StatusCode::OK, "ok\n".into()));
    }

    #[test]
    fn unknown_paths_and_methods() {
        let (_, ep) = endpoint();
        assert_eq!(get(&ep, "/nope").0, StatusCode::NOT_FOUND);
        let r = ep.respond(&Request::post("/readyz").body(()).unwrap());
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        // The query string does not change the route.
        assert_eq!(get(&ep, "/healthz?verbose=1").0, StatusCode::OK);
    }

    #[test]
    fn status_round_trips_through_the_report_type() {
        let (_, ep) = endpoint();
        let (code, body) = get(&ep, "/status");
        assert_eq!(code, StatusCode::OK);
        let r: StatusReport = serde_json::from_str(&body).unwrap();
        assert_eq!(r.sources[0].name, "main");
        assert_eq!(r.outputs[0].destination, "/etc/app.conf");
        assert!(!r.ready);
        assert!(r.child.is_none());
    }

    #[tokio::test]
    async fn serves_over_tcp_and_stops_on_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_, ep) = endpoint();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(ep), stop.clone()));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("serve returns after shutdown").unwrap();
    }
}
