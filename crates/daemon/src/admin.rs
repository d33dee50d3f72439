//! Admin requests to a running daemon: `kvsync release OUTPUT` and `kvsync rollback OUTPUT [--to K]`.
//!
//! They change what the daemon publishes, so they are local only:
//! - on the HTTP endpoint (`POST /admin/release/NAME`, `POST /admin/rollback/NAME?to=K`, with the
//!   header `X-Kvsync-Admin: 1`, which a browser cannot send to another origin without a preflight
//!   kvsync never answers) only when `http.listen` is a loopback address, and only from a loopback
//!   peer;
//! - on the Unix socket `admin.socket` (mode 0600 in the directory it is given), only from a process
//!   of the same user (or root), checked with the peer's credentials.
//!
//! When no daemon answers, `--config` makes the command act on the files itself (offline): a rollback
//! publishes the kept version and leaves the output held, a release removes the hold.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The header an HTTP admin request must carry.
pub const HEADER: &str = "x-kvsync-admin";
/// How long a client waits for the daemon's answer (a rollback runs the output's actions).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Publish the held render once and follow upstream again.
    Release { output: String },
    /// Publish kept version `to` and hold the output.
    Rollback { output: String, to: u32 },
}

impl Action {
    pub fn output(&self) -> &str {
        match self {
            Action::Release { output } | Action::Rollback { output, .. } => output,
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    pub message: String,
}

impl Answer {
    pub fn ok(message: impl Into<String>) -> Answer {
        Answer { ok: true, message: message.into() }
    }

    pub fn refused(message: impl Into<String>) -> Answer {
        Answer { ok: false, message: message.into() }
    }
}

/// A request on its way to the render loop, with where to send the answer.
#[derive(Debug)]
pub struct Request {
    pub action: Action,
    pub answer: oneshot::Sender<Answer>,
}

/// The render loop's inbox for admin requests.
pub type Inbox = mpsc::Receiver<Request>;
/// What the endpoint and the socket send admin requests through.
pub type Outbox = mpsc::Sender<Request>;

/// A channel for admin requests.
pub fn channel() -> (Outbox, Inbox) {
    mpsc::channel(8)
}

/// Hands `action` to the render loop and waits for its answer.
pub async fn ask(outbox: &Outbox, action: Action) -> Answer {
    let (tx, rx) = oneshot::channel();
    if outbox.send(Request { action, answer: tx }).await.is_err() {
        return Answer::refused("the daemon is shutting down");
    }
    match tokio::time::timeout(ANSWER_WITHIN, rx).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => Answer::refused("the daemon stopped before answering (a config reload or shutdown); try again"),
        Err(_) => Answer::refused("the daemon did not answer within 2 minutes"),
    }
}

/// Whether an admin request that reached the HTTP endpoint may be served: the endpoint listens on
/// loopback and the peer is on this host. The refusal says why and what to use instead.
pub fn http_allowed(listen: Option<SocketAddr>, peer: SocketAddr) -> Result<(), String> {
    match listen {
        Some(l) if !l.ip().is_loopback() => Err(format!(
            "admin requests are refused on this endpoint: it listens on {l}, which other hosts can reach; \
             use the admin socket (admin.socket in the config), or listen on 127.0.0.1"
        )),
        _ if !peer.ip().is_loopback() && !is_v4_mapped_loopback(peer) => {
            Err(format!("admin requests are only served to this host (a loopback address); {} is not one", peer.ip()))
        }
        _ => Ok(()),
    }
}

fn is_v4_mapped_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        _ => false,
    }
}

/// The admin action an HTTP request asks for: `POST /admin/release/NAME` or
/// `POST /admin/rollback/NAME?to=K`. Err: the status code and why.
pub fn parse_http(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Result<Action, (u16, String)> {
    if method != http::Method::POST {
        return Err((405, "admin requests are POST\n".into()));
    }
    if headers.get(HEADER).is_none_or(|v| v != "1") {
        return Err((
            403,
            format!("admin requests carry the header `{HEADER}: 1` (kvsync release and rollback send it)\n"),
        ));
    }
    let path = uri.path().trim_start_matches("/admin/");
    let (verb, output) =
        path.split_once('/').ok_or((404, "use /admin/release/OUTPUT or /admin/rollback/OUTPUT\n".to_string()))?;
    let output = percent_decode(output);
    if output.is_empty() {
        return Err((404, "name the output: /admin/release/OUTPUT\n".into()));
    }
    match verb {
        "release" => Ok(Action::Release { output }),
        "rollback" => {
            let to = match uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("to="))) {
                None => 1,
                Some(k) => k
                    .parse()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or((400, format!("to={k}: give a kept version, 1 or more\n")))?,
            };
            Ok(Action::Rollback { output, to })
        }
        _ => Err((404, "use /admin/release/OUTPUT or /admin/rollback/OUTPUT\n".into())),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// Binds the admin socket: removes a stale one (nothing answers on it), refuses to take over one a
/// running kvsync serves, and makes it 0600 before anyone can connect through a wider mode.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "admin.socket: {} is served by a running process (another kvsync?); give each daemon its own socket",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("admin.socket: cannot remove the stale {}: {e}", path.display()))?;
    }
    // Created under a umask that leaves the owner alone, then narrowed to 0600 by name.
    let listener = UnixListener::bind(path).map_err(|e| {
        format!("admin.socket: cannot listen on {}: {e}; its directory must exist and be writable", path.display())
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("admin.socket: cannot set mode 0600 on {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serves admin requests on `listener` until `shutdown` fires, then removes the socket.
pub async fn serve_socket(listener: UnixListener, path: PathBuf, outbox: Outbox, shutdown: CancellationToken) {
    info!(socket = %path.display(), "admin requests (kvsync release, rollback) on {}", path.display());
    let me = rustix::process::geteuid().as_raw();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown: stop accepting.
            _ = shutdown.cancelled() => break,
            // A client connected.
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().map(|c| c.uid()).ok();
                    conns.spawn(serve_client(stream, uid, me, outbox.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "admin socket: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    let _ = std::fs::remove_file(&path);
}

/// One request (a JSON line) and its answer (a JSON line). The request is read before the peer is
/// judged, so a refused client reads its refusal instead of a broken pipe.
async fn serve_client(stream: UnixStream, uid: Option<u32>, me: u32, outbox: Outbox) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(64 * 1024);
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await;
    let answer = match uid {
        Some(u) if u == me || u == 0 => match read {
            Ok(Ok(_)) => match serde_json::from_str::<Action>(&line) {
                Ok(action) => ask(&outbox, action).await,
                Err(e) => Answer::refused(format!("not an admin request: {e}")),
            },
            _ => Answer::refused("no request within 10s"),
        },
        Some(u) => {
            warn!(uid = u, "admin socket: refused a request from uid {u}, which is not kvsync's user");
            Answer::refused(format!(
                "admin requests are only served to uid {me} (kvsync's user) and root; you are uid {u}"
            ))
        }
        None => Answer::refused("cannot tell who is asking (no peer credentials); refused"),
    };
    let mut body = serde_json::to_string(&answer).unwrap_or_default();
    body.push('\n');
    let _ = w.write_all(body.as_bytes()).await;
    let _ = w.shutdown().await;
}

/// Why a client could not get an answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens there: the daemon is not running (offline handling may apply).
    Unreachable(String),
    /// Something answered, but not with an answer.
    Failed(String),
}

/// Sends `action` over the admin socket at `path`.
pub async fn over_socket(path: &Path, action: &Action) -> Result<Answer, ClientError> {
    let mut s = UnixStream::connect(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::Unreachable(format!("no kvsync answers on {}: {e}", path.display()))
        }
        _ => ClientError::Failed(format!("cannot connect to {}: {e}", path.display())),
    })?;
    let mut line = serde_json::to_string(action).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).await.map_err(|e| ClientError::Failed(format!("{}: {e}", path.display())))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .await
        .map_err(|e| ClientError::Failed(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&answer)
        .map_err(|e| ClientError::Failed(format!("{} did not answer as kvsync does: {e}", path.display())))
}

/// Sends `action` to the HTTP endpoint at `addr` (host:port).
pub async fn over_http(addr: &str, action: &Action) -> Result<Answer, ClientError> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ClientError::Unreachable(format!("no kvsync answers at http://{addr}: {e}"))
        } else {
            ClientError::Failed(format!("cannot reach http://{addr}: {e}"))
        }
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Failed(format!("http://{addr}: {e}")))?;
    let driver = tokio::spawn(conn);
    let path = match action {
        Action::Release { output } => format!("/admin/release/{}", percent_encode(output)),
        Action::Rollback { output, to } => format!("/admin/rollback/{}?to={to}", percent_encode(output)),
    };
    let req = http::Request::post(&path)
        .header(http::header::HOST, addr)
        .header(HEADER, "1")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ClientError::Failed(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| ClientError::Failed(format!("http://{addr}{path}: {e}")))?;
    let code = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| ClientError::Failed(e.to_string()))?.to_bytes();
    driver.abort();
    let text = String::from_utf8_lossy(&body).trim_end().to_string();
    match code.as_u16() {
        200 => Ok(Answer::ok(text)),
        // The daemon's refusals (unknown output, no kept version) and the endpoint's (not loopback).
        400 | 403 | 404 | 409 => Ok(Answer::refused(text)),
        _ => Err(ClientError::Failed(format!("http://{addr}{path} answered {code}: {text}"))),
    }
}

/// An answer as an HTTP response: status code and body.
pub fn http_answer(a: &Answer) -> (u16, String) {
    (if a.ok { 200 } else { 409 }, format!("{}\n", a.message))
}

/// Where `kvsync release` and `kvsync rollback` send their request.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--http ADDR`.
    pub http: Option<String>,
    /// `--socket PATH`.
    pub socket: Option<PathBuf>,
    /// `--config FILE`: find the daemon from its config, or act offline when none answers.
    pub config: Option<PathBuf>,
}

/// Runs `kvsync release` / `kvsync rollback`: asks the running daemon, or with `--config` and no
/// daemon answering, acts on the files. Prints the answer; exit 0 done, 1 refused, 2 unreachable.
pub fn run_client(action: Action, target: Target) -> std::process::ExitCode {
    use std::process::ExitCode;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvsync: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(client(&action, &target));
    match result {
        Ok(a) if a.ok => {
            println!("{}", a.message);
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!("kvsync: {}", a.message);
            ExitCode::from(1)
        }
        Err(ClientError::Unreachable(e)) => {
            eprintln!("kvsync: {e}");
            ExitCode::from(2)
        }
        Err(ClientError::Failed(e)) => {
            eprintln!("kvsync: {e}");
            ExitCode::from(1)
        }
    }
}

async fn client(action: &Action, target: &Target) -> Result<Answer, ClientError> {
    if let Some(sock) = &target.socket {
        return over_socket(sock, action).await;
    }
    let Some(path) = &target.config else {
        let addr = target.http.clone().unwrap_or_else(|| crate::status::DEFAULT_ADDR.to_string());
        return over_http(addr.trim_start_matches("http://").trim_end_matches('/'), action).await;
    };
    let cfg = crate::config::Config::load(path).map_err(|e| ClientError::Failed(e.to_string()))?;
    // The daemon of this config, where it would answer: --http, the admin socket, http.listen.
    if let Some(addr) = &target.http {
        match over_http(addr, action).await {
            Err(ClientError::Unreachable(_)) => {}
            other => return other,
        }
    }
    if let Some(sock) = &cfg.admin_socket {
        match over_socket(sock, action).await {
            Err(ClientError::Unreachable(_)) => {}
            other => return other,
        }
    }
    if let Some(listen) = cfg.http.listen.as_deref().and_then(|l| l.parse::<SocketAddr>().ok()) {
        if listen.port() != 0 {
            let addr =
                if listen.ip().is_unspecified() { format!("127.0.0.1:{}", listen.port()) } else { listen.to_string() };
            match over_http(&addr, action).await {
                Err(ClientError::Unreachable(_)) => {}
                other => return other,
            }
        }
    }
    // No daemon: act on the files.
    let answer = offline(&cfg, action).await;
    Ok(Answer { ok: answer.ok, message: format!("no daemon answered; {}", answer.message) })
}

/// `release` / `rollback` with no daemon running: on the destination itself.
async fn offline(cfg: &crate::config::Config, action: &Action) -> Answer {
    let name = action.output();
    let Some(i) = cfg.outputs.iter().position(|o| o.name == name) else {
        let names: Vec<&str> = cfg.outputs.iter().map(|o| o.name.as_str()).collect();
        return Answer::refused(format!("no output is named `{name}` (outputs: {})", names.join(", ")));
    };
    let o = &cfg.outputs[i];
    match action {
        Action::Release { .. } => {
            if crate::keep::clear_hold(&o.destination) {
                Answer::ok(format!("output `{name}` released on disk: the next start follows upstream"))
            } else {
                Answer::refused(format!("output `{name}` is not held by a rollback; nothing to release"))
            }
        }
        Action::Rollback { to, .. } => {
            let spec = crate::keep::KeepSpec::of(o, o.keep);
            match crate::keep::rollback(o, &spec, *to) {
                Ok(_) => {
                    let stats = crate::state::ActionStats::default();
                    let reach = crate::actions::Reach { child: None, stats: &stats };
                    let report = crate::actions::PassReport { written: vec![i], first: Vec::new(), pass: 0 };
                    crate::actions::run(cfg, &report, &reach).await;
                    Answer::ok(format!(
                        "rolled back on disk: output `{name}` rolled back to kept version {to}; \
                         held at the next start until `kvsync release {name}`"
                    ))
                }
                Err(e) => Answer::refused(e),
            }
        }
    }
}

/// An output's gate as the render loop starts it: its guard, and held if a rollback left it so.
pub fn gate(o: &crate::config::OutputConfig) -> crate::guard::Gate {
    let mut gate = crate::guard::Gate::new(&o.name, o.guard.clone());
    if let Some(reason) = crate::keep::held_by_rollback(&o.destination) {
        let b = crate::guard::Breach { guard: crate::guard::GuardKind::RolledBack, figures: reason.clone() };
        warn!(output = %o.name, "{}", crate::guard::held_message(&o.name, &b));
        gate.rolled_back(reason);
    }
    gate
}

/// What an admin request needs of one output in the render loop.
pub struct Slot<'a> {
    pub gate: &'a mut crate::guard::Gate,
    pub runtime: &'a mut crate::output::OutputRuntime,
    /// Set to ask the loop to render the output now.
    pub dirty: &'a mut bool,
}

/// Carries out an admin request in the render loop. `pass` is the render pass counter (a rollback
/// is a pass: its actions get the next number).
pub async fn handle(
    cfg: &crate::config::Config,
    slots: &mut [Slot<'_>],
    action: Action,
    reach: &crate::actions::Reach<'_>,
    pass: &mut u64,
) -> Answer {
    let name = action.output();
    let Some(i) = cfg.outputs.iter().position(|o| o.name == name) else {
        let names: Vec<&str> = cfg.outputs.iter().map(|o| o.name.as_str()).collect();
        return Answer::refused(format!("no output is named `{name}` (outputs: {})", names.join(", ")));
    };
    let (o, slot) = (&cfg.outputs[i], &mut slots[i]);
    match action {
        Action::Release { .. } => {
            let marker = crate::keep::clear_hold(&o.destination);
            if !slot.gate.held() && !marker {
                return Answer::refused(format!("output `{name}` is not held; nothing to release"));
            }
            slot.gate.release();
            *slot.dirty = true;
            info!(output = %name, "output `{name}`: released by the operator");
            Answer::ok(format!(
                "output `{name}` released: its held render is published now and it follows upstream again"
            ))
        }
        Action::Rollback { to, .. } => {
            let spec = crate::keep::KeepSpec::of(o, o.keep);
            let published = tokio::task::block_in_place(|| crate::keep::rollback(o, &spec, to));
            let reason = match published {
                Ok(r) => r,
                Err(e) => return Answer::refused(e),
            };
            // What the runtime knew of the destination is no longer true: it reads the disk again.
            *slot.runtime = crate::output::OutputRuntime::new();
            slot.gate.rolled_back(reason.clone());
            warn!(output = %name, "{}", crate::guard::held_message(name, &crate::guard::Breach { guard: crate::guard::GuardKind::RolledBack, figures: reason }));
            *pass += 1;
            let report = crate::actions::PassReport { written: vec![i], first: Vec::new(), pass: *pass };
            crate::actions::run(cfg, &report, reach).await;
            Answer::ok(format!("output `{name}` rolled back to kept version {to}; held until `kvsync release {name}`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_admin_is_loopback_only() {
        let lo: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9101".parse().unwrap();
        let local_peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let far_peer: SocketAddr = "10.1.2.3:50000".parse().unwrap();
        assert_eq!(http_allowed(Some(lo), local_peer), Ok(()));
        assert_eq!(http_allowed(Some("[::1]:9101".parse().unwrap()), "[::ffff:127.0.0.1]:1".parse().unwrap()), Ok(()));
        assert_eq!(
            http_allowed(Some(lo), far_peer).unwrap_err(),
            "admin requests are only served to this host (a loopback address); 10.1.2.3 is not one"
        );
        assert_eq!(
            http_allowed(Some(any), local_peer).unwrap_err(),
            "admin requests are refused on this endpoint: it listens on 0.0.0.0:9101, which other hosts can reach; \
             use the admin socket (admin.socket in the config), or listen on 127.0.0.1"
        );
    }

    #[test]
    fn http_admin_paths() {
        let h = |v: Option<&str>| {
            let mut m = http::HeaderMap::new();
            if let Some(v) = v {
                m.insert(HEADER, v.parse().unwrap());
            }
            m
        };
        let post = http::Method::POST;
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            parse_http(&post, &uri("/admin/release/app%2Fx"), &h(Some("1"))),
            Ok(Action::Release { output: "app/x".into() })
        );
        assert_eq!(
            parse_http(&post, &uri("/admin/rollback/app?to=3"), &h(Some("1"))),
            Ok(Action::Rollback { output: "app".into(), to: 3 })
        );
        assert_eq!(
            parse_http(&post, &uri("/admin/rollback/app"), &h(Some("1"))),
            Ok(Action::Rollback { output: "app".into(), to: 1 })
        );
        assert_eq!(parse_http(&post, &uri("/admin/rollback/app?to=0"), &h(Some("1"))).unwrap_err().0, 400);
        assert_eq!(parse_http(&post, &uri("/admin/release/app"), &h(None)).unwrap_err().0, 403);
        assert_eq!(parse_http(&http::Method::GET, &uri("/admin/release/app"), &h(Some("1"))).unwrap_err().0, 405);
        assert_eq!(parse_http(&post, &uri("/admin/delete/app"), &h(Some("1"))).unwrap_err().0, 404);
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_and_answers_through_the_inbox() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("admin.sock");
        let listener = bind(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (outbox, mut inbox) = channel();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_socket(listener, path.clone(), outbox, stop.clone()));
        let loop_ = tokio::spawn(async move {
            let r = inbox.recv().await.unwrap();
            let msg = format!("released {}", r.action.output());
            r.answer.send(Answer::ok(msg)).unwrap();
        });
        let a = over_socket(&path, &Action::Release { output: "app".into() }).await.unwrap();
        assert_eq!(a, Answer::ok("released app"));
        loop_.await.unwrap();
        // A second daemon may not take the socket over.
        assert!(bind(&path).await.unwrap_err().contains("is served by a running process"));
        stop.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "the socket is removed at shutdown");
        assert!(matches!(
            over_socket(&path, &Action::Release { output: "app".into() }).await,
            Err(ClientError::Unreachable(_))
        ));
    }
}
