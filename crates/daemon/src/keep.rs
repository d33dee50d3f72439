//! Kept versions (`keep: N`) and rollback to one of them.
//!
//! Before a publish replaces an output's destination, the version it replaces is kept:
//! - a single file as `NAME.kvsync-1` beside it (the previous `-1` becomes `-2`, and so on up to N), a
//!   hard link to the replaced file, so keeping costs no copy (a commit renames a new file over the
//!   destination; the kept inode is never written again);
//! - a `files` output as the generation directory `..kvsync-keep-1` (..`-N`) inside the destination,
//!   made of hard links to the replaced generation's files (generations never rewrite a file in place).
//!
//! Beside the destination, so that they are on its file system (a hard link cannot cross one, and a
//! rollback is one rename) and wherever the destination can be written, kvsync can keep them too.
//! An index (`.NAME.kvsync-kept`) records when each version was published and by which render pass.
//!
//! A rollback publishes a kept version with the same atomic commit as a render, and leaves a hold
//! marker (`.NAME.kvsync-hold`) so that the output stays held, even across a restart, until
//! `kvsync release`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::commit;
use crate::config::{Format, OutputConfig};

/// The name of a kept generation inside a `files` destination, before its number.
pub const KEPT_GENERATION: &str = "..kvsync-keep-";

/// Keeps the version an output's publish is about to replace (`keep: N`). A failure is logged: it
/// costs a kept version, never the publish.
pub fn before_publish(cfg: &OutputConfig) {
    if cfg.keep == 0 {
        return;
    }
    if let Err(e) = KeepSpec::of(cfg, cfg.keep).rotate() {
        tracing::warn!(output = %cfg.name, "output `{}`: cannot keep the version being replaced: {e}", cfg.name);
    }
}

/// Where an output keeps its versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepSpec {
    pub dest: PathBuf,
    /// A `files` output (a directory of generations) rather than a single file.
    pub files: bool,
    /// How many versions to keep (0: none).
    pub n: u32,
}

/// One published version, as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Unix seconds.
    pub at: u64,
    /// The render pass that wrote it (KVSYNC_GENERATION of its actions); 0 for a rollback or
    /// a version found on disk.
    pub pass: u64,
}

impl Published {
    pub fn now(pass: u64) -> Published {
        Published { at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0), pass }
    }
}

/// `.NAME.kvsync-kept`: the current version and the kept ones (index 0 is version 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Index {
    current: Option<Published>,
    kept: Vec<Option<Published>>,
}

/// A kept version, as `kvsync status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// 1 is the version the current one replaced.
    pub k: u32,
    pub path: PathBuf,
    pub published: Option<Published>,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl KeepSpec {
    pub fn of(cfg: &OutputConfig, n: u32) -> KeepSpec {
        KeepSpec { dest: cfg.destination.clone(), files: matches!(cfg.format, Format::Files), n }
    }

    /// Where version `k` is kept.
    pub fn path(&self, k: u32) -> PathBuf {
        if self.files {
            self.dest.join(format!("{KEPT_GENERATION}{k}"))
        } else {
            self.dest.with_file_name(format!("{}.kvsync-{k}", file_name(&self.dest)))
        }
    }

    fn index_path(&self) -> PathBuf {
        self.dest.with_file_name(format!(".{}.kvsync-kept", file_name(&self.dest)))
    }

    fn read_index(&self) -> Index {
        fs::read(self.index_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn write_index(&self, index: &Index) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(index).map_err(|e| e.to_string())?;
        let staged = commit::stage_file(&self.index_path(), &body, 0o600).map_err(|e| e.to_string())?;
        staged.commit().map_err(|e| e.to_string())
    }

    /// Keeps the version on disk as version 1 (1 becomes 2, ..., N is dropped). Called right before a
    /// publish replaces it; nothing to keep when there is no destination yet.
    pub fn rotate(&self) -> Result<(), String> {
        if self.n == 0 {
            return Ok(());
        }
        let mut index = self.read_index();
        let current = if self.files {
            commit::current_generation(&self.dest).map(|g| self.dest.join(g))
        } else {
            Some(self.dest.clone()).filter(|d| d.is_file())
        };
        let Some(current) = current else { return Ok(()) };
        remove(&self.path(self.n));
        for k in (1..self.n).rev() {
            let from = self.path(k);
            if from.exists() {
                fs::rename(&from, self.path(k + 1))
                    .map_err(|e| format!("cannot move kept version {} to {}: {e}", from.display(), k + 1))?;
            }
        }
        let first = self.path(1);
        let made = if self.files { link_tree(&current, &first) } else { link_or_copy(&current, &first) };
        made.map_err(|e| format!("cannot keep {} as {}: {e}", current.display(), first.display()))?;
        let was = index.current.take();
        index.kept.insert(0, was);
        index.kept.truncate(self.n as usize);
        self.write_index(&index)
    }

    /// Records the version just published.
    pub fn published(&self, p: Published) -> Result<(), String> {
        if self.n == 0 {
            return Ok(());
        }
        let mut index = self.read_index();
        index.current = Some(p);
        self.write_index(&index)
    }

    /// The kept versions that exist, newest first.
    pub fn list(&self) -> Vec<Kept> {
        let index = self.read_index();
        (1..=self.n.max(index.kept.len() as u32))
            .map(|k| Kept { k, path: self.path(k), published: index.kept.get(k as usize - 1).copied().flatten() })
            .filter(|v| v.path.exists())
            .collect()
    }
}

fn remove(p: &Path) {
    let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
}

fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    remove(to);
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
}

/// Makes `to` a copy of the directory `from` made of hard links (directories are created).
fn link_tree(from: &Path, to: &Path) -> io::Result<()> {
    remove(to);
    let tmp = to.with_file_name(format!("{}.kvsync-tmp", file_name(to)));
    remove(&tmp);
    fn walk(from: &Path, to: &Path) -> io::Result<()> {
        fs::create_dir(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type()?.is_dir() {
                walk(&src, &dst)?;
            } else {
                fs::hard_link(&src, &dst).or_else(|_| fs::copy(&src, &dst).map(|_| ()))?;
            }
        }
        Ok(())
    }
    // Built under a temporary name: a version is kept whole or not at all.
    walk(from, &tmp).and_then(|()| fs::rename(&tmp, to)).inspect_err(|_| remove(&tmp))
}

/// Where the hold marker of an output lives.
pub fn hold_path(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(".{}.kvsync-hold", file_name(dest)))
}

/// The reason an output was left held by a rollback (by this process or an earlier one).
pub fn held_by_rollback(dest: &Path) -> Option<String> {
    fs::read_to_string(hold_path(dest)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Leaves the output held with `reason` until released.
pub fn set_hold(dest: &Path, reason: &str) -> Result<(), String> {
    let staged =
        commit::stage_file(&hold_path(dest), format!("{reason}\n").as_bytes(), 0o600).map_err(|e| e.to_string())?;
    staged.commit().map_err(|e| e.to_string())
}

/// Removes the hold marker; whether there was one.
pub fn clear_hold(dest: &Path) -> bool {
    fs::remove_file(hold_path(dest)).is_ok()
}

/// Publishes kept version `k` of `cfg` atomically (the same commit as a render: a rename for a
/// single file, a `..data` swap for `files`) and leaves the output held. Returns the hold reason.
pub fn rollback(cfg: &OutputConfig, spec: &KeepSpec, k: u32) -> Result<String, String> {
    let kept = spec.list();
    let Some(version) = kept.iter().find(|v| v.k == k) else {
        let have = if kept.is_empty() {
            format!(
                "none is kept (keep: {}{})",
                spec.n,
                if spec.n == 0 { "; set keep: N on the output to keep versions" } else { "" }
            )
        } else {
            format!("kept: {}", kept.iter().map(|v| v.k.to_string()).collect::<Vec<_>>().join(", "))
        };
        return Err(format!("output `{}` has no kept version {k} ({have})", cfg.name));
    };
    let dest = &cfg.destination;
    if spec.files {
        let mode = cfg.perms.unwrap_or(commit::DEFAULT_MODE);
        let want = kvsync_watch::file::read_tree(&version.path, usize::MAX)?;
        let mut state = commit::TreeState::on_disk(dest, mode);
        let empty = BTreeMap::new();
        let changes = changes_between(state.as_ref().map(|s| &s.files).unwrap_or(&empty), &want);
        commit::check_parent(dest)?;
        let staged = commit::stage_generation(dest, state.as_mut(), changes, mode).map_err(|e| e.to_string())?;
        commit::commit_generation(staged, state, mode, false).map_err(|e| e.to_string())?;
    } else {
        let bytes = fs::read(&version.path).map_err(|e| format!("cannot read {}: {e}", version.path.display()))?;
        commit::check_parent(dest)?;
        let staged =
            commit::stage_file(dest, &bytes, commit::target_mode(dest, cfg.perms)).map_err(|e| e.to_string())?;
        staged.commit().map_err(|e| e.to_string())?;
    }
    let when = version
        .published
        .map(|p| format!(", published {}", crate::timefmt::rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(p.at))));
    let reason = format!("rolled back to kept version {k}{}", when.unwrap_or_default());
    set_hold(dest, &reason)?;
    Ok(reason)
}

/// The changes that turn `old` into `new`, sorted by key.
fn changes_between(old: &BTreeMap<String, Bytes>, new: &BTreeMap<String, Bytes>) -> commit::Changes {
    let mut changes: commit::Changes =
        old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), None)).collect();
    changes.extend(new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, v)| (k.clone(), Some(v.clone()))));
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(dir: &Path, format: &str) -> OutputConfig {
        let text = format!(
            "sources:\n  - {{ name: s, type: file, path: {d} }}\noutputs:\n  - {{ name: o, source: s, prefix: p/, format: {format}, destination: {d}/out }}\n",
            d = dir.display()
        );
        crate::config::Config::parse(&dir.join("kvsync.yaml"), &text).unwrap().outputs.remove(0)
    }

    fn publish_file(spec: &KeepSpec, content: &str, pass: u64) {
        spec.rotate().unwrap();
        let s = commit::stage_file(&spec.dest, content.as_bytes(), 0o644).unwrap();
        s.commit().unwrap();
        spec.published(Published::now(pass)).unwrap();
    }

    #[test]
    fn single_files_keep_n_versions_and_roll_back() {
        let d = tempfile::tempdir().unwrap();
        let cfg = output(d.path(), "json");
        let spec = KeepSpec::of(&cfg, 2);
        for (i, v) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
            publish_file(&spec, v, i as u64 + 1);
        }
        let kept = spec.list();
        assert_eq!(kept.iter().map(|v| v.k).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(fs::read_to_string(spec.path(1)).unwrap(), "v3");
        assert_eq!(fs::read_to_string(spec.path(2)).unwrap(), "v2");
        assert_eq!(kept[0].published.unwrap().pass, 3);
        assert_eq!(kept[1].published.unwrap().pass, 2);
        assert!(!d.path().join("out.kvsync-3").exists());
        assert_eq!(spec.path(1), d.path().join("out.kvsync-1"));

        let reason = rollback(&cfg, &spec, 2).unwrap();
        assert!(reason.starts_with("rolled back to kept version 2, published "), "{reason}");
        assert_eq!(fs::read_to_string(&cfg.destination).unwrap(), "v2");
        assert_eq!(held_by_rollback(&cfg.destination).as_deref(), Some(reason.as_str()));
        // The kept versions are as they were (a rollback keeps nothing new).
        assert_eq!(fs::read_to_string(spec.path(1)).unwrap(), "v3");
        assert!(clear_hold(&cfg.destination));
        assert_eq!(held_by_rollback(&cfg.destination), None);

        assert_eq!(rollback(&cfg, &spec, 5).unwrap_err(), "output `o` has no kept version 5 (kept: 1, 2)");
        let none = KeepSpec::of(&cfg, 0);
        let d2 = tempfile::tempdir().unwrap();
        let cfg2 = output(d2.path(), "json");
        assert_eq!(
            rollback(&cfg2, &KeepSpec { dest: cfg2.destination.clone(), ..none }, 1).unwrap_err(),
            "output `o` has no kept version 1 (none is kept (keep: 0; set keep: N on the output to keep versions))"
        );
    }

    #[test]
    fn files_keep_generations_and_roll_back_whole_sets() {
        let d = tempfile::tempdir().unwrap();
        let cfg = output(d.path(), "files");
        let spec = KeepSpec::of(&cfg, 3);
        let mut state = None;
        let sets = [[("a", "1"), ("b", "1")], [("a", "2"), ("c", "2")], [("a", "3"), ("c", "3")]];
        for (i, set) in sets.iter().enumerate() {
            let want: BTreeMap<String, Bytes> =
                set.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect();
            spec.rotate().unwrap();
            let empty = BTreeMap::new();
            let changes =
                changes_between(state.as_ref().map(|s: &commit::TreeState| &s.files).unwrap_or(&empty), &want);
            let g = commit::stage_generation(&cfg.destination, state.as_mut(), changes, 0o644).unwrap();
            state = Some(commit::commit_generation(g, state, 0o644, true).unwrap());
            spec.published(Published::now(i as u64 + 1)).unwrap();
        }
        drop(state);
        assert_eq!(spec.list().iter().map(|v| v.k).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(fs::read_to_string(spec.path(2).join("b")).unwrap(), "1");
        rollback(&cfg, &spec, 2).unwrap();
        assert_eq!(fs::read_to_string(cfg.destination.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(cfg.destination.join("b")).unwrap(), "1");
        assert!(!cfg.destination.join("c").exists());
        // The kept generations survive the commit.
        assert_eq!(fs::read_to_string(spec.path(1).join("c")).unwrap(), "2");
        // And a generation cleanup at the next start leaves them alone.
        commit::clean_stray_generations(&cfg.destination);
        assert!(spec.path(1).exists() && spec.path(2).exists());
    }
}
