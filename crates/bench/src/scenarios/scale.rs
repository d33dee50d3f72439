//! The scale scenario's shared part: the keys, the kvsync config, the changes made once kvsync has
//! settled, and the disk floor (a bare program doing the same disk work) measured in the same run.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{out_dir, wait_for, write_config};
use crate::dest;
use crate::kvsync_proc::Kvsync;
use crate::measure::{value, Recorder};
use crate::procstat;
use crate::report::ScaleRow;

/// Scale directories, removed when the run ends rather than after each scenario: ext4 avoids reusing
/// inodes freed in the last minute or so, which makes creating many files right after removing many
/// several times slower, and the next scenario would pay for this one's clean-up.
static KEPT: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

/// Keeps `dir` until `release` (the end of the run).
pub fn keep(dir: tempfile::TempDir) {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}

/// Removes the kept directories.
pub fn release() {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Changes made at scale, one at a time, once kvsync is idle; the report gives their median and max.
pub const CHANGES: u64 = 5;
/// The formats measured at scale.
pub const FORMATS: [&str; 2] = ["json", "files"];
/// The key every change at scale rewrites (it sorts second, so its bytes lead a json output).
pub const CHANGED_KEY: &str = "k000001";
const T: Duration = Duration::from_secs(180);

/// The relative key and value size of scale key `i`: 100 bytes to 1 KiB, deterministic. The values
/// carry no sequence marker, so a changed key is the only one an observer can find.
pub fn key(i: usize) -> (String, usize) {
    (format!("k{i:06}"), 100 + (i * 7919) % 925)
}

/// Keys and values of `n` scale keys, in bytes.
pub fn raw_bytes(n: usize) -> u64 {
    (0..n).map(key).map(|(k, size)| (k.len() + size) as u64).sum()
}

/// A kvsync config under `dir` rendering prefix `bench/` of the source named `source` in `sources`,
/// in `format`; returns the config and the destination.
pub fn config(dir: &Path, sources: &str, source: &str, format: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = out_dir(dir)?;
    let dest = if format == "files" { out.join("files") } else { out.join("app.json") };
    let cfg = write_config(
        dir,
        sources,
        &format!(
            "  - {{ name: app, source: {source}, prefix: bench/, format: {format}, destination: {} }}\nlimits: {{ max_keys: 2000000 }}\n",
            dest.display()
        ),
    )?;
    Ok((cfg, dest))
}

/// Waits (bounded) until kvsync has used no CPU for half a second: whatever it does after its first
/// render is over.
fn settle(pid: u32) {
    let start = Instant::now();
    let mut last = procstat::cpu(pid);
    while start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        let now = procstat::cpu(pid);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Measures what follows kvsync's first render: peak RSS, then `CHANGES` changes of `CHANGED_KEY`
/// (made by `put`, which returns the backend's acknowledgement time) one at a time, each waited for
/// on disk; then the disk floor on the same file system.
pub fn measure(
    backend: &str,
    format: &str,
    keys: usize,
    k: &Kvsync,
    synced: Instant,
    dest: &Path,
    mut put: impl FnMut(&str, Vec<u8>) -> anyhow::Result<Instant>,
) -> anyhow::Result<ScaleRow> {
    let initial_sync = synced - k.started;
    let peak_rss = procstat::peak_rss(k.pid());
    settle(k.pid());
    let rec = Arc::new(Recorder::default());
    // `files`: the visible entry links through `..data`; its directory sees the `..data` flip. `json`:
    // the changed key sorts second, so the head of the file is enough to see its new value.
    let watched = if format == "files" { dest.join(CHANGED_KEY) } else { dest.to_path_buf() };
    let _w = dest::watch_head(&watched, Arc::clone(&rec), 64 * 1024)?;
    let mut changes = Vec::new();
    for seq in 1..=CHANGES {
        let at = put(CHANGED_KEY, value(seq, 200))?;
        rec.ack(seq, at);
        wait_for("one change at scale", T, || rec.has_seen(seq))?;
        std::thread::sleep(Duration::from_millis(200));
    }
    changes.extend(rec.latencies());
    let peak_rss_after_changes = procstat::peak_rss(k.pid());
    let (floor_initial, floor_change) = if format == "files" { floor_files(dest)? } else { floor_json(dest)? };
    Ok(ScaleRow {
        backend: backend.into(),
        format: format.into(),
        keys,
        raw_bytes: raw_bytes(keys),
        initial_sync,
        peak_rss,
        peak_rss_after_changes,
        backend_floor: None,
        changes,
        floor_initial,
        floor_change,
    })
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `data` to a new file beside `dest`, fsyncs it, renames it over `dest`, fsyncs the directory.
fn replace(dest: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = dest.with_extension("floor-tmp");
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, dest)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// The floor of a `json` output: replacing the file kvsync wrote with the same bytes (write, fsync,
/// rename, fsync the directory). The same for the first render and for a change: the whole file is
/// written either way.
fn floor_json(dest: &Path) -> anyhow::Result<(Duration, Duration)> {
    let data = fs::read(dest)?;
    let copy = dest.with_extension("floor");
    let start = Instant::now();
    replace(&copy, &data)?;
    let took = start.elapsed();
    Ok((took, took))
}

/// The floor of a `files` output: creating every file kvsync wrote (same names, same bytes) in a
/// fresh directory and one syncfs, without the generation layout's links; and replacing one file.
fn floor_files(dest: &Path) -> anyhow::Result<(Duration, Duration)> {
    let data = dest.join("..data");
    let mut files = Vec::new();
    for e in fs::read_dir(&data)? {
        let e = e?;
        files.push((e.file_name(), fs::read(e.path())?));
    }
    let copy = dest.with_extension("floor");
    let start = Instant::now();
    fs::create_dir(&copy)?;
    for (name, bytes) in &files {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(copy.join(name))?;
        f.write_all(bytes)?;
    }
    rustix::fs::syncfs(File::open(&copy)?)?;
    let initial = start.elapsed();
    let start = Instant::now();
    replace(&copy.join(CHANGED_KEY), b"changed")?;
    Ok((initial, start.elapsed()))
}
