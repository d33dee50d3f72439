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

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_etcd_grpc::pb::mvccpb::KeyValue;

    fn put(key: &str, value: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn delete(key: &str, rev: i64) -> Event {
        // A DELETE carries only the key and mod_revision; everything else is zero.
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                mod_revision: rev,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    fn listed(next: i64) -> PrefixState {
        let mut s = PrefixState::new("p/".into());
        s.phase = Phase::Listed { next };
        s
    }

    #[test]
    fn resume_point_is_last_event_plus_one() {
        let (sink, _rx) = UpdateSink::channel("t", 1);
        let mut s = listed(10);
        let (delta, version) = apply_events(&mut s, vec![put("p/a", "1", 10), delete("p/b", 12)], 100, &sink).unwrap();
        assert_eq!(version, 12);
        assert_eq!(delta, vec![("p/a".to_string(), Some(Bytes::from("1"))), ("p/b".to_string(), None)]);
        assert_eq!(s.next(), Some(13));
    }

    #[test]
    fn events_already_delivered_are_dropped() {
        let (sink, _rx) = UpdateSink::channel("t", 1);
        let mut s = listed(13);
        assert!(apply_events(&mut s, vec![put("p/a", "old", 12)], 100, &sink).is_none());
        assert_eq!(s.next(), Some(13));
        let (delta, _) = apply_events(&mut s, vec![put("p/a", "old", 12), put("p/a", "new", 13)], 100, &sink).unwrap();
        assert_eq!(delta, vec![("p/a".to_string(), Some(Bytes::from("new")))]);
    }

    #[test]
    fn oversized_value_becomes_a_deletion_and_non_utf8_keys_are_skipped() {
        let (sink, _rx) = UpdateSink::channel("t", 1);
        let mut s = listed(1);
        let mut bad = put("p/x", "v", 2);
        if let Some(kv) = &mut bad.kv {
            kv.key = Bytes::from_static(b"p/\xff");
        }
        let (delta, version) = apply_events(&mut s, vec![put("p/big", "0123456789", 1), bad], 5, &sink).unwrap();
        assert_eq!(delta, vec![("p/big".to_string(), None)]);
        assert_eq!(version, 2, "the skipped key still moves the resume point");
        assert_eq!(s.next(), Some(3));
        let err = sink.stats().last_error.lock().unwrap().clone().unwrap().1;
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn not_listed_means_no_delta() {
        let (sink, _rx) = UpdateSink::channel("t", 1);
        let mut s = PrefixState::new("p/".into());
        assert!(apply_events(&mut s, vec![put("p/a", "1", 5)], 100, &sink).is_none());
    }
}
