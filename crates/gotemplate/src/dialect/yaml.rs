//! go-yaml v2.4's `yaml.Marshal` (what consul-template's `toYAML` uses) for template values: block
//! mappings with go-yaml's key order, block sequences not indented under their key, and go-yaml's
//! choice of scalar style (plain, single- or double-quoted, literal `|`), with its folding of long
//! scalars at 80 columns.

use crate::value::Value;

const BEST_WIDTH: usize = 80;
const BEST_INDENT: usize = 2;

struct Emitter {
    out: String,
    column: usize,
    /// The last character written is whitespace (a separator is not needed).
    whitespace: bool,
    /// At the start of a line, after indentation only.
    indention: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

/// `yaml.Marshal(v)`, trimmed as consul-template's `toYAML` does.
pub(crate) fn to_yaml(v: &Value) -> String {
    let mut e = Emitter { out: String::new(), column: 0, whitespace: true, indention: true };
    e.node(v, 0, Ctx::Root);
    e.out.trim().to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Root,
    MapValue,
    SeqItem,
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// go-yaml's `is_printable` (which, unlike YAML's spec, leaves out U+0085 and everything above U+FFFF).
fn is_printable(c: char) -> bool {
    let u = c as u32;
    u == 0x0A
        || (0x20..=0x7E).contains(&u)
        || (0xA0..=0xD7FF).contains(&u)
        || ((0xE000..=0xFFFD).contains(&u) && u != 0xFEFF)
}

/// go-yaml's resolve: whether a plain scalar would read back as something other than a string.
fn resolves_to_non_string(s: &str) -> bool {
    const MAP: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no", "No", "NO", "false",
        "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null", "NULL", ".nan", ".NaN", ".NAN", ".inf", ".Inf",
        ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", "<<",
    ];
    if MAP.contains(&s) {
        return true;
    }
    let Some(first) = s.chars().next() else { return true };
    match first {
        '.' => s.parse::<f64>().is_ok() && !s.contains(['i', 'I', 'n', 'N']),
        '+' | '-' | '0'..='9' => {
            if is_timestamp(s) {
                return true;
            }
            let plain: String = s.chars().filter(|c| *c != '_').collect();
            if parse_go_int(&plain) {
                return true;
            }
            if yaml_style_float(&plain) {
                return true;
            }
            let bin = plain.strip_prefix("0b").or_else(|| plain.strip_prefix("-0b"));
            bin.is_some_and(|b| !b.is_empty() && b.chars().all(|c| c == '0' || c == '1'))
        }
        _ => false,
    }
}

/// `strconv.ParseInt(s, 0, 64)` or `ParseUint` succeeds.
fn parse_go_int(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) = if let Some(r) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (r, 16)
    } else if let Some(r) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        (r, 8)
    } else if let Some(r) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        (r, 2)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    !digits.is_empty() && u64::from_str_radix(digits, radix).is_ok()
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// The timestamp forms go-yaml v2 recognises (YYYY-M-D, with an optional time).
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let rest = &s[5..];
    let (date, time) = match rest.find(['T', 't', ' ']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut parts = date.split('-');
    let ok_num =
        |p: Option<&str>| p.is_some_and(|p| (1..=2).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()));
    if !(ok_num(parts.next()) && ok_num(parts.next()) && parts.next().is_none()) {
        return false;
    }
    match time {
        None => date.len() == 5,
        Some(t) => {
            let t = t.trim_start();
            let hms: Vec<&str> = t.split(':').collect();
            hms.len() >= 3 && hms[0].len() <= 2 && hms[0].bytes().all(|c| c.is_ascii_digit()) && hms[1].len() == 2
        }
    }
}

/// go-yaml's isBase60Float: `1:20` style numbers are quoted too.
fn is_base60_float(s: &str) -> bool {
    let Some(c) = s.chars().next() else { return false };
    if !(c == '+' || c == '-' || c.is_ascii_digit()) || !s.contains(':') {
        return false;
    }
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut groups = int.split(':');
    let first = groups.next().unwrap_or("");
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return false;
    }
    groups.all(|g| g.len() <= 2 && !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && g.as_bytes()[0] <= b'5')
        && frac.bytes().all(|b| b.is_ascii_digit() || b == b'_')
}

struct Analysis {
    multiline: bool,
    block_plain: bool,
    single: bool,
    block: bool,
}

fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis { multiline: false, block_plain: true, single: true, block: false };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_ind = s.starts_with("---") || s.starts_with("...");
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) = (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut prev_space, mut prev_break) = (false, false);
    let mut preceded_ws = true;
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        let followed_ws = i + 1 >= n || chars[i + 1] == ' ' || chars[i + 1] == '\t' || is_break(chars[i + 1]);
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@' | '`' => {
                    block_ind = true
                }
                '?' | ':' | '-' if followed_ws => block_ind = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_ws => block_ind = true,
                '#' if preceded_ws => block_ind = true,
                _ => {}
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == n - 1 {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(c) {
            line_breaks = true;
            if i == 0 {
                leading_break = true;
            }
            if i == n - 1 {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_space = false;
            prev_break = true;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_ws = c == ' ' || c == '\t' || is_break(c);
    }
    let mut a = Analysis { multiline: line_breaks, block_plain: true, single: true, block: true };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain = false;
    }
    if trailing_space {
        a.block = false;
    }
    if break_space {
        a.block_plain = false;
        a.single = false;
    }
    if space_break || special {
        a.block_plain = false;
        a.single = false;
        a.block = false;
    }
    if line_breaks {
        a.block_plain = false;
    }
    if block_ind {
        a.block_plain = false;
    }
    a
}

fn scalar_style(s: &str, simple_key: bool) -> Style {
    let can_plain = !resolves_to_non_string(s) && !is_base60_float(s);
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if can_plain {
        Style::Plain
    } else {
        Style::Double
    };
    let a = analyze(s);
    if simple_key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && (!a.block_plain || (s.is_empty() && simple_key)) {
        style = Style::Single;
    }
    if style == Style::Single && !a.single {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block || simple_key) {
        style = Style::Double;
    }
    style
}

/// Whether go-yaml writes `k` as a simple key (`k: v`): not multi-line, at most 128 bytes.
fn is_simple_key(k: &str) -> bool {
    k.len() <= 128 && !analyze(k).multiline
}

/// go-yaml's ordering of map keys: runs of digits compare as numbers, letters before other runes.
fn key_less(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let less = |x: bool| if x { Ordering::Less } else { Ordering::Greater };
    for i in 0..ar.len().min(br.len()) {
        if ar[i] == br[i] {
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return less(ar[i] < br[i]);
        }
        if al || bl {
            return less(bl);
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 {
                j -= 1;
                if !ar[j].is_ascii_digit() {
                    break;
                }
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an.wrapping_mul(10).wrapping_add(ar[ai] as i64 - '0' as i64);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn.wrapping_mul(10).wrapping_add(br[bi] as i64 - '0' as i64);
            bi += 1;
        }
        if an != bn {
            return less(an < bn);
        }
        if ai != bi {
            return less(ai < bi);
        }
        return less(ar[i] < br[i]);
    }
    ar.len().cmp(&br.len())
}

impl Emitter {
    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_str(&mut self, s: &str) {
        for c in s.chars() {
            self.put(c);
        }
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    fn write_indent(&mut self, indent: usize) {
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(' ');
        }
        self.whitespace = true;
        self.indention = true;
    }

    fn indicator(&mut self, s: &str, need_ws: bool) {
        if need_ws && !self.whitespace {
            self.put(' ');
        }
        self.put_str(s);
        self.whitespace = false;
        self.indention = false;
    }

    fn node(&mut self, v: &Value, indent: usize, ctx: Ctx) {
        match v {
            Value::Map(m) => self.mapping(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), indent, ctx),
            Value::Object(o) => {
                // go-yaml lower-cases struct field names.
                self.mapping(o.fields().into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect(), indent, ctx)
            }
            Value::List(l) => self.sequence(l, indent, ctx),
            Value::Nil | Value::Func(_) => self.plain_token("null"),
            Value::Bool(b) => self.plain_token(if *b { "true" } else { "false" }),
            Value::Int(i) => self.plain_token(&i.to_string()),
            Value::Float(f) => {
                let s = if f.is_nan() {
                    ".nan".to_string()
                } else if f.is_infinite() {
                    if *f > 0.0 { ".inf" } else { "-.inf" }.to_string()
                } else {
                    crate::printf::sprintf("%g", &[Value::Float(*f)])
                };
                self.plain_token(&s)
            }
            Value::String(s) => self.string(s, if ctx == Ctx::Root { BEST_INDENT } else { indent }, false),
        }
    }

    fn plain_token(&mut self, s: &str) {
        if !self.whitespace {
            self.put(' ');
        }
        self.put_str(s);
        self.whitespace = false;
        self.indention = false;
    }

    fn mapping(&mut self, mut pairs: Vec<(String, Value)>, indent: usize, ctx: Ctx) {
        if pairs.is_empty() {
            self.indicator("{}", true);
            return;
        }
        pairs.sort_by(|a, b| key_less(&a.0, &b.0));
        let inner = if ctx == Ctx::Root { 0 } else { indent + BEST_INDENT };
        for (i, (k, v)) in pairs.iter().enumerate() {
            if !(i == 0 && ctx == Ctx::SeqItem) {
                self.write_indent(inner);
            }
            if !is_simple_key(k) {
                // go-yaml writes a multi-line or very long key as a complex key: `? key` then `: value`.
                self.indicator("?", true);
                self.string(k, inner + BEST_INDENT, false);
                self.write_indent(inner);
                self.indicator(":", true);
                match v {
                    Value::Map(m) if !m.is_empty() => self.node(v, inner, Ctx::SeqItem),
                    Value::Object(_) => self.node(v, inner, Ctx::SeqItem),
                    Value::List(l) if !l.is_empty() => self.node(v, inner, Ctx::SeqItem),
                    _ => self.node(v, inner + BEST_INDENT, Ctx::MapValue),
                }
                continue;
            }
            self.string(k, inner, true);
            self.indicator(":", false);
            match v {
                Value::Map(m) if !m.is_empty() => self.node(v, inner, Ctx::MapValue),
                Value::Object(_) => self.node(v, inner, Ctx::MapValue),
                Value::List(l) if !l.is_empty() => self.node(v, inner, Ctx::MapValue),
                _ => self.node(v, inner + BEST_INDENT, Ctx::MapValue),
            }
        }
    }

    fn sequence(&mut self, items: &[Value], indent: usize, ctx: Ctx) {
        if items.is_empty() {
            self.indicator("[]", true);
            return;
        }
        // A sequence under a mapping key is not indented (go-yaml's "indentless" sequences).
        let inner = match ctx {
            Ctx::Root => 0,
            Ctx::MapValue => indent,
            Ctx::SeqItem => indent + BEST_INDENT,
        };
        for (i, v) in items.iter().enumerate() {
            if !(i == 0 && ctx == Ctx::SeqItem) {
                self.write_indent(inner);
            }
            self.indicator("-", true);
            match v {
                Value::Map(_) | Value::List(_) | Value::Object(_) => self.node(v, inner, Ctx::SeqItem),
                // A scalar's continuation lines are indented under the item.
                _ => self.node(v, inner + BEST_INDENT, Ctx::SeqItem),
            }
        }
    }

    fn string(&mut self, s: &str, indent: usize, simple_key: bool) {
        match scalar_style(s, simple_key) {
            Style::Plain => self.plain(s, indent, !simple_key),
            Style::Single => self.single(s, indent, !simple_key),
            Style::Double => self.double(s, indent, !simple_key),
            Style::Literal => self.literal(s, indent),
        }
    }

    fn plain(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        if !self.whitespace {
            self.put(' ');
        }
        let chars: Vec<char> = s.chars().collect();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && chars.get(i + 1) != Some(&' ') {
                    self.write_indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                self.indention = false;
                spaces = false;
            }
        }
        self.whitespace = false;
        self.indention = false;
    }

    fn single(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        self.indicator("'", true);
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        let mut breaks = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i > 0
                    && i < n - 1
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.write_indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.put_break();
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(indent);
                }
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
        }
        self.indicator("'", false);
        self.whitespace = false;
        self.indention = false;
    }

    fn double(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        self.indicator("\"", true);
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\x07' => self.put('a'),
                    '\x08' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\x0b' => self.put('v'),
                    '\x0c' => self.put('f'),
                    '\r' => self.put('r'),
                    '\x1b' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{A0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    c => {
                        let u = c as u32;
                        let s = if u <= 0xFF {
                            format!("x{u:02X}")
                        } else if u <= 0xFFFF {
                            format!("u{u:04X}")
                        } else {
                            format!("U{u:08X}")
                        };
                        self.put_str(&s);
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && i > 0 && i < n - 1 {
                    self.write_indent(indent);
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.indicator("\"", false);
        self.whitespace = false;
        self.indention = false;
    }

    fn literal(&mut self, s: &str, indent: usize) {
        self.indicator("|", true);
        let chars: Vec<char> = s.chars().collect();
        if chars.first().is_some_and(|c| *c == ' ' || is_break(*c)) {
            self.indicator(&BEST_INDENT.to_string(), false);
        }
        let n = chars.len();
        let chomp = if n == 0 || !is_break(chars[n - 1]) {
            Some('-')
        } else if n == 1 || is_break(chars[n - 2]) {
            Some('+')
        } else {
            None
        };
        if let Some(c) = chomp {
            self.indicator(&c.to_string(), false);
        }
        self.put_break();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for &c in &chars {
            if is_break(c) {
                self.put_break();
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(indent);
                }
                self.put(c);
                self.indention = false;
                breaks = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn m(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>())
    }

    #[test]
    fn scalars_are_quoted_as_go_yaml_v2_quotes_them() {
        // Keys too: `n` and `y` are booleans in YAML 1.1, so go-yaml v2 quotes them.
        let v = m(&[
            ("a", Value::str("plain text")),
            ("b", Value::str("15")),
            ("c", Value::str("yes")),
            ("d", Value::str("")),
            ("e", Value::str("x: y")),
            ("f", Value::str(" lead")),
            ("g", Value::str("it's")),
            ("h", Value::str("tab\there")),
            ("i", Value::str("2001-12-14")),
            ("j", Value::str("-dash")),
            ("k", Value::str("- item")),
            ("l", Value::Int(3)),
            ("m", Value::Float(1.5)),
            ("n", Value::Bool(true)),
            ("o", Value::Nil),
            ("p", Value::str("1:20")),
        ]);
        assert_eq!(
            to_yaml(&v),
            "a: plain text\nb: \"15\"\nc: \"yes\"\nd: \"\"\ne: 'x: y'\nf: ' lead'\ng: it's\nh: \"tab\\there\"\ni: \"2001-12-14\"\nj: -dash\nk: '- item'\nl: 3\nm: 1.5\n\"n\": true\no: null\np: \"1:20\""
        );
    }

    #[test]
    fn nesting_sequences_and_literals() {
        let v = m(&[
            (
                "list",
                Value::List(vec![Value::str("a"), Value::Int(1), m(&[("x", Value::str("1")), ("y", Value::str("z"))])]),
            ),
            ("map", m(&[("inner", m(&[("k", Value::str("v"))]))])),
            ("empty", Value::List(vec![])),
            ("none", m(&[])),
            ("text", Value::str("line1\nline2\n")),
            ("text2", Value::str("one\ntwo")),
        ]);
        assert_eq!(
            to_yaml(&v),
            "empty: []\nlist:\n- a\n- 1\n- x: \"1\"\n  \"y\": z\nmap:\n  inner:\n    k: v\nnone: {}\ntext: |\n  line1\n  line2\ntext2: |-\n  one\n  two"
        );
    }

    #[test]
    fn keys_sort_with_numbers_compared_as_numbers() {
        let v = m(&[("a10", Value::Int(1)), ("a2", Value::Int(2)), ("b", Value::Int(3)), ("A", Value::Int(4))]);
        assert_eq!(to_yaml(&v), "A: 4\na2: 2\na10: 1\nb: 3");
    }

    /// Outputs of go-yaml v2.4.0's `yaml.Marshal` for the same values.
    #[test]
    fn complex_keys_escapes_and_folding_in_sequences_match_go_yaml() {
        let long =
            "long long long long long long long long long long long long long long long long long long long long words";
        let v = m(&[("k", Value::List(vec![Value::str(long)]))]);
        assert_eq!(
            to_yaml(&v),
            "k:\n- long long long long long long long long long long long long long long long long\n  long long long long words"
        );
        let v = m(&[
            ("multi\nline", Value::List(vec![Value::Int(1), m(&[("a", Value::str("b"))])])),
            ("x", Value::str("💩 emoji")),
            ("y", Value::str("a\u{85}b")),
        ]);
        assert_eq!(to_yaml(&v), "? |-\n  multi\n  line\n: - 1\n  - a: b\nx: \"\\U0001F4A9 emoji\"\n\"y\": \"a\\Nb\"");
        let key = "k".repeat(135);
        let v = m(&[(key.as_str(), m(&[("a", Value::Int(1))]))]);
        assert_eq!(to_yaml(&v), format!("? {key}\n: a: 1"));
    }

    #[test]
    fn long_plain_scalars_fold_at_80_columns() {
        let long = "word ".repeat(20).trim_end().to_string();
        let v = m(&[("k", Value::str(&long))]);
        let y = to_yaml(&v);
        let lines: Vec<&str> = y.lines().collect();
        assert_eq!(lines.len(), 2, "{y}");
        assert!(lines[1].starts_with("  word"), "{y}");
        assert_eq!(y.replace("\n  ", " "), format!("k: {long}"));
    }
}
