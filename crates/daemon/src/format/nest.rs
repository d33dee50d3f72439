//! Nesting flat keys at `/`: `db/host` -> `{"db": {"host": ...}}`.

use std::collections::BTreeMap;

use minijinja::value::Value;

/// A nested view of flat keys, borrowing the keys' segments and values.
#[derive(Debug, PartialEq)]
pub enum Node<'a> {
    Leaf(&'a [u8]),
    Dir(BTreeMap<&'a str, Node<'a>>),
}

/// Nests `kv` strictly: a key that is both a value and a folder (`db` and `db/host`) is an error
/// naming both keys.
pub fn build<'a>(kv: &BTreeMap<&'a str, &'a [u8]>) -> Result<BTreeMap<&'a str, Node<'a>>, String> {
    let mut root: BTreeMap<&'a str, Node<'a>> = BTreeMap::new();
    for (key, value) in kv {
        let mut segs = key.split('/').peekable();
        let mut dir = &mut root;
        let mut walked = 0usize;
        while let Some(seg) = segs.next() {
            let here = &key[..(walked + seg.len())];
            walked += seg.len() + 1;
            if segs.peek().is_none() {
                match dir.get(seg) {
                    Some(Node::Dir(_)) => {
                        return Err(format!("key `{key}` is both a value and a folder (keys under `{key}/` exist)"))
                    }
                    _ => {
                        dir.insert(seg, Node::Leaf(value));
                    }
                }
            } else {
                let entry = dir.entry(seg).or_insert_with(|| Node::Dir(BTreeMap::new()));
                match entry {
                    Node::Dir(d) => dir = d,
                    Node::Leaf(_) => {
                        return Err(format!("key `{here}` is both a value and a folder (`{key}` lies under it)"))
                    }
                }
            }
        }
    }
    Ok(root)
}

enum T {
    Leaf(Value),
    Dir(BTreeMap<String, T>),
}

fn to_value(t: T) -> Value {
    match t {
        T::Leaf(v) => v,
        T::Dir(d) => Value::from_iter(d.into_iter().map(|(k, v)| (k, to_value(v)))),
    }
}

/// The lenient nested form a template sees as `tree`: where a key is both a value and a folder, the
/// folder wins (the value is still in `kv`).
pub fn tree_of_values(flat: BTreeMap<String, Value>) -> Value {
    let mut root: BTreeMap<String, T> = BTreeMap::new();
    for (key, value) in flat {
        let segs: Vec<&str> = key.split('/').collect();
        let mut dir = &mut root;
        for (i, seg) in segs.iter().enumerate() {
            if i + 1 == segs.len() {
                if !matches!(dir.get(*seg), Some(T::Dir(_))) {
                    dir.insert(seg.to_string(), T::Leaf(value.clone()));
                }
            } else {
                let e = dir.entry(seg.to_string()).or_insert_with(|| T::Dir(BTreeMap::new()));
                if let T::Leaf(_) = e {
                    *e = T::Dir(BTreeMap::new());
                }
                match e {
                    T::Dir(d) => dir = d,
                    T::Leaf(_) => unreachable!("replaced just above"),
                }
            }
        }
    }
    to_value(T::Dir(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_and_reports_conflicts() {
        let kv: BTreeMap<&str, &[u8]> =
            [("db/host", b"h".as_slice()), ("db/port", b"1".as_slice()), ("x", b"y".as_slice())].into();
        let t = build(&kv).unwrap();
        assert!(matches!(t.get("db"), Some(Node::Dir(d)) if d.len() == 2));
        let kv: BTreeMap<&str, &[u8]> = [("db", b"v".as_slice()), ("db/host", b"h".as_slice())].into();
        let err = build(&kv).unwrap_err();
        assert!(err.contains("`db` is both a value and a folder"), "{err}");
        let kv: BTreeMap<&str, &[u8]> = [("a/b", b"v".as_slice()), ("a/b/c", b"h".as_slice())].into();
        assert!(build(&kv).unwrap_err().contains("`a/b`"));
    }

    #[test]
    fn lenient_tree_prefers_folders() {
        let v =
            tree_of_values([("db".to_string(), Value::from("v")), ("db/host".to_string(), Value::from("h"))].into());
        assert_eq!(v.get_attr("db").unwrap().get_attr("host").unwrap().to_string(), "h");
    }
}
