//! Sequence-numbered values and latency bookkeeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A value of `size` bytes that carries its sequence number: `seq=0000000042;` then padding.
pub fn value(seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("seq={seq:010};").into_bytes();
    v.resize(size.max(v.len()), b'x');
    v
}

/// Finds the sequence number of the first value in `text` (as written by `value`).
pub fn seq_in(text: &[u8]) -> Option<u64> {
    let pos = text.windows(4).position(|w| w == b"seq=")?;
    std::str::from_utf8(text.get(pos + 4..pos + 14)?).ok()?.parse().ok()
}

/// When each sequence number was acknowledged and when each observer first saw it.
#[derive(Default)]
pub struct Recorder {
    acks: Mutex<HashMap<u64, Instant>>,
    seen: Mutex<HashMap<u64, Instant>>,
}

impl Recorder {
    pub fn ack(&self, seq: u64, at: Instant) {
        self.acks.lock().unwrap().insert(seq, at);
    }

    /// Records that `seq` was observed now (the first sighting counts).
    pub fn saw(&self, seq: u64) {
        let now = Instant::now();
        self.seen.lock().unwrap().entry(seq).or_insert(now);
    }

    pub fn has_seen(&self, seq: u64) -> bool {
        self.seen.lock().unwrap().contains_key(&seq)
    }

    /// The first moment the observer held `seq` or a later version (None: not yet).
    pub fn seen_at_or_after(&self, seq: u64) -> Option<Instant> {
        self.seen.lock().unwrap().iter().filter(|(s, _)| **s >= seq).map(|(_, t)| *t).min()
    }

    /// Distinct acknowledged versions the observer saw (a sighting of the state from before the
    /// first write, e.g. on a directory event that was not the destination's, does not count).
    pub fn observed(&self) -> usize {
        let acks = self.acks.lock().unwrap();
        self.seen.lock().unwrap().keys().filter(|s| acks.contains_key(s)).count()
    }

    /// One latency per acknowledged change: from its acknowledgement to the first moment the observer
    /// saw that version *or a later one*. An observer that coalesces (a poll, a render that took two
    /// changes at once) never shows some versions; counting those changes with the time until a newer
    /// version appeared keeps them in the sample instead of silently dropping the slow ones. A sighting
    /// before the ack (the watcher raced the write's reply) counts as zero. Changes not yet superseded
    /// by anything seen are left out (the scenarios wait until the last change is seen, so none are).
    pub fn latencies(&self) -> Vec<Duration> {
        let acks = self.acks.lock().unwrap();
        let seen = self.seen.lock().unwrap();
        let mut by_seq: Vec<(u64, Instant)> = seen.iter().map(|(s, t)| (*s, *t)).collect();
        by_seq.sort_unstable_by_key(|(s, _)| *s);
        // earliest[i]: the first time any version >= by_seq[i].0 was seen.
        let mut earliest: Vec<Instant> = by_seq.iter().map(|(_, t)| *t).collect();
        for i in (0..earliest.len().saturating_sub(1)).rev() {
            earliest[i] = earliest[i].min(earliest[i + 1]);
        }
        let mut v: Vec<Duration> = acks
            .iter()
            .filter_map(|(s, a)| {
                let i = by_seq.partition_point(|(seq, _)| seq < s);
                earliest.get(i).map(|t| t.saturating_duration_since(*a))
            })
            .collect();
        v.sort();
        v
    }
}

/// Percentiles of a sorted sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn summarize(sorted: &[Duration]) -> Summary {
    if sorted.is_empty() {
        return Summary::default();
    }
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    Summary { n: sorted.len(), p50: at(0.5), p90: at(0.9), p99: at(0.99), max: *sorted.last().unwrap() }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_sequence() {
        let v = value(42, 1024);
        assert_eq!(v.len(), 1024);
        assert_eq!(seq_in(&v), Some(42));
        assert_eq!(seq_in(b"{\"k\": \"seq=0000000007;xx\"}"), Some(7));
        assert_eq!(seq_in(b"nothing"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&v);
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.max, Duration::from_millis(100));
    }

    #[test]
    fn a_skipped_version_counts_until_a_later_one_is_seen() {
        let r = Recorder::default();
        let t0 = Instant::now();
        for s in 1..=3 {
            r.ack(s, t0);
        }
        std::thread::sleep(Duration::from_millis(5));
        r.saw(3); // versions 1 and 2 were coalesced into 3
        let l = r.latencies();
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|d| *d >= Duration::from_millis(5)));
        assert_eq!(r.observed(), 1);
    }
}
