//! `format: files`: one file per key, after checking that no key can escape the destination.

use std::collections::BTreeMap;

use bytes::Bytes;

/// The longest file name Linux accepts.
pub const MAX_NAME: usize = 255;
/// The longest relative path accepted.
pub const MAX_PATH: usize = 4096;

/// Checks that a relative key is a safe relative path inside the destination.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty key cannot be a file name".into());
    }
    if key.contains('\0') {
        return Err(format!("key `{}` contains a NUL byte", key.escape_debug()));
    }
    if key.starts_with('/') {
        return Err(format!("key `{key}` is an absolute path; it would escape the destination"));
    }
    if key.len() > MAX_PATH {
        return Err(format!("key `{}...` is longer than {MAX_PATH} bytes", key.chars().take(40).collect::<String>()));
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err(format!("key `{key}` has an empty path segment (`//` or a trailing `/`)")),
            "." | ".." => return Err(format!("key `{key}` contains `{seg}`; it would escape the destination")),
            s if s.starts_with("..") => {
                return Err(format!("key `{key}`: names starting with `..` are reserved for the generation layout"))
            }
            s if s.len() > MAX_NAME => {
                return Err(format!("key `{key}` has a path segment longer than {MAX_NAME} bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates every key and returns the files to write. A key that is both a file and a directory
/// (`a` and `a/b`) is an error naming both.
pub fn layout<'a>(kv: impl IntoIterator<Item = (&'a str, Bytes)>) -> Result<BTreeMap<String, Bytes>, String> {
    // Keys usually arrive sorted (from a sorted map), which lets the map be built in one pass.
    let out: BTreeMap<String, Bytes> =
        kv.into_iter().map(|(k, v)| check_key(k).map(|()| (k.to_string(), v))).collect::<Result<_, String>>()?;
    // In sorted order, `a` comes right before `a/...` (only `a` + chars below '/' can sit between).
    let mut prev: Option<&String> = None;
    for k in out.keys() {
        if let Some(p) = prev {
            if k.starts_with(p.as_str()) && k.as_bytes().get(p.len()) == Some(&b'/') {
                return Err(format!("key `{p}` is both a file and a directory (`{k}` lies under it)"));
            }
        }
        prev = Some(k);
    }
    // Keys like `a`, `a.b`, `a/c`: sorted order separates `a` from `a/c`; check every file against its parents.
    for k in out.keys() {
        let mut idx = 0;
        while let Some(pos) = k[idx..].find('/') {
            let parent = &k[..idx + pos];
            if out.contains_key(parent) {
                return Err(format!("key `{parent}` is both a file and a directory (`{k}` lies under it)"));
            }
            idx += pos + 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for (k, want) in [
            ("../x", "escape"),
            ("a/../../x", "escape"),
            ("/etc/passwd", "absolute"),
            ("a\0b", "NUL"),
            ("a//b", "empty path segment"),
            ("..data", "reserved"),
            ("./a", "escape"),
        ] {
            let err = check_key(k).unwrap_err();
            assert!(err.contains(want), "{k}: {err}");
        }
        let long = "x".repeat(256);
        assert!(check_key(&long).unwrap_err().contains("255"));
        assert!(check_key("a/b.conf").is_ok());
    }

    #[test]
    fn file_and_directory_conflict() {
        let kv = [("a", Bytes::from("1")), ("a.b", Bytes::from("2")), ("a/c", Bytes::from("3"))];
        let err = layout(kv).unwrap_err();
        assert!(err.contains("`a` is both a file and a directory"), "{err}");
    }
}
