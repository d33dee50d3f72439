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
        let mut last: HashMap<String, [u8; 32]> = HashMap::new();
        let mut version = 0u64;
        // A watcher that lives as long as this task; re-created if the root disappears.
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
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
            let read = tokio::task::spawn_blocking(move || read_tree(&root, max)).await;
            let wait = match read {
                Ok(Ok(entries)) => {
                    self.backoff.reset();
                    version += 1;
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
                    match self.mode {
                        Mode::Poll { interval } => Some(jittered(interval)),
                        Mode::Watch if watcher.is_some() => None,
                        Mode::Watch => Some(self.backoff.slowest()),
                    }
                }
                Ok(Err(e)) => {
                    self.fail(&sink, e);
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
                // Poll interval or retry delay elapsed.
                _ = sleep_opt(wait) => {}
                // The watcher saw a completed change: re-read once for everything queued so far.
                Some(()) = ev_rx.recv() => {
                    while ev_rx.try_recv().is_ok() {}
                }
            }
        }
    }

    fn fail(&self, sink: &UpdateSink, message: String) {
        warn!(source = sink.name(), "{message}");
        sink.stats().error(ErrorKind::Other, message);
    }

    fn watch(&self, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = &ev {
                if !completes_a_change(&ev.kind) {
                    return;
                }
            }
            let _ = tx.send(());
        })?;
        w.watch(&self.root, RecursiveMode::Recursive)?;
        Ok(w)
    }
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
        // Follow symlinks: a ConfigMap's visible entries link through `..data`.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // dangling link or raced delete
            Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
        };
        let key = format!("{rel}{name}");
        if meta.is_dir() {
            walk(&path, &format!("{key}/"), depth + 1, max, out)?;
        } else if meta.is_file() {
            if meta.len() as usize > max {
                return Err(format!("{} is {} bytes, over the {max}-byte value limit", path.display(), meta.len()));
            }
            match std::fs::read(&path) {
                Ok(data) => {
                    out.insert(key, Bytes::from(data));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        } else {
            debug!(path = %path.display(), "skipping a special file");
        }
    }
    Ok(())
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
            Change::Full { entries, .. } => assert_eq!(entries["app/x"], "1"),
            _ => panic!("expected a full snapshot"),
        }
        fs::write(d.path().join("app/x"), "2").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let u = rx.recv().await.unwrap();
                if let Change::Full { entries, .. } = u.change {
                    if entries.get("app/x").map(|v| v == "2").unwrap_or(false) {
                        return u.version;
                    }
                }
            }
        })
        .await
        .expect("the edit is reported");
        assert!(next > first.version);
        cancel.cancel();
        task.await.unwrap().unwrap();
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
