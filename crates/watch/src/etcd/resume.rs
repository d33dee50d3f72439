//! Per-prefix state that outlives connections: where each prefix's watch resumes.
//!
//! The resume point is the last delivered event's `mod_revision + 1` (or R + 1 after a snapshot at
//! revision R). It is never taken from `header.revision`: during a catch-up etcd sends at most 1000
//! revisions per response with `header.revision` set to the store's *current* revision, so resuming
//! from it after a break halfway through would skip everything in between. Progress notifications are
//! not used to advance it either (etcd 3.4.23 can send a requested one before pending catch-up events).

use std::time::Instant;

use bytes::Bytes;
use kvsync_etcd_grpc::pb::mvccpb::{event::EventType, Event};
use kvsync_etcd_grpc::prefix_range;
use tracing::warn;

use crate::source::UpdateSink;
use crate::stats::ErrorKind;

/// Puts (`Some`) and deletes (`None`) of one watch response, in order.
pub(crate) type Delta = Vec<(String, Option<Bytes>)>;

/// Where a prefix stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Needs a snapshot (a Range). `resync`: the previous state is void (compaction); the snapshot
    /// is delivered as `Full { resync: true }` and reconciles deletions.
    NeedsList { resync: bool },
    /// Snapshot delivered; watch from `next`.
    Listed { next: i64 },
    /// The user may not read this prefix; try again after `retry_at`.
    Denied { resync: bool, retry_at: Instant },
}

/// One watched prefix.
#[derive(Debug)]
pub(crate) struct PrefixState {
    /// The prefix exactly as handed to the source (updates carry it back).
    pub prefix: String,
    /// Range `[key, range_end)` covering it.
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub phase: Phase,
}

impl PrefixState {
    pub(crate) fn new(prefix: String) -> Self {
        let (key, range_end) = prefix_range(prefix.as_bytes());
        PrefixState { prefix, key, range_end, phase: Phase::NeedsList { resync: false } }
    }

    /// The revision the watch must start from, when listed.
    pub(crate) fn next(&self) -> Option<i64> {
        match self.phase {
            Phase::Listed { next } => Some(next),
            _ => None,
        }
    }
}

/// Turns the events of one (reassembled) watch response into a delta, advancing `next`.
/// Returns the delta and its version (the last event's revision); events before `next` are dropped
/// (a resumed watch never re-applies what was delivered), so delivery is exactly once.
pub(crate) fn apply_events(
    state: &mut PrefixState,
    events: Vec<Event>,
    max_value_bytes: usize,
    sink: &UpdateSink,
) -> Option<(Delta, u64)> {
    let Phase::Listed { next } = &mut state.phase else { return None };
    let mut delta = Vec::with_capacity(events.len());
    let mut last = None;
    for ev in events {
        let Some(kv) = ev.kv else { continue };
        if kv.mod_revision < *next {
            continue;
        }
        last = Some(kv.mod_revision);
        let Some(key) = utf8_key(&kv.key, sink) else { continue };
        let value = match EventType::try_from(ev.r#type) {
            Ok(EventType::Put) => Some(kv.value),
            Ok(EventType::Delete) => None,
            Err(_) => {
                warn!(source = sink.name(), key, "unknown watch event type {}; ignored", ev.r#type);
                continue;
            }
        };
        let value = value.and_then(|v| within_limit(&key, v, max_value_bytes, sink));
        delta.push((key, value));
    }
    let last = last?;
    *next = last + 1;
    Some((delta, last.max(0) as u64))
}

/// The key as UTF-8, or None (with a warning) when it is not: the engine's keys are strings.
pub(crate) fn utf8_key(key: &[u8], sink: &UpdateSink) -> Option<String> {
    match std::str::from_utf8(key) {
        Ok(k) => Some(k.to_string()),
        Err(_) => {
            let shown = String::from_utf8_lossy(key);
            let msg = format!("etcd key {shown:?} is not UTF-8; left out");
            warn!(source = sink.name(), "{msg}");
            sink.stats().error(ErrorKind::Other, msg);
            None
        }
    }
}

/// The value, or None (reported) when it is over the limit; the key is then left out (a deletion).
pub(crate) fn within_limit(key: &str, value: Bytes, max: usize, sink: &UpdateSink) -> Option<Bytes> {
    if value.len() <= max {
        return Some(value);
    }
    let msg = format!(
        "etcd key `{key}`: value of {} bytes is over the limit of {max} bytes (max_value_bytes); left out",
        value.len()
    );
    warn!(source = sink.name(), "{msg}");
    sink.stats().error(ErrorKind::Other, msg);
    None
}
