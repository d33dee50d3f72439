//! `kvsync once --dry-run` and `kvsync check --render`: render every output in memory and show, per
//! output, how it differs from what is on disk. Nothing is written, no action and no `check` command
//! runs.
//!
//! `once --dry-run` reads the live sources (waiting for each one's first snapshot); `check --render
//! --snapshot FILE.json` reads keys from a file (`{"full/key": "value", ...}`), offline, so CI can test
//! templates. Both say "would change" (exit 3) or "unchanged" (exit 0). With `--no-values` only key
//! names and line counts are printed, never a value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvsync_watch::View;

use crate::baseline;
use crate::config::{Config, Format, OutputConfig};
use crate::diff;
use crate::guard::GuardConfig;
use crate::template::InputData;

/// How one output would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDiff {
    pub changed: bool,
    /// What to print for it.
    pub text: String,
}

/// The bytes an output renders, or its files.
enum Rendered {
    File(Vec<u8>),
    Files(BTreeMap<String, Bytes>),
}

/// The keys and values of `view` an output renders: folder markers left out; `raw` keeps its one key.
fn input_kv(view: &View, raw: bool) -> BTreeMap<&str, &[u8]> {
    view.relative()
        .filter(|(k, _)| if raw { k.is_empty() } else { !k.is_empty() && !k.ends_with('/') })
        .map(|(k, v)| (k, v.as_ref()))
        .collect()
}

fn render(cfg: &OutputConfig, views: &[View]) -> Result<Rendered, String> {
    let raw = matches!(cfg.format, Format::Raw { .. });
    if matches!(cfg.format, Format::Files) {
        let kv = views[0].relative().filter(|(k, _)| !k.is_empty() && !k.ends_with('/')).map(|(k, v)| (k, v.clone()));
        return crate::format::files::layout(kv).map(Rendered::Files);
    }
    let inputs: Vec<InputData> = cfg
        .inputs
        .iter()
        .zip(views)
        .map(|(i, v)| InputData { name: &i.name, origin: format!("{}:{}", i.source, i.prefix), kv: input_kv(v, raw) })
        .collect();
    crate::format::render(&cfg.format, &inputs, cfg.single).map(Rendered::File)
}

fn lines_of(n: usize) -> String {
    format!("{n} line{}", if n == 1 { "" } else { "s" })
}

/// Renders `cfg` from `views` and describes how it differs from its destination. `guard` is the
/// output's guard: a render it would hold is said so.
pub fn output_diff(
    cfg: &OutputConfig,
    guard: Option<&GuardConfig>,
    views: &[View],
    no_values: bool,
) -> Result<OutputDiff, String> {
    let dest = &cfg.destination;
    let rendered = render(cfg, views).map_err(|e| format!("output `{}`: {e}", cfg.name))?;
    let mut text = String::new();
    let head = format!("output `{}` ({})", cfg.name, dest.display());
    let changed = match rendered {
        Rendered::File(new) => {
            let old = std::fs::read(dest).ok();
            if old.as_deref() == Some(new.as_slice()) {
                let _ = writeln!(text, "{head}: unchanged");
                false
            } else {
                let old_text = old.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let new_text = String::from_utf8_lossy(&new);
                let binary = old.as_deref().is_some_and(|o| std::str::from_utf8(o).is_err())
                    || std::str::from_utf8(&new).is_err();
                let c = diff::counts(&old_text, &new_text);
                let what = if old.is_none() { "would be created" } else { "would change" };
                if binary {
                    let _ = writeln!(
                        text,
                        "{head}: {what}: binary content, {} -> {} bytes",
                        old.as_ref().map_or(0, Vec::len),
                        new.len()
                    );
                } else {
                    let _ =
                        writeln!(text, "{head}: {what}: {} added, {} removed", lines_of(c.added), lines_of(c.removed));
                }
                if no_values || binary {
                    key_names(cfg, views, &mut text);
                } else {
                    let old_name = if old.is_some() { dest.display().to_string() } else { "/dev/null".into() };
                    text.push_str(&diff::unified(
                        &old_text,
                        &new_text,
                        &old_name,
                        &format!("{} (rendered)", dest.display()),
                    ));
                }
                true
            }
        }
        Rendered::Files(new) => {
            let old = kvsync_watch::file::read_tree(&dest.join("..data"), usize::MAX).unwrap_or_default();
            let added: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
            let removed: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
            let modified: Vec<&String> = new.keys().filter(|k| old.get(*k).is_some_and(|o| o != &new[*k])).collect();
            if added.is_empty() && removed.is_empty() && modified.is_empty() {
                let _ = writeln!(text, "{head}: unchanged");
                false
            } else {
                let _ = writeln!(
                    text,
                    "{head}: would change: {} file{} added, {} removed, {} changed",
                    added.len(),
                    if added.len() == 1 { "" } else { "s" },
                    removed.len(),
                    modified.len()
                );
                let empty = Bytes::new();
                for k in added.iter().chain(&removed).chain(&modified) {
                    let (o, n) = (old.get(*k).unwrap_or(&empty), new.get(*k).unwrap_or(&empty));
                    let path = dest.join(k);
                    let kind = if !old.contains_key(*k) {
                        "added"
                    } else if !new.contains_key(*k) {
                        "removed"
                    } else {
                        "changed"
                    };
                    let (Ok(ot), Ok(nt)) = (std::str::from_utf8(o), std::str::from_utf8(n)) else {
                        let _ = writeln!(text, "  {kind}: {k} (binary, {} -> {} bytes)", o.len(), n.len());
                        continue;
                    };
                    let c = diff::counts(ot, nt);
                    let _ = writeln!(text, "  {kind}: {k} (+{} -{})", c.added, c.removed);
                    if !no_values {
                        let old_name = if kind == "added" { "/dev/null".into() } else { path.display().to_string() };
                        let new_name = if kind == "removed" {
                            "/dev/null".into()
                        } else {
                            format!("{} (rendered)", path.display())
                        };
                        text.push_str(&diff::unified(ot, nt, &old_name, &new_name));
                    }
                }
                true
            }
        }
    };
    if let Some(g) = guard {
        let keys = baseline::keys_of(cfg, views);
        if let Some(b) = crate::guard::evaluate(g, baseline::on_disk(cfg).as_ref(), &keys) {
            let _ = writeln!(
                text,
                "{head}: a running kvsync would hold this render: {} (`kvsync release {}` publishes it)",
                b.figures, cfg.name
            );
        }
    }
    Ok(OutputDiff { changed, text })
}

/// "keys added: a, b" lines, compared with what the destination reads back as (formats that cannot
/// be read back as keys say so).
fn key_names(cfg: &OutputConfig, views: &[View], text: &mut String) {
    let keys = baseline::keys_of(cfg, views);
    let changes = match baseline::on_disk(cfg) {
        None => Some(baseline::KeyChanges { added: keys.keys().cloned().collect(), ..Default::default() }),
        Some(b) => b.changes(&keys),
    };
    let Some(c) = changes else {
        let _ = writeln!(text, "  (the keys of the file on disk are not known: format {})", cfg.format.name());
        return;
    };
    for (what, list) in [("added", &c.added), ("removed", &c.removed), ("changed", &c.changed)] {
        if !list.is_empty() {
            let _ = writeln!(text, "  keys {what}: {}", list.join(", "));
        }
    }
}

/// Views of `cfg`'s inputs taken from a snapshot of keys (full key -> value).
pub fn views_from_snapshot(cfg: &OutputConfig, snapshot: &BTreeMap<String, Bytes>) -> Vec<View> {
    cfg.inputs
        .iter()
        .map(|i| {
            let entries = snapshot
                .range::<str, _>((std::ops::Bound::Included(i.prefix.as_str()), std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&i.prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            View {
                source: Arc::from(i.source.as_str()),
                prefix: i.prefix.clone(),
                version: 0,
                entries: Arc::new(entries),
                received: Instant::now(),
                stale: false,
            }
        })
        .collect()
}

/// Reads a snapshot file: a JSON object of full keys to string values.
pub fn read_snapshot(path: &Path) -> Result<BTreeMap<String, Bytes>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read the snapshot: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{}:{}:{}: not a JSON snapshot: {e}", path.display(), e.line(), e.column()))?;
    let serde_json::Value::Object(m) = v else {
        return Err(format!(
            "{}: a snapshot is a JSON object of keys to values, e.g. {{\"config/app/db/host\": \"db1\"}}",
            path.display()
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let serde_json::Value::String(s) = v else {
            return Err(format!(
                "{}: key `{k}`: the value must be a string (write numbers as \"5432\")",
                path.display()
            ));
        };
        out.insert(k, Bytes::from(s));
    }
    Ok(out)
}

/// The result of a dry run: what to print, and whether anything would change.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub changed: bool,
    /// Outputs that could not be rendered, each with its error.
    pub errors: Vec<String>,
}

/// Prints a report; the exit code: 0 when nothing would change, 3 when something would, 1 when an
/// output could not be rendered.
pub fn print(report: Report) -> i32 {
    print!("{}", report.text);
    if !report.errors.is_empty() {
        eprintln!("kvsync: {} output(s) could not be rendered", report.errors.len());
        return 1;
    }
    if report.changed {
        3
    } else {
        0
    }
}

/// Diffs every output of `cfg` rendered from `views_of(output)`; `guards[i]` is output i's guard.
pub fn report(
    cfg: &Config,
    guards: &[Option<GuardConfig>],
    no_values: bool,
    mut views_of: impl FnMut(&OutputConfig) -> Vec<View>,
) -> Report {
    let mut r = Report::default();
    for (i, o) in cfg.outputs.iter().enumerate() {
        let views = views_of(o);
        match output_diff(o, guards.get(i).and_then(Option::as_ref), &views, no_values) {
            Ok(d) => {
                r.changed |= d.changed;
                r.text.push_str(&d.text);
            }
            Err(e) => {
                let _ = writeln!(r.text, "{e}");
                r.errors.push(e);
            }
        }
    }
    r
}

/// `kvsync check --render --snapshot FILE`: every output rendered from the snapshot, offline.
pub fn from_snapshot(
    cfg: &Config,
    guards: &[Option<GuardConfig>],
    snapshot: &Path,
    no_values: bool,
) -> Result<Report, String> {
    let snap = read_snapshot(snapshot)?;
    Ok(report(cfg, guards, no_values, |o| views_from_snapshot(o, &snap)))
}

/// `kvsync once --dry-run`: starts the sources, waits for every input's first snapshot (at most
/// `timeout`), and diffs every output.
pub async fn live(
    cfg: &Config,
    guards: &[Option<GuardConfig>],
    no_values: bool,
    timeout: Option<Duration>,
) -> Result<Report, String> {
    let mut wanted = crate::watches::Wanted::new();
    for o in &cfg.outputs {
        for i in &o.inputs {
            wanted.entry(i.source.clone()).or_default().insert(i.prefix.clone());
        }
    }
    let mut watches = crate::watches::Watches::default();
    watches.apply(cfg, &wanted).await?;
    let mut subs = Vec::new();
    for o in &cfg.outputs {
        let mut s = Vec::new();
        for i in &o.inputs {
            s.push(watches.subscription(&i.source, &i.prefix)?);
        }
        subs.push(s);
    }
    let started = Instant::now();
    let mut said = Instant::now();
    let result = loop {
        let pending: Vec<String> = cfg
            .outputs
            .iter()
            .zip(&subs)
            .flat_map(|(o, s)| {
                s.iter()
                    .filter(|s| s.latest().is_none())
                    .map(move |s| format!("output `{}` needs source `{}` prefix `{}`", o.name, s.source, s.prefix))
            })
            .collect();
        if pending.is_empty() {
            let mut at = 0;
            break Ok(report(cfg, guards, no_values, |_| {
                let v = subs[at].iter().filter_map(|s| s.latest()).collect();
                at += 1;
                v
            }));
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            break Err(format!(
                "timed out after {}: still waiting for {}",
                crate::config::units::format_duration(started.elapsed()),
                pending.join("; ")
            ));
        }
        if said.elapsed() > Duration::from_secs(5) {
            said = Instant::now();
            tracing::warn!("waiting for the first data of: {}", pending.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    watches.stop_all().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, outputs: &str) -> Config {
        let text =
            format!("sources:\n  - {{ name: s, type: file, path: {d} }}\noutputs:\n{outputs}", d = dir.display());
        Config::parse(&dir.join("kvsync.yaml"), &text.replace("{d}", &dir.display().to_string())).unwrap()
    }

    fn snapshot(kv: &[(&str, &str)]) -> BTreeMap<String, Bytes> {
        kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect()
    }

    #[test]
    fn a_single_file_shows_a_unified_diff_or_only_key_names() {
        let d = tempfile::tempdir().unwrap();
        let cfg =
            config(d.path(), "  - { name: app, source: s, prefix: p/, format: json, destination: {d}/app.json }\n");
        let snap = snapshot(&[("p/db/host", "secret-host"), ("p/port", "80")]);
        let r = report(&cfg, &[], false, |o| views_from_snapshot(o, &snap));
        assert!(r.changed);
        let dest = d.path().join("app.json");
        assert!(
            r.text.starts_with(&format!(
                "output `app` ({}): would be created: 6 lines added, 0 lines removed\n--- /dev/null\n",
                dest.display()
            )),
            "{}",
            r.text
        );
        assert!(r.text.contains("+    \"host\": \"secret-host\"\n"), "{}", r.text);
        assert!(!dest.exists(), "a dry run writes nothing");

        std::fs::write(&dest, "{\n  \"db\": {\n    \"host\": \"old-host\"\n  },\n  \"gone\": \"x\"\n}\n").unwrap();
        let r = report(&cfg, &[], true, |o| views_from_snapshot(o, &snap));
        assert_eq!(
            r.text,
            format!(
                "output `app` ({}): would change: 2 lines added, 2 lines removed\n  keys added: port\n  keys removed: gone\n  keys changed: db/host\n",
                dest.display()
            )
        );
        assert!(!r.text.contains("secret-host") && !r.text.contains("old-host"));

        let same = std::fs::read(&dest).unwrap();
        std::fs::write(&dest, b"{\n  \"db\": {\n    \"host\": \"secret-host\"\n  },\n  \"port\": \"80\"\n}\n").unwrap();
        let r = report(&cfg, &[], false, |o| views_from_snapshot(o, &snap));
        assert!(!r.changed, "{}", r.text);
        assert_eq!(r.text, format!("output `app` ({}): unchanged\n", dest.display()));
        drop(same);
    }

    #[test]
    fn files_list_added_removed_and_changed_files() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path(), "  - { name: f, source: s, prefix: p/, format: files, destination: {d}/f }\n");
        let dest = d.path().join("f");
        std::fs::create_dir_all(dest.join("..gen")).unwrap();
        std::fs::write(dest.join("..gen/a"), "1\n").unwrap();
        std::fs::write(dest.join("..gen/b"), "2\n").unwrap();
        std::os::unix::fs::symlink("..gen", dest.join("..data")).unwrap();
        let snap = snapshot(&[("p/a", "one\n"), ("p/c", "3\n")]);
        let r = report(&cfg, &[], false, |o| views_from_snapshot(o, &snap));
        assert!(r.changed);
        assert!(r.text.contains("would change: 1 file added, 1 removed, 1 changed\n"), "{}", r.text);
        assert!(
            r.text.contains(&format!("  added: c (+1 -0)\n--- /dev/null\n+++ {}/c (rendered)\n", dest.display())),
            "{}",
            r.text
        );
        assert!(
            r.text.contains(&format!("  removed: b (+0 -1)\n--- {}/b\n+++ /dev/null\n", dest.display())),
            "{}",
            r.text
        );
        assert!(r.text.contains("-1\n+one\n"), "{}", r.text);
        let r = report(&cfg, &[], true, |o| views_from_snapshot(o, &snap));
        assert!(!r.text.contains("one"), "{}", r.text);
        assert!(r.text.contains("  changed: a (+1 -1)\n"), "{}", r.text);
    }

    #[test]
    fn a_guard_that_would_hold_is_said() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path(), "  - { name: app, source: s, prefix: p/, format: env, destination: {d}/app.env }\n");
        std::fs::write(d.path().join("app.env"), "a=\"1\"\nb=\"2\"\nc=\"3\"\n").unwrap();
        let g: crate::guard::RawGuard = serde_yaml::from_str("{ max_removed: 50% }").unwrap();
        let r =
            report(&cfg, &[Some(g.validate().unwrap())], true, |o| views_from_snapshot(o, &snapshot(&[("p/a", "1")])));
        assert!(
            r.text.contains("output `app` (")
                && r.text
                    .contains("a running kvsync would hold this render: 2 of 3 keys removed at once (max_removed 50%)"),
            "{}",
            r.text
        );
    }

    #[test]
    fn bad_snapshots_name_the_file_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("snap.json");
        std::fs::write(&p, "{\"a\": 1}").unwrap();
        assert_eq!(
            read_snapshot(&p).unwrap_err(),
            format!("{}: key `a`: the value must be a string (write numbers as \"5432\")", p.display())
        );
        std::fs::write(&p, "{\n\"a\": }").unwrap();
        let e = read_snapshot(&p).unwrap_err();
        assert!(e.starts_with(&format!("{}:2:", p.display())) && e.contains(": not a JSON snapshot: "), "{e}");
    }
}
