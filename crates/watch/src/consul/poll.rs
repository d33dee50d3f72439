//! `mode: poll`: a plain read of one prefix every `interval` (jittered), for proxies that break long
//! requests and for debugging. The SHA-256 of the answer decides whether anything changed, so an
//! identical answer (an identical rewrite does not even change Consul's indexes) is not delivered.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tracing::warn;

use super::client::{is_kv_answer, kv_query, Fetcher};
use super::failure::Failure;
use super::listing::{self, ListingError};
use super::LoopContext;
use crate::file::jittered;
use crate::hash;
use crate::snapshot::{Change, Entries, Update};
use crate::source::SourceError;
use crate::stats::ErrorKind;

/// A plain read answers at once: a head that takes longer than this comes over a silent connection
/// (the body then has `idle_timeout` between chunks, however long it takes in all).
const DEADLINE: Duration = Duration::from_secs(10);

/// The polling loop of one prefix; returns when cancelled, when the engine stops, or when the retry
/// attempts are used up.
pub(crate) async fn run(ctx: LoopContext, interval: Duration) -> Result<(), SourceError> {
    let stats = Arc::clone(ctx.sink.stats());
    let mut backoff = ctx.settings.backoff.clone();
    let mut fetcher = Fetcher::new(Arc::clone(&ctx.client));
    let query = kv_query(&ctx.prefix, ctx.settings.stale, ctx.settings.datacenter.as_deref(), None);
    // SHA-256 of the last delivered answer (status included: a 404 differs from any listing).
    let mut delivered: Option<[u8; 32]> = None;
    let mut previous = listing::Previous::default();
    // The index of the last delivered answer: one lower than it is delivered as a resync.
    let mut version = 0u64;
    loop {
        stats.request();
        let answer = tokio::select! {
            // Shutdown.
            _ = ctx.cancel.cancelled() => return Ok(()),
            // Consul answered (a stale answer past max_stale read again consistently), or the
            // request failed.
            r = async {
                let r = fetcher.get(&query, DEADLINE, false, &stats).await?;
                super::stale::reread_if_too_stale(&ctx, &mut fetcher, r, None, DEADLINE, &stats).await
            } => r,
        };
        let failure = match answer {
            Ok(r) if is_kv_answer(&r) => {
                let index = r.index.unwrap_or(0).max(1);
                ctx.succeeded(&mut backoff, index);
                let found = r.status == StatusCode::OK;
                let digest = hash::of_bytes(if found { &r.body } else { b"404" });
                if delivered == Some(digest) {
                    None
                } else {
                    let entries = if found {
                        listing::decode(
                            &ctx.prefix,
                            &r.body,
                            ctx.settings.max_value_bytes,
                            ctx.settings.max_keys,
                            &mut previous,
                        )
                        .map(|d| d.entries)
                    } else {
                        previous.clear();
                        Ok(Entries::new())
                    };
                    // The body can be as large as the prefix: it goes before the entries are handed on.
                    let address = r.address;
                    drop(r.body);
                    match entries {
                        Ok(entries) => {
                            let resync = delivered.is_some() && index < version;
                            stats.changed();
                            let update = Update {
                                prefix: ctx.prefix.clone(),
                                version: index,
                                change: Change::Full { entries, resync },
                            };
                            if ctx.sink.send(update).await.is_err() {
                                return Ok(()); // the engine has stopped
                            }
                            delivered = Some(digest);
                            version = index;
                            None
                        }
                        Err(error @ (ListingError::TooLarge { .. } | ListingError::TooMany { .. })) => {
                            // Keep the last good content; the next poll looks again.
                            let message = format!("consul: prefix `{}`: {error}", ctx.prefix);
                            warn!(source = ctx.sink.name(), "{message}");
                            stats.error(ErrorKind::Other, message);
                            None
                        }
                        Err(ListingError::Malformed(error)) => Some(Failure::Malformed { address, error }),
                    }
                }
            }
            Ok(r) => {
                let token = fetcher.token().ok().flatten();
                Some(r.into_failure(token.as_ref()))
            }
            Err(failure) => Some(failure),
        };
        match failure {
            Some(failure) => {
                if !ctx.recover(failure, &mut backoff).await? {
                    return Ok(());
                }
            }
            None => {
                tokio::select! {
                    // Shutdown.
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    // Time for the next poll.
                    _ = tokio::time::sleep(jittered(interval)) => {}
                }
            }
        }
    }
}
