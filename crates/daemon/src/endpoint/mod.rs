//! The HTTP endpoint (`http.listen`): `/healthz`, `/readyz`, `/metrics`, `/status`.
//!
//! HTTP/1.1 on hyper, plain text over a loopback or pod-network address: it serves probes and
//! scrapes, nothing that changes the daemon. Every answer is built from [`Shared`], which holds
//! names, counters and messages, never a key's value or a token.
//!
//! The serve loop is in [`server`]. Like every long-running task here, [`serve`] takes what it
//! listens on and a shutdown token, so a test binds port 0 and stops it when it likes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;

use crate::report::StatusReport;
use crate::state::Current;

mod server;
pub use server::start;

/// What the endpoint answers from.
pub struct Endpoint {
    /// The running render loop's state (replaced on reload) and the process's start.
    current: Arc<Current>,
    /// `http.max_stale`: how long a source may fail before /readyz turns 503.
    max_stale: Duration,
    registry: Registry,
    /// Where admin requests go (`kvsync release`, `kvsync rollback`), and the address listened on
    /// (admin requests are served only when it is loopback).
    admin: Option<(crate::admin::Outbox, SocketAddr)>,
}

impl Endpoint {
    pub fn new(current: Arc<Current>, max_stale: Duration) -> Self {
        let registry = crate::metrics::registry(Arc::clone(&current), max_stale);
        Endpoint { current, max_stale, registry, admin: None }
    }

    /// Serves admin requests through `outbox` (when `listen` is a loopback address).
    pub fn with_admin(mut self, outbox: crate::admin::Outbox, listen: SocketAddr) -> Self {
        self.admin = Some((outbox, listen));
        self
    }

    /// Answers an admin request (`POST /admin/...`) from `peer`.
    pub async fn admin<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let Some((outbox, listen)) = &self.admin else {
            return text(StatusCode::NOT_FOUND, "admin requests are not served here\n");
        };
        if let Err(e) = crate::admin::http_allowed(Some(*listen), peer) {
            tracing::warn!(peer = %peer, "http endpoint: refused an admin request: {e}");
            return text(StatusCode::FORBIDDEN, &format!("{e}\n"));
        }
        let action = match crate::admin::parse_http(req.method(), req.uri(), req.headers()) {
            Ok(a) => a,
            Err((code, msg)) => return text(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST), &msg),
        };
        let (code, body) = crate::admin::http_answer(&crate::admin::ask(outbox, action).await);
        text(StatusCode::from_u16(code).unwrap_or(StatusCode::CONFLICT), &body)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{OutputState, SourceState};
    use std::sync::atomic::Ordering;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

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
        s.outputs.push(OutputState {
            name: "app".into(),
            destination: "/etc/app.conf".into(),
            stats: Arc::default(),
            hold: Arc::default(),
            kept: Default::default(),
        });
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
        let task = tokio::spawn(server::serve(listener, Arc::new(ep), stop.clone()));
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
