//! `format: properties`: Java properties. The relative key's `/` become `.` (`db/host` -> `db.host`);
//! keys and values are escaped as `java.util.Properties.load` reads them, with everything outside
//! printable ASCII written as `\uXXXX` so the file reads the same in ISO-8859-1 and UTF-8.

use std::collections::BTreeMap;
use std::fmt::Write;

fn escape(s: &str, is_key: bool, out: &mut String) {
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if is_key => {
                out.push('\\');
                out.push(c);
            }
            '#' | '!' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if (' '..='~').contains(&c) => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
        }
    }
}

pub fn render(kv: &BTreeMap<&str, &[u8]>) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (k, v) in kv {
        let key = k.replace('/', ".");
        if let Some(other) = seen.insert(key.clone(), k) {
            return Err(format!("keys `{other}` and `{k}` both become the property `{key}`; rename one of them"));
        }
        let v = std::str::from_utf8(v).map_err(|_| format!("the value of key `{k}` is not UTF-8 text"))?;
        escape(&key, true, &mut out);
        out.push('=');
        escape(v, false, &mut out);
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// Reads properties back the way `java.util.Properties.load` does (the subset `render` writes);
/// used by tests to prove round trips.
#[cfg(test)]
pub fn parse(text: &str) -> BTreeMap<String, String> {
    fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, stop_at_sep: bool) -> String {
        let mut s = String::new();
        let mut pending_high: Option<u16> = None;
        while let Some(c) = chars.next() {
            if stop_at_sep && (c == '=' || c == ':') {
                break;
            }
            if c != '\\' {
                s.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => s.push('\n'),
                Some('r') => s.push('\r'),
                Some('t') => s.push('\t'),
                Some('f') => s.push('\x0c'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let unit = u16::from_str_radix(&hex, 16).unwrap_or(0xfffd);
                    if let Some(high) = pending_high.take() {
                        s.extend(char::decode_utf16([high, unit]).map(|r| r.unwrap_or('\u{fffd}')));
                    } else if (0xd800..0xdc00).contains(&unit) {
                        pending_high = Some(unit);
                    } else {
                        s.push(char::from_u32(unit as u32).unwrap_or('\u{fffd}'));
                    }
                }
                Some(other) => s.push(other),
                None => {}
            }
        }
        s
    }
    let mut m = BTreeMap::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let mut chars = line.chars().peekable();
        let k = unescape(&mut chars, true);
        let v = unescape(&mut chars, false);
        m.insert(k, v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_round_trips() {
        let values = [" lead", "a=b:c", "#not a comment", "multi\nline\r\t", "ünïcödé 😀", "back\\slash", "nul\0"];
        let kv: BTreeMap<String, &[u8]> =
            values.iter().enumerate().map(|(i, v)| (format!("k {i}/x=y"), v.as_bytes())).collect();
        let kv: BTreeMap<&str, &[u8]> = kv.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let out = String::from_utf8(render(&kv).unwrap()).unwrap();
        assert!(out.is_ascii());
        assert_eq!(out.lines().count(), values.len(), "one line per key:\n{out}");
        let back = parse(&out);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back[&format!("k {i}.x=y")], *v);
        }
    }
}
