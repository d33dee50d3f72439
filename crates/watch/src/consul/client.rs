//! The HTTP client: hyper 1 HTTP/1.1 connections over TCP or rustls (ring), with failover.
//!
//! Each prefix loop owns one connection ([`Connection`], held by its [`Fetcher`]) and reuses it for
//! every request: a blocking query occupies its connection for up to `wait`, so connections are not
//! shared between loops. Addresses are tried in order starting from the last one that worked; a
//! connection error moves the next attempt to the next address.
//!
//! TLS material is read from its files when a connection is made and re-read when the files change,
//! so renewed certificates are picked up without a restart.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::failure::{excerpt, Failure};
use super::token::TokenFile;
use crate::source::{SourceError, TlsFiles};
use crate::stats::SourceStats;

/// How long a TCP connect plus TLS and HTTP handshakes may take, per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a Content-Length header may make the client reserve up front (a larger body still
/// arrives, growing the buffer as it does).
const MAX_RESERVE: u64 = 1 << 30;

/// Sent as `User-Agent`, so Consul's logs show who is asking.
const USER_AGENT: &str = concat!("kvsync/", env!("CARGO_PKG_VERSION"));

/// One Consul address, parsed.
#[derive(Debug)]
struct Endpoint {
    /// The address as configured, without a trailing slash (for messages).
    url: String,
    tls: bool,
    /// Host to connect to (brackets of an IPv6 literal removed) and port.
    host: String,
    port: u16,
    /// The `Host` header: the authority of the URL.
    authority: HeaderValue,
    /// A path the API is mounted under (behind a proxy), without a trailing slash; usually empty.
    base_path: String,
    /// The name the server certificate must carry (tls.server_name, else the host).
    server_name: Option<ServerName<'static>>,
}

impl Endpoint {
    fn parse(address: &str, server_name: Option<&str>) -> Result<Endpoint, String> {
        let uri: Uri = address.trim().parse().map_err(|e| format!("consul address {address:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "consul address {address:?} must start with http:// or https:// (for example http://127.0.0.1:8500)"
                ))
            }
        };
        let authority = uri.authority().ok_or_else(|| format!("consul address {address:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "consul address {address:?}: credentials in the URL are not supported; use token_file"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("consul address {address:?} must not have a query (`?...`)"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let server_name = if tls {
            let name = server_name.unwrap_or(&host).to_string();
            Some(ServerName::try_from(name.clone()).map_err(|e| {
                format!("consul address {address:?}: {name:?} cannot be checked against a certificate: {e}")
            })?)
        } else {
            None
        };
        Ok(Endpoint {
            url: address.trim().trim_end_matches('/').to_string(),
            tls,
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("consul address {address:?}: {e}"))?,
            base_path: uri.path().trim_end_matches('/').to_string(),
            server_name,
        })
    }
}

/// Everything needed to open connections to Consul; shared by the prefix loops of one source.
pub(crate) struct Client {
    endpoints: Vec<Endpoint>,
    tls: Option<TlsMaterial>,
    token: Option<TokenFile>,
    /// Index into `endpoints` of the address to try first (the last one that worked).
    preferred: AtomicUsize,
    /// How long the body of an answer may pause between two chunks before the connection counts as
    /// stalled (`idle_timeout`). The head has its own deadline, given with each request.
    body_idle: Duration,
}

impl Client {
    pub fn new(
        addresses: &[String],
        tls: Option<&TlsFiles>,
        token_file: Option<&Path>,
        body_idle: Duration,
    ) -> Result<Client, SourceError> {
        if addresses.is_empty() {
            return Err(SourceError::Config(
                "consul: no address configured (for example http://127.0.0.1:8500)".into(),
            ));
        }
        let server_name = tls.and_then(|t| t.server_name.as_deref());
        let endpoints = addresses
            .iter()
            .map(|a| Endpoint::parse(a, server_name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SourceError::Config)?;
        let tls = if endpoints.iter().any(|e| e.tls) {
            let material = TlsMaterial::new(tls.cloned().unwrap_or_default()).map_err(SourceError::Config)?;
            // Fail at start on files that cannot be used, rather than on the first connection.
            material.config().map_err(|e| SourceError::Config(format!("consul: {e}")))?;
            Some(material)
        } else {
            if tls.is_some() {
                tracing::warn!("consul: `tls` is set but no address starts with https://; it is not used");
            }
            None
        };
        let token =
            token_file.map(TokenFile::open).transpose().map_err(|e| SourceError::Config(format!("consul: {e}")))?;
        Ok(Client { endpoints, tls, token, preferred: AtomicUsize::new(0), body_idle })
    }

    /// The token file, for messages (its path) and for noticing a fix.
    pub fn token_file(&self) -> Option<&TokenFile> {
        self.token.as_ref()
    }

    /// Connects to the preferred address, else to the others in turn.
    async fn connect(&self) -> Result<Connection, Failure> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let tls = match (&self.tls, endpoint.tls) {
                (Some(material), true) => Some(material.config().map_err(|error| Failure::Tls { error })?),
                _ => None,
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect_one(endpoint, tls)).await {
                Ok(Ok((sender, driver))) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(Connection { sender, endpoint: idx, driver, used: false });
                }
                Ok(Err(e)) => errors.push(format!("{}: {e}", endpoint.url)),
                Err(_) => errors.push(format!("{}: no connection within {CONNECT_TIMEOUT:?}", endpoint.url)),
            }
        }
        let address = if n == 1 { self.endpoints[0].url.clone() } else { format!("all {n} addresses") };
        Err(Failure::Connection { address, error: errors.join("; ") })
    }

    /// A connection to `endpoint` failed: the next connect starts with the next address.
    fn failed(&self, endpoint: usize) {
        let next = (endpoint + 1) % self.endpoints.len();
        let _ = self.preferred.compare_exchange(endpoint, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// TCP connect, then TLS when the address is https://, then the HTTP/1.1 handshake. The connection
/// is driven by a task that the returned handle stops.
async fn connect_one(
    endpoint: &Endpoint,
    tls: Option<Arc<ClientConfig>>,
) -> Result<(SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>), String> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(|e| e.to_string())?;
    // Requests are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    match (tls, &endpoint.server_name) {
        (Some(config), Some(name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {}", chain(&e)))?;
            handshake(stream).await
        }
        _ => handshake(tcp).await,
    }
}

async fn handshake<IO>(io: IO) -> Result<(SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| chain(&e))?;
    let driver = tokio::spawn(async move {
        // Ends when the connection closes; errors surface on the request that was in flight.
        if let Err(e) = conn.await {
            debug!("consul: connection closed: {e}");
        }
    });
    Ok((sender, driver))
}

/// An open HTTP/1.1 connection to one address.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    endpoint: usize,
    /// The task that drives the connection; stopped (and the socket closed) when this is dropped,
    /// so a request abandoned at its deadline never leaves a connection behind.
    driver: tokio::task::JoinHandle<()>,
    /// Whether a request has already gone through it (a reused connection may have been closed by
    /// the server while idle; that is retried at once on a fresh connection).
    used: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A complete answer from Consul.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    /// `X-Consul-Index`, when present and a number.
    pub index: Option<u64>,
    pub body: Bytes,
    /// The address that answered, for messages.
    pub address: String,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: the token could not see some of the keys.
    pub filtered: bool,
    /// `X-Consul-LastContact` and `X-Consul-KnownLeader`, for `max_stale`.
    pub leader: super::stale::LeaderContact,
}

impl Response {
    /// The failure this answer represents when it is not a KV answer (200 or 404).
    pub fn into_failure(self, token: Option<&HeaderValue>) -> Failure {
        if hidden_by_acl(&self) {
            return Failure::Hidden { address: self.address };
        }
        Failure::Status {
            address: self.address,
            status: self.status,
            body: excerpt(&self.body, token.map(HeaderValue::as_bytes)),
        }
    }
}

/// Whether an answer is Consul's answer to a KV read: a 200, or a 404 (nothing under the prefix)
/// that carries `X-Consul-Index`. A 404 without it comes from something else (a proxy, a wrong base
/// path) and must not be read as "the prefix is empty".
pub(crate) fn is_kv_answer(r: &Response) -> bool {
    r.status == StatusCode::OK || (r.status == StatusCode::NOT_FOUND && r.index.is_some() && !hidden_by_acl(r))
}

/// A 404 because ACLs filtered out every key under the prefix (not because it is empty).
pub(crate) fn hidden_by_acl(r: &Response) -> bool {
    r.status == StatusCode::NOT_FOUND && r.filtered
}

/// One prefix loop's way of making requests: its connection, kept open between requests.
pub(crate) struct Fetcher {
    client: Arc<Client>,
    conn: Option<Connection>,
    /// Whether a connection has been made before (the next one counts as a reconnect).
    connected_before: bool,
}

impl Fetcher {
    pub fn new(client: Arc<Client>) -> Self {
        Fetcher { client, conn: None, connected_before: false }
    }

    /// The token that requests send now (re-read if its file changed).
    pub fn token(&self) -> Result<Option<HeaderValue>, Failure> {
        match &self.client.token {
            Some(file) => file.current().map_err(|error| Failure::Token { error }),
            None => Ok(None),
        }
    }

    /// `GET path_and_query`. The answer's head (status line and headers) must arrive within `deadline`
    /// (`blocking`: the request is a blocking query, and `deadline` covers its wait); after that its
    /// body may take as long as it keeps arriving, but may not pause longer than the client's
    /// `body_idle`. So a silent connection is dropped at the deadline, and a large answer that is still
    /// arriving is never cut off. Any transport failure closes the connection.
    pub async fn get(
        &mut self,
        path_and_query: &str,
        deadline: Duration,
        blocking: bool,
        stats: &SourceStats,
    ) -> Result<Response, Failure> {
        let token = self.token()?;
        // Two tries only when the first went out on a reused connection that turned out to be closed.
        for _ in 0..2 {
            let mut conn = match self.conn.take() {
                Some(c) if !c.sender.is_closed() => c,
                _ => {
                    let c = self.client.connect().await?;
                    if self.connected_before {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.connected_before = true;
                    c
                }
            };
            let endpoint = &self.client.endpoints[conn.endpoint];
            let address = endpoint.url.clone();
            let mut request = Request::get(format!("{}{}", endpoint.base_path, path_and_query))
                .header(http::header::HOST, endpoint.authority.clone())
                .header(http::header::USER_AGENT, USER_AGENT)
                .header(http::header::ACCEPT, "application/json");
            if let Some(token) = &token {
                request = request.header("X-Consul-Token", token.clone());
            }
            let request = request.body(Empty::new()).map_err(|e| Failure::Malformed {
                address: address.clone(),
                error: format!("cannot build the request: {e}"),
            })?;
            let reused = conn.used;
            conn.used = true;
            let sent = tokio::time::timeout(deadline, async {
                conn.sender.ready().await?;
                conn.sender.send_request(request).await
            })
            .await;
            let response = match sent {
                Err(_) => {
                    self.client.failed(conn.endpoint);
                    return Err(Failure::NoAnswer { address, after: deadline, blocking });
                }
                Ok(Err(e)) if reused && !e.is_timeout() => {
                    debug!(address, "consul: a kept-alive connection was closed ({e}); reconnecting");
                    continue;
                }
                Ok(Err(e)) => {
                    self.client.failed(conn.endpoint);
                    return Err(Failure::Connection { address, error: chain(&e) });
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let filtered = response
                .headers()
                .get("x-consul-results-filtered-by-acls")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let leader = super::stale::LeaderContact::from_headers(response.headers());
            let mut body = response.into_body();
            // Sized from Content-Length when the server sends one, so a large listing is received
            // into one buffer instead of doubling (and copying) its way up. Reserving only takes
            // address space; pages are used as the body arrives.
            let announced = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
            let mut buf = BytesMut::with_capacity(announced.min(MAX_RESERVE) as usize);
            loop {
                match tokio::time::timeout(self.client.body_idle, body.frame()).await {
                    Err(_) => {
                        self.client.failed(conn.endpoint);
                        return Err(Failure::Stalled { address, received: buf.len(), idle: self.client.body_idle });
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        self.client.failed(conn.endpoint);
                        return Err(Failure::Connection {
                            address,
                            error: format!("the answer broke off after {} bytes: {}", buf.len(), chain(&e)),
                        });
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                }
            }
            self.conn = Some(conn);
            return Ok(Response { status, index, body: buf.freeze(), address, filtered, leader });
        }
        // Both tries went out on connections that were closed under them.
        let address = self.client.endpoints
            [self.client.preferred.load(Ordering::Relaxed) % self.client.endpoints.len()]
        .url
        .clone();
        Err(Failure::Connection { address, error: "the connection was closed before the request was sent".into() })
    }
}

/// An error and its sources, joined: hyper's top-level messages alone ("error trying to connect")
/// hide the reason.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        if depth >= 8 {
            break;
        }
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
        depth += 1;
    }
    out
}

/// The path and query of a KV read of `prefix`: `?recurse`, and for a blocking query `index` and
/// `wait` (in milliseconds, a Go duration Consul accepts).
pub(crate) fn kv_query(
    prefix: &str,
    stale: bool,
    datacenter: Option<&str>,
    blocking: Option<(u64, Duration)>,
) -> String {
    let mut q = format!("/v1/kv/{}?recurse", encode_path(prefix));
    if let Some((index, wait)) = blocking {
        q.push_str(&format!("&index={index}&wait={}ms", wait.as_millis().max(1)));
    }
    if stale {
        q.push_str("&stale");
    }
    if let Some(dc) = datacenter {
        q.push_str("&dc=");
        q.push_str(&encode_path(dc));
    }
    q
}

/// Percent-encodes a key for a URL path: everything but unreserved characters and `/`.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The modification times of the CA, certificate and key files (None: not set or unreadable).
type FileTimes = Vec<Option<SystemTime>>;

/// The TLS files and the client configuration last built from them.
struct TlsMaterial {
    files: TlsFiles,
    /// The system's roots, loaded once, when no `ca_file` is given.
    native_roots: Vec<CertificateDer<'static>>,
    /// The configuration and the modification times of the files it was built from.
    cached: Mutex<Option<(FileTimes, Arc<ClientConfig>)>>,
}

impl TlsMaterial {
    fn new(files: TlsFiles) -> Result<Self, String> {
        let native_roots = if files.ca_file.is_none() {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(format!(
                    "consul: no system CA certificates found ({} errors); set tls.ca_file",
                    found.errors.len()
                ));
            }
            found.certs
        } else {
            Vec::new()
        };
        Ok(TlsMaterial { files, native_roots, cached: Mutex::new(None) })
    }

    /// The client configuration, rebuilt when one of the files changed.
    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        let stamps: FileTimes = [&self.files.ca_file, &self.files.cert_file, &self.files.key_file]
            .into_iter()
            .map(|p| p.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
            .collect();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, config)) = cached.as_ref() {
            if *seen == stamps {
                return Ok(Arc::clone(config));
            }
        }
        let config = Arc::new(self.build()?);
        *cached = Some((stamps, Arc::clone(&config)));
        Ok(config)
    }

    fn build(&self) -> Result<ClientConfig, String> {
        let mut roots = RootCertStore::empty();
        match &self.files.ca_file {
            Some(ca) => {
                for cert in read_certs(ca, "tls.ca_file")? {
                    roots.add(cert).map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
                }
            }
            None => {
                roots.add_parsable_certificates(self.native_roots.iter().cloned());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&self.files.cert_file, &self.files.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "tls.cert_file")?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("tls.key_file {}: no usable private key: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "tls.cert_file {} and tls.key_file {} do not fit together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls.cert_file and tls.key_file must be set together (mutual TLS needs both)".into()),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Every certificate in a PEM file; none at all is an error.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    #[test]
    fn addresses_are_checked() {
        let e = Endpoint::parse("https://consul.internal:8501/", None).unwrap();
        assert!(e.tls);
        assert_eq!((e.host.as_str(), e.port, e.base_path.as_str()), ("consul.internal", 8501, ""));
        assert_eq!(e.url, "https://consul.internal:8501");
        let e = Endpoint::parse("http://[::1]:8500", None).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8500));
        let err = Endpoint::parse("127.0.0.1:8500", None).unwrap_err();
        assert!(err.contains("http://"), "{err}");
        let err = Endpoint::parse("ftp://x", None).unwrap_err();
        assert!(err.contains("ftp://x"), "{err}");
        assert!(Endpoint::parse("http://u:p@host", None).unwrap_err().contains("token_file"));
    }

    #[test]
    fn queries_encode_the_prefix() {
        assert_eq!(kv_query("config/app/", false, None, None), "/v1/kv/config/app/?recurse");
        assert_eq!(
            kv_query("a b/ü", true, Some("dc-2"), Some((42, Duration::from_secs(60)))),
            "/v1/kv/a%20b/%C3%BC?recurse&index=42&wait=60000ms&stale&dc=dc-2"
        );
    }

    #[test]
    fn config_errors_name_the_setting() {
        let err = Client::new(&[], None, None, IDLE).err().unwrap().to_string();
        assert!(err.contains("no address"), "{err}");
        let tls = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let err = Client::new(&["https://127.0.0.1:8501".into()], Some(&tls), None, IDLE).err().unwrap().to_string();
        assert!(err.contains("tls.ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
        let err = Client::new(&["http://127.0.0.1:8500".into()], None, Some(Path::new("/nonexistent/token")), IDLE)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }
}
