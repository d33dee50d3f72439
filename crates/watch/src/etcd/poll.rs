//! `mode: poll`: a Range of every prefix each `interval` (jittered by +/-10%).
//!
//! Change detection is exact and cheap: first a `count_only` Range, whose header carries the store's
//! current revision; if it equals the revision of our last listing nothing has been written anywhere
//! since, and the prefix is not read at all. Otherwise the prefix is listed (paged, at one revision)
//! and delivered only when the SHA-256 of its content changed. One connection is kept across rounds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kvsync_etcd_grpc::pb::etcdserverpb::RangeRequest;
use kvsync_etcd_grpc::Client;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::auth::Credentials;
use super::endpoints::{connect, Endpoints};
use super::resume::PrefixState;
use super::{delay_after, jittered, report, snapshot, EtcdConfig, Failure, CALL_TIMEOUT};
use crate::hash;
use crate::snapshot::{Change, Update};
use crate::source::{SourceError, UpdateSink};

/// What the last round saw of one prefix.
#[derive(Default)]
struct Seen {
    /// Store revision of the last listing.
    revision: i64,
    /// SHA-256 of the last delivered content.
    hash: Option<[u8; 32]>,
    /// Denied: not tried again before this.
    retry_at: Option<Instant>,
}

pub(crate) async fn run(
    config: EtcdConfig,
    interval: Duration,
    prefixes: Vec<String>,
    sink: UpdateSink,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let credentials = Credentials::from_config(&config.username, &config.password_file);
    let states: Vec<PrefixState> = prefixes.into_iter().map(PrefixState::new).collect();
    let mut seen: HashMap<usize, Seen> = HashMap::new();
    let mut endpoints = Endpoints::new(config.endpoints.clone());
    let mut backoff = config.backoff.clone();
    let mut token_retries = 0u32;
    let mut client: Option<Client> = None;
    loop {
        let round = round(&config, &credentials, &endpoints, &mut client, &states, &mut seen, &backoff, &sink);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = round => r,
        };
        let wait = match outcome {
            Ok(()) => {
                backoff.reset();
                token_retries = 0;
                jittered(interval)
            }
            Err(Failure::Closed) => return Ok(()),
            Err(failure) => {
                report(&sink, &failure);
                client = None;
                if let Failure::Unavailable(_) = failure {
                    endpoints.advance();
                }
                let Some(d) = delay_after(&failure, &mut backoff, &mut token_retries) else {
                    return Err(SourceError::GaveUp {
                        attempts: backoff.failures(),
                        last: failure.message().to_string(),
                    });
                };
                d
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One poll of every prefix.
#[allow(clippy::too_many_arguments)]
async fn round(
    config: &EtcdConfig,
    credentials: &Option<Credentials>,
    endpoints: &Endpoints,
    client: &mut Option<Client>,
    states: &[PrefixState],
    seen: &mut HashMap<usize, Seen>,
    backoff: &crate::retry::Backoff,
    sink: &UpdateSink,
) -> Result<(), Failure> {
    if client.is_none() {
        *client = Some(connect(config, endpoints, credentials, sink).await?);
    }
    let Some(c) = client.as_mut() else { return Ok(()) };
    for (i, state) in states.iter().enumerate() {
        let s = seen.entry(i).or_default();
        if s.retry_at.is_some_and(|t| t > Instant::now()) {
            continue;
        }
        // The store's current revision, without reading any value.
        let probe = RangeRequest {
            key: state.key.clone().into(),
            range_end: state.range_end.clone().into(),
            count_only: true,
            ..RangeRequest::default()
        };
        let what = format!("Range of prefix `{}`", state.prefix);
        let resp = Credentials::call(credentials, c, sink, |c| {
            let probe = probe.clone();
            async move { c.range(probe, CALL_TIMEOUT).await }
        })
        .await?;
        let current = match resp {
            Ok(r) => r.header.map(|h| h.revision).unwrap_or(0),
            Err(st) => match Failure::from_status(&what, c.endpoint(), &st) {
                f @ Failure::Persistent(_) => {
                    report(sink, &f);
                    s.retry_at = Some(Instant::now() + backoff.slowest());
                    continue;
                }
                f => return Err(f),
            },
        };
        s.retry_at = None;
        if s.hash.is_some() && current == s.revision {
            continue;
        }
        let listing = snapshot::list(c, credentials, state, config.max_value_bytes, sink).await?;
        let h = hash::of_entries(&listing.entries);
        // A lagging member after a failover may answer with an older revision: say so to the engine.
        let resync = listing.revision < s.revision;
        s.revision = listing.revision;
        if s.hash == Some(h) && !resync {
            continue;
        }
        s.hash = Some(h);
        debug!(source = sink.name(), prefix = state.prefix, revision = listing.revision, "prefix changed");
        sink.stats().changed();
        let update = Update {
            prefix: state.prefix.clone(),
            version: listing.revision as u64,
            change: Change::Full { entries: listing.entries, resync },
        };
        sink.send(update).await.map_err(|_| Failure::Closed)?;
    }
    Ok(())
}
