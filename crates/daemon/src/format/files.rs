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

/// Validates the keys `changes` add to `files` (the keys already there were validated when they
/// came): each must be a safe path, and none may be both a file and a directory once the changes are
/// applied. `changes` is sorted by key, each key once (None removes the key).
pub fn check_changes(files: &BTreeMap<String, Bytes>, changes: &[(String, Option<Bytes>)]) -> Result<(), String> {
    let changed = |k: &str| changes.binary_search_by(|(c, _)| c.as_str().cmp(k)).ok().map(|i| changes[i].1.is_some());
    // Whether `k` is a file after the changes.
    let is_file = |k: &str| changed(k).unwrap_or_else(|| files.contains_key(k));
    // Whether some file lies under `k/` after the changes (both lists are sorted: a range of each).
    let is_dir = |k: &str| {
        let dir = format!("{k}/");
        let from = (std::ops::Bound::Included(dir.as_str()), std::ops::Bound::Unbounded);
        let in_files = files
            .range::<str, _>(from)
            .take_while(|(c, _)| c.starts_with(&dir))
            .any(|(c, _)| changed(c).unwrap_or(true));
        let start = changes.partition_point(|(c, _)| c.as_str() < dir.as_str());
        in_files || changes[start..].iter().take_while(|(c, _)| c.starts_with(&dir)).any(|(_, v)| v.is_some())
    };
    for (key, _) in changes.iter().filter(|(k, v)| v.is_some() && !files.contains_key(k)) {
        check_key(key)?;
        let mut idx = 0;
        while let Some(pos) = key[idx..].find('/') {
            let parent = &key[..idx + pos];
            if is_file(parent) {
                return Err(format!("key `{parent}` is both a file and a directory (`{key}` lies under it)"));
            }
            idx += pos + 1;
        }
        if is_dir(key) {
            return Err(format!("key `{key}` is both a file and a directory (keys under `{key}/` exist)"));
        }
    }
    Ok(())
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
    fn changes_are_checked_against_what_they_lead_to() {
        let files: BTreeMap<String, Bytes> =
            [("a".to_string(), Bytes::from("1")), ("d/x".to_string(), Bytes::from("2"))].into();
        let ch = |c: &[(&str, Option<&str>)]| -> Vec<(String, Option<Bytes>)> {
            c.iter().map(|(k, v)| (k.to_string(), v.map(|v| Bytes::from(v.to_string())))).collect()
        };
        // A new key under an existing file, and a new file where a folder is.
        let err = check_changes(&files, &ch(&[("a/b", Some("x"))])).unwrap_err();
        assert!(err.contains("`a` is both a file and a directory"), "{err}");
        let err = check_changes(&files, &ch(&[("d", Some("x"))])).unwrap_err();
        assert!(err.contains("`d` is both a file and a directory"), "{err}");
        // Both are fine when the other key goes in the same change.
        check_changes(&files, &ch(&[("a", None), ("a/b", Some("x"))])).unwrap();
        check_changes(&files, &ch(&[("d", Some("x")), ("d/x", None)])).unwrap();
        // Two new keys that conflict with each other, and a hostile one.
        let err = check_changes(&files, &ch(&[("n", Some("1")), ("n/m", Some("2"))])).unwrap_err();
        assert!(err.contains("`n` is both"), "{err}");
        assert!(check_changes(&files, &ch(&[("../x", Some("1"))])).unwrap_err().contains("escape"));
        // A changed value of an existing key is not re-checked.
        check_changes(&files, &ch(&[("a", Some("new"))])).unwrap();
    }

    #[test]
    fn file_and_directory_conflict() {
        let kv = [("a", Bytes::from("1")), ("a.b", Bytes::from("2")), ("a/c", Bytes::from("3"))];
        let err = layout(kv).unwrap_err();
        assert!(err.contains("`a` is both a file and a directory"), "{err}");
    }
}
