//! Output formats: how the keys under a prefix become bytes (or, for `files`, a set of files).
//!
//! Every function here is pure: keys relative to the output's prefix (folder markers already
//! removed) in, bytes or an error naming the offending key out.

pub mod env;
pub mod files;
pub mod json;
pub mod nest;
pub mod properties;

use std::collections::BTreeMap;

use crate::config::Format;
use crate::template::InputData;

/// Renders `inputs` in `format` into the content of one file. `single` tells templates whether the
/// output had one input. `files` is not a single file: the output lays it out itself
/// (`files::layout`, `files::check_changes`).
pub fn render(format: &Format, inputs: &[InputData<'_>], single: bool) -> Result<Vec<u8>, String> {
    let first = || inputs.first().expect("every output has an input");
    match format {
        Format::Template(t) => t.render(inputs, single).map(String::into_bytes),
        Format::Json => {
            let kv = &first().kv;
            let tree = json_tree(kv)?;
            let mut out = Vec::with_capacity(kv.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + 16);
            json::write(&tree, &mut out).map_err(|e| e.to_string())?;
            Ok(out)
        }
        Format::Yaml => {
            let kv = &first().kv;
            require_utf8(kv)?;
            let tree = nest::build(kv)?;
            let s = if kv.is_empty() {
                "{}\n".to_string()
            } else {
                serde_yaml::to_string(&Dir(&tree)).map_err(|e| e.to_string())?
            };
            Ok(s.into_bytes())
        }
        Format::Env { upcase } => env::render(&first().kv, *upcase),
        Format::Properties => properties::render(&first().kv),
        Format::Files => Err("format files renders a directory, not one file".into()),
        Format::Raw { key } => {
            // The raw output's prefix is the key itself, so the key is the empty relative key.
            let v =
                first().kv.get("").ok_or_else(|| format!("key `{key}` does not exist in source {}", first().origin))?;
            Ok(v.to_vec())
        }
    }
}

/// The nested form of a `json` output's keys, checked: every value is UTF-8 and no key is both a
/// value and a folder. `json::write` turns it into bytes.
pub fn json_tree<'a>(kv: &BTreeMap<&'a str, &'a [u8]>) -> Result<BTreeMap<&'a str, nest::Node<'a>>, String> {
    require_utf8(kv)?;
    nest::build(kv)
}

/// Values that must be text are checked first, so the error can name the key.
fn require_utf8(kv: &BTreeMap<&str, &[u8]>) -> Result<(), String> {
    for (k, v) in kv {
        if std::str::from_utf8(v).is_err() {
            return Err(format!("the value of key `{k}` is not UTF-8 text; use format files or raw for binary values"));
        }
    }
    Ok(())
}

/// Serializes a nested tree as a map of maps and strings (values already checked to be UTF-8).
struct Dir<'a>(&'a BTreeMap<&'a str, nest::Node<'a>>);

impl serde::Serialize for Dir<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            match v {
                nest::Node::Leaf(b) => m.serialize_entry(k, std::str::from_utf8(b).map_err(S::Error::custom)?)?,
                nest::Node::Dir(d) => m.serialize_entry(k, &Dir(d))?,
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(kv: &'a [(&'a str, &'a [u8])]) -> Vec<InputData<'a>> {
        vec![InputData { name: "o", origin: "s:p/".into(), kv: kv.iter().copied().collect() }]
    }

    fn text(r: Vec<u8>) -> String {
        String::from_utf8(r).unwrap()
    }

    #[test]
    fn json_nests_at_slashes() {
        let kv = [("db/host", b"h".as_slice()), ("db/port", b"5432".as_slice()), ("name", b"app".as_slice())];
        let out = text(render(&Format::Json, &input(&kv), true).unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"db": {"host": "h", "port": "5432"}, "name": "app"}));
    }

    #[test]
    fn yaml_nests_and_round_trips() {
        let kv = [("db/host", b"h: x".as_slice()), ("list", b"- 1".as_slice())];
        let out = text(render(&Format::Yaml, &input(&kv), true).unwrap());
        let v: serde_json::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"db": {"host": "h: x"}, "list": "- 1"}));
        assert_eq!(text(render(&Format::Yaml, &input(&[]), true).unwrap()), "{}\n");
    }

    #[test]
    fn non_utf8_value_names_the_key() {
        let kv = [("bin/blob", [0xff, 0xfe].as_slice())];
        let err = render(&Format::Json, &input(&kv), true).unwrap_err();
        assert!(err.contains("`bin/blob` is not UTF-8"), "{err}");
    }

    #[test]
    fn raw_writes_the_bytes_of_one_key() {
        let kv = [("", [0u8, 1, 2, 0xff].as_slice())];
        assert_eq!(render(&Format::Raw { key: "k".into() }, &input(&kv), true).unwrap(), vec![0, 1, 2, 0xff]);
        let err = render(&Format::Raw { key: "k".into() }, &input(&[]), true).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
