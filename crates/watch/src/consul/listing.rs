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
        }
    }
}

/// The entries under `prefix` in a 200 body.
pub(crate) fn decode(prefix: &str, body: &[u8], max_value_bytes: usize) -> Result<Entries, ListingError> {
    let pairs: Vec<KvPair> = serde_json::from_slice(body)
        .map_err(|e| ListingError::Malformed(format!("not a Consul KV listing (JSON array): {e}")))?;
    let mut entries = Entries::new();
    for pair in pairs {
        if pair.key.ends_with('/') {
            continue; // a folder marker
        }
        if !pair.key.starts_with(prefix) {
            // Consul never does this; a proxy or a wrong base path might. Such keys are not ours.
            tracing::debug!(prefix, "consul: ignoring a key outside the watched prefix");
            continue;
        }
        let value = match pair.value {
            None => Bytes::new(),
            Some(b64) => {
                let raw = base64::engine::general_purpose::STANDARD.decode(&b64).map_err(|e| {
                    ListingError::Malformed(format!("the value of key `{}` is not base64: {e}", pair.key))
                })?;
                if raw.len() > max_value_bytes {
                    return Err(ListingError::TooLarge { key: pair.key, size: raw.len(), limit: max_value_bytes });
                }
                Bytes::from(raw)
            }
        };
        entries.insert(pair.key, value);
    }
    Ok(entries)
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
        let e = decode("app/", body, 1024).unwrap();
        let keys: Vec<_> = e.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app/db/host", "app/empty", "app/locked"]);
        assert_eq!(e["app/db/host"], "db.internal");
        assert_eq!(e["app/empty"], "");
        assert_eq!(e["app/locked"], "x");
    }

    #[test]
    fn oversized_value_names_the_key() {
        let body = br#"[{"Key":"app/big","Value":"eHh4eHh4eHh4eA=="}]"#; // 10 bytes
        let err = decode("app/", body, 4).unwrap_err();
        assert_eq!(err, ListingError::TooLarge { key: "app/big".into(), size: 10, limit: 4 });
        assert!(err.to_string().contains("`app/big`") && err.to_string().contains("4-byte"));
        assert!(decode("app/", body, 10).is_ok());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(decode("", b"<html>", 10), Err(ListingError::Malformed(_))));
        let err = decode("", br#"[{"Key":"k","Value":"!!"}]"#, 10).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        assert!(decode("", b"[]", 10).unwrap().is_empty());
    }
}
