//! Go's `fmt` for template values: `Sprint`, `Sprintln`, `Sprintf` with Go's verbs, flags, width and
//! precision, and Go's error strings for bad verbs and arguments (`%!d(string=x)`).

use crate::value::Value;

#[derive(Clone, Copy, Default)]
struct Flags {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    wid: Option<usize>,
    prec: Option<usize>,
    plus_v: bool,
    sharp_v: bool,
}

/// `fmt.Sprint`: operands printed with `%v`, a space between two operands when neither is a string.
pub fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let is_string = matches!(a, Value::String(_));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        print_arg(&mut out, a, 'v', &Flags::default(), 0);
        prev_string = is_string;
    }
    out
}

/// `fmt.Sprintln`: operands with `%v`, always separated by spaces, and a newline.
pub fn sprintln(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        print_arg(&mut out, a, 'v', &Flags::default(), 0);
    }
    out.push('\n');
    out
}

/// `%v` of one value.
pub fn sprint_value(v: &Value) -> String {
    let mut out = String::new();
    print_arg(&mut out, v, 'v', &Flags::default(), 0);
    out
}

/// `fmt.Sprintf`.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut arg_num = 0usize;
    let mut reordered = false;
    let b = format.as_bytes();
    let mut i = 0;
    let end = b.len();
    while i < end {
        let start = i;
        while i < end && b[i] != b'%' {
            i += 1;
        }
        out.push_str(&format[start..i]);
        if i >= end {
            break;
        }
        i += 1; // the '%'
        let mut f = Flags::default();
        // flags
        while i < end {
            match b[i] {
                b'#' => f.sharp = true,
                b'0' => f.zero = !f.minus,
                b'+' => f.plus = true,
                b'-' => {
                    f.minus = true;
                    f.zero = false;
                }
                b' ' => f.space = true,
                _ => break,
            }
            i += 1;
        }
        // argument index
        let (n, ni, ok_idx) = arg_index(format, i, arg_num, args.len());
        if ni != i {
            reordered = true;
        }
        arg_num = n;
        i = ni;
        let mut bad_arg_num = !ok_idx;
        // width
        if i < end && b[i] == b'*' {
            i += 1;
            match args.get(arg_num) {
                Some(Value::Int(w)) if w.unsigned_abs() <= 1_000_000 => {
                    if *w < 0 {
                        f.minus = true;
                        f.zero = false;
                    }
                    f.wid = Some(w.unsigned_abs() as usize);
                }
                _ => out.push_str("%!(BADWIDTH)"),
            }
            arg_num += 1;
            let (n, ni, ok) = arg_index(format, i, arg_num, args.len());
            arg_num = n;
            i = ni;
            bad_arg_num |= !ok;
        } else {
            let (w, ni) = parse_num(format, i);
            if ni != i {
                f.wid = Some(w);
                i = ni;
            }
        }
        // precision
        if i < end && b[i] == b'.' {
            i += 1;
            let (n, ni, ok) = arg_index(format, i, arg_num, args.len());
            arg_num = n;
            i = ni;
            bad_arg_num |= !ok;
            if i < end && b[i] == b'*' {
                i += 1;
                match args.get(arg_num) {
                    Some(Value::Int(p)) if *p >= 0 && *p <= 1_000_000 => f.prec = Some(*p as usize),
                    _ => out.push_str("%!(BADPREC)"),
                }
                arg_num += 1;
            } else {
                let (p, ni) = parse_num(format, i);
                f.prec = Some(if ni != i { p } else { 0 });
                i = ni;
            }
        }
        let (n, ni, ok) = arg_index(format, i, arg_num, args.len());
        if ni != i {
            reordered = true;
        }
        arg_num = n;
        i = ni;
        bad_arg_num |= !ok;
        if i >= end {
            out.push_str("%!(NOVERB)");
            break;
        }
        let verb = format[i..].chars().next().unwrap_or('%');
        i += verb.len_utf8();
        if verb == '%' {
            out.push('%');
            continue;
        }
        if bad_arg_num {
            out.push_str(&format!("%!{verb}(BADINDEX)"));
            continue;
        }
        let Some(arg) = args.get(arg_num) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        arg_num += 1;
        if verb == 'w' {
            out.push_str(&format!("%!w({}=", arg.type_name()));
            print_arg(&mut out, arg, 'v', &f, 0);
            out.push(')');
            continue;
        }
        if verb == 'v' {
            if f.sharp {
                f.sharp = false;
                f.sharp_v = true;
            }
            if f.plus {
                f.plus = false;
                f.plus_v = true;
            }
        }
        print_arg(&mut out, arg, verb, &f, 0);
    }
    if !reordered && arg_num < args.len() {
        out.push_str("%!(EXTRA ");
        for (k, a) in args[arg_num..].iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            match a {
                Value::Nil => out.push_str("<nil>"),
                _ => {
                    out.push_str(&a.type_name());
                    out.push('=');
                    print_arg(&mut out, a, 'v', &Flags::default(), 0);
                }
            }
        }
        out.push(')');
    }
    out
}

fn parse_num(s: &str, mut i: usize) -> (usize, usize) {
    let b = s.as_bytes();
    let mut n = 0usize;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        if n > 1_000_000 {
            return (0, start);
        }
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    (n, i)
}

/// `[n]` argument indexes: returns the new argument number, position and whether it is valid.
fn arg_index(s: &str, i: usize, arg_num: usize, num_args: usize) -> (usize, usize, bool) {
    let b = s.as_bytes();
    if i >= b.len() || b[i] != b'[' {
        return (arg_num, i, true);
    }
    let Some(close) = s[i..].find(']') else {
        return (arg_num, i + 1, false);
    };
    let inner = &s[i + 1..i + close];
    match inner.parse::<usize>() {
        Ok(n) if n >= 1 && n <= num_args && inner.bytes().all(|c| c.is_ascii_digit()) => (n - 1, i + close + 1, true),
        _ => (arg_num, i + close + 1, false),
    }
}

fn pad(out: &mut String, s: &str, f: &Flags) {
    let Some(w) = f.wid else {
        out.push_str(s);
        return;
    };
    let n = s.chars().count();
    if n >= w {
        out.push_str(s);
        return;
    }
    let fill = if f.zero { "0" } else { " " }.repeat(w - n);
    if f.minus {
        out.push_str(s);
        out.push_str(&" ".repeat(w - n));
    } else {
        out.push_str(&fill);
        out.push_str(s);
    }
}

fn bad_verb(out: &mut String, v: &Value, verb: char, f: &Flags) {
    out.push_str("%!");
    out.push(verb);
    out.push('(');
    if let Value::Nil = v {
        out.push_str("<nil>");
    } else {
        out.push_str(&v.type_name());
        out.push('=');
        print_arg(out, v, 'v', f, 0);
    }
    out.push(')');
}

fn print_arg(out: &mut String, v: &Value, verb: char, f: &Flags, depth: usize) {
    if verb == 'T' {
        match v {
            Value::Nil => pad(out, "<nil>", f),
            v => pad(out, truncate(&v.type_name(), f.prec), f),
        }
        return;
    }
    match v {
        // A nil inside a list or map is written as is; a nil argument is padded.
        Value::Nil if depth > 0 => out.push_str(if f.sharp_v { "interface {}(nil)" } else { "<nil>" }),
        Value::Nil => match verb {
            'v' => pad(out, "<nil>", f),
            _ => bad_verb(out, v, verb, f),
        },
        Value::Bool(b) => match verb {
            't' | 'v' => pad(out, if *b { "true" } else { "false" }, f),
            _ => bad_verb(out, v, verb, f),
        },
        Value::Int(i) => fmt_int(out, v, *i, verb, f),
        Value::Float(x) => fmt_float_verb(out, v, *x, verb, f),
        Value::String(s) => match verb {
            'v' if f.sharp_v => fmt_q(out, s, f),
            'v' | 's' => {
                let t = truncate(s, f.prec);
                pad(out, t, f);
            }
            'x' => fmt_sx(out, s.as_bytes(), f, false),
            'X' => fmt_sx(out, s.as_bytes(), f, true),
            'q' => fmt_q(out, s, f),
            _ => bad_verb(out, v, verb, f),
        },
        Value::List(l) => {
            if f.sharp_v {
                out.push_str("[]interface {}{");
                for (i, e) in l.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    print_arg(out, e, verb, f, depth + 1);
                }
                out.push('}');
                return;
            }
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_arg(out, e, verb, f, depth + 1);
            }
            out.push(']');
        }
        Value::Map(m) => {
            if f.sharp_v {
                out.push_str("map[string]interface {}{");
                for (i, (k, e)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    print_arg(out, &Value::String(k.clone()), verb, f, depth + 1);
                    out.push(':');
                    print_arg(out, e, verb, f, depth + 1);
                }
                out.push('}');
                return;
            }
            out.push_str("map[");
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_arg(out, &Value::String(k.clone()), verb, f, depth + 1);
                out.push(':');
                print_arg(out, e, verb, f, depth + 1);
            }
            out.push(']');
        }
        Value::Object(o) => {
            if let Some(d) = o.display() {
                match verb {
                    'v' | 's' => pad(out, truncate(&d, f.prec), f),
                    'q' => fmt_q(out, &d, f),
                    _ => bad_verb(out, v, verb, f),
                }
                return;
            }
            if o.is_pointer() && depth == 0 {
                out.push('&');
            }
            out.push('{');
            for (i, (name, e)) in o.fields().iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                if f.plus_v || f.sharp_v {
                    out.push_str(name);
                    out.push(':');
                }
                print_arg(out, e, verb, f, depth + 1);
            }
            out.push('}');
        }
        Value::Func(_) => match verb {
            'v' | 'p' => pad(out, "0x0", f),
            _ => bad_verb(out, v, verb, f),
        },
    }
}

fn truncate(s: &str, prec: Option<usize>) -> &str {
    match prec {
        Some(p) => match s.char_indices().nth(p) {
            Some((i, _)) => &s[..i],
            None => s,
        },
        None => s,
    }
}

fn fmt_int(out: &mut String, v: &Value, i: i64, verb: char, f: &Flags) {
    match verb {
        'v' | 'd' => fmt_integer(out, i, 10, verb, f, false),
        'b' => fmt_integer(out, i, 2, verb, f, false),
        'o' | 'O' => fmt_integer(out, i, 8, verb, f, false),
        'x' => fmt_integer(out, i, 16, verb, f, false),
        'X' => fmt_integer(out, i, 16, verb, f, true),
        'c' => {
            let c = u32::try_from(i).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}');
            pad(out, &c.to_string(), f);
        }
        'q' => {
            let c = u32::try_from(i).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}');
            let s = if f.sharp && c != '`' && !c.is_control() && (c as u32) >= 0x20 {
                format!("'{c}'")
            } else {
                quote_rune(c, f.plus)
            };
            pad(out, &s, f);
        }
        'U' => {
            let digits = format!("{:X}", i as u64);
            let width = f.prec.unwrap_or(4).max(4);
            let mut s = format!("U+{}{}", "0".repeat(width.saturating_sub(digits.len())), digits);
            if f.sharp {
                if let Some(c) = u32::try_from(i).ok().and_then(char::from_u32) {
                    if is_print(c) {
                        s.push_str(&format!(" '{c}'"));
                    }
                }
            }
            let mut g = *f;
            g.zero = false;
            pad(out, &s, &g);
        }
        _ => bad_verb(out, v, verb, f),
    }
}

/// Go's `fmt.fmtInteger`.
fn fmt_integer(out: &mut String, i: i64, base: u32, verb: char, f: &Flags, upper: bool) {
    let negative = i < 0;
    let u = i.unsigned_abs();
    let mut prec = 0usize;
    if let Some(p) = f.prec {
        prec = p;
        if p == 0 && u == 0 {
            let g = Flags { zero: false, ..*f };
            pad(out, "", &g);
            return;
        }
    } else if f.zero && f.wid.is_some() {
        prec = f.wid.unwrap_or(0);
        if negative || f.plus || f.space {
            prec = prec.saturating_sub(1);
        }
    }
    let mut digits = match base {
        2 => format!("{u:b}"),
        8 => format!("{u:o}"),
        16 if upper => format!("{u:X}"),
        16 => format!("{u:x}"),
        _ => u.to_string(),
    };
    if digits.len() < prec {
        digits = "0".repeat(prec - digits.len()) + &digits;
    }
    let mut s = String::new();
    if negative {
        s.push('-');
    } else if f.plus {
        s.push('+');
    } else if f.space {
        s.push(' ');
    }
    if verb == 'O' {
        s.push_str("0o");
    }
    if f.sharp {
        match base {
            2 => s.push_str("0b"),
            8 if !digits.starts_with('0') => s.push('0'),
            16 => s.push_str(if upper { "0X" } else { "0x" }),
            _ => {}
        }
    }
    s.push_str(&digits);
    let g = Flags { zero: false, ..*f };
    pad(out, &s, &g);
}

fn fmt_float_verb(out: &mut String, v: &Value, x: f64, verb: char, f: &Flags) {
    match verb {
        'v' => fmt_float(out, x, 'g', -1, f),
        'g' | 'G' | 'x' | 'X' | 'b' => fmt_float(out, x, verb, -1, f),
        'e' | 'E' | 'f' | 'F' => fmt_float(out, x, verb, 6, f),
        _ => bad_verb(out, v, verb, f),
    }
}

/// Decimal digits (no trailing zeros) and the decimal point position of |x|, rounded to `sig`
/// significant digits, or the shortest digits that round-trip when `sig` is `None`.
fn decimal(x: f64, sig: Option<usize>) -> (Vec<u8>, i32) {
    if x == 0.0 {
        return (Vec::new(), 0);
    }
    let s = match sig {
        Some(p) => format!("{:.*e}", p.max(1) - 1, x.abs()),
        None => format!("{:e}", x.abs()),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits == [b'0'] {
        return (Vec::new(), 0);
    }
    (digits, exp + 1)
}

fn fmt_e_digits(digits: &[u8], dp: i32, prec: usize, upper: bool) -> String {
    let mut s = String::new();
    s.push(if digits.is_empty() { '0' } else { digits[0] as char });
    if prec > 0 {
        s.push('.');
        for k in 1..=prec {
            s.push(digits.get(k).map(|d| *d as char).unwrap_or('0'));
        }
    }
    s.push(if upper { 'E' } else { 'e' });
    let exp = if digits.is_empty() { 0 } else { dp - 1 };
    s.push(if exp < 0 { '-' } else { '+' });
    let a = exp.unsigned_abs();
    if a < 10 {
        s.push('0');
    }
    s.push_str(&a.to_string());
    s
}

fn fmt_f_digits(digits: &[u8], dp: i32, prec: usize) -> String {
    let mut s = String::new();
    if dp > 0 {
        for k in 0..dp as usize {
            s.push(digits.get(k).map(|d| *d as char).unwrap_or('0'));
        }
    } else {
        s.push('0');
    }
    if prec > 0 {
        s.push('.');
        for k in 1..=prec as i32 {
            let idx = dp + k - 1;
            let c = if idx < 0 { '0' } else { digits.get(idx as usize).map(|d| *d as char).unwrap_or('0') };
            s.push(c);
        }
    }
    s
}

/// Go's `strconv.FormatFloat(x, verb, prec, 64)` without the sign.
fn format_float_abs(x: f64, verb: char, prec: i32) -> String {
    let a = x.abs();
    match verb {
        'x' | 'X' => hex_float(a, prec, verb),
        'b' => {
            // Go's %b of a float: the mantissa and a power of two.
            let bits = a.to_bits();
            let mut exp = ((bits >> 52) & 0x7FF) as i32;
            let mut mant = bits & ((1u64 << 52) - 1);
            if exp == 0 {
                exp += 1;
            } else {
                mant |= 1u64 << 52;
            }
            exp += -1023 - 52;
            format!("{mant}p{}{}", if exp >= 0 { "+" } else { "-" }, exp.unsigned_abs())
        }
        'e' | 'E' => {
            let p = if prec < 0 { 6 } else { prec as usize };
            let (d, dp) = decimal(a, Some(p + 1));
            fmt_e_digits(&d, dp, p, verb == 'E')
        }
        'f' | 'F' => {
            let p = if prec < 0 { 6 } else { prec as usize };
            format!("{:.*}", p, a)
        }
        _ => {
            let upper = verb == 'G';
            let shortest = prec < 0;
            let (d, dp) = if shortest { decimal(a, None) } else { decimal(a, Some((prec as usize).max(1))) };
            let nd = d.len() as i32;
            let mut p = if shortest { nd.max(1) } else { prec.max(1) };
            let mut eprec = p;
            if eprec > nd && nd >= dp {
                eprec = nd;
            }
            if shortest {
                eprec = 6;
            }
            let exp = dp - 1;
            if !d.is_empty() && (exp < -4 || exp >= eprec) {
                if p > nd {
                    p = nd;
                }
                return fmt_e_digits(&d, dp, (p - 1).max(0) as usize, upper);
            }
            if p > dp {
                p = nd;
            }
            fmt_f_digits(&d, dp, (p - dp).max(0) as usize)
        }
    }
}

/// Go's `fmt.fmtFloat`.
fn fmt_float(out: &mut String, x: f64, verb: char, default_prec: i32, f: &Flags) {
    let prec = f.prec.map(|p| p as i32).unwrap_or(default_prec);
    let mut num = String::new();
    if x.is_nan() {
        num.push_str("+NaN");
    } else if x.is_infinite() {
        num.push_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        num.push(if x.is_sign_negative() { '-' } else { '+' });
        num.push_str(&format_float_abs(x, verb, prec));
    }
    let mut num: Vec<char> = num.chars().collect();
    if f.space && num[0] == '+' && !f.plus {
        num[0] = ' ';
    }
    if num[1] == 'I' || num[1] == 'N' {
        if num[1] == 'N' && !f.space && !f.plus {
            num.remove(0);
        }
        let g = Flags { zero: false, ..*f };
        pad(out, &num.iter().collect::<String>(), &g);
        return;
    }
    if f.sharp && verb != 'b' {
        let mut digits: i32 = match verb {
            'v' | 'g' | 'G' | 'x' | 'X' => {
                if prec == -1 {
                    6
                } else {
                    prec
                }
            }
            _ => 0,
        };
        let mut tail: Vec<char> = Vec::new();
        let mut has_point = false;
        let mut saw_nonzero = false;
        let mut k = 1;
        while k < num.len() {
            match num[k] {
                '.' => has_point = true,
                'p' | 'P' => {
                    tail = num[k..].to_vec();
                    num.truncate(k);
                    break;
                }
                'e' | 'E' if verb != 'x' && verb != 'X' => {
                    tail = num[k..].to_vec();
                    num.truncate(k);
                    break;
                }
                c => {
                    if c != '0' {
                        saw_nonzero = true;
                    }
                    if saw_nonzero {
                        digits -= 1;
                    }
                }
            }
            k += 1;
        }
        if !has_point {
            if num.len() == 2 && num[1] == '0' {
                digits -= 1;
            }
            num.push('.');
        }
        while digits > 0 {
            num.push('0');
            digits -= 1;
        }
        num.extend(tail);
    }
    let s: String = num.iter().collect();
    if f.plus || num[0] != '+' {
        if f.zero && f.wid.is_some_and(|w| w > num.len()) {
            out.push(num[0]);
            out.push_str(&"0".repeat(f.wid.unwrap_or(0) - num.len()));
            out.push_str(&s[num[0].len_utf8()..]);
            return;
        }
        pad(out, &s, f);
        return;
    }
    pad(out, &s[1..], f);
}

/// Go's `strconv.FormatFloat(a, 'x', prec, 64)` of a non-negative finite number.
fn hex_float(a: f64, prec: i32, verb: char) -> String {
    let bits = a.to_bits();
    let mut exp = ((bits >> 52) & 0x7FF) as i32;
    let mut mant = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        exp += 1;
    } else {
        mant |= 1u64 << 52;
    }
    exp -= 1023;
    if mant == 0 {
        exp = 0;
    }
    mant <<= 60 - 52;
    while mant != 0 && mant & (1u64 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if (0..15).contains(&prec) {
        let shift = (prec * 4) as u32;
        let extra = (mant << shift) & ((1u64 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1u64 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1u64 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex: &[u8] = if verb == 'X' { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut s = String::from("0");
    s.push(verb);
    s.push((b'0' + ((mant >> 60) & 1) as u8) as char);
    mant <<= 4;
    if prec < 0 && mant != 0 {
        s.push('.');
        while mant != 0 {
            s.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    } else if prec > 0 {
        s.push('.');
        for _ in 0..prec {
            s.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    }
    s.push(if verb == 'X' { 'P' } else { 'p' });
    s.push(if exp < 0 { '-' } else { '+' });
    let e = exp.unsigned_abs();
    if e < 10 {
        s.push('0');
    }
    s.push_str(&e.to_string());
    s
}

fn fmt_sx(out: &mut String, b: &[u8], f: &Flags, upper: bool) {
    let mut length = b.len();
    if let Some(p) = f.prec {
        length = length.min(p);
    }
    let mut width = 2 * length;
    if width > 0 {
        if f.space {
            if f.sharp {
                width *= 2;
            }
            width += length - 1;
        } else if f.sharp {
            width += 2;
        }
    } else {
        if let Some(w) = f.wid {
            out.push_str(&if f.zero { "0" } else { " " }.repeat(w));
        }
        return;
    }
    let padding = f.wid.filter(|w| *w > width).map(|w| w - width).unwrap_or(0);
    if !f.minus {
        out.push_str(&if f.zero { "0" } else { " " }.repeat(padding));
    }
    let x = if upper { "0X" } else { "0x" };
    if f.sharp {
        out.push_str(x);
    }
    for (i, c) in b[..length].iter().enumerate() {
        if f.space && i > 0 {
            out.push(' ');
            if f.sharp {
                out.push_str(x);
            }
        }
        if upper {
            out.push_str(&format!("{c:02X}"));
        } else {
            out.push_str(&format!("{c:02x}"));
        }
    }
    if f.minus {
        out.push_str(&" ".repeat(padding));
    }
}

fn fmt_q(out: &mut String, s: &str, f: &Flags) {
    let s = truncate(s, f.prec);
    if f.sharp && can_backquote(s) {
        pad(out, &format!("`{s}`"), f);
        return;
    }
    let q = if f.plus { quote_ascii(s) } else { quote(s) };
    pad(out, &q, f);
}

fn can_backquote(s: &str) -> bool {
    s.chars().all(|c| c != '`' && c != '\u{FEFF}' && (c == '\t' || !(c < ' ' || c == '\x7f')))
}

/// Go's `unicode.IsPrint`, approximated: graphic characters and the ASCII space.
pub(crate) fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    // Format characters (Cf), private use, surrogates and non-characters.
    !matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E
        | 0x2060..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF | 0xFFFE | 0xFFFF
        | 0xF0000..=0x10FFFF)
}

fn push_escaped(s: &mut String, c: char, quote: char, ascii_only: bool) {
    match c {
        '\x07' => s.push_str("\\a"),
        '\x08' => s.push_str("\\b"),
        '\x0c' => s.push_str("\\f"),
        '\n' => s.push_str("\\n"),
        '\r' => s.push_str("\\r"),
        '\t' => s.push_str("\\t"),
        '\x0b' => s.push_str("\\v"),
        '\\' => s.push_str("\\\\"),
        c if c == quote => {
            s.push('\\');
            s.push(c);
        }
        c if (c as u32) < 0x80 && is_print(c) => s.push(c),
        c if !ascii_only && is_print(c) => s.push(c),
        c if (c as u32) < 0x20 || c == '\x7f' => s.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => s.push_str(&format!("\\u{:04x}", c as u32)),
        c => s.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Go's `strconv.Quote`.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '\u{FFFD}' {
            out.push('\u{FFFD}');
            continue;
        }
        push_escaped(&mut out, c, '"', false);
    }
    out.push('"');
    out
}

fn quote_ascii(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        push_escaped(&mut out, c, '"', true);
    }
    out.push('"');
    out
}

fn quote_rune(c: char, ascii: bool) -> String {
    let mut out = String::from("'");
    push_escaped(&mut out, c, '\'', ascii);
    out.push('\'');
    out
}
