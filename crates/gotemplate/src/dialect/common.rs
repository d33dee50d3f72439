//! What both function sets share: Go-typed argument checks, Go's JSON encoding, time layouts.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::value::{FuncError, Value};

pub(crate) type FResult = Result<Value, FuncError>;

/// The most numbers `seq`/`loop` make: a value from KV must not exhaust memory.
pub(crate) const MAX_ITEMS: i64 = 1_000_000;

/// The longest string `indent`/`sprig_repeat` make, for the same reason.
pub(crate) const MAX_STRING: usize = 64 * 1024 * 1024;

/// Checks the number of arguments as Go does for a function with `n` fixed parameters.
pub(crate) fn arity(args: &[Value], n: usize, variadic: bool) -> Result<(), FuncError> {
    if variadic && args.len() < n {
        return Err(FuncError::msg(format!("wrong number of args: want at least {n} got {}", args.len())));
    }
    if !variadic && args.len() != n {
        return Err(FuncError::msg(format!("wrong number of args: want {n} got {}", args.len())));
    }
    Ok(())
}

/// A `string` parameter.
pub(crate) fn s(args: &[Value], i: usize) -> Result<String, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Nil) => Err(FuncError::msg("invalid value; expected string")),
        Some(v) => Err(FuncError::msg(format!("wrong type for value; expected string; got {}", v.type_name()))),
        None => Err(FuncError::msg("missing argument; expected string")),
    }
}

/// An `int` parameter.
pub(crate) fn int(args: &[Value], i: usize) -> Result<i64, FuncError> {
    match args.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        Some(v) => Err(FuncError::msg(format!("wrong type for value; expected int; got {}", v.type_name()))),
        None => Err(FuncError::msg("missing argument; expected int")),
    }
}

/// A `[]string` parameter: a list whose elements are all strings.
pub(crate) fn strings(args: &[Value], i: usize) -> Result<Vec<String>, FuncError> {
    match args.get(i) {
        Some(Value::List(l)) => l
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(FuncError::msg(format!(
                    "wrong type for value; expected []string; got list with {}",
                    v.type_name()
                ))),
            })
            .collect(),
        Some(Value::Nil) => Ok(Vec::new()),
        Some(v) => Err(FuncError::msg(format!("wrong type for value; expected []string; got {}", v.type_name()))),
        None => Err(FuncError::msg("missing argument; expected []string")),
    }
}

pub(crate) fn str_list(v: Vec<String>) -> Value {
    Value::List(v.into_iter().map(Value::String).collect())
}

/// Go's `strings.ToUpper`: simple (one-to-one) case mapping per character.
pub(crate) fn go_upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(x), None) => x,
                _ => c,
            }
        })
        .collect()
}

/// Go's `strings.ToLower`: simple (one-to-one) case mapping per character.
pub(crate) fn go_lower(s: &str) -> String {
    s.chars().map(|c| c.to_lowercase().next().unwrap_or(c)).collect()
}

/// Go's `strings.Split`.
pub(crate) fn go_split(s: &str, sep: &str) -> Vec<String> {
    if sep.is_empty() {
        return s.chars().map(|c| c.to_string()).collect();
    }
    s.split(sep).map(str::to_string).collect()
}

/// Go's `path.Clean`.
pub(crate) fn path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// Go's `path.Base`.
pub(crate) fn path_base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    match t.rfind('/') {
        Some(i) => t[i + 1..].to_string(),
        None => t.to_string(),
    }
}

/// Go's `path.Dir`.
pub(crate) fn path_dir(p: &str) -> String {
    let dir = match p.rfind('/') {
        Some(i) => &p[..=i],
        None => "",
    };
    path_clean(dir)
}

/// Go's `path.Match` (shell pattern over `/`-separated names).
pub(crate) fn path_match(pattern: &str, name: &str) -> Result<bool, FuncError> {
    fn class_match(p: &[char], c: char) -> Result<(bool, usize), ()> {
        // p starts after '['; returns (matched, length consumed including ']')
        let mut i = 0;
        let negated = p.first() == Some(&'^');
        if negated {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            if i >= p.len() {
                return Err(());
            }
            if p[i] == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let mut lo = p[i];
            if lo == '\\' {
                i += 1;
                lo = *p.get(i).ok_or(())?;
            }
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                i += 1;
                hi = p[i];
                if hi == '\\' {
                    i += 1;
                    hi = *p.get(i).ok_or(())?;
                }
                i += 1;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Ok((matched != negated, i))
    }
    fn m(p: &[char], n: &[char]) -> Result<bool, ()> {
        if p.is_empty() {
            return Ok(n.is_empty());
        }
        match p[0] {
            '*' => {
                let mut k = 0;
                loop {
                    if m(&p[1..], &n[k..])? {
                        return Ok(true);
                    }
                    if k >= n.len() || n[k] == '/' {
                        return Ok(false);
                    }
                    k += 1;
                }
            }
            '?' => Ok(!n.is_empty() && n[0] != '/' && m(&p[1..], &n[1..])?),
            '[' => {
                if n.is_empty() || n[0] == '/' {
                    // Still validate the class.
                    class_match(&p[1..], '\0')?;
                    return Ok(false);
                }
                let (ok, used) = class_match(&p[1..], n[0])?;
                Ok(ok && m(&p[1 + used..], &n[1..])?)
            }
            '\\' => {
                let c = *p.get(1).ok_or(())?;
                Ok(!n.is_empty() && n[0] == c && m(&p[2..], &n[1..])?)
            }
            c => Ok(!n.is_empty() && n[0] == c && m(&p[1..], &n[1..])?),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n).map_err(|_| FuncError::msg("syntax error in pattern"))
}

/// Go's `encoding/json` encoding of a value (`json.Marshal`, or `json.MarshalIndent(v, "", indent)`),
/// with its HTML escaping of `<`, `>`, `&` when `escape_html`.
pub fn go_json(v: &Value, indent: Option<&str>, escape_html: bool) -> String {
    let mut out = String::new();
    json_value(&mut out, v, indent, 0, escape_html);
    out
}

fn json_string(out: &mut String, s: &str, escape_html: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' if escape_html => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go's JSON float format: like ES6, `%f` for 1e-6 <= |x| < 1e21, else `%e` with a short exponent.
fn json_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let a = f.abs();
    if (1e-6..1e21).contains(&a) {
        let s = format!("{}", f);
        return s;
    }
    let s = format!("{:e}", f);
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    let sign = if e < 0 { '-' } else { '+' };
    format!("{m}e{sign}{:02}", e.abs()).replace("e+0", "e+").replace("e-0", "e-")
}

fn json_value(out: &mut String, v: &Value, indent: Option<&str>, depth: usize, esc: bool) {
    let nl = |out: &mut String, d: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..d {
                out.push_str(ind);
            }
        }
    };
    match v {
        Value::Nil | Value::Func(_) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&json_float(*f)),
        Value::String(s) => json_string(out, s, esc),
        Value::List(l) => {
            if l.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                nl(out, depth + 1);
                json_value(out, e, indent, depth + 1, esc);
            }
            nl(out, depth);
            out.push(']');
        }
        Value::Map(m) => {
            let pairs: Vec<(String, Value)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            json_object(out, &pairs, indent, depth, esc);
        }
        Value::Object(o) => {
            let pairs: Vec<(String, Value)> = o.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            json_object(out, &pairs, indent, depth, esc);
        }
    }
}

fn json_object(out: &mut String, pairs: &[(String, Value)], indent: Option<&str>, depth: usize, esc: bool) {
    if pairs.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push('{');
    for (i, (k, e)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..=depth {
                out.push_str(ind);
            }
        }
        json_string(out, k, esc);
        out.push(':');
        if indent.is_some() {
            out.push(' ');
        }
        json_value(out, e, indent, depth + 1, esc);
    }
    if let Some(ind) = indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
    out.push('}');
}

/// Decodes JSON as Go's `json.Unmarshal` into `interface{}` does: every number is a `float64`.
pub(crate) fn json_decode_go(s: &str) -> Result<Value, FuncError> {
    let j: serde_json::Value = serde_json::from_str(s).map_err(|e| FuncError::msg(go_json_error(&e)))?;
    Ok(floats(&j))
}

fn go_json_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected end of JSON input".into()
    } else {
        format!("invalid JSON: {e}")
    }
}

fn floats(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Array(a) => Value::List(a.iter().map(floats).collect()),
        serde_json::Value::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), floats(v))).collect()),
        other => Value::from_json(other),
    }
}

/// A point in time, UTC, for Go layouts.
#[derive(Clone, Copy)]
pub(crate) struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
    }

    fn civil(&self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = if m <= 2 { y + 1 } else { y };
        let wd = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
        (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32, (rem % 60) as u32, wd)
    }

    /// Go's `Time.Format` in UTC for the common layout elements.
    pub fn format(&self, layout: &str) -> String {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
        let (y, mo, d, h, mi, s, wd) = self.civil();
        let mut out = String::new();
        let mut rest = layout;
        let yday = {
            let t0 = Time { secs: self.secs, nanos: 0 };
            let _ = t0;
            let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            cum[(mo - 1) as usize] + d + u32::from(leap && mo > 2)
        };
        let table: &[(&str, String)] = &[
            ("January", MONTHS[(mo - 1) as usize].to_string()),
            ("Monday", DAYS[wd as usize].to_string()),
            ("2006", format!("{y:04}")),
            ("Jan", MONTHS[(mo - 1) as usize][..3].to_string()),
            ("Mon", DAYS[wd as usize][..3].to_string()),
            ("MST", "UTC".to_string()),
            ("Z07:00", "Z".to_string()),
            ("Z0700", "Z".to_string()),
            ("Z07", "Z".to_string()),
            ("-07:00:00", "+00:00:00".to_string()),
            ("-07:00", "+00:00".to_string()),
            ("-0700", "+0000".to_string()),
            ("-07", "+00".to_string()),
            ("002", format!("{yday:03}")),
            ("01", format!("{mo:02}")),
            ("02", format!("{d:02}")),
            ("_2", format!("{d:>2}")),
            ("03", format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            ("04", format!("{mi:02}")),
            ("05", format!("{s:02}")),
            ("06", format!("{:02}", y.rem_euclid(100))),
            ("15", format!("{h:02}")),
            ("PM", if h >= 12 { "PM" } else { "AM" }.to_string()),
            ("pm", if h >= 12 { "pm" } else { "am" }.to_string()),
            ("1", mo.to_string()),
            ("2", d.to_string()),
            ("3", (if h % 12 == 0 { 12 } else { h % 12 }).to_string()),
            ("4", mi.to_string()),
            ("5", s.to_string()),
        ];
        'outer: while !rest.is_empty() {
            // Fractional seconds: .000 / .999 (and , variants).
            if rest.starts_with(['.', ',']) {
                let digits: String = rest[1..].chars().take_while(|c| *c == '0' || *c == '9').collect();
                let after = rest[1 + digits.len()..].chars().next();
                let uniform =
                    !digits.is_empty() && (digits.chars().all(|c| c == '0') || digits.chars().all(|c| c == '9'));
                if uniform && !after.is_some_and(|c| c.is_ascii_digit()) {
                    let frac = format!("{:09}", self.nanos);
                    let mut f = frac[..digits.len().min(9)].to_string();
                    if digits.starts_with('9') {
                        while f.ends_with('0') {
                            f.pop();
                        }
                        if !f.is_empty() {
                            out.push(rest.as_bytes()[0] as char);
                            out.push_str(&f);
                        }
                    } else {
                        out.push(rest.as_bytes()[0] as char);
                        out.push_str(&f);
                    }
                    rest = &rest[1 + digits.len()..];
                    continue;
                }
            }
            for (pat, val) in table {
                if let Some(r) = rest.strip_prefix(pat) {
                    // "Jan" must not match "January"-like longer words handled first; "Mon" in "Monday" too.
                    out.push_str(val);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// Go's `Time.String()` for UTC.
    pub fn go_string(&self) -> String {
        let frac = if self.nanos == 0 {
            String::new()
        } else {
            let f = format!(".{:09}", self.nanos);
            f.trim_end_matches('0').to_string()
        };
        format!("{}{} +0000 UTC", self.format("2006-01-02 15:04:05"), frac)
    }
}

/// Go's `time.Time` as a template value (confd's `datetime`): `.Format`, `.Unix`, and friends.
pub(crate) struct TimeValue(pub Time);

impl crate::value::Object for TimeValue {
    fn type_name(&self) -> String {
        "time.Time".into()
    }
    fn field(&self, _name: &str) -> Option<Value> {
        None
    }
    fn method(&self, name: &str, args: &[Value]) -> Option<Result<Value, FuncError>> {
        let t = self.0;
        let (y, mo, d, h, mi, s, wd) = t.civil();
        let no_args = |v: Value| {
            if args.is_empty() {
                Ok(v)
            } else {
                Err(FuncError::msg(format!("wrong number of args for {name}: want 0 got {}", args.len())))
            }
        };
        Some(match name {
            "Format" => arity(args, 1, false).and_then(|_| s_arg(args).map(|l| Value::String(t.format(&l)))),
            "Unix" => no_args(Value::Int(t.secs)),
            "UnixNano" => no_args(Value::Int(t.secs.saturating_mul(1_000_000_000).saturating_add(t.nanos as i64))),
            "Year" => no_args(Value::Int(y)),
            "Month" => no_args(Value::Int(mo as i64)),
            "Day" => no_args(Value::Int(d as i64)),
            "Hour" => no_args(Value::Int(h as i64)),
            "Minute" => no_args(Value::Int(mi as i64)),
            "Second" => no_args(Value::Int(s as i64)),
            "Weekday" => no_args(Value::Int(wd as i64)),
            "UTC" | "Local" => no_args(Value::Object(std::sync::Arc::new(TimeValue(t)))),
            "String" => no_args(Value::String(t.go_string())),
            _ => return None,
        })
    }
    fn fields(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }
    fn display(&self) -> Option<String> {
        Some(self.0.go_string())
    }
}

fn s_arg(args: &[Value]) -> Result<String, FuncError> {
    s(args, 0)
}
