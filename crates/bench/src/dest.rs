//! Watches a destination directory with inotify and records which sequence number each new version of
//! a file carries: how the benchmark learns that a change reached the disk, without sleeping.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use crate::measure::{seq_in, Recorder};

pub struct DestWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `file`'s directory; each time `file` is replaced or written, reads it and records every
/// sequence number it carries as seen (`max_only`: only the highest, for multi-key files).
pub fn watch(file: &Path, recorder: Arc<Recorder>, max_only: bool) -> anyhow::Result<DestWatcher> {
    watch_inner(file, recorder, max_only, None)
}

/// Like `watch`, reading only the first `bytes` of the file each time: enough where the marker sits
/// at the head of a large file (a new version replaces the file whole, so its head is new too).
pub fn watch_head(file: &Path, recorder: Arc<Recorder>, bytes: u64) -> anyhow::Result<DestWatcher> {
    watch_inner(file, recorder, false, Some(bytes))
}

fn read(file: &Path, head: Option<u64>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    match head {
        None => std::fs::read(file),
        Some(n) => {
            let mut data = Vec::new();
            std::fs::File::open(file)?.take(n).read_to_end(&mut data)?;
            Ok(data)
        }
    }
}

/// One watched file: where it is, who records its versions, and the last content seen.
struct Target {
    file: PathBuf,
    name: std::ffi::OsString,
    recorder: Arc<Recorder>,
    max_only: bool,
    head: Option<u64>,
    last: Vec<u8>,
}

impl Target {
    fn new(file: &Path, recorder: Arc<Recorder>, max_only: bool, head: Option<u64>) -> Target {
        let name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        Target { file: file.to_path_buf(), name, recorder, max_only, head, last: Vec::new() }
    }

    fn dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// Reads the file after an event in its directory and records a new version.
    fn on_event(&mut self, ev: &notify::Event) {
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        // Only events about the file itself (or the `..data` link it resolves through): the writes
        // to a staged temp file beside it are not new versions.
        let ours = |p: &PathBuf| p.file_name().is_some_and(|n| n == self.name || n == "..data");
        if !ev.paths.is_empty() && !ev.paths.iter().any(ours) {
            return;
        }
        let Ok(data) = read(&self.file, self.head) else { return };
        if data == self.last {
            return;
        }
        if self.max_only {
            if let Some(max) = all_seqs(&data).max() {
                self.recorder.saw(max);
            }
        } else if let Some(s) = seq_in(&data) {
            self.recorder.saw(s);
        }
        self.last = data;
    }
}

fn watch_inner(file: &Path, recorder: Arc<Recorder>, max_only: bool, head: Option<u64>) -> anyhow::Result<DestWatcher> {
    let mut target = Target::new(file, recorder, max_only, head);
    let dir = target.dir();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            target.on_event(&ev);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(DestWatcher { _watcher: watcher })
}

/// Watches many files, each in a directory of its own, with one inotify instance and one thread
/// (an instance per file would run into the per-user limit on inotify instances, 128 by default).
/// Each new version of a file is recorded on its recorder, as `watch` does.
pub fn watch_many(files: &[(PathBuf, Arc<Recorder>)]) -> anyhow::Result<DestWatcher> {
    let mut by_dir: std::collections::HashMap<PathBuf, Vec<Target>> = std::collections::HashMap::new();
    for (file, recorder) in files {
        let t = Target::new(file, Arc::clone(recorder), false, None);
        by_dir.entry(t.dir()).or_default().push(t);
    }
    let dirs: Vec<PathBuf> = by_dir.keys().cloned().collect();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let Some(dir) = ev.paths.first().and_then(|p| p.parent()) else { return };
        if let Some(targets) = by_dir.get_mut(dir) {
            for t in targets {
                t.on_event(&ev);
            }
        }
    })?;
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    Ok(DestWatcher { _watcher: watcher })
}

/// Every sequence number in a text.
pub fn all_seqs(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i + 14 <= data.len() {
            if &data[i..i + 4] == b"seq=" {
                let s = std::str::from_utf8(&data[i + 4..i + 14]).ok().and_then(|t| t.parse().ok());
                i += 14;
                if s.is_some() {
                    return s;
                }
            } else {
                i += 1;
            }
        }
        None
    })
}
