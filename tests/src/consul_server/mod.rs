//! A Consul KV HTTP server for tests, following `specs/consul-kv.md`.
//!
//! It serves `GET`/`PUT`/`DELETE /v1/kv/...` on 127.0.0.1 (a port chosen by the system) with Consul's
//! index rules and blocking semantics, ACL tokens, and Consul's status codes and messages, plus the
//! controls a test needs to create trouble: injected statuses, hanging or slow answers, answers cut
//! off mid-body, connection resets, index resets (snapshot restore, renumbering), tombstone reaping,
//! and request counts per path. Bodies are framed as Consul frames them (`Content-Length` up to 2 KiB,
//! chunked above); a test can force a framing, pace bodies or stop one part-way (see [`Framing`]).
//! Optionally over TLS (see [`TestPki`]).
//!
//! Stale reads (`?stale`) are answered by the leader, or by a follower the test sets up with
//! [`ConsulServer::set_follower`] (its own lagging view, `X-Consul-LastContact` and
//! `X-Consul-KnownLeader`); every read says `X-Consul-Effective-Consistency`. Locks held by sessions
//! show in listings (`LockIndex`, `Session`) through [`ConsulServer::lock`]; a snapshot restore wakes
//! every blocked query at once with the restored index.
//!
//! Not emulated: the session API and `acquire`/`release` over HTTP (they answer "invalid session"),
//! `/v1/txn`, gzip, `enable_key_list_policy`, and Consul's HTTP connection limit.
//!
//! The server runs until the [`ConsulServer`] is dropped; every connection task stops with it.

mod acl;
mod body;
mod http;
mod store;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderValue, Response, StatusCode};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::acl::Access;
pub use self::body::{Framing, Pace, GO_RESPONSE_BUFFER};
pub use self::http::{parse_go_duration, MAX_VALUE_SIZE};
pub use self::store::{Entry, KvSnapshot};
pub use self::tls::TestPki;

use self::acl::{Acl, Authz, Denied};
use self::store::{Cas, Store};

/// The datacenter this server pretends to be; `?dc=` naming another answers "No path to datacenter".
pub const DATACENTER: &str = "dc1";

/// A running test server. Dropping it stops it.
pub struct ConsulServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
}

/// Trouble to create, consumed request by request.
#[derive(Debug, Default)]
struct Faults {
    /// Answer the next `n` requests with this status.
    fail_next: Option<(StatusCode, usize)>,
    /// Answer every request with this status until then.
    fail_until: Option<(StatusCode, tokio::time::Instant)>,
    /// Never answer the next `n` requests.
    hang_next: usize,
    /// Wait this long before answering each request.
    delay: Duration,
    /// Cut the body of the next `n` successful answers in half, then reset the connection.
    truncate_next: usize,
    /// How bodies are framed.
    framing: Framing,
    /// Successful answers go out in pieces with pauses.
    pace: Option<Pace>,
    /// The next `.0` successful answers stop after `.1` bytes of body, the connection left silent.
    stop_body_next: (usize, usize),
}

/// State shared by the accept loop, the connections and the test's handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// None: ACLs disabled (everything allowed).
    acl: Mutex<Option<Acl>>,
    /// Bumped on every write that may wake blocking queries.
    changes: watch::Sender<u64>,
    /// Bumped to reset every live connection.
    resets: watch::Sender<u64>,
    faults: Mutex<Faults>,
    /// Requests per URL path.
    counts: Mutex<HashMap<String, u64>>,
    live_connections: AtomicUsize,
    accepted_connections: AtomicUsize,
    shutdown: CancellationToken,
    /// The follower that answers stale reads, when the test set one up.
    follower: Mutex<Option<Arc<Follower>>>,
    /// Blocking queries waiting for a change right now.
    blocked: AtomicUsize,
}

/// A follower answering stale reads: what it has replicated, and its contact with the leader.
pub(crate) struct Follower {
    pub(crate) view: Mutex<Store>,
    pub(crate) last_contact: Duration,
    pub(crate) known_leader: bool,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn count(&self, path: &str) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(path.to_string()).or_default() += 1;
    }

    fn take_failure(&self) -> Option<StatusCode> {
        let mut f = self.faults();
        if let Some((status, until)) = f.fail_until {
            if tokio::time::Instant::now() < until {
                return Some(status);
            }
            f.fail_until = None;
        }
        match f.fail_next.as_mut() {
            Some((status, n)) if *n > 0 => {
                *n -= 1;
                Some(*status)
            }
            _ => None,
        }
    }

    fn take_hang(&self) -> bool {
        let mut f = self.faults();
        if f.hang_next > 0 {
            f.hang_next -= 1;
            return true;
        }
        false
    }

    fn take_truncate(&self) -> bool {
        let mut f = self.faults();
        if f.truncate_next > 0 {
            f.truncate_next -= 1;
            return true;
        }
        false
    }

    fn delay(&self) -> Duration {
        self.faults().delay
    }

    fn framing(&self) -> Framing {
        self.faults().framing
    }

    /// How to send the body of an answer (`ok`: a successful one, which pacing and stops apply to).
    fn body_plan(&self, ok: bool) -> body::Plan {
        let mut f = self.faults();
        if !ok {
            return body::Plan { framing: f.framing, ..body::Plan::default() };
        }
        let stop_after = match &mut f.stop_body_next {
            (n, after) if *n > 0 => {
                *n -= 1;
                Some(*after)
            }
            _ => None,
        };
        body::Plan { framing: f.framing, pace: f.pace, stop_after }
    }

    fn follower(&self) -> Option<Arc<Follower>> {
        self.follower.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn authorize(&self, token: Option<&str>) -> Result<Authz, Denied> {
        match self.acl.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            None => Ok(Authz::allow_all()),
            Some(acl) => acl.resolve(token),
        }
    }

    fn default_policy_header(&self, r: &mut Response<http::Body>) {
        let enabled = self.acl.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        r.headers_mut()
            .insert("x-consul-default-acl-policy", HeaderValue::from_static(if enabled { "deny" } else { "allow" }));
    }
}

impl ConsulServer {
    /// Starts a plain HTTP server on 127.0.0.1 (port chosen by the system).
    pub async fn start() -> anyhow::Result<ConsulServer> {
        Self::spawn(None).await
    }

    /// Starts a plain HTTP server on `addr` holding `data` from its first answer: a server that was
    /// stopped (dropped) comes back on its port with its [`snapshot`](Self::snapshot), indexes
    /// included, as a restarted agent does.
    pub async fn start_on(addr: SocketAddr, data: KvSnapshot) -> anyhow::Result<ConsulServer> {
        Self::spawn_on(addr, None, Some(data)).await
    }

    /// Starts an HTTPS server with this rustls configuration (see [`TestPki::server_config`]).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> anyhow::Result<ConsulServer> {
        Self::spawn(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<ConsulServer> {
        Self::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), tls, None).await
    }

    async fn spawn_on(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        data: Option<KvSnapshot>,
    ) -> anyhow::Result<ConsulServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            acl: Mutex::default(),
            changes: watch::channel(0).0,
            resets: watch::channel(0).0,
            faults: Mutex::default(),
            counts: Mutex::default(),
            live_connections: AtomicUsize::new(0),
            accepted_connections: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            follower: Mutex::default(),
            blocked: AtomicUsize::new(0),
        });
        if let Some(data) = data {
            shared.store().restore(data);
        }
        let is_tls = tls.is_some();
        tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared)));
        Ok(ConsulServer { shared, addr, tls: is_tls })
    }

    /// The base URL to give a client: `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    // ---- data, as if written through the API (watchers wake) ----

    /// Writes a key (flags 0); an empty value is stored as null. Returns whether anything changed.
    pub fn put(&self, key: &str, value: impl Into<Bytes>) -> bool {
        let (_, changed) = self.shared.store().put(key, Some(value.into()), 0, Cas::None);
        if changed {
            self.shared.notify();
        }
        changed
    }

    /// Writes several keys at once, as one `/v1/txn` of KV sets does: a blocking query wakes once and
    /// sees all of them or none. Returns whether anything changed.
    pub fn put_all(&self, entries: &[(&str, Bytes)]) -> bool {
        let mut changed = false;
        {
            let mut store = self.shared.store();
            for (key, value) in entries {
                changed |= store.put(key, Some(value.clone()), 0, Cas::None).1;
            }
        }
        if changed {
            self.shared.notify();
        }
        changed
    }

    /// Deletes a key (leaving a tombstone).
    pub fn delete(&self, key: &str) -> bool {
        let (_, changed) = self.shared.store().delete(key, Cas::None);
        if changed {
            self.shared.notify();
        }
        changed
    }

    /// Deletes every key under a prefix.
    pub fn delete_tree(&self, prefix: &str) -> bool {
        let changed = self.shared.store().delete_tree(prefix);
        if changed {
            self.shared.notify();
        }
        changed
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.shared.store().get(key).cloned()
    }

    /// The index a recurse query on `prefix` reports (floored at 1).
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        self.shared.store().prefix_index(prefix).max(1)
    }

    // ---- index resets ----

    /// A copy of the whole state, to [`restore`](Self::restore) later.
    pub fn snapshot(&self) -> KvSnapshot {
        self.shared.store().snapshot()
    }

    /// A snapshot restore: content and indexes go back to the snapshot's.
    pub fn restore(&self, snapshot: KvSnapshot) {
        self.shared.store().restore(snapshot);
        self.shared.notify();
    }

    /// From now on stale reads are answered by a follower that has replicated the current state and
    /// no more (later writes reach only the leader), last heard from the leader `last_contact` ago,
    /// knowing a leader or not. None: the leader answers stale reads again.
    pub fn set_follower(&self, follower: Option<(Duration, bool)>) {
        let f = follower.map(|(last_contact, known_leader)| {
            let mut view = Store::default();
            view.restore(self.shared.store().snapshot());
            Arc::new(Follower { view: Mutex::new(view), last_contact, known_leader })
        });
        *self.shared.follower.lock().unwrap_or_else(|e| e.into_inner()) = f;
        self.shared.notify();
    }

    /// Locks `key` for `session` (as `?acquire=<session>` does): listings show its `LockIndex` and
    /// `Session`. False when the key is missing or held by another session.
    pub fn lock(&self, key: &str, session: &str) -> bool {
        let done = self.shared.store().lock(key, session);
        if done {
            self.shared.notify();
        }
        done
    }

    /// Releases the lock on `key` (as `?release=` does).
    pub fn unlock(&self, key: &str) -> bool {
        let done = self.shared.store().unlock(key);
        if done {
            self.shared.notify();
        }
        done
    }

    /// Same content, every index back to 1: any index a client holds above 1 is now ahead.
    pub fn force_index_reset(&self) {
        self.shared.store().renumber();
        self.shared.notify();
    }

    /// Removes every tombstone (as Consul's reaper does 15 minutes after deletes).
    pub fn reap_tombstones(&self) {
        self.shared.store().reap_tombstones();
        self.shared.notify();
    }

    // ---- ACL ----

    /// Turns ACLs on with default policy deny. Requests without a token get the anonymous token's
    /// rules (set a token with secret "" to give it some).
    pub fn enable_acl(&self) {
        let mut acl = self.shared.acl.lock().unwrap_or_else(|e| e.into_inner());
        if acl.is_none() {
            *acl = Some(Acl::default());
        }
    }

    /// Creates (or replaces) a token with `key_prefix` rules; enables ACLs.
    pub fn set_token(&self, secret: &str, rules: &[(&str, Access)]) {
        self.enable_acl();
        if let Some(acl) = self.shared.acl.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            acl.set_token(secret, rules);
        }
    }

    /// Deletes a token (a revocation): requests carrying it are refused with 403 "ACL not found".
    pub fn remove_token(&self, secret: &str) {
        if let Some(acl) = self.shared.acl.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            acl.remove_token(secret);
        }
    }

    // ---- faults ----

    /// Answers the next `n` requests with `status` (429, 500, 503, ...).
    pub fn fail_next(&self, status: u16, n: usize) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.shared.faults().fail_next = Some((status, n));
    }

    /// Answers every request with `status` for `period` (a storm).
    pub fn fail_for(&self, status: u16, period: Duration) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.shared.faults().fail_until = Some((status, tokio::time::Instant::now() + period));
    }

    /// Never answers the next `n` requests (their connections stay open).
    pub fn hang_next(&self, n: usize) {
        self.shared.faults().hang_next = n;
    }

    /// Delays every answer by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults().delay = delay;
    }

    /// Cuts the next `n` successful answers off mid-body and resets their connections.
    pub fn truncate_next(&self, n: usize) {
        self.shared.faults().truncate_next = n;
    }

    /// Frames every body this way from now on ([`Framing::Consul`] until told otherwise).
    pub fn set_framing(&self, framing: Framing) {
        self.shared.faults().framing = framing;
    }

    /// Sends the body of every successful answer in pieces of `pace.chunk` bytes, `pace.pause` apart
    /// (None: whole, at once).
    pub fn set_pace(&self, pace: Option<Pace>) {
        self.shared.faults().pace = pace;
    }

    /// The body of each of the next `n` successful answers stops after `after` bytes: nothing more is
    /// sent, and the connection stays open without a reset or a close.
    pub fn stop_body_next(&self, n: usize, after: usize) {
        self.shared.faults().stop_body_next = (n, after);
    }

    /// Resets (RST) every live connection.
    pub fn reset_connections(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Clears every injected fault.
    pub fn clear_faults(&self) {
        *self.shared.faults() = Faults::default();
    }

    // ---- observation ----

    /// Requests received on a URL path (for example `/v1/kv/config/app/`), including failed ones.
    pub fn requests(&self, path: &str) -> u64 {
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner()).get(path).copied().unwrap_or(0)
    }

    /// Requests received on every path.
    pub fn total_requests(&self) -> u64 {
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// Blocking queries waiting for a change right now (a client is blocked on the current index).
    pub fn blocked_queries(&self) -> usize {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    pub fn live_connections(&self) -> usize {
        self.shared.live_connections.load(Ordering::SeqCst)
    }

    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted_connections.load(Ordering::SeqCst)
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    // Owns every connection task: they stop when this loop returns.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The server handle was dropped.
            _ = shared.shutdown.cancelled() => break,
            // A new client.
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    shared.accepted_connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve_connection(tcp, tls.clone(), Arc::clone(&shared)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a live connection for as long as it is held.
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(tcp: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    shared.live_connections.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(Arc::clone(&shared));
    let reset = Arc::new(AtomicBool::new(false));
    let io = ResettableIo { inner: tcp, reset: Arc::clone(&reset) };
    let mut resets = shared.resets.subscribe();
    match tls {
        None => serve_http(io, &shared, &reset, &mut resets).await,
        Some(acceptor) => {
            let stream = tokio::select! {
                // Handshake done (or failed: a client without a certificate, a wrong CA...).
                s = acceptor.accept(io) => match s { Ok(s) => s, Err(_) => return },
                // Reset or shutdown during the handshake.
                _ = resets.changed() => { reset.store(true, Ordering::SeqCst); return }
                _ = shared.shutdown.cancelled() => return,
            };
            serve_http(stream, &shared, &reset, &mut resets).await
        }
    }
}

async fn serve_http<IO>(io: IO, shared: &Arc<Shared>, reset: &Arc<AtomicBool>, resets: &mut watch::Receiver<u64>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = Arc::clone(shared);
        let reset = Arc::clone(reset);
        hyper::service::service_fn(move |req| http::handle(req, Arc::clone(&shared), Arc::clone(&reset)))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Go's canonical header casing on the wire (X-Consul-Index).
    builder.title_case_headers(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        // The client closed, or the connection broke (a truncated answer ends here too).
        _ = conn => {}
        // reset_connections(): drop it with SO_LINGER 0, so the client gets an RST.
        _ = resets.changed() => reset.store(true, Ordering::SeqCst),
        // The server is stopping.
        _ = shared.shutdown.cancelled() => {}
    }
}

/// A TCP stream that is closed with an RST instead of a FIN when its `reset` flag is set.
struct ResettableIo {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: close() sends an RST. Nothing is left to flush on a connection we break.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
