//! Change detection for polling: a SHA-256 over a listing's keys and values.

use sha2::{Digest, Sha256};

use crate::snapshot::Entries;

/// The SHA-256 of a listing, unambiguous over key and value boundaries (each part is length-prefixed).
pub fn of_entries(entries: &Entries) -> [u8; 32] {
    let mut h = Sha256::new();
    for (k, v) in entries {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    h.finalize().into()
}

/// The SHA-256 of a raw response body.
pub fn of_bytes(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn boundaries_matter() {
        let a: Entries = [("ab".to_string(), Bytes::from("c"))].into();
        let b: Entries = [("a".to_string(), Bytes::from("bc"))].into();
        assert_ne!(of_entries(&a), of_entries(&b));
        assert_eq!(of_entries(&a), of_entries(&a.clone()));
    }
}
