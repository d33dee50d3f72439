//! The simple, pure functions of Sprig that consul-template offers as `sprig_*`.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::common::{arity, go_split, int, s, str_list, strings, FResult};
use crate::value::{FuncError, Value};
use crate::Funcs;

/// Sprig's `empty`: the zero value of its type.
fn empty(v: &Value) -> bool {
    !v.is_true()
}

fn to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Nil => String::new(),
        v => crate::printf::sprint_value(v),
    }
}

pub(crate) fn add(f: &mut Funcs) {
    let one = |f: &mut Funcs, name: &str, op: fn(&str) -> String| {
        f.insert(format!("sprig_{name}"), move |a: &[Value]| -> FResult {
            arity(a, 1, false)?;
            Ok(Value::String(op(&s(a, 0)?)))
        });
    };
    one(f, "upper", super::common::go_upper);
    one(f, "lower", super::common::go_lower);
    one(f, "trim", |x| x.trim().to_string());
    one(f, "nospace", |x| x.chars().filter(|c| !c.is_whitespace()).collect());
    one(f, "b64enc", |x| base64::engine::general_purpose::STANDARD.encode(x));
    one(f, "b64dec", |x| match super::confd::base64_decode(x, false) {
        Ok(s) | Err(s) => s,
    });
    one(f, "title", |x| {
        let mut out = String::new();
        let mut start = true;
        for c in x.chars() {
            if start {
                out.push_str(&super::common::go_upper(&c.to_string()));
            } else {
                out.push(c);
            }
            // Go's strings.Title: a letter starts a word after a separator (not a letter, digit or `_`).
            start = !(c.is_alphanumeric() || c == '_');
        }
        out
    });
    let two = |f: &mut Funcs, name: &str, op: fn(&str, &str) -> Value| {
        f.insert(format!("sprig_{name}"), move |a: &[Value]| -> FResult {
            arity(a, 2, false)?;
            Ok(op(&s(a, 0)?, &s(a, 1)?))
        });
    };
    two(f, "trimAll", |c, x| Value::String(x.trim_matches(|ch| c.contains(ch)).to_string()));
    two(f, "trimPrefix", |p, x| Value::String(x.strip_prefix(p).unwrap_or(x).to_string()));
    two(f, "trimSuffix", |p, x| Value::String(x.strip_suffix(p).unwrap_or(x).to_string()));
    two(f, "contains", |sub, x| Value::Bool(x.contains(sub)));
    two(f, "hasPrefix", |p, x| Value::Bool(x.starts_with(p)));
    two(f, "hasSuffix", |p, x| Value::Bool(x.ends_with(p)));
    two(f, "splitList", |sep, x| str_list(go_split(x, sep)));
    f.insert("sprig_replace", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        Ok(Value::String(s(a, 2)?.replace(&s(a, 0)?, &s(a, 1)?)))
    });
    f.insert("sprig_repeat", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (n, x) = (int(a, 0)?, s(a, 1)?);
        if n < 0 {
            return Err(FuncError::msg("strings: negative Repeat count"));
        }
        if (n as u128) * (x.len() as u128) > super::common::MAX_STRING as u128 {
            return Err(FuncError::msg(format!(
                "repeat: the result would be longer than {} bytes",
                super::common::MAX_STRING
            )));
        }
        Ok(Value::String(x.repeat(n as usize)))
    });
    f.insert("sprig_join", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let sep = s(a, 0)?;
        let items: Vec<String> = match &a[1] {
            Value::List(l) => l.iter().map(to_string).collect(),
            other => vec![to_string(other)],
        };
        Ok(Value::String(items.join(&sep)))
    });
    f.insert("sprig_quote", |a: &[Value]| -> FResult {
        Ok(Value::String(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| crate::printf::quote(&to_string(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    f.insert("sprig_squote", |a: &[Value]| -> FResult {
        Ok(Value::String(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| format!("'{}'", to_string(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    f.insert("sprig_default", |a: &[Value]| -> FResult {
        arity(a, 1, true)?;
        let d = a[0].clone();
        match a.get(1) {
            Some(v) if !empty(v) => Ok(v.clone()),
            _ => Ok(d),
        }
    });
    f.insert("sprig_empty", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::Bool(empty(&a[0])))
    });
    f.insert("sprig_coalesce", |a: &[Value]| -> FResult {
        Ok(a.iter().find(|v| !empty(v)).cloned().unwrap_or(Value::Nil))
    });
    f.insert("sprig_ternary", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        Ok(if a[2].is_true() { a[0].clone() } else { a[1].clone() })
    });
    f.insert("sprig_list", |a: &[Value]| -> FResult { Ok(Value::List(a.to_vec())) });
    f.insert("sprig_dict", |a: &[Value]| -> FResult {
        let mut m = BTreeMap::new();
        for pair in a.chunks(2) {
            m.insert(to_string(&pair[0]), pair.get(1).cloned().unwrap_or(Value::str("")));
        }
        Ok(Value::Map(m))
    });
    f.insert("sprig_sortAlpha", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let mut v: Vec<String> = match &a[0] {
            Value::List(l) => l.iter().map(to_string).collect(),
            other => vec![to_string(other)],
        };
        v.sort();
        Ok(str_list(v))
    });
    f.insert("sprig_uniq", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let Value::List(l) = &a[0] else {
            return Err(FuncError::msg(format!("Cannot find uniq on type {}", a[0].type_name())));
        };
        let mut out: Vec<Value> = Vec::new();
        for v in l {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        Ok(Value::List(out))
    });
    f.insert("sprig_first", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(match &a[0] {
            Value::List(l) => l.first().cloned().unwrap_or(Value::Nil),
            _ => Value::Nil,
        })
    });
    f.insert("sprig_last", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(match &a[0] {
            Value::List(l) => l.last().cloned().unwrap_or(Value::Nil),
            _ => Value::Nil,
        })
    });
    f.insert("sprig_has", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::Bool(matches!(&a[1], Value::List(l) if l.contains(&a[0]))))
    });
    f.insert("sprig_keys", |a: &[Value]| -> FResult {
        let mut keys = Vec::new();
        for m in a {
            if let Value::Map(m) = m {
                keys.extend(m.keys().cloned());
            }
        }
        Ok(str_list(keys))
    });
    f.insert("sprig_substr", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        let (start, end, x) = (int(a, 0)?, int(a, 1)?, s(a, 2)?);
        let b = x.as_bytes();
        let len = b.len() as i64;
        let (from, to) = if start < 0 {
            (0, end)
        } else if end < 0 || end > len {
            (start, len)
        } else {
            (start, end)
        };
        if from > to || to > len || from < 0 {
            return Err(FuncError::msg(format!("runtime error: slice bounds out of range [{from}:{to}]")));
        }
        Ok(Value::String(String::from_utf8_lossy(&b[from as usize..to as usize]).into_owned()))
    });
    f.insert("sprig_toString", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(to_string(&a[0])))
    });
    f.insert("sprig_toStrings", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(match &a[0] {
            Value::List(l) => str_list(l.iter().map(to_string).collect()),
            other => str_list(vec![to_string(other)]),
        })
    });
    f.insert("sprig_sha256sum", |a: &[Value]| -> FResult {
        use sha2::Digest as _;
        arity(a, 1, false)?;
        Ok(Value::String(sha2::Sha256::digest(s(a, 0)?.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()))
    });
    f.insert("sprig_joinStrings", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::String(strings(a, 1)?.join(&s(a, 0)?)))
    });
}
