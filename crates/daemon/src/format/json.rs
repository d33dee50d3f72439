//! `format: json`, written straight to its destination: the same bytes as `serde_json`'s pretty
//! printer (two-space indent, `": "`, the same escapes), without building the document in memory.
//!
//! A large prefix is mostly values, and most values need no escaping: those are checked eight bytes
//! at a time and written as they are, so rendering a 50 MiB output costs about one pass over it.

use std::io::{self, Write};

use super::nest::Node;
use std::collections::BTreeMap;

/// Writes `tree` as a pretty-printed JSON object followed by a newline. Leaves must be UTF-8 (the
/// caller checked it, so that the error could name the key).
pub fn write<W: Write>(tree: &BTreeMap<&str, Node<'_>>, out: &mut W) -> io::Result<()> {
    write_dir(tree, 1, out)?;
    out.write_all(b"\n")
}

const INDENT: &[u8] = b"                                                                ";

fn indent<W: Write>(depth: usize, out: &mut W) -> io::Result<()> {
    let mut n = depth * 2;
    while n > 0 {
        let k = n.min(INDENT.len());
        out.write_all(&INDENT[..k])?;
        n -= k;
    }
    Ok(())
}

fn write_dir<W: Write>(dir: &BTreeMap<&str, Node<'_>>, depth: usize, out: &mut W) -> io::Result<()> {
    if dir.is_empty() {
        return out.write_all(b"{}");
    }
    out.write_all(b"{\n")?;
    for (i, (k, v)) in dir.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        indent(depth, out)?;
        string(k.as_bytes(), out)?;
        out.write_all(b": ")?;
        match v {
            Node::Leaf(b) => string(b, out)?,
            Node::Dir(d) => write_dir(d, depth + 1, out)?,
        }
    }
    out.write_all(b"\n")?;
    indent(depth - 1, out)?;
    out.write_all(b"}")
}

/// Whether any byte of `s` must be escaped in a JSON string: a control character, `"` or `\`.
pub fn needs_escape(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        // Bytes below 0x20 (the high bit test excludes bytes >= 0x80), `"` and `\`.
        let control = x.wrapping_sub(LO * 0x20) & !x & HI;
        if control | has_zero(x ^ (LO * b'"' as u64)) | has_zero(x ^ (LO * b'\\' as u64)) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn string<W: Write>(s: &[u8], out: &mut W) -> io::Result<()> {
    out.write_all(b"\"")?;
    if needs_escape(s) {
        escaped(s, out)?;
    } else {
        out.write_all(s)?;
    }
    out.write_all(b"\"")
}

fn escaped<W: Write>(s: &[u8], out: &mut W) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]],
            _ => continue,
        };
        out.write_all(&s[start..i])?;
        out.write_all(short)?;
        start = i + 1;
    }
    out.write_all(&s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_detection_sees_every_position() {
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!needs_escape(&clean));
            for pos in 0..len {
                for bad in [0u8, 0x1f, b'"', b'\\', b'\n'] {
                    let mut v = clean.clone();
                    v[pos] = bad;
                    assert!(needs_escape(&v), "{len} {pos} {bad}");
                }
                let mut v = clean.clone();
                v[pos] = 0x7f;
                assert!(!needs_escape(&v));
            }
        }
        assert!(!needs_escape("héllo wörld ✓ 0x20 !#[]".as_bytes()));
    }
}
