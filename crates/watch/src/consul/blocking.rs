//! `mode: watch`: the blocking-query loop of one prefix, and Consul's index rules.
//!
//! Each request is `GET /v1/kv/<prefix>?recurse&index=N&wait=W`. Consul holds it until the prefix's
//! index rises above N or `W` (plus up to W/16 of jitter) has passed, then answers with the listing
//! and its index in `X-Consul-Index`. The client's side of the contract, from Consul's documentation
//! on blocking queries, is what [`next_step`] decides:
//!
//! - The first read (and the read after a reset) carries no index: it answers at once.
//! - A missing or 0 index is treated as 1, so the next request blocks instead of answering at once
//!   forever.
//! - The same index as last time means nothing changed (the wait timed out): ask again.
//! - A lower index than last time means the server's history was reset (a snapshot restore, tombstones
//!   reaped, another cluster behind the address): start over from index 0 and deliver what is there
//!   as a resync, so keys deleted meanwhile disappear.
//! - A higher index may or may not change the listing (indexes are shared with unrelated keys for an
//!   empty prefix); the listing decides whether there is anything to deliver: the same keys with the
//!   same values are the same listing (see `listing::Previous`).
//! - A 404 is an empty prefix, and still carries an index to block on: the loop keeps blocking and
//!   sees the first key when it is written. (A 404 without `X-Consul-Index` is not Consul's: it is
//!   reported as an error, never delivered as an empty prefix.)
//!
//! The head of every answer has a deadline of `wait + wait/16 + margin`: longer than Consul can
//! legitimately hold the request, so a request still unanswered by then sits on a silent connection,
//! which is dropped. Once the head has arrived, the body (as large as the prefix) may take as long as
//! it keeps arriving; only a pause longer than `idle_timeout` counts as a stall (see `client.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tracing::{info, warn};

use super::client::{is_kv_answer, kv_query, Fetcher};
use super::failure::Failure;
use super::listing::{self, ListingError};
use super::rate::TokenBucket;
use super::LoopContext;
use crate::snapshot::{Change, Entries, Update};
use crate::source::SourceError;
use crate::stats::ErrorKind;

/// Slack on top of Consul's longest hold (`wait * 17/16`) for the network and the server's work on
/// the answer before its head goes out.
pub(crate) const MARGIN: Duration = Duration::from_secs(2);
/// The rate limit of a loop: this many requests back to back...
const BURST: u32 = 20;
/// ...then one per this long (250 a second). A prefix that changes 100 times a second uses under half
/// of it, so the limiter adds no latency to real changes, while a loop that misbehaves (a server
/// answering at once without blocking) cannot go faster.
const REFILL: Duration = Duration::from_millis(4);

/// What an answer's index means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A new index: look at the content, then block on this index.
    Advanced(u64),
    /// Same index: the wait timed out without a change.
    Unchanged,
    /// The index went backwards: re-read from 0 and resync.
    Reset,
}

/// Applies the index rules to the index of an answer (`reported`), given the index the request
/// blocked on (`last`, 0 for a non-blocking read).
pub(crate) fn next_step(last: u64, reported: Option<u64>) -> Step {
    // Missing or 0 is treated as 1: blocking on 0 would never block.
    let reported = reported.unwrap_or(0).max(1);
    if last == 0 {
        Step::Advanced(reported)
    } else if reported < last {
        Step::Reset
    } else if reported == last {
        Step::Unchanged
    } else {
        Step::Advanced(reported)
    }
}

/// How long the head of a blocking request's answer may take before its connection counts as silent.
pub(crate) fn deadline(wait: Duration) -> Duration {
    wait + wait / 16 + MARGIN
}

/// The blocking loop of one prefix; returns when cancelled, when the engine stops, or when the retry
/// attempts are used up.
pub(crate) async fn run(ctx: LoopContext) -> Result<(), SourceError> {
    let wait = ctx.settings.wait;
    let deadline = deadline(wait);
    let stats = Arc::clone(ctx.sink.stats());
    let mut backoff = ctx.settings.backoff.clone();
    let mut fetcher = Fetcher::new(Arc::clone(&ctx.client));
    let mut bucket = TokenBucket::new(BURST, REFILL);
    // The index to block on; 0: the next read answers at once (first read, or after a reset).
    let mut index = 0u64;
    // The next delivery restarts the version sequence (after a reset).
    let mut resync = false;
    // Whether a listing has been delivered: an answer with the same listing (the same keys with the
    // same values) changes nothing after that.
    let mut delivered = false;
    let mut previous = listing::Previous::default();
    loop {
        tokio::select! {
            biased;
            // Shutdown.
            _ = ctx.cancel.cancelled() => return Ok(()),
            // The rate limit allows the next request (at once, unless the loop has been spinning).
            _ = bucket.acquire() => {}
        }
        let blocking = (index > 0).then_some((index, wait));
        let query = kv_query(&ctx.prefix, ctx.settings.stale, ctx.settings.datacenter.as_deref(), blocking);
        stats.request();
        let answer = tokio::select! {
            // Shutdown: the request in flight is dropped with its connection.
            _ = ctx.cancel.cancelled() => return Ok(()),
            // Consul answered (a stale answer past max_stale read again consistently), or the
            // request failed or hit its deadline.
            r = async {
                let r = fetcher.get(&query, deadline, index > 0, &stats).await?;
                super::stale::reread_if_too_stale(&ctx, &mut fetcher, r, blocking, deadline, &stats).await
            } => r,
        };
        let response = match answer {
            Ok(r) if is_kv_answer(&r) => r,
            Ok(r) => {
                let token = fetcher.token().ok().flatten();
                if !ctx.recover(r.into_failure(token.as_ref()), &mut backoff).await? {
                    return Ok(());
                }
                continue;
            }
            Err(failure) => {
                if !ctx.recover(failure, &mut backoff).await? {
                    return Ok(());
                }
                continue;
            }
        };
        let new = match next_step(index, response.index) {
            Step::Unchanged => {
                ctx.succeeded(&mut backoff, index);
                continue;
            }
            Step::Reset => {
                warn!(
                    source = ctx.sink.name(),
                    prefix = %ctx.prefix,
                    from = index,
                    to = response.index.unwrap_or(0),
                    "consul: the index went backwards (snapshot restore or tombstones reaped); re-reading the prefix"
                );
                ctx.succeeded(&mut backoff, response.index.unwrap_or(1));
                stats.resyncs.fetch_add(1, Ordering::Relaxed);
                index = 0;
                resync = true;
                continue;
            }
            Step::Advanced(new) => new,
        };
        ctx.succeeded(&mut backoff, new);
        let entries = if response.status == StatusCode::NOT_FOUND {
            let was_empty = previous.set_empty();
            Ok(listing::Decoded { entries: Entries::new(), unchanged: was_empty })
        } else {
            listing::decode(
                &ctx.prefix,
                &response.body,
                ctx.settings.max_value_bytes,
                ctx.settings.max_keys,
                &mut previous,
            )
        };
        // The body can be as large as the prefix: it goes before the entries are handed on.
        let address = response.address;
        drop(response.body);
        let entries = match entries {
            Ok(d) if d.unchanged && delivered && !resync => {
                index = new;
                continue;
            }
            other => other.map(|d| d.entries),
        };
        match entries {
            Ok(entries) => {
                stats.changed();
                let update =
                    Update { prefix: ctx.prefix.clone(), version: new, change: Change::Full { entries, resync } };
                if ctx.sink.send(update).await.is_err() {
                    return Ok(()); // the engine has stopped
                }
                if resync {
                    info!(source = ctx.sink.name(), prefix = %ctx.prefix, index = new, "consul: prefix re-read after the index reset");
                }
                delivered = true;
                resync = false;
            }
            Err(error @ (ListingError::TooLarge { .. } | ListingError::TooMany { .. })) => {
                // Keep the last good content and block on the new index: the next change may fix it.
                let message = format!("consul: prefix `{}`: {error}", ctx.prefix);
                warn!(source = ctx.sink.name(), "{message}");
                stats.error(ErrorKind::Other, message);
            }
            Err(ListingError::Malformed(error)) => {
                let failure = Failure::Malformed { address, error };
                if !ctx.recover(failure, &mut backoff).await? {
                    return Ok(());
                }
                continue;
            }
        }
        index = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        // First read: whatever comes, floored at 1.
        assert_eq!(next_step(0, Some(17)), Step::Advanced(17));
        assert_eq!(next_step(0, Some(0)), Step::Advanced(1));
        assert_eq!(next_step(0, None), Step::Advanced(1));
        // Blocking reads.
        assert_eq!(next_step(17, Some(17)), Step::Unchanged);
        assert_eq!(next_step(17, Some(18)), Step::Advanced(18));
        assert_eq!(next_step(17, Some(5)), Step::Reset);
        // 0 or missing after a real index is 1: lower, so a reset.
        assert_eq!(next_step(17, Some(0)), Step::Reset);
        assert_eq!(next_step(1, None), Step::Unchanged);
    }

    #[test]
    fn deadline_exceeds_consuls_longest_hold() {
        let wait = Duration::from_secs(60);
        assert!(deadline(wait) > wait * 17 / 16);
        assert_eq!(deadline(Duration::from_secs(16)), Duration::from_secs(19));
    }
}
