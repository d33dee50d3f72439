//! Taking (or retaking) a prefix's snapshot, including after a compaction.
//!
//! etcd keeps history only back to its compaction revision. A watch asked to start below it is created
//! and then canceled with `compact_revision` set: the events in between are gone for good. The only
//! correct answer is to drop what we had, list the prefix again, deliver the listing as
//! `Full { resync: true }` (the engine diffs it against what it had, so keys deleted while we were
//! away are removed) and watch again from the new listing's revision + 1.

use std::time::Instant;

use kvsync_etcd_grpc::Client;
use tracing::info;

use super::auth::Credentials;
use super::resume::{Phase, PrefixState};
use super::{report, snapshot, Failure};
use crate::snapshot::{Change, Update};
use crate::source::UpdateSink;

/// Marks a prefix for re-listing because its resume point was compacted away.
pub(crate) fn compacted(state: &mut PrefixState, compact_revision: i64, sink: &UpdateSink) {
    info!(
        source = sink.name(),
        prefix = state.prefix,
        compact_revision,
        "etcd compacted past our resume point; listing the prefix again"
    );
    sink.stats().resyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.phase = Phase::NeedsList { resync: true };
}

/// What became of a listing attempt.
pub(crate) enum Listed {
    /// Delivered; the prefix is now `Listed`.
    Yes,
    /// The user may not read the prefix; it is `Denied` until the backoff maximum has passed.
    Denied,
}

/// Lists a prefix that needs it and delivers the snapshot. Permission denied is recorded on the
/// prefix (reported, retried later) rather than failing the whole source: other prefixes go on.
pub(crate) async fn list_and_deliver(
    client: &mut Client,
    credentials: &Option<Credentials>,
    state: &mut PrefixState,
    max_value_bytes: usize,
    backoff: &crate::retry::Backoff,
    sink: &UpdateSink,
) -> Result<Listed, Failure> {
    let resync = match state.phase {
        Phase::NeedsList { resync } | Phase::Denied { resync, .. } => resync,
        Phase::Listed { .. } => return Ok(Listed::Yes),
    };
    match snapshot::list(client, credentials, state, max_value_bytes, sink).await {
        Ok(listing) => {
            let update = Update {
                prefix: state.prefix.clone(),
                version: listing.revision as u64,
                change: Change::Full { entries: listing.entries, resync },
            };
            sink.stats().changed();
            sink.send(update).await.map_err(|_| Failure::Closed)?;
            state.phase = Phase::Listed { next: listing.revision + 1 };
            Ok(Listed::Yes)
        }
        Err(f @ Failure::Persistent(_)) => {
            report(sink, &f);
            state.phase = Phase::Denied { resync, retry_at: Instant::now() + backoff.slowest() };
            Ok(Listed::Denied)
        }
        Err(f) => Err(f),
    }
}
