//! The last good version of an output, as keys, for the guards to compare a render with.
//!
//! While kvsync runs, it is the keys of the last version published. On the first render after a
//! start it is what the destination holds, read back where the format allows:
//! - `json`, `yaml`: the nested objects flattened at `/` back into keys and values;
//! - `env`, `properties`: the variables (properties) and their values as written; a render is
//!   compared through the names the format gives keys (`db/host` is `DB_HOST`, `db.host`);
//! - `files`: the files of the current generation;
//! - `template`, `raw`: the rendered bytes say nothing about keys, so kvsync keeps a record of the
//!   key names and a SHA-256 of each value beside the destination (`.NAME.kvsync-keys`) when a guard
//!   is set; without that record an existing destination only counts as present, and only `min_keys`
//!   and `require` apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kvsync_watch::View;
use sha2::{Digest, Sha256};

use crate::config::{Format, OutputConfig};
use crate::guard::Keys;

/// A last good version to compare renders with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Keys and values, exactly (what was published, or a json/yaml/files destination read back).
    Keys(Keys),
    /// An env file read back: variable names and values.
    Env { upcase: bool, vars: BTreeMap<String, Bytes> },
    /// A properties file read back: escaped property names and escaped values, as written.
    Properties(BTreeMap<String, String>),
    /// The record kept for a template or raw output: key names and the SHA-256 of each value.
    Hashed(BTreeMap<String, String>),
    /// The destination exists but cannot be read back as keys.
    Present,
}

/// How a render differs from the last good version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// Keys in the last good version.
    pub total: usize,
    /// Of those, keys the render no longer has.
    pub removed: usize,
    /// Of those, keys whose value the render changes.
    pub changed: usize,
}

/// The names of the keys a render adds, removes and changes (in the names the format gives them:
/// `DB_HOST` for env, `db.host` for properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub total: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Baseline {
    pub fn keys(keys: Keys) -> Baseline {
        Baseline { kind: Kind::Keys(keys) }
    }

    /// How `new` differs from this version; None when there is nothing to compare with.
    pub fn compare(&self, new: &Keys) -> Option<Comparison> {
        self.changes(new).map(|c| Comparison { total: c.total, removed: c.removed.len(), changed: c.changed.len() })
    }

    /// Which keys `new` adds, removes and changes; None when there is nothing to compare with.
    pub fn changes(&self, new: &Keys) -> Option<KeyChanges> {
        match &self.kind {
            Kind::Keys(old) => Some(changes(old, new)),
            Kind::Env { upcase, vars } => {
                let projected: BTreeMap<String, Bytes> =
                    new.iter().map(|(k, v)| (crate::format::env::name(k, *upcase), v.clone())).collect();
                Some(changes(vars, &projected))
            }
            Kind::Properties(old) => {
                let kv: BTreeMap<&str, &[u8]> = new.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
                let text = crate::format::properties::render(&kv).ok()?;
                let projected = properties_lines(&String::from_utf8_lossy(&text));
                Some(changes(old, &projected))
            }
            Kind::Hashed(old) => Some(changes(old, &hashed(new))),
            Kind::Present => None,
        }
    }
}

fn changes<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> KeyChanges {
    let mut c = KeyChanges { total: old.len(), ..KeyChanges::default() };
    for (k, v) in old {
        match new.get(k) {
            None => c.removed.push(k.clone()),
            Some(n) if n != v => c.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    c.added = new.keys().filter(|k| !old.contains_key(*k)).cloned().collect();
    c
}

fn hashed(keys: &Keys) -> BTreeMap<String, String> {
    keys.iter().map(|(k, v)| (k.clone(), hex(&Sha256::digest(v)))).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The keys a render of `views` publishes: relative to the prefix (folder markers left out), or
/// `NAME/KEY` for outputs with `inputs:`; a `raw` output has its one key.
pub fn keys_of(cfg: &OutputConfig, views: &[View]) -> Keys {
    let raw = matches!(cfg.format, Format::Raw { .. });
    let mut keys = Keys::new();
    for (input, view) in cfg.inputs.iter().zip(views) {
        for (rel, value) in view.relative() {
            if raw {
                if rel.is_empty() {
                    keys.insert(input.prefix.clone(), value.clone());
                }
                continue;
            }
            if rel.is_empty() || rel.ends_with('/') {
                continue;
            }
            let k = if cfg.single { rel.to_string() } else { format!("{}/{rel}", input.name) };
            keys.insert(k, value.clone());
        }
    }
    keys
}

/// The record of a template or raw output's keys, beside its destination.
pub fn record_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.kvsync-keys"))
}

/// Whether an output's format needs the key record (its destination cannot be read back as keys).
pub fn needs_record(format: &Format) -> bool {
    !matches!(format, Format::Json | Format::Yaml | Format::Env { .. } | Format::Properties | Format::Files)
}

/// Saves the record of `keys` for a template or raw output (atomically; a failure only costs the
/// comparison at the next start, so it is logged, not fatal).
pub fn write_record(dest: &Path, keys: &Keys) -> Result<(), String> {
    let body = serde_json::to_vec(&hashed(keys)).map_err(|e| e.to_string())?;
    let path = record_path(dest);
    let staged = crate::commit::stage_file(&path, &body, 0o600).map_err(|e| e.to_string())?;
    staged.commit().map_err(|e| e.to_string())
}

/// What `cfg`'s destination holds now, as a baseline; None when there is no destination yet.
pub fn on_disk(cfg: &OutputConfig) -> Option<Baseline> {
    let dest = &cfg.destination;
    let kind = match &cfg.format {
        Format::Files => {
            let data = dest.join("..data");
            if data.exists() {
                match kvsync_watch::file::read_tree(&data, usize::MAX) {
                    Ok(files) => Kind::Keys(files),
                    Err(_) => Kind::Present,
                }
            } else if dest.is_dir() && std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
                Kind::Present
            } else {
                return None;
            }
        }
        format => {
            let bytes = std::fs::read(dest).ok()?;
            match format {
                Format::Json => serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| flatten(&v))
                    .map_or(Kind::Present, Kind::Keys),
                Format::Yaml => serde_yaml::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| flatten(&v))
                    .map_or(Kind::Present, Kind::Keys),
                Format::Env { upcase } => match parse_env(&String::from_utf8_lossy(&bytes)) {
                    Some(vars) => Kind::Env { upcase: *upcase, vars },
                    None => Kind::Present,
                },
                Format::Properties => Kind::Properties(properties_lines(&String::from_utf8_lossy(&bytes))),
                _ => match std::fs::read(record_path(dest)).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    Some(record) => Kind::Hashed(record),
                    None => Kind::Present,
                },
            }
        }
    };
    Some(Baseline { kind })
}

/// A JSON (or YAML) document of nested objects and strings, flattened at `/`; None when it is not one.
fn flatten(v: &serde_json::Value) -> Option<Keys> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Keys) -> Option<()> {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                    walk(&key, child, out)?;
                }
                Some(())
            }
            serde_json::Value::String(s) if !prefix.is_empty() => {
                out.insert(prefix.to_string(), Bytes::from(s.clone()));
                Some(())
            }
            _ => None,
        }
    }
    let mut out = Keys::new();
    if !v.is_object() {
        return None;
    }
    walk("", v, &mut out)?;
    Some(out)
}

/// Reads back what `format::env` writes: `NAME="value"` with `\` before `\ " $` and backquote, and
/// newlines literal inside the quotes. None when the file is not in that form.
fn parse_env(text: &str) -> Option<BTreeMap<String, Bytes>> {
    let mut vars = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        if name.is_empty() || name.contains('\n') {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        vars.insert(name.to_string(), Bytes::from(value));
        rest = after[end + 1..].strip_prefix('\n')?;
    }
    Some(vars)
}

/// The lines of a properties file as `format::properties` writes them (one per key, nothing
/// literal spans lines): the escaped name (up to the first `=` not escaped) to the escaped value.
fn properties_lines(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut escaped = false;
        let mut split = line.len();
        for (i, c) in line.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '=' => {
                    split = i;
                    break;
                }
                _ => {}
            }
        }
        let value = line.get(split + 1..).unwrap_or("");
        out.insert(line[..split].to_string(), value.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(kv: &[(&str, &str)]) -> Keys {
        kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect()
    }

    fn output(dir: &Path, format: &str, extra: &str) -> OutputConfig {
        let text = format!(
            "sources:\n  - {{ name: s, type: file, path: {d} }}\noutputs:\n  - {{ name: o, source: s, prefix: p/, format: {format}, destination: {d}/out{extra} }}\n",
            d = dir.display()
        );
        crate::config::Config::parse(&dir.join("kvsync.yaml"), &text).unwrap().outputs.remove(0)
    }

    fn render(o: &OutputConfig, k: &Keys) -> Vec<u8> {
        let kv: BTreeMap<&str, &[u8]> = k.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
        let inputs = vec![crate::template::InputData { name: "o", origin: "s:p/".into(), kv }];
        crate::format::render(&o.format, &inputs, true).unwrap()
    }

    /// Each readable format, written by its renderer, reads back as the keys it was rendered from.
    #[test]
    fn destinations_read_back_as_the_keys_they_were_rendered_from() {
        let d = tempfile::tempdir().unwrap();
        let k = keys(&[("db/host", "h \"q\" $x `y` \\"), ("db/port", "5432"), ("multi", "a\nb"), ("name", "ünï = :")]);
        for (format, extra) in [("json", ""), ("yaml", ""), ("env", ", upcase: true"), ("properties", "")] {
            let o = output(d.path(), format, extra);
            std::fs::write(&o.destination, render(&o, &k)).unwrap();
            let b = on_disk(&o).unwrap();
            assert_eq!(b.compare(&k), Some(Comparison { total: 4, removed: 0, changed: 0 }), "{format}");
            let mut fewer = k.clone();
            fewer.remove("db/port");
            fewer.insert("name".into(), Bytes::from_static(b"other"));
            assert_eq!(b.compare(&fewer), Some(Comparison { total: 4, removed: 1, changed: 1 }), "{format}");
        }
    }

    #[test]
    fn a_template_compares_with_its_record_or_only_knows_it_is_present() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t.j2");
        std::fs::write(&t, "{{ kv | length }}").unwrap();
        let o = output(d.path(), "template", &format!(", template: {}", t.display()));
        assert_eq!(on_disk(&o), None, "no destination, nothing to compare with");
        std::fs::write(&o.destination, "2").unwrap();
        assert_eq!(on_disk(&o).unwrap().compare(&keys(&[])), None);
        write_record(&o.destination, &keys(&[("a", "1"), ("b", "2")])).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(record_path(&o.destination)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let b = on_disk(&o).unwrap();
        assert_eq!(b.compare(&keys(&[("a", "1"), ("b", "3")])), Some(Comparison { total: 2, removed: 0, changed: 1 }));
        assert_eq!(b.compare(&keys(&[])), Some(Comparison { total: 2, removed: 2, changed: 0 }));
    }

    #[test]
    fn a_destination_that_is_not_in_the_format_counts_as_present() {
        let d = tempfile::tempdir().unwrap();
        for (format, content) in [("json", "[1]"), ("yaml", "a: [1]"), ("env", "export A=1\n")] {
            let o = output(d.path(), format, "");
            std::fs::write(&o.destination, content).unwrap();
            assert_eq!(on_disk(&o).unwrap().compare(&keys(&[])), None, "{format}");
        }
    }
}
