//! Versioned snapshots of the keys under one watched prefix, and the updates sources send.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

/// Keys (full keys, prefix included) and their values, in key order.
pub type Entries = BTreeMap<String, Bytes>;

/// What a source reports for one watched prefix.
#[derive(Debug, Clone)]
pub struct Update {
    /// The watched prefix this update is about (exactly as it was handed to the source).
    pub prefix: String,
    /// The backend's version of this state: Consul's `X-Consul-Index`, etcd's revision, or a
    /// counter for sources that have none. Never goes backwards except with `Change::Full { resync: true }`.
    pub version: u64,
    pub change: Change,
}

#[derive(Debug, Clone)]
pub enum Change {
    /// The complete content under the prefix. `resync` marks a deliberate restart of the version
    /// sequence (a Consul index reset, an etcd compaction): the version may then go backwards.
    Full { entries: Entries, resync: bool },
    /// Individual changes: `Some(value)` puts, `None` deletes.
    Delta(Vec<(String, Option<Bytes>)>),
}

/// The state of one watched prefix at one version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: u64,
    pub entries: Arc<Entries>,
}

/// How a snapshot changed: the keys added, modified and removed by one update.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.modified.len() + self.removed.len()
    }

    /// Every changed key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.added.iter().chain(&self.modified).chain(&self.removed).map(String::as_str)
    }

    /// The difference between two full states.
    pub fn between(old: &Entries, new: &Entries) -> Diff {
        let mut diff = Diff::default();
        // Both maps are sorted: one walk over the two. Unchanged values usually share their
        // allocation, which settles them without comparing bytes.
        let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
        loop {
            match (o.peek(), n.peek()) {
                (None, None) => break,
                (Some((ko, _)), Some((kn, _))) if ko < kn => {
                    diff.removed.push((*ko).clone());
                    o.next();
                }
                (Some((ko, vo)), Some((kn, vn))) if ko == kn => {
                    if !same_bytes(vo, vn) {
                        diff.modified.push((*kn).clone());
                    }
                    o.next();
                    n.next();
                }
                (_, Some((kn, _))) => {
                    diff.added.push((*kn).clone());
                    n.next();
                }
                (Some((ko, _)), None) => {
                    diff.removed.push((*ko).clone());
                    o.next();
                }
            }
        }
        diff
    }
}

/// Whether two values hold the same bytes. An unchanged value keeps its allocation from one
/// snapshot to the next (and into the outputs), which settles most comparisons without reading a byte.
pub fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// Why an update was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The update's version is older than the snapshot's and it is not a resync.
    Stale { have: u64, got: u64 },
}

impl Snapshot {
    /// Applies `change` at `version`. Returns the diff (possibly empty: nothing changed), or why the
    /// update was refused. A snapshot never goes backwards except through a resync.
    pub fn apply(&mut self, version: u64, change: Change) -> Result<Diff, Rejected> {
        let resync = matches!(change, Change::Full { resync: true, .. });
        if version < self.version && !resync {
            return Err(Rejected::Stale { have: self.version, got: version });
        }
        let diff = match change {
            Change::Full { entries, .. } => {
                let diff = Diff::between(&self.entries, &entries);
                if !diff.is_empty() {
                    self.entries = Arc::new(entries);
                }
                diff
            }
            Change::Delta(changes) => {
                let mut diff = Diff::default();
                // Decide first, so an update that changes nothing never copies the map.
                let effective: Vec<(String, Option<Bytes>)> = changes
                    .into_iter()
                    .filter(|(k, v)| match (self.entries.get(k), v) {
                        (None, None) => false,
                        (Some(old), Some(new)) => old != new,
                        _ => true,
                    })
                    .collect();
                if !effective.is_empty() {
                    let entries = Arc::make_mut(&mut self.entries);
                    for (k, v) in effective {
                        match v {
                            Some(v) => match entries.insert(k.clone(), v) {
                                Some(_) => diff.modified.push(k),
                                None => diff.added.push(k),
                            },
                            None => {
                                if entries.remove(&k).is_some() {
                                    diff.removed.push(k);
                                }
                            }
                        }
                    }
                }
                diff
            }
        };
        self.version = version;
        Ok(diff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(kv: &[(&str, &str)]) -> Entries {
        kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect()
    }

    #[test]
    fn full_update_diffs_against_previous() {
        let mut s = Snapshot::default();
        let d = s.apply(5, Change::Full { entries: entries(&[("a", "1"), ("b", "2")]), resync: false }).unwrap();
        assert_eq!(d.added, vec!["a", "b"]);
        let d = s
            .apply(6, Change::Full { entries: entries(&[("a", "1"), ("b", "3"), ("c", "4")]), resync: false })
            .unwrap();
        assert_eq!(
            (d.added.clone(), d.modified.clone(), d.removed.clone()),
            (vec!["c".to_string()], vec!["b".to_string()], vec![])
        );
        let d = s.apply(7, Change::Full { entries: entries(&[("c", "4")]), resync: false }).unwrap();
        assert_eq!(d.removed, vec!["a", "b"]);
        assert_eq!(s.version, 7);
    }

    #[test]
    fn identical_content_is_an_empty_diff() {
        let mut s = Snapshot::default();
        s.apply(1, Change::Full { entries: entries(&[("a", "1")]), resync: false }).unwrap();
        let before = Arc::clone(&s.entries);
        let d = s.apply(2, Change::Full { entries: entries(&[("a", "1")]), resync: false }).unwrap();
        assert!(d.is_empty());
        assert!(Arc::ptr_eq(&before, &s.entries), "an empty diff must not replace the map");
        let d = s.apply(3, Change::Delta(vec![("a".into(), Some(Bytes::from("1"))), ("zz".into(), None)])).unwrap();
        assert!(d.is_empty());
        assert!(Arc::ptr_eq(&before, &s.entries));
    }

    #[test]
    fn version_never_goes_backwards_without_resync() {
        let mut s = Snapshot::default();
        s.apply(10, Change::Full { entries: entries(&[("a", "1")]), resync: false }).unwrap();
        let r = s.apply(9, Change::Delta(vec![("a".into(), Some(Bytes::from("old")))]));
        assert_eq!(r, Err(Rejected::Stale { have: 10, got: 9 }));
        assert_eq!(s.entries.get("a").unwrap(), "1");
        let d = s.apply(3, Change::Full { entries: entries(&[("b", "2")]), resync: true }).unwrap();
        assert_eq!(d.removed, vec!["a"]);
        assert_eq!(s.version, 3);
    }

    #[test]
    fn deltas_apply_puts_and_deletes() {
        let mut s = Snapshot::default();
        s.apply(1, Change::Full { entries: entries(&[("a", "1"), ("b", "2")]), resync: false }).unwrap();
        let d = s
            .apply(
                2,
                Change::Delta(vec![
                    ("a".into(), None),
                    ("b".into(), Some(Bytes::from("9"))),
                    ("c".into(), Some(Bytes::from("3"))),
                ]),
            )
            .unwrap();
        assert_eq!(d.removed, vec!["a"]);
        assert_eq!(d.modified, vec!["b"]);
        assert_eq!(d.added, vec!["c"]);
        assert_eq!(*s.entries, entries(&[("b", "9"), ("c", "3")]));
    }
}
