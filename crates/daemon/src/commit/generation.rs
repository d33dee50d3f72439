//! The `files` format's commit, in the kubelet layout. Each generation is a directory `..<timestamp>`;
//! the `..data` symlink points at the current one and is swapped with one rename; the visible
//! top-level entries are symlinks through `..data`, so the whole set flips at once. The generation a
//! swap replaced is kept as the spare and becomes the next generation, patched with only what changed
//! (see `TreeState`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvsync_watch::snapshot::same_bytes;

use super::{ctx, parent_of, sync_dir, CommitError};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

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

/// What a `files` destination holds after a commit, kept between render passes so that the next
/// commit costs O(change) instead of O(keys).
///
/// Two generation directories live side by side: the current one (`..data` points at it) and the
/// spare, the one it replaced. The next commit renames the spare to a fresh generation name (so a
/// reader still holding its old path gets ENOENT, as with a deleted generation, never a mix), brings
/// it up to date by writing only the files that differ from what it holds, and swaps `..data` to it.
/// Files are never written in place: a changed file is unlinked and created anew, so a reader with an
/// open file keeps the bytes it opened, and generations may share inodes (hard links).
#[derive(Debug)]
pub struct TreeState {
    /// The generation `..data` points at, and its files.
    pub current: String,
    pub files: BTreeMap<String, Bytes>,
    /// The previous generation, still on disk.
    spare: Option<Spare>,
    /// The mode every file was created with (a spare made with another mode is not reused).
    mode: u32,
    /// Whether the visible top-level links are known to match `files` (false for a state read from
    /// disk: a previous run may have been interrupted while swapping them).
    links_known: bool,
    /// A spare being made in the background when there was none (after the first commit).
    building: Option<SpareBuild>,
}

/// Changes to a set of files, sorted by key, each key once: the new bytes, or None for a removal.
pub type Changes = Vec<(String, Option<Bytes>)>;

/// A generation on disk that is not current: its name, its files, and the changes that would make
/// it equal to the current generation (the ones the last commit applied).
#[derive(Debug)]
struct Spare {
    name: String,
    files: BTreeMap<String, Bytes>,
    behind: Changes,
}

/// Applies `changes` to `files`.
fn apply(files: &mut BTreeMap<String, Bytes>, changes: &Changes) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                files.insert(k.clone(), v.clone());
            }
            None => {
                files.remove(k);
            }
        }
    }
}

/// A copy of the current generation made of hard links, built off the render path so that the first
/// change after a start is as cheap as the later ones. Dropping it before it is used cancels it and
/// removes what it made.
#[derive(Debug)]
struct SpareBuild {
    handle: Option<std::thread::JoinHandle<Option<String>>>,
    cancel: Arc<AtomicBool>,
}

impl SpareBuild {
    fn start(dest: &Path, current: &str, keys: Vec<String>) -> Option<SpareBuild> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (dest, current, flag) = (dest.to_path_buf(), current.to_string(), Arc::clone(&cancel));
        let handle = std::thread::Builder::new()
            .name("kvsync-spare".into())
            .spawn(move || {
                let name = generation_name();
                let root = dest.join(&name);
                let built = link_copy(&dest.join(&current), &root, &keys, &flag);
                if built.is_err() || flag.load(Ordering::Relaxed) {
                    let _ = fs::remove_dir_all(&root);
                    return None;
                }
                Some(name)
            })
            .ok()?;
        Some(SpareBuild { handle: Some(handle), cancel })
    }

    /// Waits for the build; the spare's generation name if it was made whole.
    fn finish(mut self) -> Option<String> {
        self.handle.take()?.join().ok().flatten()
    }
}

impl Drop for SpareBuild {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Makes `to` a copy of `from` holding a hard link to each of `keys`, durable when it returns.
fn link_copy(from: &Path, to: &Path, keys: &[String], cancel: &AtomicBool) -> Result<(), CommitError> {
    ctx(fs::create_dir(to), "cannot create generation directory", to)?;
    let mut made: Option<PathBuf> = None;
    for (i, key) in keys.iter().enumerate() {
        if i % 1024 == 0 && cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let path = to.join(key);
        let parent = parent_of(&path);
        if made.as_deref() != Some(parent) && parent != to {
            ctx(fs::create_dir_all(parent), "cannot create directory", parent)?;
            made = Some(parent.to_path_buf());
        }
        ctx(fs::hard_link(from.join(key), &path), "cannot link", &path)?;
    }
    sync_file_system(to)
}

impl TreeState {
    /// Waits for a spare being built in the background (tests look at the directory afterwards).
    #[cfg(test)]
    fn wait_spare(&mut self) {
        if let Some(build) = self.building.take() {
            self.spare = build.finish().map(|name| Spare { name, files: self.files.clone(), behind: Vec::new() });
        }
    }

    /// The state a previous run left: `..data`'s generation and its files (read back), no spare.
    /// Its files count as made with `mode` and its visible links as right only if each is checked
    /// to be so; otherwise the first commit rewrites every file, or every link.
    pub fn on_disk(dest: &Path, mode: u32) -> Option<TreeState> {
        let current = current_generation(dest)?;
        let data = dest.join(DATA);
        let files = kvsync_watch::file::read_tree(&data, usize::MAX).ok()?;
        let modes_ok = files
            .keys()
            .all(|k| fs::symlink_metadata(data.join(k)).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode));
        let links_known = links_match(dest, &current, &files);
        let mode = if modes_ok { mode } else { u32::MAX };
        Some(TreeState { current, files, spare: None, mode, links_known, building: None })
    }

    /// Starts making a spare in the background if there is none (after a start whose first render
    /// found the destination already right).
    pub fn ensure_spare(&mut self, dest: &Path) {
        if self.spare.is_none() && self.building.is_none() && self.mode != u32::MAX {
            self.building = SpareBuild::start(dest, &self.current, self.files.keys().cloned().collect());
        }
    }
}

/// Whether the entries of `dest` are exactly `..data`, the generation `current`, and one link
/// `name -> ..data/name` per top-level name of `files`.
fn links_match(dest: &Path, current: &str, files: &BTreeMap<String, Bytes>) -> bool {
    let tops: std::collections::HashSet<&str> = top_names(files).into_iter().collect();
    let Ok(rd) = fs::read_dir(dest) else { return false };
    let mut linked = 0;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n == DATA || n == current || n.starts_with(crate::keep::KEPT_GENERATION) {
            continue;
        }
        if !tops.contains(n.as_str()) || fs::read_link(e.path()).ok() != Some(Path::new(DATA).join(&n)) {
            return false;
        }
        linked += 1;
    }
    linked == tops.len()
}

/// A `files` generation being prepared: a `..<timestamp>` directory holding every file.
#[derive(Debug)]
pub struct Generation {
    dest: PathBuf,
    name: String,
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

/// Up to this many changed files, each is fsynced with its directories; above it one syncfs makes
/// the whole generation durable in one call (cheaper for many files, but it also flushes whatever
/// else is dirty on the file system).
const FSYNC_EACH_MAX: usize = 256;

/// Creates `path` (which must not exist) holding `value`, with exactly `mode`.
fn create_file(path: &Path, value: &[u8], mode: u32, fsync: bool) -> Result<(), CommitError> {
    let mut f =
        ctx(OpenOptions::new().write(true).create_new(true).mode(mode & 0o777).open(path), "cannot create", path)?;
    ctx(f.set_permissions(fs::Permissions::from_mode(mode)), "cannot set mode of", path)?;
    ctx(f.write_all(value), "cannot write", path)?;
    if fsync {
        ctx(f.sync_all(), "cannot fsync", path)?;
    }
    Ok(())
}

fn sync_file_system(root: &Path) -> Result<(), CommitError> {
    let dir = ctx(File::open(root), "cannot open", root)?;
    ctx(rustix::fs::syncfs(&dir).map_err(io::Error::from), "cannot sync the file system of", root)
}

/// A generation staged on disk, not yet current, with the files it holds and the changes that made
/// it from the current one.
#[derive(Debug)]
pub struct StagedGeneration {
    generation: Generation,
    pub tree: BTreeMap<String, Bytes>,
    changes: Changes,
}

impl StagedGeneration {
    /// The generation directory, for a check command.
    pub fn path(&self) -> PathBuf {
        self.generation.path()
    }
}

/// Prepares a new generation under `dest` (created if missing; its parent must exist): the current
/// files of `state` with `changes` applied (every file, as additions, when there is no state). With a
/// usable spare it is renamed and patched, O(change); otherwise every file is written, or hard-linked
/// from the current generation when its bytes did not change. Keys are already validated
/// (`format::files`).
pub fn stage_generation(
    dest: &Path,
    state: Option<&mut TreeState>,
    changes: Changes,
    mode: u32,
) -> Result<StagedGeneration, CommitError> {
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
    let mut state = state;
    if let Some(s) = state.as_deref_mut() {
        if let (None, Some(build)) = (&s.spare, s.building.take()) {
            // A build of the current generation's copy: wait for it (it started at the last commit).
            s.spare = build.finish().map(|name| Spare { name, files: s.files.clone(), behind: Vec::new() });
        }
    }
    // The spare is used once: whatever happens next, it is no longer where the state says.
    if let Some(spare) = state.as_deref_mut().and_then(|s| s.spare.take()) {
        let usable = state.as_deref().is_some_and(|s| s.mode == mode);
        if usable && fs::rename(dest.join(&spare.name), &root).is_ok() {
            let generation = Generation { dest: dest.to_path_buf(), name, done: false };
            // The rename must be durable before `..data` may point at the new name.
            sync_dir(dest)?;
            let mut tree = spare.files;
            apply(&mut tree, &spare.behind);
            apply(&mut tree, &changes);
            // What the spare lacks: the last commit's changes, then these.
            let mut keys: Vec<&str> = spare.behind.iter().chain(&changes).map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            patch_generation(&root, &keys, &tree, mode)?;
            return Ok(StagedGeneration { generation, tree, changes });
        }
        // Made with another mode, or gone (removed by hand): write a whole generation instead.
        let _ = fs::remove_dir_all(dest.join(&spare.name));
    }
    let (tree, changes) = match state.as_deref() {
        Some(s) => {
            let mut tree = s.files.clone();
            apply(&mut tree, &changes);
            (tree, changes)
        }
        // Nothing before: the changes are every file (and no spare will need them).
        None => (changes.into_iter().filter_map(|(k, v)| Some((k, v?))).collect(), Changes::new()),
    };
    ctx(fs::create_dir(&root), "cannot create generation directory", &root)?;
    let generation = Generation { dest: dest.to_path_buf(), name, done: false };
    let previous = state.as_deref().filter(|s| s.mode == mode);
    let old = previous.map(|s| dest.join(&s.current));
    let mut made: Option<PathBuf> = None;
    for (key, value) in &tree {
        let path = root.join(key);
        let parent = parent_of(&path);
        // Keys are sorted, so files of one directory come together: create each directory once.
        if made.as_deref() != Some(parent) && parent != root {
            ctx(fs::create_dir_all(parent), "cannot create directory", parent)?;
            made = Some(parent.to_path_buf());
        }
        let unchanged = previous.and_then(|p| p.files.get(key)).is_some_and(|v| same_bytes(v, value));
        if let (true, Some(old)) = (unchanged, &old) {
            // Same bytes as in the current generation: a hard link costs no write and no fsync.
            if fs::hard_link(old.join(key), &path).is_ok() {
                continue;
            }
        }
        create_file(&path, value, mode, false)?;
    }
    // One syncfs for the whole generation instead of an fsync per file and directory: the same
    // durability before `..data` is swapped (it reports write-back errors since Linux 5.8).
    sync_file_system(&root)?;
    Ok(StagedGeneration { generation, tree, changes })
}

/// Brings the directory `root` to hold `want` at each of `keys` (sorted): a key `want` lacks is
/// removed, any other is unlinked if present and created anew; then makes it durable.
fn patch_generation(root: &Path, keys: &[&str], want: &BTreeMap<String, Bytes>, mode: u32) -> Result<(), CommitError> {
    let fsync_each = keys.len() <= FSYNC_EACH_MAX;
    let mut touched: Vec<PathBuf> = vec![root.to_path_buf()];
    // Removals first (a removed `a/b` may leave room for a new file `a`), then the directories they
    // leave empty, deepest first.
    let mut emptied: Vec<PathBuf> = Vec::new();
    for key in keys.iter().filter(|k| !want.contains_key(**k)) {
        let path = root.join(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Not in this generation (a key it never had; its parent may even be a file here).
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
            // A directory where a file was expected: the key was a folder in the spare; it is
            // emptied by the removals of its own keys.
            Err(_) if path.is_dir() => continue,
            Err(e) => return Err(CommitError { action: "cannot remove", path, source: e }),
        }
        let mut dir = parent_of(&path).to_path_buf();
        while dir != root {
            emptied.push(dir.clone());
            dir = parent_of(&dir).to_path_buf();
        }
    }
    emptied.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    emptied.dedup();
    for dir in &emptied {
        // Only empty directories go; one that still holds files stays and is fsynced.
        if fs::remove_dir(dir).is_err() {
            touched.push(dir.clone());
        } else {
            touched.push(parent_of(dir).to_path_buf());
        }
    }
    for (key, value) in keys.iter().filter_map(|k| want.get_key_value(*k)) {
        let path = root.join(key);
        let parent = parent_of(&path);
        if parent != root {
            ctx(fs::create_dir_all(parent), "cannot create directory", parent)?;
            let mut dir = parent.to_path_buf();
            while dir != root {
                touched.push(dir.clone());
                dir = parent_of(&dir).to_path_buf();
            }
        }
        // Never written in place: the inode may be shared with the current generation.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CommitError { action: "cannot replace", path, source: e }),
        }
        create_file(&path, value, mode, fsync_each)?;
    }
    if fsync_each {
        touched.sort();
        touched.dedup();
        for dir in touched.iter().filter(|d| d.exists()) {
            sync_dir(dir)?;
        }
        Ok(())
    } else {
        sync_file_system(root)
    }
}

/// The visible top-level names of a tree (`db/host` -> `db`), each once. Keys sharing a first
/// segment are contiguous in sorted order, so removing consecutive repeats is enough.
fn top_names(tree: &BTreeMap<String, Bytes>) -> Vec<&str> {
    let mut top: Vec<&str> = tree.keys().map(|k| top_name(k)).collect();
    top.dedup();
    top
}

/// Points `..data` at the staged generation in one rename, then makes the visible top-level entries
/// link through `..data`. With `keep_spare`, the generation it replaced is kept as the spare for the
/// next commit (or one is built in the background); otherwise it is removed, as is any other
/// generation. Returns what the destination now holds.
pub fn commit_generation(
    staged: StagedGeneration,
    previous: Option<TreeState>,
    mode: u32,
    keep_spare: bool,
) -> Result<TreeState, CommitError> {
    let StagedGeneration { mut generation, tree, changes } = staged;
    let dest = generation.dest.clone();
    let tmp = dest.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    ctx(std::os::unix::fs::symlink(&generation.name, &tmp), "cannot create symlink", &tmp)?;
    ctx(fs::rename(&tmp, dest.join(DATA)), "cannot swap", &dest.join(DATA))?;
    generation.done = true;
    sync_dir(&dest)?;
    match previous.as_ref().filter(|p| p.links_known) {
        Some(p) => {
            // Only names that appeared or went away need a link made or removed.
            for (key, value) in &changes {
                let top = top_name(key);
                match value {
                    Some(_) if !has_top(&p.files, top) => ensure_link(&dest, top)?,
                    None if !has_top(&tree, top) => remove_link(&dest, top),
                    _ => {}
                }
            }
        }
        None => {
            let new_top = top_names(&tree);
            for name in &new_top {
                ensure_link(&dest, name)?;
            }
            let new_set: std::collections::HashSet<&str> = new_top.iter().copied().collect();
            let keep = previous.as_ref().filter(|p| keep_spare && p.mode == mode).map(|p| p.current.as_str());
            if let Ok(rd) = fs::read_dir(&dest) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("..") {
                        if n != generation.name && Some(n.as_str()) != keep && is_generation_debris(&n) {
                            let p = e.path();
                            let _ = if p.is_dir() && !p.is_symlink() {
                                fs::remove_dir_all(&p)
                            } else {
                                fs::remove_file(&p)
                            };
                        }
                    } else if !new_set.contains(n.as_str()) {
                        remove_link(&dest, &n);
                    }
                }
            }
        }
    }
    // The replaced generation is the next commit's spare if its files have the mode asked for now
    // (one read back from disk has unknown modes); otherwise it goes, and a spare is made in the
    // background from the new generation.
    let spare = match previous {
        Some(p) if keep_spare && p.mode == mode => Some(Spare { name: p.current, files: p.files, behind: changes }),
        Some(p) => {
            let _ = fs::remove_dir_all(dest.join(&p.current));
            None
        }
        None => None,
    };
    sync_dir(&dest)?;
    let building = match spare {
        None if keep_spare => SpareBuild::start(&dest, &generation.name, tree.keys().cloned().collect()),
        _ => None,
    };
    Ok(TreeState { current: generation.name.clone(), files: tree, spare, mode, links_known: true, building })
}

/// The visible top-level name a key lives under (`db/host` -> `db`).
fn top_name(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Whether `tree` has a file named `top` or under `top/`.
fn has_top(tree: &BTreeMap<String, Bytes>, top: &str) -> bool {
    if tree.contains_key(top) {
        return true;
    }
    let dir = format!("{top}/");
    tree.range::<str, _>((std::ops::Bound::Included(dir.as_str()), std::ops::Bound::Unbounded))
        .next()
        .is_some_and(|(k, _)| k.starts_with(&dir))
}

/// Makes `dest/name` a link to `..data/name`, replaced by rename, never written through.
fn ensure_link(dest: &Path, name: &str) -> Result<(), CommitError> {
    let link = dest.join(name);
    let target = Path::new(DATA).join(name);
    // Nothing there yet (the usual case for a new name): one call.
    match std::os::unix::fs::symlink(&target, &link) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CommitError { action: "cannot create symlink", path: link, source: e }),
    }
    if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let tmp = dest.join(format!("..{name}.kvsync-link"));
    let _ = fs::remove_file(&tmp);
    ctx(std::os::unix::fs::symlink(&target, &tmp), "cannot create symlink", &tmp)?;
    if let Err(e) = fs::rename(&tmp, &link) {
        let _ = fs::remove_file(&tmp);
        return Err(CommitError { action: "cannot replace", path: link, source: e });
    }
    Ok(())
}

/// Removes `dest/name` if it is a link into `..data` (anything else there is left alone).
fn remove_link(dest: &Path, name: &str) {
    let link = dest.join(name);
    if fs::read_link(&link).is_ok_and(|t| t.starts_with(DATA)) {
        let _ = fs::remove_file(&link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(kv: &[(&str, &str)]) -> BTreeMap<String, Bytes> {
        kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect()
    }

    /// The changes that turn `old` into `new` (what an output computes from its view).
    fn changes_between(old: &BTreeMap<String, Bytes>, new: &BTreeMap<String, Bytes>) -> Changes {
        let mut changes: Changes = old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), None)).collect();
        changes.extend(
            new.iter()
                .filter(|(k, v)| old.get(*k).is_none_or(|o| !same_bytes(o, v)))
                .map(|(k, v)| (k.clone(), Some(v.clone()))),
        );
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    /// Commits `t` on top of `state` the way an output does.
    fn commit(dest: &Path, t: &BTreeMap<String, Bytes>, mut state: Option<TreeState>) -> TreeState {
        let g = stage(dest, t, state.as_mut());
        assert_eq!(&g.tree, t);
        commit_generation(g, state, 0o640, true).unwrap()
    }

    fn stage(dest: &Path, t: &BTreeMap<String, Bytes>, state: Option<&mut TreeState>) -> StagedGeneration {
        let changes = changes_between(state.as_ref().map(|s| &s.files).unwrap_or(&BTreeMap::new()), t);
        stage_generation(dest, state, changes, 0o640).unwrap()
    }

    fn names(dest: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            fs::read_dir(dest).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    /// What a reader sees through the destination: every file under the visible entries.
    fn visible(dest: &Path) -> BTreeMap<String, Bytes> {
        kvsync_watch::file::read_tree(&dest.join(DATA), usize::MAX).unwrap()
    }

    #[test]
    fn generations_flip_whole_sets() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let t1 = tree(&[("a.conf", "1"), ("sub/b", "2")]);
        let s1 = commit(&dest, &t1, None);
        assert_eq!(fs::read_to_string(dest.join("a.conf")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dest.join("sub/b")).unwrap(), "2");
        assert_eq!(fs::read_link(dest.join("a.conf")).unwrap(), Path::new("..data/a.conf"));
        let first = current_generation(&dest).unwrap();
        assert_eq!(s1.current, first);

        let t2 = tree(&[("a.conf", "1"), ("c", "3")]);
        let mut s1 = Some(s1);
        let g = stage(&dest, &t2, s1.as_mut());
        // Unchanged files are hard links to the previous generation's.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(g.path().join("a.conf")).unwrap().nlink(), 2);
        let s2 = commit_generation(g, s1, 0o640, true).unwrap();
        assert_eq!(fs::read_to_string(dest.join("c")).unwrap(), "3");
        assert!(!dest.join("sub").exists(), "removed keys disappear");
        assert_eq!(fs::metadata(dest.join("c")).unwrap().permissions().mode() & 0o777, 0o640);
        // ..data, the current generation, the previous one kept as the spare, a.conf, c
        assert_eq!(names(&dest).len(), 5, "{:?}", names(&dest));
        assert!(dest.join(&first).exists(), "the replaced generation is kept as the spare");
        assert_eq!(visible(&dest), t2);
        let _ = s2;
    }

    #[test]
    fn the_spare_is_patched_with_only_what_changed() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let t1 = tree(&[("a", "1"), ("b/x", "2"), ("b/y", "3"), ("d/e/f", "4"), ("keep", "k")]);
        let s1 = commit(&dest, &t1, None);
        let gen1 = s1.current.clone();
        let t2 = tree(&[("a", "1"), ("b/x", "2"), ("b/y", "33"), ("d/e/f", "4"), ("keep", "k")]);
        let s2 = commit(&dest, &t2, Some(s1));
        let keep_inode = fs::metadata(dest.join(&s2.current).join("keep")).unwrap().ino();
        // A reader holding the current `b/y` open keeps the bytes it opened through the next commits.
        let mut held = File::open(dest.join("b/y")).unwrap();

        // Third commit: the first generation (the spare) is renamed and patched: a file replaced by a
        // folder, a folder replaced by a file, a deep folder emptied, a value changed, one unchanged.
        let t3 = tree(&[("a/new", "5"), ("b", "6"), ("keep", "k"), ("z", "7")]);
        let s3 = commit(&dest, &t3, Some(s2));
        assert_eq!(visible(&dest), t3);
        assert!(!dest.join(&gen1).exists(), "the spare was renamed to a fresh generation name");
        assert_ne!(s3.current, gen1);
        let gens: Vec<String> = names(&dest).into_iter().filter(|n| n.starts_with("..2")).collect();
        assert_eq!(gens.len(), 2, "current and spare only: {gens:?}");
        assert!(!dest.join(&s3.current).join("d").exists(), "emptied folders are removed");
        assert_eq!(fs::read_link(dest.join("z")).unwrap(), Path::new("..data/z"));
        assert!(!dest.join("d").exists(), "the link of a name that went away is removed");
        // The unchanged file of the patched spare is the one made for the first generation, which
        // the second generation linked: nothing was rewritten for it.
        assert_eq!(fs::metadata(dest.join(&s3.current).join("keep")).unwrap().ino(), keep_inode);

        // And a fourth, back to the start, patches the second generation, where `b/y` was opened.
        let s4 = commit(&dest, &t1, Some(s3));
        let mut s = String::new();
        std::io::Read::read_to_string(&mut held, &mut s).unwrap();
        assert_eq!(s, "33", "an open file is never rewritten");
        assert_eq!(visible(&dest), t1);
        assert_eq!(fs::read_to_string(dest.join("d/e/f")).unwrap(), "4");
        assert_eq!(fs::metadata(dest.join("b/y")).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!dest.join("z").exists());
        let _ = s4;
    }

    #[test]
    fn a_failed_stage_leaves_the_destination_and_drops_the_spare() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let t1 = tree(&[("a", "1")]);
        let s1 = commit(&dest, &t1, None);
        let mut s2 = Some(commit(&dest, &tree(&[("a", "2")]), Some(s1)));
        // A staged generation that is dropped (a check refused it) is removed with the spare it used.
        let g = stage(&dest, &tree(&[("a", "3")]), s2.as_mut());
        drop(g);
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "2");
        let gens: Vec<String> = names(&dest).into_iter().filter(|n| n.starts_with("..2")).collect();
        assert_eq!(gens.len(), 1, "{gens:?}");
        // The next commit writes a whole generation and works.
        let s3 = commit(&dest, &tree(&[("a", "4")]), s2);
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "4");
        assert!(s3.spare.is_some());
    }

    #[test]
    fn a_state_read_from_disk_is_not_trusted_for_modes_or_links() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        commit(&dest, &tree(&[("a", "1"), ("old", "x")]), None);
        fs::set_permissions(dest.join("..data/a"), fs::Permissions::from_mode(0o600)).unwrap();
        let on_disk = TreeState::on_disk(&dest, 0o640).unwrap();
        assert_eq!(on_disk.files, tree(&[("a", "1"), ("old", "x")]));
        let mut s = commit(&dest, &tree(&[("a", "1"), ("b", "2")]), Some(on_disk));
        assert!(s.spare.is_none(), "a generation of unknown modes is not kept");
        assert_eq!(fs::metadata(dest.join("a")).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!dest.join("old").exists());
        // Instead, a spare is made from the new generation in the background.
        s.wait_spare();
        let spare = s.spare.as_ref().expect("a spare was built");
        assert_eq!(spare.files, s.files);
        assert_eq!(fs::read_to_string(dest.join(&spare.name).join("b")).unwrap(), "2");
        let gens: Vec<String> = names(&dest).into_iter().filter(|n| n.starts_with("..2")).collect();
        assert_eq!(gens.len(), 2, "{gens:?}");
    }

    #[test]
    fn without_spares_one_generation_remains() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let t1 = tree(&[("a", "1")]);
        let g = stage(&dest, &t1, None);
        let s1 = commit_generation(g, None, 0o640, false).unwrap();
        assert!(s1.building.is_none() && s1.spare.is_none(), "no spare is built for a single pass");
        let t2 = tree(&[("a", "2")]);
        let mut s1 = Some(s1);
        let g = stage(&dest, &t2, s1.as_mut());
        let s2 = commit_generation(g, s1, 0o640, false).unwrap();
        assert!(s2.spare.is_none());
        let gens: Vec<String> = names(&dest).into_iter().filter(|n| n.starts_with("..2")).collect();
        assert_eq!(gens, vec![s2.current.clone()], "the replaced generation is removed");
        assert_eq!(visible(&dest), t2);
    }

    #[test]
    fn planted_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        fs::create_dir(&dest).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dest.join("a.conf")).unwrap();
        commit(&dest, &tree(&[("a.conf", "new")]), None);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(dest.join("a.conf")).unwrap(), "new");
    }

    #[test]
    fn stray_generations_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let mut s = commit(&dest, &tree(&[("a", "1")]), None);
        s.wait_spare();
        let current = dest.join(&s.current);
        fs::create_dir(dest.join("..2020_01_01_00_00_00.000000000abcd")).unwrap();
        std::os::unix::fs::symlink("..nowhere", dest.join(DATA_TMP)).unwrap();
        clean_stray_generations(&dest);
        let mut want =
            vec![DATA.to_string(), current.file_name().unwrap().to_string_lossy().into_owned(), "a".to_string()];
        want.sort();
        assert_eq!(names(&dest), want);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// Any sequence of sets of files, committed one after the other, each reaches the disk
        /// exactly: files flip to folders and back, folders empty and go, values change and return.
        #[test]
        fn any_sequence_of_commits_lands_exactly(
            seq in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::sample::select(vec!["a", "b", "a/x", "a/y", "b/z", "c/d/e", "c/f", "c", "d"]),
                    proptest::sample::select(vec!["1", "2", "3"]),
                    0..6,
                ),
                1..7,
            )
        ) {
            let d = tempfile::tempdir().unwrap();
            let dest = d.path().join("out");
            let mut state: Option<TreeState> = None;
            for t in seq {
                let kv = t.iter().map(|(k, v)| (*k, Bytes::from(v.to_string())));
                let Ok(t) = crate::format::files::layout(kv) else { continue };
                let s = commit(&dest, &t, state.take());
                proptest::prop_assert_eq!(visible(&dest), t.clone());
                let mut want: Vec<String> = top_names(&t).iter().map(|n| n.to_string()).collect();
                want.push(DATA.to_string());
                let mut seen: Vec<String> = names(&dest).into_iter().filter(|n| !n.starts_with("..2")).collect();
                want.sort();
                seen.sort();
                proptest::prop_assert_eq!(seen, want);
                if let Some(spare) = &s.spare {
                    // The spare holds what it says, once its pending changes are applied.
                    let mut held = kvsync_watch::file::read_tree(&dest.join(&spare.name), usize::MAX).unwrap();
                    proptest::prop_assert_eq!(&held, &spare.files);
                    apply(&mut held, &spare.behind);
                    proptest::prop_assert_eq!(held, t);
                }
                state = Some(s);
            }
        }
    }

    #[test]
    fn dates() {
        assert_eq!(crate::timefmt::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::timefmt::civil_from_days(20417), (2025, 11, 25));
    }
}
