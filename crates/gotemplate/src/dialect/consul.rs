//! consul-template's KV and helper functions (consul-template 0.3x, `template/funcs.go`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::Digest as _;

use super::common::{arity, go_json, go_split, int, json_decode_go, s, str_list, strings, FResult, Time};
use super::confd::{atoi, base64_decode, parse_bool};
use crate::value::{FuncError, Object, Record, Value};
use crate::Funcs;

/// consul-template's argument form: a leading `/` and `@dc` / `?query` suffixes are not part of the key.
fn clean_key(k: &str) -> String {
    let k = k.strip_prefix('/').unwrap_or(k);
    let k = k.split(['@', '?']).next().unwrap_or(k);
    k.to_string()
}

fn key_pair(path: &str, key: &str, value: &str) -> Value {
    Value::Object(Arc::new(Record {
        type_name: "dep.KeyPair",
        pointer: true,
        fields: vec![
            ("Path", Value::str(path)),
            ("Key", Value::str(key)),
            ("Value", Value::str(value)),
            ("CreateIndex", Value::Int(0)),
            ("ModifyIndex", Value::Int(0)),
            ("LockIndex", Value::Int(0)),
            ("Flags", Value::Int(0)),
            ("Session", Value::str("")),
        ],
    }))
}

/// The pairs a Consul list of `prefix` returns, with `Key` relative to the prefix.
fn list(kv: &BTreeMap<String, String>, prefix: &str) -> Vec<(String, String, String)> {
    kv.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| {
            let rel = k[prefix.len()..].trim_start_matches('/').to_string();
            (k.clone(), rel, v.clone())
        })
        .collect()
}

fn pair_fields(v: &Value) -> Result<(String, String, String), FuncError> {
    match v {
        Value::Object(o) if o.type_name() == "*dep.KeyPair" => {
            let get = |n: &str| o.field(n).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            Ok((get("Path"), get("Key"), get("Value")))
        }
        other => Err(FuncError::msg(format!(
            "wrong type for value; expected []*dependency.KeyPair; got {}",
            other.type_name()
        ))),
    }
}

fn pairs(a: &[Value], i: usize) -> Result<Vec<(String, String, String)>, FuncError> {
    match a.get(i) {
        Some(Value::List(l)) => l.iter().map(pair_fields).collect(),
        Some(Value::Nil) => Ok(Vec::new()),
        Some(other) => Err(FuncError::msg(format!(
            "wrong type for value; expected []*dependency.KeyPair; got {}",
            other.type_name()
        ))),
        None => Err(FuncError::msg("missing argument")),
    }
}

/// Numbers for consul-template's math functions.
enum Num {
    I(i64),
    F(f64),
}

fn num(v: &Value, name: &str) -> Result<Num, FuncError> {
    match v {
        Value::Int(i) => Ok(Num::I(*i)),
        Value::Float(f) => Ok(Num::F(*f)),
        other => Err(FuncError::msg(format!(
            "{name}: unknown type for {} ({})",
            crate::printf::sprintf("%q", std::slice::from_ref(other)),
            other.type_name()
        ))),
    }
}

fn math(
    a: &[Value],
    name: &'static str,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> FResult {
    arity(a, 2, false)?;
    // consul-template's functions take (b, a) and compute a OP b, so that `{{ 5 | subtract 1 }}` is 4.
    let (b, x) = (num(&a[0], name)?, num(&a[1], name)?);
    Ok(match (x, b) {
        (Num::I(x), Num::I(y)) => {
            Value::Int(int_op(x, y).ok_or_else(|| FuncError::msg("runtime error: integer divide by zero"))?)
        }
        (Num::I(x), Num::F(y)) => Value::Float(float_op(x as f64, y)),
        (Num::F(x), Num::I(y)) => Value::Float(float_op(x, y as f64)),
        (Num::F(x), Num::F(y)) => Value::Float(float_op(x, y)),
    })
}

/// consul-template's `in`: membership in a list (ints, floats, strings) or substring of a string.
fn in_(l: &Value, v: &Value) -> bool {
    match l {
        Value::List(items) => items.iter().any(|e| match (e, v) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            _ => false,
        }),
        Value::String(s) => matches!(v, Value::String(x) if s.contains(x.as_str())),
        _ => false,
    }
}

fn explode_into(m: &mut BTreeMap<String, Value>, k: &str, v: Value, p: &str) -> Result<(), FuncError> {
    if let Some((top, rest)) = k.split_once('/') {
        let entry = m.entry(top.to_string()).or_insert_with(|| Value::Map(BTreeMap::new()));
        let Value::Map(nest) = entry else {
            return Err(FuncError::msg(format!(
                "explode: not a map: {}: {} already has value {}",
                crate::printf::quote(p),
                crate::printf::quote(top),
                crate::printf::sprintf("%q", std::slice::from_ref(entry))
            )));
        };
        return explode_into(nest, rest, v, k);
    }
    if !k.is_empty() {
        m.insert(k.to_string(), v);
    }
    Ok(())
}

/// mergo.Map: keys of `src` missing (or empty) in `dst` are added, nested maps are merged; with
/// `overwrite`, values of `src` replace those of `dst` unless they are empty.
fn merge(dst: &mut BTreeMap<String, Value>, src: &BTreeMap<String, Value>, overwrite: bool) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Map(d)), Value::Map(s)) => merge(d, s, overwrite),
            (Some(d), v) => {
                if (!d.is_true() || overwrite) && v.is_true() {
                    *d = v.clone();
                }
            }
            (None, v) => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// consul-template's `scratch`: a per-render key/value store with methods.
#[derive(Default)]
struct Scratch {
    values: Mutex<BTreeMap<String, Value>>,
}

impl Object for Scratch {
    fn type_name(&self) -> String {
        "*template.Scratch".into()
    }
    fn field(&self, _name: &str) -> Option<Value> {
        None
    }
    fn fields(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }
    fn is_pointer(&self) -> bool {
        true
    }
    fn method(&self, name: &str, a: &[Value]) -> Option<Result<Value, FuncError>> {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        Some((|| -> FResult {
            match name {
                "Key" => {
                    arity(a, 1, false)?;
                    Ok(Value::Bool(values.contains_key(&s(a, 0)?)))
                }
                "Get" => {
                    arity(a, 1, false)?;
                    Ok(values.get(&s(a, 0)?).cloned().unwrap_or(Value::Nil))
                }
                "Set" | "SetX" => {
                    arity(a, 2, false)?;
                    let k = s(a, 0)?;
                    if name == "Set" || !values.contains_key(&k) {
                        values.insert(k, a[1].clone());
                    }
                    Ok(Value::str(""))
                }
                "MapSet" | "MapSetX" => {
                    arity(a, 3, false)?;
                    let (k, mk) = (s(a, 0)?, s(a, 1)?);
                    let entry = values.entry(k.clone()).or_insert_with(|| Value::Map(BTreeMap::new()));
                    let Value::Map(m) = entry else {
                        return Err(FuncError::msg(format!("{} is not a map", crate::printf::quote(&k))));
                    };
                    if name == "MapSet" || !m.contains_key(&mk) {
                        m.insert(mk, a[2].clone());
                    }
                    Ok(Value::str(""))
                }
                "MapValues" => {
                    arity(a, 1, false)?;
                    match values.get(&s(a, 0)?) {
                        Some(Value::Map(m)) => Ok(Value::List(m.values().cloned().collect())),
                        _ => Ok(Value::Nil),
                    }
                }
                _ => Err(FuncError::msg(format!("can't evaluate field {name} in type *template.Scratch"))),
            }
        })())
    }
}

fn indent(spaces: i64, x: &str) -> Result<String, FuncError> {
    if spaces < 0 {
        return Err(FuncError::msg("indent value must be a positive integer"));
    }
    let lines = x.matches('\n').count() as i64 + 1;
    if spaces.saturating_mul(lines).saturating_add(x.len() as i64) > super::common::MAX_STRING as i64 {
        return Err(FuncError::msg(format!(
            "indent: the result would be longer than {} bytes",
            super::common::MAX_STRING
        )));
    }
    let prefix = " ".repeat(spaces as usize);
    let mut out = String::new();
    let mut sp = true;
    for c in x.chars() {
        if sp && c != '\n' {
            out.push_str(&prefix);
        }
        out.push(c);
        sp = c == '\n';
    }
    Ok(out)
}

/// strings.Title-like: upper-cases the first letter of each word (cases.Title with NoLower).
fn title(x: &str) -> String {
    let mut out = String::new();
    let mut prev_letter = false;
    for c in x.chars() {
        if !prev_letter && c.is_alphabetic() {
            out.push_str(&super::common::go_upper(&c.to_string()));
        } else {
            out.push(c);
        }
        prev_letter = c.is_alphanumeric() || c == '\'' || c == '_';
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Go's RE2 reads a `{` that does not start a repetition (`{n}`, `{n,}`, `{n,m}`) as a literal;
/// the regex crate needs it escaped.
fn escape_literal_braces(re: &str) -> String {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len());
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.get(i + 1) {
                    out.push(*n);
                }
                i += 2;
                // `\p{Greek}`, `\x{263a}`: the braces belong to the escape.
                if matches!(chars.get(i - 1), Some('p' | 'P' | 'x')) && chars.get(i) == Some(&'{') {
                    while i < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                        if chars[i - 1] == '}' {
                            break;
                        }
                    }
                }
                continue;
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                let rest: String = chars[i + 1..].iter().collect();
                let is_repeat = rest.find('}').is_some_and(|e| {
                    let body = &rest[..e];
                    let (lo, hi) = body.split_once(',').unwrap_or((body, "0"));
                    !lo.is_empty() && lo.bytes().all(|b| b.is_ascii_digit()) && hi.bytes().all(|b| b.is_ascii_digit())
                });
                if !is_repeat {
                    out.push_str("\\{");
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

fn go_regex(re: &str) -> Result<regex::Regex, FuncError> {
    regex::Regex::new(&escape_literal_braces(re)).map_err(|e| FuncError::msg(format!("error parsing regexp: {e}")))
}

/// Go's `Regexp.ReplaceAllString` template syntax: `$1`, `${1}`, `$name`, `${name}`, `$$`.
fn go_expand(pl: &str) -> String {
    // Go reads `$name` as the longest run of word characters, as the regex crate does; same syntax.
    pl.to_string()
}

pub(crate) fn functions(kv: Arc<BTreeMap<String, String>>) -> Funcs {
    let mut f = Funcs::new();

    let k = kv.clone();
    f.insert("key", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let key = s(a, 0)?;
        if key.is_empty() {
            return Ok(Value::str(""));
        }
        let key = clean_key(&key);
        k.get(&key).map(Value::str).ok_or(FuncError::MissingKey(key))
    });
    let k = kv.clone();
    f.insert("keyOrDefault", move |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (key, def) = (s(a, 0)?, s(a, 1)?);
        match k.get(&clean_key(&key)) {
            Some(v) if !v.is_empty() && !key.is_empty() => Ok(Value::str(v)),
            _ => Ok(Value::String(def)),
        }
    });
    let k = kv.clone();
    f.insert("keyExists", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let key = s(a, 0)?;
        Ok(Value::Bool(!key.is_empty() && k.contains_key(&clean_key(&key))))
    });
    for (name, safe) in [("ls", false), ("safeLs", true)] {
        let k = kv.clone();
        f.insert(name, move |a: &[Value]| -> FResult {
            arity(a, 1, false)?;
            let p = s(a, 0)?;
            if p.is_empty() {
                return Ok(Value::List(Vec::new()));
            }
            let prefix = clean_key(&p);
            let out: Vec<Value> = list(&k, &prefix)
                .into_iter()
                .filter(|(_, key, _)| !key.is_empty() && !key.contains('/'))
                .map(|(path, key, v)| key_pair(&path, &key, &v))
                .collect();
            if out.is_empty() && safe {
                return Err(FuncError::MissingKey(prefix));
            }
            Ok(Value::List(out))
        });
    }
    for (name, safe) in [("tree", false), ("safeTree", true)] {
        let k = kv.clone();
        f.insert(name, move |a: &[Value]| -> FResult {
            arity(a, 1, false)?;
            let p = s(a, 0)?;
            if p.is_empty() {
                return Ok(Value::List(Vec::new()));
            }
            let prefix = clean_key(&p);
            let out: Vec<Value> = list(&k, &prefix)
                .into_iter()
                .filter(|(_, key, _)| !key.rsplit('/').next().unwrap_or("").is_empty())
                .map(|(path, key, v)| key_pair(&path, &key, &v))
                .collect();
            if out.is_empty() && safe {
                return Err(FuncError::MissingKey(prefix));
            }
            Ok(Value::List(out))
        });
    }
    let scratch: Arc<Scratch> = Arc::new(Scratch::default());
    f.insert("scratch", move |a: &[Value]| -> FResult {
        arity(a, 0, false)?;
        Ok(Value::Object(scratch.clone()))
    });

    f.insert("env", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(std::env::var(s(a, 0)?).unwrap_or_default()))
    });
    f.insert("envOrDefault", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::String(std::env::var(s(a, 0)?).unwrap_or(s(a, 1)?)))
    });
    f.insert("mustEnv", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let name = s(a, 0)?;
        match std::env::var(&name) {
            Ok(v) if !v.is_empty() => Ok(Value::String(v)),
            _ => Err(FuncError::msg(format!("required environment variable {name} is empty"))),
        }
    });
    f.insert("toJSON", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(go_json(&a[0], None, true)))
    });
    f.insert("toJSONPretty", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(go_json(&a[0], Some("  "), true)))
    });
    f.insert("toUnescapedJSON", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(go_json(&a[0], None, false)))
    });
    f.insert("toUnescapedJSONPretty", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(go_json(&a[0], Some("  "), false)))
    });
    f.insert("toYAML", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(super::yaml::to_yaml(&a[0])))
    });
    f.insert("toTOML", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        to_toml(&a[0]).map(Value::String)
    });
    f.insert("parseJSON", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Map(BTreeMap::new()));
        }
        json_decode_go(&x)
    });
    f.insert("parseYAML", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Map(BTreeMap::new()));
        }
        let j: serde_json::Value = serde_yaml::from_str(&x).map_err(|e| FuncError::msg(format!("yaml: {e}")))?;
        Ok(Value::from_json(&j))
    });
    f.insert("parseUint", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Int(0));
        }
        if x.starts_with(['+', '-']) {
            return Err(FuncError::msg(format!(
                "parseUint: strconv.ParseUint: parsing {}: invalid syntax",
                crate::printf::quote(&x)
            )));
        }
        atoi(&x, "ParseUint").map(Value::Int).map_err(|e| FuncError::msg(format!("parseUint: {e}")))
    });
    for (name, overwrite) in [("mergeMap", false), ("mergeMapWithOverride", true)] {
        f.insert(name, move |a: &[Value]| -> FResult {
            arity(a, 2, false)?;
            match (&a[0], &a[1]) {
                (Value::Map(dst), Value::Map(src)) => {
                    let mut out = dst.clone();
                    merge(&mut out, src, overwrite);
                    Ok(Value::Map(out))
                }
                (x, y) => Err(FuncError::msg(format!(
                    "wrong type for value; expected map[string]interface {{}}; got {}",
                    if matches!(x, Value::Map(_)) { y.type_name() } else { x.type_name() }
                ))),
            }
        });
    }
    f.insert("parseBool", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Bool(false));
        }
        parse_bool(&x).map(Value::Bool).map_err(|e| FuncError::msg(format!("parseBool: {e}")))
    });
    f.insert("parseInt", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Int(0));
        }
        atoi(&x, "ParseInt").map(Value::Int).map_err(|e| FuncError::msg(format!("parseInt: {e}")))
    });
    f.insert("parseFloat", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let x = s(a, 0)?;
        if x.is_empty() {
            return Ok(Value::Float(0.0));
        }
        x.trim_start_matches('+').parse::<f64>().map(Value::Float).map_err(|_| {
            FuncError::msg(format!(
                "parseFloat: strconv.ParseFloat: parsing {}: invalid syntax",
                crate::printf::quote(&x)
            ))
        })
    });
    f.insert("base64Encode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(s(a, 0)?)))
    });
    f.insert("base64Decode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        base64_decode(&s(a, 0)?, false).map(Value::String).map_err(|e| FuncError::msg(format!("base64Decode: {e}")))
    });
    f.insert("base64URLEncode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(base64::engine::general_purpose::URL_SAFE.encode(s(a, 0)?)))
    });
    f.insert("base64URLDecode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        base64_decode(&s(a, 0)?, true).map(Value::String).map_err(|e| FuncError::msg(format!("base64URLDecode: {e}")))
    });
    f.insert("split", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (sep, x) = (s(a, 0)?, s(a, 1)?);
        let x = x.trim();
        if x.is_empty() {
            return Ok(Value::List(Vec::new()));
        }
        Ok(str_list(go_split(x, &sep)))
    });
    f.insert("splitToMap", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        let (sep1, sep2, x) = (s(a, 0)?, s(a, 1)?, s(a, 2)?);
        let mut m = BTreeMap::new();
        let x = x.trim();
        if !x.is_empty() {
            for item in go_split(x, &sep1) {
                if let Some((k, v)) = item.split_once(sep2.as_str()) {
                    m.insert(k.to_string(), Value::str(v));
                }
            }
        }
        Ok(Value::Map(m))
    });
    f.insert("join", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::String(strings(a, 1)?.join(&s(a, 0)?)))
    });
    f.insert("trim", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (cut, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::String(x.trim_matches(|c| cut.contains(c)).to_string()))
    });
    f.insert("trimPrefix", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (p, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::String(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string()))
    });
    f.insert("trimSuffix", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (p, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::String(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string()))
    });
    f.insert("trimSpace", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(s(a, 0)?.trim().to_string()))
    });
    f.insert("replaceAll", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        let (from, to, x) = (s(a, 0)?, s(a, 1)?, s(a, 2)?);
        Ok(Value::String(super::confd::go_replace(&x, &from, &to, -1)))
    });
    f.insert("regexReplaceAll", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        let (re, pl, x) = (s(a, 0)?, s(a, 1)?, s(a, 2)?);
        Ok(Value::String(go_regex(&re)?.replace_all(&x, go_expand(&pl).as_str()).into_owned()))
    });
    f.insert("regexMatch", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (re, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::Bool(go_regex(&re)?.is_match(&x)))
    });
    f.insert("toLower", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(super::common::go_lower(&s(a, 0)?)))
    });
    f.insert("toUpper", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(super::common::go_upper(&s(a, 0)?)))
    });
    f.insert("toTitle", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(title(&s(a, 0)?)))
    });
    f.insert("contains", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::Bool(in_(&a[1], &a[0])))
    });
    f.insert("in", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::Bool(in_(&a[0], &a[1])))
    });
    for (name, ret_true, invert) in [
        ("containsAll", true, true),
        ("containsAny", false, false),
        ("containsNone", true, false),
        ("containsNotAll", false, true),
    ] {
        f.insert(name, move |a: &[Value]| -> FResult {
            arity(a, 2, false)?;
            let v: &[Value] = match &a[0] {
                Value::List(v) => v,
                Value::Nil => &[],
                other => {
                    return Err(FuncError::msg(format!(
                        "wrong type for value; expected []interface {{}}; got {}",
                        other.type_name()
                    )));
                }
            };
            for x in v {
                if in_(&a[1], x) != invert {
                    return Ok(Value::Bool(!ret_true));
                }
            }
            Ok(Value::Bool(ret_true))
        });
    }
    f.insert("byKey", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let mut m: BTreeMap<String, Value> = BTreeMap::new();
        for (path, key, value) in pairs(a, 0)? {
            let (top, rest) = key.split_once('/').unwrap_or((&key, ""));
            if rest.is_empty() {
                continue;
            }
            let entry = m.entry(top.to_string()).or_insert_with(|| Value::Map(BTreeMap::new()));
            if let Value::Map(inner) = entry {
                inner.insert(rest.to_string(), key_pair(&path, rest, &value));
            }
        }
        Ok(Value::Map(m))
    });
    f.insert("explode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let mut m = BTreeMap::new();
        for (_, key, value) in pairs(a, 0)? {
            explode_into(&mut m, &key, Value::String(value), &key)?;
        }
        Ok(Value::Map(m))
    });
    f.insert("explodeMap", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let Value::Map(src) = &a[0] else {
            return Err(FuncError::msg(format!(
                "wrong type for value; expected map[string]interface {{}}; got {}",
                a[0].type_name()
            )));
        };
        let mut m = BTreeMap::new();
        for (k, v) in src {
            explode_into(&mut m, k, v.clone(), k)?;
        }
        Ok(Value::Map(m))
    });
    f.insert("timestamp", |a: &[Value]| -> FResult {
        let now = Time::now();
        match a.len() {
            0 => Ok(Value::String(now.format("2006-01-02T15:04:05Z07:00"))),
            1 => {
                let l = s(a, 0)?;
                if l == "unix" {
                    Ok(Value::String(now.secs.to_string()))
                } else {
                    Ok(Value::String(now.format(&l)))
                }
            }
            n => Err(FuncError::msg(format!("timestamp: wrong number of arguments, expected 0 or 1, but got {n}"))),
        }
    });
    f.insert("sha256Hex", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(hex(&sha2::Sha256::digest(s(a, 0)?.as_bytes()))))
    });
    f.insert("md5sum", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(hex(&md5(s(a, 0)?.as_bytes()))))
    });
    f.insert("hmacSHA256Hex", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::String(hex(&hmac_sha256(s(a, 1)?.as_bytes(), s(a, 0)?.as_bytes()))))
    });
    f.insert("add", |a: &[Value]| math(a, "add", |x, y| Some(x.wrapping_add(y)), |x, y| x + y));
    f.insert("subtract", |a: &[Value]| math(a, "subtract", |x, y| Some(x.wrapping_sub(y)), |x, y| x - y));
    f.insert("multiply", |a: &[Value]| math(a, "multiply", |x, y| Some(x.wrapping_mul(y)), |x, y| x * y));
    f.insert("divide", |a: &[Value]| math(a, "divide", |x, y| x.checked_div(y), |x, y| x / y));
    f.insert("modulo", |a: &[Value]| {
        if a.iter().any(|v| matches!(v, Value::Float(_))) {
            let bad = a.iter().find(|v| matches!(v, Value::Float(_))).cloned().unwrap_or_default();
            return Err(FuncError::msg(format!(
                "modulo: unknown type for {} ({})",
                crate::printf::sprintf("%q", std::slice::from_ref(&bad)),
                bad.type_name()
            )));
        }
        math(a, "modulo", |x, y| x.checked_rem(y), |x, y| x % y)
    });
    f.insert("minimum", |a: &[Value]| math(a, "minimum", |x, y| Some(x.min(y)), f64::min));
    f.insert("maximum", |a: &[Value]| math(a, "maximum", |x, y| Some(x.max(y)), f64::max));
    f.insert("indent", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        indent(int(a, 0)?, &s(a, 1)?).map(Value::String)
    });
    f.insert("loop", |a: &[Value]| -> FResult {
        let (start, stop) = match a {
            [n] => (0, int(a, 0).or_else(|_| num_int(n))?),
            [x, y] => (num_int(x)?, num_int(y)?),
            _ => {
                return Err(FuncError::msg(format!(
                    "loop: wrong number of arguments, expected 1 or 2, but got {}",
                    a.len()
                )))
            }
        };
        if stop.saturating_sub(start) > super::common::MAX_ITEMS {
            return Err(FuncError::msg(format!("loop: more than {} iterations", super::common::MAX_ITEMS)));
        }
        Ok(Value::List((start..stop).map(Value::Int).collect()))
    });
    super::sprig::add(&mut f);
    f
}

fn num_int(v: &Value) -> Result<i64, FuncError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::String(s) => atoi(s, "ParseInt").map_err(FuncError::Failed),
        other => Err(FuncError::msg(format!("loop: bad argument type: {}", other.type_name()))),
    }
}

/// BurntSushi/toml v1.5's encoder (as consul-template's `toTOML` uses it), for template values.
struct Toml {
    out: String,
}

impl Toml {
    fn newline(&mut self) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
    }

    fn indent(key: &[String]) -> String {
        "  ".repeat(key.len().saturating_sub(1))
    }

    fn key_str(key: &[String]) -> String {
        key.iter().map(|k| toml_key(k)).collect::<Vec<_>>().join(".")
    }

    fn is_table(v: &Value) -> bool {
        match v {
            Value::Map(_) | Value::Object(_) => true,
            Value::List(l) => !l.is_empty() && l.iter().all(|e| matches!(e, Value::Map(_) | Value::Object(_))),
            _ => false,
        }
    }

    fn encode(&mut self, key: &[String], v: &Value) -> Result<(), FuncError> {
        match v {
            Value::Nil => Ok(()),
            Value::Map(m) => self.table(key, m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Value::Object(o) => self.table(key, o.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            Value::List(l) if Self::is_table(v) => {
                for e in l {
                    self.newline();
                    self.out.push_str(&format!("{}[[{}]]", Self::indent(key), Self::key_str(key)));
                    self.newline();
                    let fields: Vec<(String, Value)> = match e {
                        Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        Value::Object(o) => o.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        _ => Vec::new(),
                    };
                    self.map_body(key, fields, false)?;
                }
                Ok(())
            }
            _ => self.key_value(key, v, false),
        }
    }

    fn table(&mut self, key: &[String], fields: Vec<(String, Value)>) -> Result<(), FuncError> {
        if key.len() == 1 {
            self.newline();
        }
        if !key.is_empty() {
            self.out.push_str(&format!("{}[{}]", Self::indent(key), Self::key_str(key)));
            self.newline();
        }
        self.map_body(key, fields, false)
    }

    fn map_body(&mut self, key: &[String], mut fields: Vec<(String, Value)>, inline: bool) -> Result<(), FuncError> {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let (sub, direct): (Vec<_>, Vec<_>) = fields.into_iter().partition(|(_, v)| Self::is_table(v));
        if inline {
            self.out.push('{');
        }
        let has_sub = !sub.is_empty();
        for (group, trail) in [(direct, has_sub), (sub, false)] {
            let n = group.len();
            for (i, (k, v)) in group.into_iter().enumerate() {
                if matches!(v, Value::Nil) {
                    continue;
                }
                if inline {
                    self.key_value(std::slice::from_ref(&k), &v, true)?;
                    if trail || i != n - 1 {
                        self.out.push_str(", ");
                    }
                } else {
                    let mut path = key.to_vec();
                    path.push(k);
                    self.encode(&path, &v)?;
                }
            }
        }
        if inline {
            self.out.push('}');
        }
        Ok(())
    }

    fn key_value(&mut self, key: &[String], v: &Value, inline: bool) -> Result<(), FuncError> {
        if key.is_empty() {
            return self.element(v);
        }
        self.out.push_str(&format!("{}{} = ", Self::indent(key), toml_key(&key[key.len() - 1])));
        self.element(v)?;
        if !inline {
            self.newline();
        }
        Ok(())
    }

    fn element(&mut self, v: &Value) -> Result<(), FuncError> {
        match v {
            Value::String(s) => self.out.push_str(&toml_string(s)),
            Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => self.out.push_str(&i.to_string()),
            Value::Float(f) => {
                if f.is_nan() {
                    self.out.push_str(if f.is_sign_negative() { "-nan" } else { "nan" });
                } else if f.is_infinite() {
                    self.out.push_str(if *f < 0.0 { "-inf" } else { "inf" });
                } else {
                    let s = format!("{f}");
                    self.out.push_str(&s);
                    if !s.contains('.') {
                        self.out.push_str(".0");
                    }
                }
            }
            Value::List(l) => {
                if l.iter().any(|e| matches!(e, Value::Nil)) {
                    return Err(FuncError::msg("toTOML: toml: cannot encode array with nil element"));
                }
                self.out.push('[');
                for (i, e) in l.iter().enumerate() {
                    self.element(e)?;
                    if i != l.len() - 1 {
                        self.out.push_str(", ");
                    }
                }
                self.out.push(']');
            }
            Value::Map(m) => self.map_body(&[], m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), true)?,
            Value::Object(o) => {
                self.map_body(&[], o.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect(), true)?
            }
            Value::Nil | Value::Func(_) => {
                return Err(FuncError::msg(format!("toTOML: toml: unsupported type: {}", v.type_name())));
            }
        }
        Ok(())
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        toml_string(k)
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x08' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\x0c' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// consul-template's `toTOML`.
fn to_toml(v: &Value) -> Result<String, FuncError> {
    let mut t = Toml { out: String::new() };
    t.encode(&[], v)?;
    Ok(t.out.trim().to_string())
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 { sha2::Sha256::digest(key).to_vec() } else { key.to_vec() };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha2::Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
    sha2::Sha256::new().chain_update(&opad).chain_update(inner).finalize().to_vec()
}

/// MD5 (RFC 1321), for consul-template's `md5sum`.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14,
        20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6,
        10, 15, 21,
    ];
    let k: Vec<u32> = (0..64).map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32).collect();
    let (mut a0, mut b0, mut c0, mut d0) = (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut msg = input.to_vec();
    let bits = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk.chunks(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f2 = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f2.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..].copy_from_slice(&d0.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_and_hmac_match_known_vectors() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"The quick brown fox jumps over the lazy dog")), "9e107d9d372bb6826bd81d3542a419d6");
        assert_eq!(
            hex(&hmac_sha256(b"key", b"The quick brown fox jumps over the lazy dog")),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
