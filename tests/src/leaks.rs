//! Searching text for a secret in every form it could take on its way out: as is, JSON-escaped, as
//! Rust's `{:?}` writes it, percent-encoded, and base64 (standard and URL-safe, with and without
//! padding, at each of the three alignments it can have inside a longer encoded blob, as in a Consul
//! listing's `Value`). A `key=value` or `key: "value"` rendering contains one of these forms.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// The forms of `secret` to look for, each with its name.
pub fn forms(secret: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![("raw", secret.to_string())];
    let json = serde_json::to_string(secret).expect("a string serializes");
    out.push(("JSON-escaped", json[1..json.len() - 1].to_string()));
    let debug = format!("{secret:?}");
    out.push(("debug-escaped", debug[1..debug.len() - 1].to_string()));
    out.push(("percent-encoded", percent_encode(secret)));
    for (name, engine) in [
        ("base64", &STANDARD),
        ("base64 unpadded", &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE),
        ("base64url unpadded", &URL_SAFE_NO_PAD),
    ] {
        // Inside a longer blob the secret starts at byte offset 0, 1 or 2 of a 3-byte group: the
        // characters of the groups made of the secret's bytes alone are the same wherever the blob
        // starts and whatever follows it.
        for offset in 0..3usize {
            let mut bytes = vec![b'x'; offset];
            bytes.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&bytes);
            let groups = enc.len().div_ceil(4);
            let first = usize::from(offset > 0);
            let last = if bytes.len() % 3 == 0 { groups } else { groups - 1 };
            if last > first + 2 {
                out.push((name, enc[first * 4..(last * 4).min(enc.len())].to_string()));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Each secret of `secrets` found in `text`, as "`<secret>` (<form>)".
pub fn found(text: &str, secrets: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for secret in secrets {
        for (form, f) in forms(secret) {
            if text.contains(&f) {
                hits.push(format!("{secret:?} ({form}: {f:?})"));
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret \"quoted\" back\\slash\nline";

    #[test]
    fn every_form_is_found_where_it_hides() {
        let b64 = |s: &str| STANDARD.encode(s);
        for text in [
            format!("password={SECRET}"),
            serde_json::json!({ "v": SECRET }).to_string(),
            format!("{:?}", ("v", SECRET)),
            b64(SECRET),
            b64(&format!("k={SECRET}")),
            b64(&format!("ke={SECRET}!")),
            URL_SAFE_NO_PAD.encode(format!("xyz{SECRET}")),
            serde_json::json!([{ "Key": "a", "Value": b64(SECRET) }]).to_string(),
            format!("token={}", percent_encode(SECRET)),
        ] {
            assert!(!found(&text, &[SECRET]).is_empty(), "not found in {text:?}");
        }
    }

    #[test]
    fn nothing_is_found_where_it_is_not() {
        let text = format!("s3cret quoted {} {}", STANDARD.encode("s3cret"), "line");
        assert_eq!(found(&text, &[SECRET]), Vec::<String>::new());
    }
}
