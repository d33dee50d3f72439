//! Which member to talk to, and the one connection to it.
//!
//! A source holds one connection (one tonic `Channel`, one HTTP/2 connection) at a time; every Range
//! and the Watch stream share it. When a member becomes unavailable the source drops the connection
//! and, after a backoff delay, connects to the next endpoint in the list, round-robin. Connecting is
//! done here rather than left to gRPC's own reconnect logic, whose backoff grows to minutes: after an
//! outage of any length the source is back within `retry.max`.

use kvsync_etcd_grpc::{Client, ConnectOptions, TlsPem};
use tracing::{debug, info};

use super::auth::Credentials;
use super::{EtcdConfig, Failure, CALL_TIMEOUT};
use crate::source::{TlsFiles, UpdateSink};

/// The members to try, and which one is current.
pub(crate) struct Endpoints {
    list: Vec<String>,
    current: usize,
}

impl Endpoints {
    pub(crate) fn new(list: Vec<String>) -> Self {
        Endpoints { list, current: 0 }
    }

    pub(crate) fn current(&self) -> &str {
        &self.list[self.current % self.list.len()]
    }

    /// Moves to the next member (after the current one failed).
    pub(crate) fn advance(&mut self) {
        self.current = (self.current + 1) % self.list.len();
    }
}

/// Connects to the current endpoint, checks the member has a leader, and authenticates.
pub(crate) async fn connect(
    config: &EtcdConfig,
    endpoints: &Endpoints,
    credentials: &Option<Credentials>,
    sink: &UpdateSink,
) -> Result<Client, Failure> {
    let endpoint = endpoints.current();
    let options = ConnectOptions { tls: read_tls(config.tls.as_ref())?, ..ConnectOptions::default() };
    sink.stats().request();
    let mut client = Client::connect(endpoint, &options).await.map_err(|e| Failure::Unavailable(e.to_string()))?;
    // A member cut off from its leader still accepts connections, but linearizable reads hang until
    // they time out and watches never see a change: skip it. (Status needs no auth.)
    sink.stats().request();
    match client.status(CALL_TIMEOUT).await {
        Ok(s) if s.leader == 0 => {
            return Err(Failure::Unavailable(format!("etcd at {endpoint}: the member has no leader")));
        }
        Ok(_) => {}
        Err(s) => {
            let f = Failure::from_status("Status", endpoint, &s);
            if let Failure::Unavailable(_) = f {
                return Err(f);
            }
            debug!(source = sink.name(), endpoint, "Status refused ({}); going on", s.message());
        }
    }
    if let Some(c) = credentials {
        c.login(&mut client, sink).await?;
    }
    info!(source = sink.name(), endpoint, "connected to etcd");
    Ok(client)
}

/// Reads the TLS files (at each connect, so renewed certificates are used on the next connection).
fn read_tls(tls: Option<&TlsFiles>) -> Result<Option<TlsPem>, Failure> {
    let Some(tls) = tls else { return Ok(None) };
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Failure::Other(format!("cannot read the etcd TLS {what} {}: {e}", p.display())))
    };
    let ca = match &tls.ca_file {
        Some(p) => Some(read("CA file", p)?),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some((read("certificate file", c)?, read("key file", k)?)),
        _ => None,
    };
    Ok(Some(TlsPem { ca, identity, server_name: tls.server_name.clone() }))
}
