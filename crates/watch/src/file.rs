//! The `file` source: a directory tree read as keys (`a/b.conf` is key `a/b.conf`).
//!
//! `watch` mode follows the tree with inotify (through notify) and re-reads it after each burst of
//! events; `poll` mode re-reads it every `interval` and reports only when the SHA-256 of the content
//! changed. Entries whose name starts with `..` are skipped: that is how a Kubernetes ConfigMap volume
//! keeps its generations (`..2024_01_01_00_00_00.123`, `..data`), while its visible entries are
//! symlinks through `..data`, which are followed. The atomic `..data` swap is one rename in the root
//! directory, so it shows up as one event and one consistent re-read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hash;
use crate::retry::Backoff;
use crate::snapshot::{Change, Entries, Update};
use crate::source::{BoxFuture, Mode, Source, SourceError, UpdateSink};
use crate::stats::ErrorKind;

/// How deep symlinked or nested directories are followed before the tree is considered cyclic.
const MAX_DEPTH: usize = 32;

/// A directory tree as a source of keys.
pub struct FileSource {
    pub root: PathBuf,
    pub mode: Mode,
    /// Files larger than this are reported as errors and left out.
    pub max_value_bytes: usize,
    pub backoff: Backoff,
}

impl Source for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn run(
        self: Box<Self>,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move { self.run_inner(prefixes, sink, cancel).await })
    }
}

impl FileSource {
    async fn run_inner(
        mut self,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        // The SHA-256 last reported per prefix (poll mode's change detection; also spares the engine
        // a diff when a full re-read finds nothing new).
        let mut last: HashMap<String, [u8; 32]> = HashMap::new();
        let mut version = 0u64;
        // The whole tree as last read, so that a change to a few files is read as just those files.
        let mut current: Option<Entries> = None;
        // What the watcher saw since the last read; None: nothing yet (read everything).
        let mut touched: Option<Touched> = None;
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Touched>();
        // A watcher that lives as long as this task; re-created if the root disappears.
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        loop {
            if self.mode == Mode::Watch && watcher.is_none() {
                match self.watch(ev_tx.clone()) {
                    Ok(w) => {
                        info!(source = sink.name(), path = %self.root.display(), "watching directory");
                        watcher = Some(w);
                    }
                    Err(e) => self.fail(&sink, format!("cannot watch {}: {e}", self.root.display())),
                }
            }
            sink.stats().request();
            let root = self.root.clone();
            let max = self.max_value_bytes;
            // A few files changed: read just those and send deltas. Anything else: read the tree.
            if let (Some(Touched::Paths(paths)), Some(tree)) = (touched.take(), current.as_mut()) {
                let root2 = root.clone();
                let read = tokio::task::spawn_blocking(move || read_paths(&root2, &paths, max)).await;
                if let Ok(Ok(changes)) = read {
                    let changes = apply_changes(tree, changes);
                    version += 1;
                    for p in &prefixes {
                        let mine: Vec<(String, Option<Bytes>)> =
                            changes.iter().filter(|(k, _)| k.starts_with(p.as_str())).cloned().collect();
                        if mine.is_empty() {
                            continue;
                        }
                        last.remove(p);
                        sink.stats().changed();
                        let update = Update { prefix: p.clone(), version, change: Change::Delta(mine) };
                        if sink.send(update).await.is_err() {
                            return Ok(());
                        }
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        Some(t) = ev_rx.recv() => touched = Some(drain(t, &mut ev_rx)),
                    }
                    continue;
                }
                // The paths could not be read one by one (a directory appeared, a read failed):
                // fall through to a full read.
            }
            let read = tokio::task::spawn_blocking(move || read_tree(&root, max)).await;
            let wait = match read {
                Ok(Ok(entries)) => {
                    self.backoff.reset();
                    version += 1;
                    // A good read is a success even when nothing changed: it ends a run of failures
                    // (a directory that came back with the same content).
                    sink.stats().ok(version);
                    for p in &prefixes {
                        let sub: Entries = entries
                            .range(p.clone()..)
                            .take_while(|(k, _)| k.starts_with(p.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let h = hash::of_entries(&sub);
                        if last.get(p) == Some(&h) {
                            continue;
                        }
                        last.insert(p.clone(), h);
                        sink.stats().changed();
                        let update =
                            Update { prefix: p.clone(), version, change: Change::Full { entries: sub, resync: false } };
                        if sink.send(update).await.is_err() {
                            return Ok(());
                        }
                    }
                    if self.mode == Mode::Watch {
                        current = Some(entries);
                    }
                    match self.mode {
                        Mode::Poll { interval } => Some(jittered(interval)),
                        Mode::Watch if watcher.is_some() => None,
                        Mode::Watch => Some(self.backoff.slowest()),
                    }
                }
                Ok(Err(e)) => {
                    self.fail(&sink, e);
                    current = None;
                    // Re-arm the watcher too: the root may have been replaced.
                    watcher = None;
                    match self.backoff.next_delay() {
                        Some(d) => Some(d),
                        None => {
                            return Err(SourceError::GaveUp {
                                attempts: self.backoff.failures(),
                                last: format!("cannot read {}", self.root.display()),
                            })
                        }
                    }
                }
                Err(join) => {
                    return Err(SourceError::Config(format!("reading {} panicked: {join}", self.root.display())))
                }
            };
            tokio::select! {
                // Shutdown.
                _ = cancel.cancelled() => return Ok(()),
                // Poll interval or retry delay elapsed: read everything.
                _ = sleep_opt(wait) => touched = Some(Touched::Rescan),
                // The watcher saw completed changes: take everything queued so far.
                Some(t) = ev_rx.recv() => touched = Some(drain(t, &mut ev_rx)),
            }
        }
    }

    fn fail(&self, sink: &UpdateSink, message: String) {
        warn!(source = sink.name(), path = %self.root.display(), error = %message, "read failed; will retry");
        sink.stats().error(ErrorKind::Other, message);
    }

    fn watch(&self, tx: mpsc::UnboundedSender<Touched>) -> notify::Result<notify::RecommendedWatcher> {
        use notify::event::{CreateKind, RemoveKind};
        use notify::EventKind;
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let touched = match ev {
                Ok(ev) if !completes_a_change(&ev.kind) => return,
                // Directories come and go with everything in them: read the tree.
                Ok(ev)
                    if ev.need_rescan()
                        || ev.paths.is_empty()
                        || matches!(
                            ev.kind,
                            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
                        ) =>
                {
                    Touched::Rescan
                }
                Ok(ev) => Touched::Paths(ev.paths),
                Err(_) => Touched::Rescan,
            };
            let _ = tx.send(touched);
        })?;
        w.watch(&self.root, RecursiveMode::Recursive)?;
        Ok(w)
    }
}

/// What the watcher reported since the last read.
#[derive(Debug)]
enum Touched {
    /// These files changed (created, written, renamed, removed).
    Paths(Vec<PathBuf>),
    /// Something that needs the whole tree read again.
    Rescan,
}

/// Merges everything queued behind `first`.
fn drain(first: Touched, rx: &mut mpsc::UnboundedReceiver<Touched>) -> Touched {
    let mut acc = first;
    while let Ok(t) = rx.try_recv() {
        acc = match (acc, t) {
            (Touched::Paths(mut a), Touched::Paths(b)) => {
                a.extend(b);
                Touched::Paths(a)
            }
            _ => Touched::Rescan,
        };
    }
    acc
}

/// Reads the named files as key changes (`None`: the file is gone). Err when one of them cannot be
/// read as a single key (a `..` entry such as a ConfigMap's `..data` swap, a directory, an unreadable
/// file): the caller then reads the whole tree.
fn read_paths(root: &Path, paths: &[PathBuf], max: usize) -> Result<Vec<(String, Option<Bytes>)>, ()> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        if !seen.insert(path) {
            continue;
        }
        let rel = path.strip_prefix(root).map_err(|_| ())?;
        let mut parts = Vec::new();
        for c in rel.components() {
            let std::path::Component::Normal(n) = c else { return Err(()) };
            let n = n.to_str().ok_or(())?;
            if n.starts_with("..") {
                return Err(());
            }
            parts.push(n);
        }
        if parts.is_empty() {
            return Err(());
        }
        let key = parts.join("/");
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                if m.len() as usize > max {
                    return Err(());
                }
                match std::fs::read(path) {
                    Ok(data) => out.push((key, Some(Bytes::from(data)))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push((key, None)),
                    Err(_) => return Err(()),
                }
            }
            Ok(m) if m.is_dir() => return Err(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push((key, None)),
            Err(_) => return Err(()),
        }
    }
    Ok(out)
}

/// Applies file changes to the tree; a vanished path also removes everything under it (a renamed
/// or removed directory). Returns the effective changes.
fn apply_changes(tree: &mut Entries, changes: Vec<(String, Option<Bytes>)>) -> Vec<(String, Option<Bytes>)> {
    let mut out = Vec::new();
    for (key, value) in changes {
        match value {
            Some(v) => {
                if tree.get(&key) != Some(&v) {
                    tree.insert(key.clone(), v.clone());
                    out.push((key, Some(v)));
                }
            }
            None => {
                if tree.remove(&key).is_some() {
                    out.push((key.clone(), None));
                }
                let dir = format!("{key}/");
                let under: Vec<String> = tree
                    .range(dir.clone()..)
                    .take_while(|(k, _)| k.starts_with(&dir))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in under {
                    tree.remove(&k);
                    out.push((k, None));
                }
            }
        }
    }
    out
}

/// Whether an event marks a finished change worth a re-read. A file being written shows up as
/// create, modify(data)... then close-write: reading before the close would publish half a value,
/// so only the close counts. Renames (the atomic way, and how a ConfigMap swaps `..data`), removals,
/// directory creation and metadata changes count at once. Reads (including our own) never do.
fn completes_a_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(CreateKind::File) => false, // its close-write follows
        EventKind::Modify(ModifyKind::Data(_)) => false, // mid-write
        _ => true,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// `interval` spread by up to ±10% so that many instances do not poll in step.
pub fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 10;
    if spread == 0 {
        return interval;
    }
    interval - Duration::from_millis(spread) + Duration::from_millis(fastrand::u64(0..=2 * spread))
}

/// Reads every regular file under `root` (following symlinks, skipping `..`-prefixed names) as
/// key -> content, keys being `/`-joined relative paths.
pub fn read_tree(root: &Path, max_value_bytes: usize) -> Result<Entries, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let mut out = Entries::new();
    walk(root, "", 0, max_value_bytes, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, rel: &str, depth: usize, max: usize, out: &mut Entries) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{}: directories nested deeper than {MAX_DEPTH} (a symlink loop?)", dir.display()));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            warn!(dir = %dir.display(), "skipping a file name that is not UTF-8");
            continue;
        };
        if name.starts_with("..") {
            continue;
        }
        let path = ent.path();
        // The directory entry tells the type without a call, except for a symlink, which is followed:
        // a ConfigMap's visible entries link through `..data`.
        let file_type = match ent.file_type() {
            Ok(t) if !t.is_symlink() => t,
            _ => match std::fs::metadata(&path) {
                Ok(m) => m.file_type(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // dangling link or raced delete
                Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
            },
        };
        let key = format!("{rel}{name}");
        if file_type.is_dir() {
            walk(&path, &format!("{key}/"), depth + 1, max, out)?;
        } else if file_type.is_file() {
            files.push((key, path));
        } else {
            debug!(path = %path.display(), "skipping a special file");
        }
    }
    // Reading is a few system calls per file; a large directory is read on every core.
    let threads =
        if files.len() < 512 { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) };
    let chunk = files.len().div_ceil(threads).max(1);
    let read: Vec<Result<Vec<(String, Bytes)>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files.chunks(chunk).map(|part| scope.spawn(move || read_files(part, max))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a reader thread panicked".into()))).collect()
    });
    for part in read {
        out.extend(part?);
    }
    Ok(())
}

/// Reads regular files (a file removed meanwhile is skipped); a file over `max` bytes is an error.
fn read_files(files: &[(String, std::path::PathBuf)], max: usize) -> Result<Vec<(String, Bytes)>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(files.len());
    for (key, path) in files {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let len = f.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.len();
        if len as usize > max {
            return Err(format!("{} is {len} bytes, over the {max}-byte value limit", path.display()));
        }
        let mut data = Vec::with_capacity(len as usize);
        // One byte more than the limit is enough to tell that a file grew past it while being read.
        f.take((max as u64).saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if data.len() > max {
            return Err(format!("{} is over the {max}-byte value limit", path.display()));
        }
        out.push((key.clone(), Bytes::from(data)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reads_tree_and_follows_configmap_layout() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("..2024_01_01/sub")).unwrap();
        fs::write(root.join("..2024_01_01/a.conf"), "A").unwrap();
        fs::write(root.join("..2024_01_01/sub/b"), "B").unwrap();
        std::os::unix::fs::symlink("..2024_01_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.conf", root.join("a.conf")).unwrap();
        std::os::unix::fs::symlink("..data/sub", root.join("sub")).unwrap();
        let e = read_tree(root, 1 << 20).unwrap();
        let keys: Vec<_> = e.keys().cloned().collect();
        assert_eq!(keys, vec!["a.conf", "sub/b"]);
        assert_eq!(e["a.conf"], "A");
    }

    #[test]
    fn a_large_directory_is_read_whole_on_several_threads() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        for i in 0..2000 {
            fs::write(d.path().join(format!("k{i:04}")), format!("v{i}")).unwrap();
        }
        fs::write(d.path().join("sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("k0007", d.path().join("link")).unwrap();
        let e = read_tree(d.path(), 1 << 20).unwrap();
        assert_eq!(e.len(), 2002);
        assert_eq!(e["k1999"], "v1999");
        assert_eq!(e["sub/x"], "x");
        assert_eq!(e["link"], "v7");
        // A file over the limit among many is still an error naming it.
        fs::write(d.path().join("k1234"), vec![b'x'; 100]).unwrap();
        let err = read_tree(d.path(), 10).unwrap_err();
        assert!(err.contains("k1234") && err.contains("10-byte"), "{err}");
    }

    #[test]
    fn oversized_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("big"), vec![b'x'; 100]).unwrap();
        let err = read_tree(d.path(), 10).unwrap_err();
        assert!(err.contains("big") && err.contains("10-byte"), "{err}");
    }

    #[test]
    fn missing_root_is_an_error() {
        let err = read_tree(Path::new("/nonexistent/kvsync"), 10).unwrap_err();
        assert!(err.contains("/nonexistent/kvsync"), "{err}");
    }

    #[tokio::test]
    async fn watch_mode_reports_edits() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("app")).unwrap();
        fs::write(d.path().join("app/x"), "1").unwrap();
        let src = FileSource {
            root: d.path().to_path_buf(),
            mode: Mode::Watch,
            max_value_bytes: 1 << 20,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100), None),
        };
        let (sink, mut rx) = UpdateSink::channel("f", 16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Box::new(src).run(vec!["app/".into()], sink, cancel.clone()));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        match first.change {
            Change::Full { ref entries, .. } => assert_eq!(entries["app/x"], "1"),
            _ => panic!("expected a full snapshot"),
        }
        // Edits arrive as deltas of just the changed files; new directories as a full re-read.
        let mut snap = crate::snapshot::Snapshot::default();
        snap.apply(first.version, first.change).unwrap();
        fs::write(d.path().join("app/x"), "2").unwrap();
        let next = until(&mut rx, &mut snap, |s| s.entries.get("app/x").is_some_and(|v| v == "2")).await;
        fs::create_dir_all(d.path().join("app/sub")).unwrap();
        fs::write(d.path().join("app/sub/y"), "3").unwrap();
        until(&mut rx, &mut snap, |s| s.entries.get("app/sub/y").is_some_and(|v| v == "3")).await;
        fs::rename(d.path().join("app/sub"), d.path().join("app/moved")).unwrap();
        until(&mut rx, &mut snap, |s| !s.entries.contains_key("app/sub/y") && s.entries.contains_key("app/moved/y"))
            .await;
        fs::remove_file(d.path().join("app/x")).unwrap();
        until(&mut rx, &mut snap, |s| !s.entries.contains_key("app/x")).await;
        assert_eq!(snap.entries.keys().collect::<Vec<_>>(), vec!["app/moved/y"]);
        assert!(next > first.version);
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    /// Applies updates until `cond` holds on the snapshot (bounded); returns the version reached.
    async fn until(
        rx: &mut crate::source::SinkReceiver,
        snap: &mut crate::snapshot::Snapshot,
        cond: impl Fn(&crate::snapshot::Snapshot) -> bool,
    ) -> u64 {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !cond(snap) {
                let u = rx.recv().await.unwrap();
                snap.apply(u.version, u.change).unwrap();
            }
            snap.version
        })
        .await
        .expect("the change is reported")
    }

    #[tokio::test]
    async fn poll_mode_skips_identical_content() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("k"), "v").unwrap();
        let src = FileSource {
            root: d.path().to_path_buf(),
            mode: Mode::Poll { interval: Duration::from_millis(20) },
            max_value_bytes: 1 << 20,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100), None),
        };
        let (sink, mut rx) = UpdateSink::channel("f", 16);
        let stats = std::sync::Arc::clone(sink.stats());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Box::new(src).run(vec!["".into()], sink, cancel.clone()));
        rx.recv().await.unwrap();
        // Several polls of identical content: no further update.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(stats.requests.load(std::sync::atomic::Ordering::Relaxed) >= 3);
        assert!(rx.try_recv().is_none(), "identical content must not be reported");
        fs::write(d.path().join("k"), "w").unwrap();
        let u = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        match u.change {
            Change::Full { entries, .. } => assert_eq!(entries["k"], "w"),
            _ => panic!(),
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
