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

/// One element of the array; the fields a listing needs (the rest are ignored).
#[derive(Deserialize)]
struct KvPair {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
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
pub(crate) fn decode(
    prefix: &str,
    body: &[u8],
    max_value_bytes: usize,
    max_keys: usize,
) -> Result<Entries, ListingError> {
    let mut limit_error = None;
    let seed = Collect { prefix, max_value_bytes, max_keys, error: &mut limit_error };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|entries| de.end().map(|()| entries));
    // A limit error stops the parse through serde's error path; report the limit, not the parse.
    if let Some(e) = limit_error {
        return Err(e);
    }
    result.map_err(|e| ListingError::Malformed(format!("not a Consul KV listing (JSON array): {e}")))
}

/// Decodes the array into entries, applying the limits as it goes.
struct Collect<'a> {
    prefix: &'a str,
    max_value_bytes: usize,
    max_keys: usize,
    /// Where a limit or base64 error is left (serde's own error type carries only text).
    error: &'a mut Option<ListingError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Collect<'_> {
    type Value = Entries;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Entries, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Collect<'_> {
    type Value = Entries;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of KV pairs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        use serde::de::Error as _;
        let mut entries = Entries::new();
        let mut count = 0usize;
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
            let value = match pair.value {
                None => Bytes::new(),
                Some(b64) => {
                    let raw = match base64::engine::general_purpose::STANDARD.decode(&b64) {
                        Ok(raw) => raw,
                        Err(e) => {
                            *self.error = Some(ListingError::Malformed(format!(
                                "the value of key `{}` is not base64: {e}",
                                pair.key
                            )));
                            return Err(A::Error::custom("stopped"));
                        }
                    };
                    if raw.len() > self.max_value_bytes {
                        *self.error = Some(ListingError::TooLarge {
                            key: pair.key,
                            size: raw.len(),
                            limit: self.max_value_bytes,
                        });
                        return Err(A::Error::custom("stopped"));
                    }
                    Bytes::from(raw)
                }
            };
            entries.insert(pair.key, value);
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
        let e = decode("app/", body, 1024, 100).unwrap();
        let keys: Vec<_> = e.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app/db/host", "app/empty", "app/locked"]);
        assert_eq!(e["app/db/host"], "db.internal");
        assert_eq!(e["app/empty"], "");
        assert_eq!(e["app/locked"], "x");
    }

    #[test]
    fn oversized_value_names_the_key() {
        let body = br#"[{"Key":"app/big","Value":"eHh4eHh4eHh4eA=="}]"#; // 10 bytes
        let err = decode("app/", body, 4, 100).unwrap_err();
        assert_eq!(err, ListingError::TooLarge { key: "app/big".into(), size: 10, limit: 4 });
        assert!(err.to_string().contains("`app/big`") && err.to_string().contains("4-byte"));
        assert!(decode("app/", body, 10, 100).is_ok());
    }

    #[test]
    fn too_many_keys_are_counted_and_refused() {
        let body = br#"[{"Key":"app/","Value":null},{"Key":"app/a","Value":"eA=="},{"Key":"app/b","Value":null},{"Key":"app/c","Value":null}]"#;
        // The folder marker does not count; three keys against a limit of two.
        assert_eq!(decode("app/", body, 10, 2).unwrap_err(), ListingError::TooMany { count: 3, limit: 2 });
        assert_eq!(decode("app/", body, 10, 3).unwrap().len(), 3);
        let msg = ListingError::TooMany { count: 3, limit: 2 }.to_string();
        assert!(msg.contains("3 keys") && msg.contains("max_keys"), "{msg}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(decode("", b"<html>", 10, 100), Err(ListingError::Malformed(_))));
        let err = decode("", br#"[{"Key":"k","Value":"!!"}]"#, 10, 100).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        assert!(decode("", b"[]", 10, 100).unwrap().is_empty());
    }
}
