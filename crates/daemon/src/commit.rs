//! Atomic commits: a reader of a destination sees the old content or the new, never a mix, an empty
//! file or a missing file.
//!
//! Single file: a temp file in the destination's directory (created with the final mode, so it is
//! never more readable than the result), write, fsync, rename over the destination, fsync the
//! directory. A rename refused with EBUSY (a bind-mounted single file, as Docker and Kubernetes
//! `subPath` mounts do) falls back to rewriting the file in place, with a warning.
//!
//! `files` format: the kubelet layout. Each generation is a fresh directory `..<timestamp>`; the
//! `..data` symlink points at the current one and is swapped with one rename; the visible top-level
//! entries are symlinks through `..data`, so the whole set flips at once.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::warn;

/// The mode a new file gets when the output sets no `perms` and no file exists yet.
pub const DEFAULT_MODE: u32 = 0o644;
const TMP_TAG: &str = ".kvsync-tmp-";
const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// An error with the path it concerns; the message says what failed and where.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct CommitError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T, CommitError> {
    r.map_err(|source| CommitError { action, path: path.to_path_buf(), source })
}

/// The mode to write `dest` with: the configured one, else the existing file's, else 0644.
pub fn target_mode(dest: &Path, perms: Option<u32>) -> u32 {
    perms.unwrap_or_else(|| fs::metadata(dest).map(|m| m.permissions().mode() & 0o7777).unwrap_or(DEFAULT_MODE))
}

fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that the directory a destination goes into exists and is a directory.
pub fn check_parent(dest: &Path) -> Result<(), String> {
    let dir = parent_of(dest);
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "destination directory {} does not exist; create it (kvsync does not create parents)",
            dir.display()
        )),
        Err(e) => Err(format!("cannot use destination directory {}: {e}", dir.display())),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CommitError> {
    ctx(File::open(dir).and_then(|d| d.sync_all()), "cannot fsync directory", dir)
}

fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A file written next to its destination and not yet renamed into place. Dropping it removes it.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staged {
    /// The staged file, for a check command.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the staged file over the destination and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), CommitError> {
        match fs::rename(&self.tmp, &self.dest) {
            Ok(()) => {
                self.done = true;
                sync_dir(parent_of(&self.dest))
            }
            Err(e) if e.raw_os_error() == Some(16) => {
                // EBUSY: the destination is a mount point (a bind-mounted single file).
                warn!(
                    path = %self.dest.display(),
                    "rename refused (EBUSY: the destination is a mount point); rewriting it in place, which is not atomic"
                );
                let data = ctx(fs::read(&self.tmp), "cannot read staged file", &self.tmp)?;
                let mut f =
                    ctx(OpenOptions::new().write(true).truncate(true).open(&self.dest), "cannot open", &self.dest)?;
                ctx(f.write_all(&data).and_then(|_| f.sync_all()), "cannot write", &self.dest)?;
                Ok(())
            }
            Err(e) => Err(CommitError { action: "cannot rename staged file over", path: self.dest.clone(), source: e }),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `content` to a temp file beside `dest`, with `mode` from creation on, and fsyncs it.
pub fn stage_file(dest: &Path, content: &[u8], mode: u32) -> Result<Staged, CommitError> {
    let dir = parent_of(dest);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_TAG}{}", unique_suffix()));
    let mut f =
        ctx(OpenOptions::new().write(true).create_new(true).mode(mode & 0o777).open(&tmp), "cannot create", &tmp)?;
    let staged = Staged { tmp: tmp.clone(), dest: dest.to_path_buf(), done: false };
    // The umask may have narrowed the mode; set it exactly (never wider than asked at any moment).
    ctx(f.set_permissions(fs::Permissions::from_mode(mode)), "cannot set mode of", &tmp)?;
    ctx(f.write_all(content), "cannot write", &tmp)?;
    ctx(f.sync_all(), "cannot fsync", &tmp)?;
    Ok(staged)
}

/// Removes temp files an interrupted run left beside `dest` (`.<name>.kvsync-tmp-*`).
pub fn clean_stray_temp_files(dest: &Path) {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}{TMP_TAG}");
    if let Ok(rd) = fs::read_dir(parent_of(dest)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Whether a `..`-name in a `files` destination is ours to clean up: a generation directory
/// (`..2026_...`), or a link left by an interrupted swap.
fn is_generation_debris(name: &str) -> bool {
    let rest = name.strip_prefix("..").unwrap_or("");
    rest.starts_with(|c: char| c.is_ascii_digit()) || name == DATA_TMP || name.ends_with(".kvsync-link")
}

/// Removes generations that `..data` does not point at and links an interrupted run left behind.
pub fn clean_stray_generations(dest: &Path) {
    let current = current_generation(dest);
    let Ok(rd) = fs::read_dir(dest) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if is_generation_debris(&n) && Some(&n) != current.as_ref() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        }
    }
}

/// A `files` generation being prepared: a fresh `..<timestamp>` directory holding every file.
#[derive(Debug)]
pub struct Generation {
    dest: PathBuf,
    name: String,
    top: Vec<String>,
    done: bool,
}

impl Generation {
    /// The generation directory, for a check command.
    pub fn path(&self) -> PathBuf {
        self.dest.join(&self.name)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(self.path());
        }
    }
}

fn generation_name() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = crate::timefmt::civil_from_days(days as i64);
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{:09}{:04x}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos(),
        fastrand::u16(..)
    )
}

/// The generation `..data` currently points at, if any.
pub fn current_generation(dest: &Path) -> Option<String> {
    fs::read_link(dest.join(DATA)).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Writes every file of `tree` into a new generation under `dest` (created if missing; its parent must
/// exist). Files whose bytes equal `previous` are hard-linked from the current generation instead of
/// rewritten. Paths in `tree` are already validated (`format::files::check_key`).
pub fn stage_generation(
    dest: &Path,
    tree: &BTreeMap<String, Bytes>,
    previous: Option<&BTreeMap<String, Bytes>>,
    mode: u32,
) -> Result<Generation, CommitError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CommitError {
                action: "cannot use as a `files` destination (it is not a directory)",
                path: dest.to_path_buf(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            })
        }
        Err(_) => ctx(fs::create_dir(dest), "cannot create directory", dest)?,
    }
    let name = generation_name();
    let root = dest.join(&name);
    ctx(fs::create_dir(&root), "cannot create generation directory", &root)?;
    let mut generation = Generation { dest: dest.to_path_buf(), name, top: Vec::new(), done: false };
    let old = current_generation(dest).map(|g| dest.join(g));
    let mut made: Option<PathBuf> = None;
    for (key, value) in tree {
        let path = root.join(key);
        let parent = parent_of(&path);
        // Keys are sorted, so files of one directory come together: create each directory once.
        if made.as_deref() != Some(parent) && parent != root {
            ctx(fs::create_dir_all(parent), "cannot create directory", parent)?;
            made = Some(parent.to_path_buf());
        }
        let unchanged = previous.and_then(|p| p.get(key)).is_some_and(|v| v == value);
        if let (true, Some(old)) = (unchanged, &old) {
            // Same bytes as in the current generation: a hard link costs no write and no fsync.
            if fs::hard_link(old.join(key), &path).is_ok() {
                continue;
            }
        }
        let mut f = ctx(
            OpenOptions::new().write(true).create_new(true).mode(mode & 0o777).open(&path),
            "cannot create",
            &path,
        )?;
        ctx(f.set_permissions(fs::Permissions::from_mode(mode)), "cannot set mode of", &path)?;
        ctx(f.write_all(value), "cannot write", &path)?;
    }
    // One syncfs for the whole generation instead of an fsync per file and directory: the same
    // durability before `..data` is swapped, at the cost of one call (it reports write-back errors
    // since Linux 5.8).
    let root_dir = ctx(File::open(&root), "cannot open", &root)?;
    ctx(rustix::fs::syncfs(&root_dir).map_err(io::Error::from), "cannot sync the file system of", &root)?;
    let mut top: Vec<String> = tree.keys().map(|k| k.split('/').next().unwrap_or(k).to_string()).collect();
    top.dedup();
    generation.top = top;
    Ok(generation)
}

/// Points `..data` at the staged generation in one rename, then makes the visible top-level entries
/// link through `..data` and removes the previous generations.
pub fn commit_generation(mut generation: Generation) -> Result<(), CommitError> {
    let dest = generation.dest.clone();
    let tmp = dest.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    ctx(std::os::unix::fs::symlink(&generation.name, &tmp), "cannot create symlink", &tmp)?;
    ctx(fs::rename(&tmp, dest.join(DATA)), "cannot swap", &dest.join(DATA))?;
    generation.done = true;
    sync_dir(&dest)?;
    // Visible entries: `name -> ..data/name`. Replaced by rename, never written through.
    for name in &generation.top {
        let link = dest.join(name);
        let target = Path::new(DATA).join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let tmp = dest.join(format!("..{name}.kvsync-link"));
        let _ = fs::remove_file(&tmp);
        ctx(std::os::unix::fs::symlink(&target, &tmp), "cannot create symlink", &tmp)?;
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(CommitError { action: "cannot replace", path: link, source: e });
        }
    }
    // Entries that no longer exist: remove the links that point into `..data`; leave anything else.
    if let Ok(rd) = fs::read_dir(&dest) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("..") {
                if n != DATA
                    && n != generation.name
                    && (n.starts_with("..1") || n.starts_with("..2") || n.ends_with(".kvsync-link"))
                {
                    // An older generation or a leftover from an interrupted run.
                    let p = e.path();
                    let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                }
                continue;
            }
            if !generation.top.contains(&n) {
                if let Ok(t) = fs::read_link(e.path()) {
                    if t.starts_with(DATA) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }
    sync_dir(&dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(kv: &[(&str, &str)]) -> BTreeMap<String, Bytes> {
        kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect()
    }

    #[test]
    fn single_file_commit_sets_mode_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("app.conf");
        let s = stage_file(&dest, b"hello", 0o600).unwrap();
        assert_eq!(fs::metadata(s.path()).unwrap().permissions().mode() & 0o777, 0o600);
        s.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(target_mode(&dest, None), 0o600);
        // A dropped stage leaves nothing behind.
        let s = stage_file(&dest, b"other", 0o600).unwrap();
        let tmp = s.path().to_path_buf();
        drop(s);
        assert!(!tmp.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stray_temp_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("a.conf");
        fs::write(d.path().join(".a.conf.kvsync-tmp-1-deadbeef"), "x").unwrap();
        fs::write(d.path().join("keep"), "x").unwrap();
        clean_stray_temp_files(&dest);
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["keep"]);
    }

    #[test]
    fn missing_parent_is_reported() {
        let err = check_parent(Path::new("/nonexistent-kvsync/dir/a.conf")).unwrap_err();
        assert!(err.contains("/nonexistent-kvsync/dir does not exist"), "{err}");
    }

    #[test]
    fn generations_flip_whole_sets() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let t1 = tree(&[("a.conf", "1"), ("sub/b", "2")]);
        let g = stage_generation(&dest, &t1, None, 0o640).unwrap();
        commit_generation(g).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a.conf")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dest.join("sub/b")).unwrap(), "2");
        assert_eq!(fs::read_link(dest.join("a.conf")).unwrap(), Path::new("..data/a.conf"));
        let first = current_generation(&dest).unwrap();

        let t2 = tree(&[("a.conf", "1"), ("c", "3")]);
        let g = stage_generation(&dest, &t2, Some(&t1), 0o640).unwrap();
        // Unchanged files are hard links to the previous generation's.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(g.path().join("a.conf")).unwrap().nlink(), 2);
        commit_generation(g).unwrap();
        assert_eq!(fs::read_to_string(dest.join("c")).unwrap(), "3");
        assert!(!dest.join("sub").exists(), "removed keys disappear");
        assert!(!dest.join(&first).exists(), "the old generation is removed");
        assert_eq!(fs::metadata(dest.join("c")).unwrap().permissions().mode() & 0o777, 0o640);
        let entries: Vec<String> =
            fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(entries.len(), 4, "{entries:?}"); // ..data, one generation, a.conf, c
    }

    #[test]
    fn planted_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        fs::create_dir(&dest).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dest.join("a.conf")).unwrap();
        let g = stage_generation(&dest, &tree(&[("a.conf", "new")]), None, 0o644).unwrap();
        commit_generation(g).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(dest.join("a.conf")).unwrap(), "new");
    }

    #[test]
    fn stray_generations_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let g = stage_generation(&dest, &tree(&[("a", "1")]), None, 0o644).unwrap();
        let current = g.path();
        commit_generation(g).unwrap();
        fs::create_dir(dest.join("..2020_01_01_00_00_00.000000000abcd")).unwrap();
        std::os::unix::fs::symlink("..nowhere", dest.join(DATA_TMP)).unwrap();
        clean_stray_generations(&dest);
        let mut names: Vec<String> =
            fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let mut want =
            vec![DATA.to_string(), current.file_name().unwrap().to_string_lossy().into_owned(), "a".to_string()];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn dates() {
        assert_eq!(crate::timefmt::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::timefmt::civil_from_days(20417), (2025, 11, 25));
    }
}
