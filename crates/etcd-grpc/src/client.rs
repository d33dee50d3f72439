//! One connection to one etcd member, with the token and metadata etcd expects.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

use crate::pb::etcdserverpb as rpc;
use rpc::auth_client::AuthClient;
use rpc::kv_client::KvClient;
use rpc::maintenance_client::MaintenanceClient;
use rpc::watch_client::WatchClient;

/// The shortest HTTP/2 keepalive interval we allow: etcd refuses pings closer than 5 s apart.
const MIN_KEEPALIVE: Duration = Duration::from_secs(10);

/// TLS material, already read from disk (PEM).
#[derive(Clone, Default)]
pub struct TlsPem {
    /// CA bundle that signs the server certificate; None: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the server certificate against, when it differs from the endpoint's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsPem {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TLS for `https://` endpoints.
    pub tls: Option<TlsPem>,
    /// How long the TCP (and TLS) handshake may take.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval while a stream is open; raised to 10 s if lower (etcd rejects closer pings).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is considered dead.
    pub keepalive_timeout: Duration,
    /// The largest response message accepted. tonic's default (4 MiB) is below what a Range page or an
    /// unfragmented watch catch-up can reach, and a refused message would be retried forever.
    pub max_decoding_message_size: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            max_decoding_message_size: 256 * 1024 * 1024,
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid etcd endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("etcd endpoint `{endpoint}`: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("cannot connect to etcd at {endpoint}: {reason} (is etcd running and listening there? for https:// endpoints check the CA file and the server name)")]
    Connect { endpoint: String, reason: String },
}

/// A connected etcd member: one HTTP/2 connection that carries every call and stream.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    endpoint: String,
    /// The auth token from [`Client::authenticate`], sent as `token` metadata.
    token: Option<AsciiMetadataValue>,
    max_decoding_message_size: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.endpoint).field("token", &self.token.is_some()).finish()
    }
}

impl Client {
    /// Connects to one endpoint (`http://host:port`, `https://host:port`, or `host:port`, which means
    /// https when `options.tls` is set and http otherwise). The connection is made now, so an
    /// unreachable member is reported here rather than at the first call.
    pub async fn connect(endpoint: &str, options: &ConnectOptions) -> Result<Client, ConnectError> {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else if options.tls.is_some() {
            format!("https://{endpoint}")
        } else {
            format!("http://{endpoint}")
        };
        let invalid = |reason: String| ConnectError::InvalidEndpoint { endpoint: endpoint.to_string(), reason };
        let https = if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            false
        } else {
            return Err(invalid("the scheme must be http:// or https://".into()));
        };
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(error_chain(&e)))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keepalive_interval.max(MIN_KEEPALIVE))
            .keep_alive_timeout(options.keepalive_timeout)
            // No pings without an open stream: etcd closes such connections with too_many_pings.
            .keep_alive_while_idle(false);
        match (&options.tls, https) {
            (Some(_), false) => {
                return Err(ConnectError::Tls {
                    endpoint: endpoint.to_string(),
                    reason: "TLS is configured but the endpoint is http://; write it as https://".into(),
                })
            }
            (tls, true) => {
                let tls = tls.clone().unwrap_or_default();
                let mut cfg = ClientTlsConfig::new().assume_http2(true);
                cfg = match tls.ca {
                    Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                    None => cfg.with_native_roots(),
                };
                if let Some((cert, key)) = tls.identity {
                    cfg = cfg.identity(Identity::from_pem(cert, key));
                }
                if let Some(name) = tls.server_name {
                    cfg = cfg.domain_name(name);
                }
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| ConnectError::Tls { endpoint: endpoint.to_string(), reason: error_chain(&e) })?;
            }
            (None, false) => {}
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| ConnectError::Connect { endpoint: endpoint.to_string(), reason: error_chain(&e) })?;
        Ok(Client {
            channel,
            endpoint: endpoint.to_string(),
            token: None,
            max_decoding_message_size: options.max_decoding_message_size,
        })
    }

    /// The endpoint as it was given to [`Client::connect`].
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether a token from [`Client::authenticate`] is in use.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Authenticates with a username and password; the token is sent with every later call.
    /// Wrong credentials come back as `InvalidArgument` ("authentication failed, invalid user ID or
    /// password"); auth not enabled on the server as `FailedPrecondition`.
    pub async fn authenticate(&mut self, name: &str, password: &str, timeout: Duration) -> Result<(), Status> {
        let mut auth = AuthClient::new(self.channel.clone());
        let mut req = Request::new(rpc::AuthenticateRequest { name: name.to_string(), password: password.to_string() });
        req.set_timeout(timeout);
        let resp = bounded(timeout, "Authenticate", auth.authenticate(req)).await?.into_inner();
        let token = MetadataValue::try_from(resp.token.as_str())
            .map_err(|_| Status::internal("etcd returned an auth token that is not valid metadata"))?;
        self.token = Some(token);
        Ok(())
    }

    /// Forgets the token (after the server refused it, before authenticating again).
    pub fn clear_token(&mut self) {
        self.token = None;
    }

    fn request<T>(&self, msg: T, timeout: Option<Duration>) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("token", t.clone());
        }
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(self.max_decoding_message_size)
    }

    pub async fn range(&self, req: rpc::RangeRequest, timeout: Duration) -> Result<rpc::RangeResponse, Status> {
        let req = self.request(req, Some(timeout));
        Ok(bounded(timeout, "Range", self.kv().range(req)).await?.into_inner())
    }

    pub async fn put(&self, req: rpc::PutRequest, timeout: Duration) -> Result<rpc::PutResponse, Status> {
        let req = self.request(req, Some(timeout));
        Ok(bounded(timeout, "Put", self.kv().put(req)).await?.into_inner())
    }

    pub async fn delete_range(
        &self,
        req: rpc::DeleteRangeRequest,
        timeout: Duration,
    ) -> Result<rpc::DeleteRangeResponse, Status> {
        let req = self.request(req, Some(timeout));
        Ok(bounded(timeout, "DeleteRange", self.kv().delete_range(req)).await?.into_inner())
    }

    pub async fn compact(&self, revision: i64, timeout: Duration) -> Result<rpc::CompactionResponse, Status> {
        let req = self.request(rpc::CompactionRequest { revision, physical: true }, Some(timeout));
        Ok(bounded(timeout, "Compact", self.kv().compact(req)).await?.into_inner())
    }

    pub async fn status(&self, timeout: Duration) -> Result<rpc::StatusResponse, Status> {
        let req = self.request(rpc::StatusRequest {}, Some(timeout));
        let mut m = MaintenanceClient::new(self.channel.clone());
        Ok(bounded(timeout, "Status", m.status(req)).await?.into_inner())
    }

    /// Opens the Watch stream: `requests` are sent as they come, responses are read from the result.
    /// Sends `hasleader=true` so the member ends the stream (Unavailable, "no leader") when it loses
    /// its leader, instead of keeping it open with no events ever arriving.
    pub async fn watch<S>(&self, requests: S) -> Result<Streaming<rpc::WatchResponse>, Status>
    where
        S: tonic::codegen::tokio_stream::Stream<Item = rpc::WatchRequest> + Send + 'static,
    {
        let mut req = self.request(requests, None);
        req.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        let mut w = WatchClient::new(self.channel.clone()).max_decoding_message_size(self.max_decoding_message_size);
        Ok(w.watch(req).await?.into_inner())
    }
}

/// A unary call with a client-side deadline too (the server's deadline does not cover a dead connection).
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!("etcd did not answer {what} within {timeout:?}"))),
    }
}

/// An error and its causes, `: `-separated (transport errors say little at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(c) = cur {
        if depth > 8 {
            break;
        }
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
        depth += 1;
    }
    s
}
