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
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let file: PathBuf = file.to_path_buf();
    let mut last: Vec<u8> = Vec::new();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let Ok(data) = std::fs::read(&file) else { return };
        if data == last {
            return;
        }
        if max_only {
            if let Some(max) = all_seqs(&data).max() {
                recorder.saw(max);
            }
        } else if let Some(s) = seq_in(&data) {
            recorder.saw(s);
        }
        last = data;
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
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
