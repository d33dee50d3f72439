//! confd's template functions (confd 0.16, `resource/template/template_funcs.go` and memkv's store).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;

use super::common::{
    arity, go_split, int, json_decode_go, path_base, path_clean, path_dir, path_match, s, str_list, strings, FResult,
    Time, TimeValue,
};
use super::dns;
use crate::value::{FuncError, Record, Value};
use crate::Funcs;

fn kv_pair(key: &str, value: &str) -> Value {
    Value::Object(Arc::new(Record {
        type_name: "memkv.KVPair",
        pointer: false,
        fields: vec![("Key", Value::str(key)), ("Value", Value::str(value))],
    }))
}

fn not_exist(key: &str) -> FuncError {
    FuncError::msg(format!("key does not exist: {key}"))
}

/// memkv's `List`: the names of the keys and directories directly under `path`.
fn list(kv: &BTreeMap<String, String>, file_path: &str) -> Vec<String> {
    let prefix: Vec<String> = path_clean(file_path).split('/').map(str::to_string).collect();
    let mut names = BTreeSet::new();
    for key in kv.keys() {
        if key == file_path {
            names.insert(path_base(key));
            continue;
        }
        let target: Vec<String> = path_clean(&path_dir(key)).split('/').map(str::to_string).collect();
        if target.len() >= prefix.len() && prefix.iter().zip(&target).all(|(a, b)| a == b) {
            let stripped = key.strip_prefix(file_path).unwrap_or(key);
            let stripped = stripped.strip_prefix('/').unwrap_or(stripped);
            names.insert(stripped.split('/').next().unwrap_or("").to_string());
        }
    }
    names.into_iter().collect()
}

/// memkv's `ListDir`: the names of the directories directly under `path`.
fn list_dir(kv: &BTreeMap<String, String>, file_path: &str) -> Vec<String> {
    let prefix: Vec<String> = path_clean(file_path).split('/').map(str::to_string).collect();
    let mut names = BTreeSet::new();
    for key in kv.keys() {
        if key.starts_with(file_path) {
            let items: Vec<String> = path_clean(&path_dir(key)).split('/').map(str::to_string).collect();
            if items.len() >= prefix.len()
                && prefix.iter().zip(&items).all(|(a, b)| a == b)
                && items.len() > prefix.len()
            {
                names.insert(items[prefix.len()].clone());
            }
        }
    }
    names.into_iter().collect()
}

fn get_all(kv: &BTreeMap<String, String>, pattern: &str) -> Result<Vec<(String, String)>, FuncError> {
    let mut out = Vec::new();
    for (k, v) in kv {
        if path_match(pattern, k)? {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

fn int2(args: &[Value]) -> Result<(i64, i64), FuncError> {
    arity(args, 2, false)?;
    Ok((int(args, 0)?, int(args, 1)?))
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(x: &str) -> Result<bool, String> {
    match x {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {}: invalid syntax", crate::printf::quote(x))),
    }
}

/// Go's `strconv.Atoi` / `ParseInt(s, 10, 64)`.
pub(crate) fn atoi(x: &str, func: &str) -> Result<i64, String> {
    let digits = x.strip_prefix(['+', '-']).unwrap_or(x);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.{func}: parsing {}: invalid syntax", crate::printf::quote(x)));
    }
    x.parse::<i64>().map_err(|_| format!("strconv.{func}: parsing {}: value out of range", crate::printf::quote(x)))
}

pub(crate) fn base64_decode(x: &str, url: bool) -> Result<String, String> {
    let r = if url {
        base64::engine::general_purpose::URL_SAFE.decode(x)
    } else {
        base64::engine::general_purpose::STANDARD.decode(x)
    };
    match r {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(base64::DecodeError::InvalidByte(i, _)) | Err(base64::DecodeError::InvalidLastSymbol(i, _)) => {
            Err(format!("illegal base64 data at input byte {i}"))
        }
        Err(_) => Err(format!("illegal base64 data at input byte {}", x.len())),
    }
}

pub(crate) fn functions(kv: Arc<BTreeMap<String, String>>) -> Funcs {
    let mut f = Funcs::new();

    let k = kv.clone();
    f.insert("getv", move |a: &[Value]| -> FResult {
        arity(a, 1, true)?;
        let key = s(a, 0)?;
        match k.get(&key) {
            Some(v) => Ok(Value::str(v)),
            None if a.len() > 1 => Ok(Value::String(s(a, 1)?)),
            None => Err(not_exist(&key)),
        }
    });
    let k = kv.clone();
    f.insert("get", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let key = s(a, 0)?;
        match k.get(&key) {
            Some(v) => Ok(kv_pair(&key, v)),
            None => Err(not_exist(&key)),
        }
    });
    let k = kv.clone();
    f.insert("exists", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::Bool(k.contains_key(&s(a, 0)?)))
    });
    let k = kv.clone();
    f.insert("gets", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::List(get_all(&k, &s(a, 0)?)?.iter().map(|(k, v)| kv_pair(k, v)).collect()))
    });
    let k = kv.clone();
    f.insert("getvs", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let mut vs: Vec<String> = get_all(&k, &s(a, 0)?)?.into_iter().map(|(_, v)| v).collect();
        vs.sort();
        Ok(str_list(vs))
    });
    let k = kv.clone();
    f.insert("ls", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(str_list(list(&k, &s(a, 0)?)))
    });
    let k = kv.clone();
    f.insert("lsdir", move |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(str_list(list_dir(&k, &s(a, 0)?)))
    });

    f.insert("base", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(path_base(&s(a, 0)?)))
    });
    f.insert("dir", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(path_dir(&s(a, 0)?)))
    });
    f.insert("split", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(str_list(go_split(&s(a, 0)?, &s(a, 1)?)))
    });
    f.insert("join", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::String(strings(a, 0)?.join(&s(a, 1)?)))
    });
    f.insert("toUpper", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(super::common::go_upper(&s(a, 0)?)))
    });
    f.insert("toLower", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(super::common::go_lower(&s(a, 0)?)))
    });
    f.insert("contains", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        Ok(Value::Bool(s(a, 0)?.contains(&s(a, 1)?)))
    });
    f.insert("replace", |a: &[Value]| -> FResult {
        arity(a, 4, false)?;
        let (x, old, new, n) = (s(a, 0)?, s(a, 1)?, s(a, 2)?, int(a, 3)?);
        Ok(Value::String(go_replace(&x, &old, &new, n)))
    });
    f.insert("trimSuffix", |a: &[Value]| -> FResult {
        arity(a, 2, false)?;
        let (x, suf) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::String(x.strip_suffix(suf.as_str()).unwrap_or(&x).to_string()))
    });
    f.insert("json", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        match json_decode_go(&s(a, 0)?)? {
            v @ Value::Map(_) => Ok(v),
            Value::Nil => Ok(Value::Map(BTreeMap::new())),
            other => Err(FuncError::msg(format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                json_kind(&other)
            ))),
        }
    });
    f.insert("jsonArray", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        match json_decode_go(&s(a, 0)?)? {
            v @ Value::List(_) => Ok(v),
            Value::Nil => Ok(Value::List(Vec::new())),
            other => Err(FuncError::msg(format!(
                "json: cannot unmarshal {} into Go value of type []interface {{}}",
                json_kind(&other)
            ))),
        }
    });
    f.insert("map", |a: &[Value]| -> FResult {
        if a.len() % 2 != 0 {
            return Err(FuncError::msg("invalid map call"));
        }
        let mut m = BTreeMap::new();
        for pair in a.chunks(2) {
            let Value::String(k) = &pair[0] else { return Err(FuncError::msg("map keys must be strings")) };
            m.insert(k.clone(), pair[1].clone());
        }
        Ok(Value::Map(m))
    });
    f.insert("datetime", |a: &[Value]| -> FResult {
        arity(a, 0, false)?;
        Ok(Value::Object(Arc::new(TimeValue(Time::now()))))
    });
    f.insert("getenv", |a: &[Value]| -> FResult {
        arity(a, 1, true)?;
        let key = s(a, 0)?;
        let default = if a.len() > 1 { s(a, 1)? } else { String::new() };
        let v = std::env::var(&key).unwrap_or_default();
        Ok(Value::String(if v.is_empty() { default } else { v }))
    });
    f.insert("atoi", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        atoi(&s(a, 0)?, "Atoi").map(Value::Int).map_err(FuncError::Failed)
    });
    f.insert("add", |a: &[Value]| -> FResult {
        let (x, y) = int2(a)?;
        Ok(Value::Int(x.wrapping_add(y)))
    });
    f.insert("sub", |a: &[Value]| -> FResult {
        let (x, y) = int2(a)?;
        Ok(Value::Int(x.wrapping_sub(y)))
    });
    f.insert("mul", |a: &[Value]| -> FResult {
        let (x, y) = int2(a)?;
        Ok(Value::Int(x.wrapping_mul(y)))
    });
    f.insert("div", |a: &[Value]| -> FResult {
        let (x, y) = int2(a)?;
        if y == 0 {
            return Err(FuncError::msg("runtime error: integer divide by zero"));
        }
        Ok(Value::Int(x.wrapping_div(y)))
    });
    f.insert("mod", |a: &[Value]| -> FResult {
        let (x, y) = int2(a)?;
        if y == 0 {
            return Err(FuncError::msg("runtime error: integer divide by zero"));
        }
        Ok(Value::Int(x.wrapping_rem(y)))
    });
    f.insert("seq", |a: &[Value]| -> FResult {
        let (first, last) = int2(a)?;
        if last.saturating_sub(first) >= super::common::MAX_ITEMS {
            return Err(FuncError::msg(format!("seq {first} {last}: more than {} numbers", super::common::MAX_ITEMS)));
        }
        Ok(Value::List((first..=last).map(Value::Int).collect()))
    });
    f.insert("base64Encode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(s(a, 0)?)))
    });
    f.insert("base64Decode", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        base64_decode(&s(a, 0)?, false).map(Value::String).map_err(FuncError::Failed)
    });
    f.insert("parseBool", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        parse_bool(&s(a, 0)?).map(Value::Bool).map_err(FuncError::Failed)
    });
    f.insert("reverse", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        match &a[0] {
            Value::List(l) if l.iter().all(|v| matches!(v, Value::String(_)) || is_kv_pair(v)) => {
                Ok(Value::List(l.iter().rev().cloned().collect()))
            }
            other => Ok(other.clone()),
        }
    });
    f.insert("sortByLength", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let mut v = strings(a, 0)?;
        v.sort_by_key(|x| x.len());
        Ok(str_list(v))
    });
    f.insert("sortKVByLength", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        let Value::List(l) = &a[0] else {
            return Err(FuncError::msg(format!(
                "wrong type for value; expected []memkv.KVPair; got {}",
                a[0].type_name()
            )));
        };
        let mut keyed = Vec::new();
        for v in l {
            let Value::Object(o) = v else {
                return Err(FuncError::msg("wrong type for value; expected []memkv.KVPair"));
            };
            let key = o.field("Key").and_then(|k| k.as_str().map(str::len)).unwrap_or(0);
            keyed.push((key, v.clone()));
        }
        keyed.sort_by_key(|(n, _)| *n);
        Ok(Value::List(keyed.into_iter().map(|(_, v)| v).collect()))
    });
    f.insert("fileExists", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(Value::Bool(std::fs::metadata(s(a, 0)?).is_ok()))
    });
    f.insert("lookupIP", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(str_list(dns::lookup_ip(&s(a, 0)?)))
    });
    f.insert("lookupIPV4", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(str_list(dns::lookup_ip(&s(a, 0)?).into_iter().filter(|ip| ip.contains('.')).collect()))
    });
    f.insert("lookupIPV6", |a: &[Value]| -> FResult {
        arity(a, 1, false)?;
        Ok(str_list(dns::lookup_ip(&s(a, 0)?).into_iter().filter(|ip| ip.contains(':')).collect()))
    });
    f.insert("lookupSRV", |a: &[Value]| -> FResult {
        arity(a, 3, false)?;
        let mut recs = dns::lookup_srv(&s(a, 0)?, &s(a, 1)?, &s(a, 2)?).unwrap_or_default();
        // confd sorts by target, port, priority and weight, concatenated as text.
        recs.sort_by_key(|r| format!("{}{}{}{}", r.target, r.port, r.priority, r.weight));
        Ok(Value::List(recs.into_iter().map(|r| r.to_value()).collect()))
    });
    f
}

fn is_kv_pair(v: &Value) -> bool {
    matches!(v, Value::Object(o) if o.type_name() == "memkv.KVPair")
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Float(_) | Value::Int(_) => "number",
        Value::Bool(_) => "bool",
        Value::List(_) => "array",
        Value::Map(_) => "object",
        _ => "value",
    }
}

/// Go's `strings.Replace(s, old, new, n)`.
pub(crate) fn go_replace(s: &str, old: &str, new: &str, n: i64) -> String {
    if n < 0 {
        if old.is_empty() {
            return go_replace(s, old, new, s.chars().count() as i64 + 1);
        }
        return s.replace(old, new);
    }
    if old.is_empty() {
        let mut out = String::new();
        let mut count = 0;
        for c in s.chars() {
            if count < n {
                out.push_str(new);
                count += 1;
            }
            out.push(c);
        }
        if count < n {
            out.push_str(new);
        }
        return out;
    }
    s.replacen(old, new, n as usize)
}
