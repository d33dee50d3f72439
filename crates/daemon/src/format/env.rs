//! `format: env`: one `NAME=value` line per key.
//!
//! NAME comes from the relative key with `/`, `-` and `.` (and any other character that is not a
//! letter, digit or `_`) turned into `_`, a leading digit prefixed with `_`, upcased on request.
//! Values are double-quoted with `\`, `"`, `$` and `` ` `` backslash-escaped, which POSIX shells,
//! systemd's EnvironmentFile= and dotenv parsers all read back to the exact value; newlines stay
//! literal inside the quotes. A NUL cannot be in an environment variable, so it is an error.

use std::collections::BTreeMap;

/// The variable name for a relative key.
pub fn name(key: &str, upcase: bool) -> String {
    let mut n: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
        n.insert(0, '_');
    }
    if upcase {
        n.make_ascii_uppercase();
    }
    n
}

/// The value, double-quoted and escaped.
pub fn quote(value: &str) -> String {
    let mut q = String::with_capacity(value.len() + 2);
    q.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

pub fn render(kv: &BTreeMap<&str, &[u8]>, upcase: bool) -> Result<Vec<u8>, String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = String::new();
    for (k, v) in kv {
        let n = name(k, upcase);
        if let Some(other) = seen.insert(n.clone(), k) {
            return Err(format!("keys `{other}` and `{k}` both become the variable {n}; rename one of them"));
        }
        let v = std::str::from_utf8(v).map_err(|_| format!("the value of key `{k}` is not UTF-8 text"))?;
        if v.contains('\0') {
            return Err(format!("the value of key `{k}` contains a NUL byte, which no environment variable can hold"));
        }
        out.push_str(&n);
        out.push('=');
        out.push_str(&quote(v));
        out.push('\n');
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(name("db/host-name.x", false), "db_host_name_x");
        assert_eq!(name("db/host", true), "DB_HOST");
        assert_eq!(name("1st", false), "_1st");
        assert_eq!(name("ü", false), "_");
    }

    #[test]
    fn collisions_and_nul_are_errors() {
        let kv: BTreeMap<&str, &[u8]> = [("a-b", b"1".as_slice()), ("a.b", b"2".as_slice())].into();
        assert!(render(&kv, false).unwrap_err().contains("both become the variable a_b"));
        let kv: BTreeMap<&str, &[u8]> = [("a", b"x\0y".as_slice())].into();
        assert!(render(&kv, false).unwrap_err().contains("NUL"));
    }

    /// The shell reads every value back exactly.
    #[test]
    fn shell_reads_values_back() {
        let values =
            ["plain", "with space", "quote\"d", "it's", "$HOME `id` \\n", "multi\nline\n", "=a=b", "#hash", ""];
        let kv: BTreeMap<String, &[u8]> =
            values.iter().enumerate().map(|(i, v)| (format!("v{i}"), v.as_bytes())).collect();
        let kv: BTreeMap<&str, &[u8]> = kv.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let file = String::from_utf8(render(&kv, false).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.env");
        std::fs::write(&path, &file).unwrap();
        for (i, v) in values.iter().enumerate() {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(". \"$1\" && printf '%s' \"$v{i}\""))
                .arg("sh")
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *v, "value {i} in\n{file}");
        }
    }
}
