//! The KV state of the test server and Consul's index rules over it.
//!
//! Like Consul's state store, every write takes the next raft index; the "kvs" and "tombstones" index
//! tables remember the last write of each kind; deletes leave tombstones (so a prefix's index rises on
//! a delete) until they are reaped (and then a prefix's index can fall).

use std::collections::BTreeMap;

use bytes::Bytes;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// None: stored with an empty body (Consul answers `"Value": null`).
    pub value: Option<Bytes>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding the key's lock (`?acquire=`), if any.
    pub session: Option<String>,
}

/// A copy of the whole state, for [`super::ConsulServer::restore`] (a snapshot restore).
#[derive(Debug, Clone, Default)]
pub struct KvSnapshot {
    pub(crate) entries: BTreeMap<String, Entry>,
    pub(crate) tombstones: BTreeMap<String, u64>,
    pub(crate) kvs_index: u64,
    pub(crate) tombstones_index: u64,
    /// The last raft index handed out when the snapshot was taken.
    pub(crate) raft_index: u64,
}

/// What a CAS or create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// No check: write unconditionally.
    None,
    /// `?cas=N`: write only if the key's ModifyIndex is N (0: only if the key does not exist).
    Index(u64),
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    entries: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion, until reaped.
    tombstones: BTreeMap<String, u64>,
    /// The last raft index handed out.
    raft_index: u64,
    /// The index tables: last write to the KV table, last tombstone written.
    kvs_index: u64,
    tombstones_index: u64,
    /// Snapshot restores so far: a restore abandons the state every blocked query watches.
    restores: u64,
}

impl Store {
    fn next_index(&mut self) -> u64 {
        self.raft_index += 1;
        self.raft_index
    }

    /// The global KV index: the highest of the two index tables (0 for a fresh store; callers floor it).
    pub fn global_index(&self) -> u64 {
        self.kvs_index.max(self.tombstones_index)
    }

    /// The index of a single key: its ModifyIndex, or the global index when it does not exist.
    pub fn key_index(&self, key: &str) -> u64 {
        self.entries.get(key).map(|e| e.modify_index).unwrap_or_else(|| self.global_index())
    }

    /// The index of a prefix: the highest ModifyIndex and tombstone under it; the global index if none.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        let live = under(&self.entries, prefix).map(|(_, e)| e.modify_index).max().unwrap_or(0);
        let dead = under(&self.tombstones, prefix).map(|(_, i)| *i).max().unwrap_or(0);
        match live.max(dead) {
            0 => self.global_index(),
            i => i,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        under(&self.entries, prefix)
    }

    /// Writes a key. Returns whether the write happened (false: the CAS check failed). An identical
    /// rewrite (same value and flags) succeeds without taking an index, so watchers do not wake.
    /// The second value says whether anything changed.
    pub fn put(&mut self, key: &str, value: Option<Bytes>, flags: u64, cas: Cas) -> (bool, bool) {
        let existing = self.entries.get(key).cloned();
        match (cas, &existing) {
            (Cas::Index(0), Some(_)) => return (false, false),
            (Cas::Index(i), Some(e)) if i != 0 && e.modify_index != i => return (false, false),
            (Cas::Index(i), None) if i != 0 => return (false, false),
            _ => {}
        }
        let value = value.filter(|v| !v.is_empty());
        if let Some(e) = &existing {
            if e.value == value && e.flags == flags {
                return (true, false);
            }
        }
        let index = self.next_index();
        let create_index = existing.as_ref().map(|e| e.create_index).unwrap_or(index);
        let (lock_index, session) = existing.map(|e| (e.lock_index, e.session)).unwrap_or((0, None));
        self.entries
            .insert(key.to_string(), Entry { value, flags, create_index, modify_index: index, lock_index, session });
        self.kvs_index = index;
        (true, true)
    }

    /// Deletes a key, leaving a tombstone. With `cas`, only if its ModifyIndex matches; a missing key
    /// counts as deleted. Returns (succeeded, changed).
    pub fn delete(&mut self, key: &str, cas: Cas) -> (bool, bool) {
        let Some(e) = self.entries.get(key) else { return (true, false) };
        if let Cas::Index(i) = cas {
            if e.modify_index != i {
                return (false, false);
            }
        }
        let index = self.next_index();
        self.entries.remove(key);
        self.tombstones.insert(key.to_string(), index);
        self.kvs_index = index;
        self.tombstones_index = index;
        (true, true)
    }

    /// Deletes every key under `prefix` at one index. Returns whether anything was deleted.
    pub fn delete_tree(&mut self, prefix: &str) -> bool {
        let keys: Vec<String> = under(&self.entries, prefix).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return false;
        }
        let index = self.next_index();
        for k in keys {
            self.entries.remove(&k);
            self.tombstones.insert(k, index);
        }
        self.kvs_index = index;
        self.tombstones_index = index;
        true
    }

    /// Removes every tombstone (Consul does it 15 minutes after a delete): a prefix's index may fall.
    pub fn reap_tombstones(&mut self) {
        self.tombstones.clear();
    }

    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            entries: self.entries.clone(),
            tombstones: self.tombstones.clone(),
            kvs_index: self.kvs_index,
            tombstones_index: self.tombstones_index,
            raft_index: self.raft_index,
        }
    }

    /// Replaces the state with a snapshot: every index goes back to the snapshot's. New writes still
    /// take indexes above everything handed out before (the raft log does not go back).
    pub fn restore(&mut self, snapshot: KvSnapshot) {
        self.restores += 1;
        self.entries = snapshot.entries;
        self.tombstones = snapshot.tombstones;
        self.kvs_index = snapshot.kvs_index;
        self.tombstones_index = snapshot.tombstones_index;
        // Restored into a fresh server (a restarted agent), the raft log goes on from the snapshot's.
        self.raft_index = self.raft_index.max(snapshot.raft_index);
    }

    /// How many snapshot restores there have been.
    pub fn restores(&self) -> u64 {
        self.restores
    }

    /// Locks `key` for `session` as a successful `?acquire=` does: LockIndex goes up by one, the
    /// session is recorded and the key takes a new ModifyIndex. False when the key does not exist or
    /// another session holds it.
    pub fn lock(&mut self, key: &str, session: &str) -> bool {
        let index = self.raft_index + 1;
        let Some(e) = self.entries.get_mut(key) else { return false };
        if e.session.as_deref().is_some_and(|s| s != session) {
            return false;
        }
        if e.session.as_deref() != Some(session) {
            e.lock_index += 1;
        }
        e.session = Some(session.to_string());
        e.modify_index = index;
        self.raft_index = index;
        self.kvs_index = index;
        true
    }

    /// Releases the lock on `key` (`?release=`): the session goes, LockIndex stays.
    pub fn unlock(&mut self, key: &str) -> bool {
        let index = self.raft_index + 1;
        let Some(e) = self.entries.get_mut(key) else { return false };
        if e.session.take().is_none() {
            return false;
        }
        e.modify_index = index;
        self.raft_index = index;
        self.kvs_index = index;
        true
    }

    /// Keeps the content but moves every index back to 1, as a cluster rebuilt from the same data (a
    /// new cluster behind the address) would: any index a client holds above 1 is now ahead.
    pub fn renumber(&mut self) {
        for e in self.entries.values_mut() {
            e.create_index = 1;
            e.modify_index = 1;
        }
        self.tombstones.clear();
        self.kvs_index = 1;
        self.tombstones_index = 0;
        self.raft_index = 1;
    }
}

fn under<'a, V>(map: &'a BTreeMap<String, V>, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut Store, k: &str, v: &str) -> (bool, bool) {
        s.put(k, Some(Bytes::from(v.to_string())), 0, Cas::None)
    }

    #[test]
    fn indexes_follow_consul() {
        let mut s = Store::default();
        assert_eq!(s.prefix_index("app/"), 0, "fresh store (the server floors it to 1)");
        put(&mut s, "app/a", "1");
        put(&mut s, "app/b", "1");
        put(&mut s, "other", "1");
        assert_eq!(s.key_index("app/a"), 1);
        assert_eq!(s.prefix_index("app/"), 2);
        assert_eq!(s.key_index("missing"), 3, "a missing key has the global index");
        assert_eq!(put(&mut s, "app/a", "1"), (true, false), "identical rewrite");
        assert_eq!(s.prefix_index("app/"), 2);
        s.delete("app/b", Cas::None);
        assert_eq!(s.prefix_index("app/"), 4, "the tombstone raises the prefix index");
        s.reap_tombstones();
        assert_eq!(s.prefix_index("app/"), 1, "reaped: the index falls back");
        assert_eq!(s.prefix_index("empty/"), 4, "an empty prefix has the global index");
    }

    #[test]
    fn cas_rules() {
        let mut s = Store::default();
        assert_eq!(s.put("k", None, 0, Cas::Index(0)), (true, true), "create-only on a missing key");
        assert_eq!(s.put("k", None, 0, Cas::Index(0)), (false, false), "create-only on an existing key");
        assert_eq!(s.put("k", Some("v".into()), 0, Cas::Index(7)), (false, false));
        assert_eq!(s.put("k", Some("v".into()), 0, Cas::Index(1)), (true, true));
        assert_eq!(s.delete("k", Cas::Index(1)), (false, false));
        assert_eq!(s.delete("k", Cas::Index(2)), (true, true));
        assert_eq!(s.delete("k", Cas::Index(99)), (true, false), "absent counts as deleted");
    }
}
