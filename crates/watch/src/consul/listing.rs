//! Decoding a `GET /v1/kv/<prefix>?recurse` answer into entries.
//!
//! Consul answers a JSON array of `{"Key": ..., "Value": <base64 or null>, "Flags", "CreateIndex",
//! "ModifyIndex", "LockIndex", "Session"?}` sorted by key; a 404 (no key under the prefix) is an empty
//! listing. Keys ending in `/` are folder markers (the UI creates them): they hold no configuration and
//! are left out. A `null` value is an empty value.

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::snapshot::Entries;

/// One element of the array; the fields a listing needs (the rest are ignored). The base64 value is
/// borrowed from the body (it has no escapes), not copied.
#[derive(Deserialize)]
struct KvPair<'a> {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default, borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
}

/// What the last listing of a prefix held: each key and its value, in key order. Consul answers
/// every change with the whole prefix; a value decoded to the same bytes as before is not kept a
/// second time: the listing reuses the previous one (no new allocation, and the unchanged value stays
/// the same allocation all the way to the output, where it is then settled by pointer). Values are
/// compared, not their ModifyIndex: two clusters (a restored snapshot, another cluster behind the
/// address) can give one key the same index with different values.
#[derive(Debug, Default)]
pub(crate) struct Previous {
    items: Vec<(String, Bytes)>,
}

impl Previous {
    /// Forgets the last listing.
    pub(crate) fn clear(&mut self) {
        self.items = Vec::new();
    }

    /// Records an empty listing (a 404); whether the last one was empty too.
    pub(crate) fn set_empty(&mut self) -> bool {
        let was = self.items.is_empty();
        self.clear();
        was
    }
}

/// A decoded listing, and whether it is the same as the previous one: the same keys and values.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub entries: Entries,
    pub unchanged: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ListingError {
    /// The body is not the JSON Consul sends.
    Malformed(String),
    /// A value exceeds `max_value_bytes`.
    TooLarge { key: String, size: usize, limit: usize },
    /// The listing holds more than `max_keys` keys (`count` of them).
    TooMany { count: usize, limit: usize },
}

impl std::fmt::Display for ListingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListingError::Malformed(e) => write!(f, "{e}"),
            ListingError::TooLarge { key, size, limit } => write!(
                f,
                "the value of key `{key}` is {size} bytes, over the {limit}-byte limit (max_value_bytes); \
                 the previous content is kept until the value is made smaller"
            ),
            ListingError::TooMany { count, limit } => write!(
                f,
                "{count} keys, over the limit of {limit} keys (max_keys); \
                 the previous content is kept until keys are removed"
            ),
        }
    }
}

/// The entries under `prefix` in a 200 body.
///
/// The array is decoded element by element straight into the entries (no intermediate vector of
/// every element), and once `max_keys` entries are held the rest are only counted: a prefix far over
/// the limit costs its body, not a map of all its keys.
/// Values equal to the ones in `previous` are reused from it; on success `previous` becomes this
/// listing.
pub(crate) fn decode(
    prefix: &str,
    body: &[u8],
    max_value_bytes: usize,
    max_keys: usize,
    previous: &mut Previous,
) -> Result<Decoded, ListingError> {
    let mut limit_error = None;
    let mut reused = 0usize;
    let seed = Collect {
        prefix,
        max_value_bytes,
        max_keys,
        error: &mut limit_error,
        previous: &previous.items,
        reused: &mut reused,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|entries| de.end().map(|()| entries));
    // A limit error stops the parse through serde's error path; report the limit, not the parse.
    if let Some(e) = limit_error {
        return Err(e);
    }
    let listing = result.map_err(|e| ListingError::Malformed(format!("not a Consul KV listing (JSON array): {e}")))?;
    let unchanged = reused == listing.len() && listing.len() == previous.items.len();
    // Built in one pass from the sorted list (inserting one by one costs a search per key).
    let entries = listing.iter().cloned().collect();
    previous.items = listing;
    Ok(Decoded { entries, unchanged })
}

/// Decodes the array into entries, applying the limits as it goes.
struct Collect<'a> {
    prefix: &'a str,
    max_value_bytes: usize,
    max_keys: usize,
    /// Where a limit or base64 error is left (serde's own error type carries only text).
    error: &'a mut Option<ListingError>,
    /// The last listing.
    previous: &'a [(String, Bytes)],
    /// How many values came from the previous listing.
    reused: &'a mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Collect<'_> {
    type Value = Vec<(String, Bytes)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<(String, Bytes)>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Collect<'_> {
    type Value = Vec<(String, Bytes)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of KV pairs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<(String, Bytes)>, A::Error> {
        use serde::de::Error as _;
        // In the listing's (key) order.
        let mut entries: Vec<(String, Bytes)> = Vec::new();
        let mut count = 0usize;
        // Both listings are sorted by key, so the previous one is walked alongside.
        let mut cursor = 0usize;
        // Each value is decoded here first, and copied out only when it differs from the last listing's.
        let mut scratch: Vec<u8> = Vec::new();
        while let Some(pair) = seq.next_element::<KvPair>()? {
            if pair.key.ends_with('/') {
                continue; // a folder marker
            }
            if !pair.key.starts_with(self.prefix) {
                // Consul never does this; a proxy or a wrong base path might. Such keys are not ours.
                tracing::debug!(prefix = self.prefix, "consul: ignoring a key outside the watched prefix");
                continue;
            }
            count += 1;
            if count > self.max_keys {
                continue; // over the limit: only counted, so that the message gives the size
            }
            while self.previous.get(cursor).is_some_and(|(k, _)| *k < pair.key) {
                cursor += 1;
            }
            let before = self.previous.get(cursor).filter(|(k, _)| *k == pair.key).map(|(_, v)| v);
            scratch.clear();
            if let Some(b64) = &pair.value {
                if let Err(e) = base64::engine::general_purpose::STANDARD.decode_vec(b64.as_bytes(), &mut scratch) {
                    *self.error =
                        Some(ListingError::Malformed(format!("the value of key `{}` is not base64: {e}", pair.key)));
                    return Err(A::Error::custom("stopped"));
                }
            }
            if scratch.len() > self.max_value_bytes {
                *self.error =
                    Some(ListingError::TooLarge { key: pair.key, size: scratch.len(), limit: self.max_value_bytes });
                return Err(A::Error::custom("stopped"));
            }
            let value = match before {
                Some(v) if v[..] == scratch[..] => {
                    *self.reused += 1;
                    v.clone()
                }
                _ => Bytes::copy_from_slice(&scratch),
            };
            entries.push((pair.key, value));
        }
        if count > self.max_keys {
            *self.error = Some(ListingError::TooMany { count, limit: self.max_keys });
            return Err(A::Error::custom("stopped"));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_values_nulls_and_skips_folders() {
        let body = br#"[
            {"LockIndex":0,"Key":"app/","Flags":0,"Value":null,"CreateIndex":5,"ModifyIndex":5},
            {"LockIndex":0,"Key":"app/db/host","Flags":0,"Value":"ZGIuaW50ZXJuYWw=","CreateIndex":6,"ModifyIndex":9},
            {"LockIndex":0,"Key":"app/empty","Flags":0,"Value":null,"CreateIndex":7,"ModifyIndex":7},
            {"LockIndex":1,"Key":"app/locked","Flags":42,"Value":"eA==","Session":"abc","CreateIndex":8,"ModifyIndex":8}
        ]"#;
        let e = decode("app/", body, 1024, 100, &mut Previous::default()).unwrap().entries;
        let keys: Vec<_> = e.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app/db/host", "app/empty", "app/locked"]);
        assert_eq!(e["app/db/host"], "db.internal");
        assert_eq!(e["app/empty"], "");
        assert_eq!(e["app/locked"], "x");
    }

    #[test]
    fn values_that_did_not_change_are_reused() {
        let mut prev = Previous::default();
        let first = br#"[{"Key":"a/x","Value":"MQ==","ModifyIndex":5},{"Key":"a/y","Value":"Mg==","ModifyIndex":6}]"#;
        let d1 = decode("a/", first, 100, 100, &mut prev).unwrap();
        assert!(!d1.unchanged, "nothing came before");
        let e1 = d1.entries;
        assert!(decode("a/", first, 100, 100, &mut prev).unwrap().unchanged, "the same keys and values");
        // `a/x` unchanged, `a/y` rewritten, `a/w` new.
        let second = br#"[{"Key":"a/w","Value":"MA==","ModifyIndex":9},{"Key":"a/x","Value":"MQ==","ModifyIndex":5},{"Key":"a/y","Value":"Mw==","ModifyIndex":8}]"#;
        let d2 = decode("a/", second, 100, 100, &mut prev).unwrap();
        assert!(!d2.unchanged);
        let e2 = d2.entries;
        assert_eq!(e2["a/x"], "1");
        assert_eq!(e2["a/x"].as_ptr(), e1["a/x"].as_ptr(), "the same allocation");
        assert_eq!(e2["a/y"], "3");
        assert_eq!(e2["a/w"], "0");
        // The same ModifyIndex with another value (another cluster's history): the value counts.
        let other = br#"[{"Key":"a/w","Value":"MA==","ModifyIndex":9},{"Key":"a/x","Value":"OQ==","ModifyIndex":5},{"Key":"a/y","Value":"Mw==","ModifyIndex":8}]"#;
        let d3 = decode("a/", other, 100, 100, &mut prev).unwrap();
        assert!(!d3.unchanged);
        assert_eq!(d3.entries["a/x"], "9");
        // A failed decode leaves the previous listing.
        assert!(decode("a/", b"[{", 100, 100, &mut prev).is_err());
        assert!(decode("a/", other, 100, 100, &mut prev).unwrap().unchanged);
        // A listing with a key fewer is a change even if every value left is reused.
        let fewer = br#"[{"Key":"a/x","Value":"OQ==","ModifyIndex":5}]"#;
        assert!(!decode("a/", fewer, 100, 100, &mut prev).unwrap().unchanged);
        assert!(!prev.set_empty() && prev.set_empty());
    }

    #[test]
    fn oversized_value_names_the_key() {
        let body = br#"[{"Key":"app/big","Value":"eHh4eHh4eHh4eA=="}]"#; // 10 bytes
        let err = decode("app/", body, 4, 100, &mut Previous::default()).unwrap_err();
        assert_eq!(err, ListingError::TooLarge { key: "app/big".into(), size: 10, limit: 4 });
        assert!(err.to_string().contains("`app/big`") && err.to_string().contains("4-byte"));
        assert!(decode("app/", body, 10, 100, &mut Previous::default()).is_ok());
    }

    #[test]
    fn too_many_keys_are_counted_and_refused() {
        let body = br#"[{"Key":"app/","Value":null},{"Key":"app/a","Value":"eA=="},{"Key":"app/b","Value":null},{"Key":"app/c","Value":null}]"#;
        // The folder marker does not count; three keys against a limit of two.
        assert_eq!(
            decode("app/", body, 10, 2, &mut Previous::default()).unwrap_err(),
            ListingError::TooMany { count: 3, limit: 2 }
        );
        assert_eq!(decode("app/", body, 10, 3, &mut Previous::default()).unwrap().entries.len(), 3);
        let msg = ListingError::TooMany { count: 3, limit: 2 }.to_string();
        assert!(msg.contains("3 keys") && msg.contains("max_keys"), "{msg}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(decode("", b"<html>", 10, 100, &mut Previous::default()), Err(ListingError::Malformed(_))));
        let err = decode("", br#"[{"Key":"k","Value":"!!"}]"#, 10, 100, &mut Previous::default()).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        assert!(decode("", b"[]", 10, 100, &mut Previous::default()).unwrap().entries.is_empty());
    }
}
