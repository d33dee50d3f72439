//! Property tests on hostile input: key-to-path mapping, every format's escaping, config parsing.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use proptest::prelude::*;

use crate::format::{env, files, properties};

/// Keys built from the pieces that make paths dangerous.
fn hostile_key() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            Just("/".to_string()),
            Just("\0".to_string()),
            Just("..data".to_string()),
            "[a-z]{1,8}",
            "[ -~]{1,12}",
            "\\PC{1,4}",
            Just("x".repeat(300)),
        ],
        1..6,
    )
    .prop_map(|parts| parts.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A key the `files` format accepts stays inside the destination: no `..`, no root, no NUL, and
    /// every name within the file-system limit.
    #[test]
    fn accepted_keys_never_escape(key in hostile_key()) {
        if files::check_key(&key).is_ok() {
            let p = Path::new(&key);
            for c in p.components() {
                prop_assert!(matches!(c, Component::Normal(_)), "{key:?} has {c:?}");
            }
            prop_assert!(!key.contains('\0'));
            prop_assert!(key.split('/').all(|s| !s.is_empty() && s.len() <= files::MAX_NAME && !s.starts_with("..")));
            prop_assert!(Path::new("/dest").join(p).starts_with("/dest"));
        }
    }

    /// Every value survives the properties format exactly, whatever it holds.
    #[test]
    fn properties_round_trip(key in "[ -~\\PC]{1,20}", value in "\\PC*|[\\n\\r\\t =:#!\\\\]*") {
        let kv: BTreeMap<&str, &[u8]> = [(key.as_str(), value.as_bytes())].into();
        let text = String::from_utf8(properties::render(&kv).unwrap()).unwrap();
        prop_assert_eq!(text.lines().count(), 1, "one line per key: {:?}", text);
        let back = properties::parse(&text);
        prop_assert_eq!(back.get(&key.replace('/', ".")), Some(&value));
    }

    /// Env lines stay one variable each: quoting keeps newlines, quotes and `=` inside the value.
    #[test]
    fn env_lines_cannot_be_broken(value in "[^\\x00]*") {
        let kv: BTreeMap<&str, &[u8]> = [("a", value.as_bytes()), ("b", b"after".as_slice())].into();
        let text = String::from_utf8(env::render(&kv, false).unwrap()).unwrap();
        // The quoted value unescapes back to the original, and the next variable starts after it.
        let body = text.strip_prefix("a=\"").unwrap();
        let mut out = String::new();
        let mut chars = body.chars();
        loop {
            match chars.next() {
                Some('\\') => out.push(chars.next().unwrap()),
                Some('"') => break,
                Some(c) => out.push(c),
                None => panic!("unterminated quote in {text:?}"),
            }
        }
        prop_assert_eq!(&out, &value);
        prop_assert_eq!(chars.as_str(), "\nb=\"after\"\n");
    }

    /// A NUL anywhere in an env value is refused, never written.
    #[test]
    fn env_refuses_nul(a in "[a-z]*", b in "[a-z]*") {
        let v = format!("{a}\0{b}");
        let kv: BTreeMap<&str, &[u8]> = [("k", v.as_bytes())].into();
        prop_assert!(env::render(&kv, false).is_err());
    }

    /// No configuration text makes the parser panic.
    #[test]
    fn config_parsing_never_panics(text in "(sources|outputs|name|type|file|consul|etcd|path|format|json|[-:{}\\[\\], \\n]|[a-z0-9]{1,5}){0,40}") {
        let _ = crate::config::Config::parse(Path::new("/nonexistent/k.yaml"), &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The json writer produces exactly what serde_json's pretty printer does for the same keys,
    /// whatever the values hold (quotes, backslashes, control characters, non-ASCII).
    #[test]
    fn json_matches_serde_json(kv in prop::collection::btree_map("[a-c]{1,2}(/[a-c.]{1,2}){0,2}", "\\PC{0,20}|[\"\\\\\\x00-\\x1f\\x7f a]{0,30}", 0..12)) {
        let flat: BTreeMap<&str, &[u8]> = kv.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        if let Ok(tree) = crate::format::json_tree(&flat) {
            let mut ours = Vec::new();
            crate::format::json::write(&tree, &mut ours).unwrap();
            let mut doc = serde_json::Map::new();
            for (k, v) in &kv {
                let segs: Vec<&str> = k.split('/').collect();
                let mut m = &mut doc;
                for s in &segs[..segs.len() - 1] {
                    m = m.entry(s.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()))
                        .as_object_mut().unwrap();
                }
                m.insert(segs[segs.len() - 1].to_string(), serde_json::Value::String(v.clone()));
            }
            let want = serde_json::to_string_pretty(&serde_json::Value::Object(doc)).unwrap() + "\n";
            prop_assert_eq!(String::from_utf8(ours).unwrap(), want);
        }
    }
}
