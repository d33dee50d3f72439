//! Config reloads: on SIGHUP, and (with `watch_config: true`, the default) whenever the config file or
//! a template it uses is edited. The new file is parsed and validated first; only a valid config is
//! handed to the daemon, an invalid one is logged and the running config stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;

/// What a new valid config asks of the running render loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Sources, or what outputs read, changed: stop this loop and start one with the new config
    /// (sources whose settings and prefixes are unchanged keep running).
    Restart,
    /// Only how outputs render or act changed (a template edit, new actions): keep every source and
    /// subscription running and render every output again (unchanged bytes are not rewritten).
    Rerender,
}

/// Decides how `new` replaces `old`.
pub fn plan(old: &Config, new: &Config) -> Plan {
    if same_watches(old, new) {
        Plan::Rerender
    } else {
        Plan::Restart
    }
}

/// Whether `new` watches exactly what `old` does (same sources, same outputs reading the same inputs
/// into the same destinations, same exec.env, limits, retry and cache), so that it can be applied
/// without restarting any source.
fn same_watches(old: &Config, new: &Config) -> bool {
    old.sources == new.sources
        && old.retry == new.retry
        && old.cache == new.cache
        && old.limits == new.limits
        && old.exec.env == new.exec.env
        && old.outputs.len() == new.outputs.len()
        && old
            .outputs
            .iter()
            .zip(&new.outputs)
            .all(|(a, b)| a.name == b.name && a.inputs == b.inputs && a.destination == b.destination)
}

/// Editors save in several steps (write a temp file, rename, chmod): wait this long after the last
/// event before reading the files.
const SETTLE: Duration = Duration::from_millis(150);

/// Watches for reasons to reload `path` and sends each new valid config to `tx`, until `cancel`.
pub async fn watch(path: PathBuf, initial: &Config, tx: mpsc::Sender<Config>, cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let path = std::path::absolute(&path).unwrap_or(path);
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for SIGHUP, reload on signal is off: {e}");
            None
        }
    };
    let mut files = watched_files(&path, initial);
    // The bytes of the config and templates that run now, and the bytes last looked at (which
    // differ while the files hold an invalid config): an event that changes neither is ignored.
    let mut current = fingerprint(&files);
    let mut last_seen = current;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = if initial.watch_config { start_watcher(&files, ev_tx.clone()) } else { None };
    loop {
        let why = tokio::select! {
            // Shutdown.
            _ = cancel.cancelled() => return,
            // SIGHUP: reload now.
            Some(()) = recv_hup(hup.as_mut()) => "SIGHUP",
            // Something changed in a directory holding the config or a template.
            Some(_) = ev_rx.recv() => {
                // Let the editor finish: swallow events until SETTLE passes without one.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(SETTLE) => break,
                        e = ev_rx.recv() => if e.is_none() { break },
                    }
                }
                "a change to the config or a template"
            }
        };
        // An event in a watched directory that did not change the bytes of our files (a file next to
        // them, an output written there): nothing to do. SIGHUP always reloads.
        let fp = fingerprint(&files);
        if why != "SIGHUP" && fp == last_seen {
            debug!("an event near the config or a template, but their contents are unchanged");
            continue;
        }
        last_seen = fp;
        // systemd: RELOADING=1 now; READY=1 when the daemon runs the new config, or below when the
        // old one stays.
        crate::systemd::reloading();
        // Reading and compiling templates touches the disk: keep it off the async threads.
        let p = path.clone();
        let loaded = match tokio::task::spawn_blocking(move || Config::load(&p)).await {
            Ok(r) => r,
            Err(e) => {
                error!("reload after {why}: the config loader failed: {e}");
                crate::systemd::ready("reload failed; running on the previous config");
                continue;
            }
        };
        match loaded {
            Err(e) => {
                error!(
                    "reload after {why}: {} is not valid; still running on the previous config:\n{e}",
                    path.display()
                );
                crate::systemd::ready("reload refused: the new config is not valid; running on the previous one");
            }
            Ok(cfg) => {
                let new_files = watched_files(&path, &cfg);
                let fp = fingerprint(&new_files);
                last_seen = fp;
                if fp == current {
                    info!("reload after {why}: the config and its templates are unchanged");
                    crate::systemd::ready("reloaded: the config is unchanged");
                    continue;
                }
                current = fp;
                if new_files != files || cfg.watch_config != watcher.is_some() {
                    files = new_files;
                    watcher = if cfg.watch_config { start_watcher(&files, ev_tx.clone()) } else { None };
                }
                info!("reload after {why}: the new config is valid; applying it");
                if tx.send(cfg).await.is_err() {
                    return; // the daemon is gone
                }
            }
        }
    }
}

async fn recv_hup(s: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The config file and every template file, as absolute paths.
fn watched_files(path: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    for t in cfg.template_files() {
        v.push(std::path::absolute(&t).unwrap_or(t));
    }
    v.sort();
    v.dedup();
    v
}

/// What decides whether a reload changes anything: the bytes of the config and of its templates.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().into()
}

/// Watches the directories holding `files` (not the files: an editor's rename-over-save would end a
/// watch on the file itself) and sends the path of every event that names one of them, or that swaps
/// a `..data` symlink: a Kubernetes ConfigMap volume updates its files by renaming `..data_tmp` over
/// `..data`, and the visible files (symlinks through `..data`) see no event of their own. Events about
/// anything else in those directories (a log file, an output) are dropped here, in the watcher's
/// thread, by name: they never reach the reload loop.
fn start_watcher(files: &[PathBuf], tx: mpsc::UnboundedSender<PathBuf>) -> Option<notify::RecommendedWatcher> {
    let wanted: Vec<PathBuf> = files.to_vec();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.kind.is_access() {
                return; // reads (including our own) change nothing
            }
            let configmap_swap =
                |p: &PathBuf| p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"..data"));
            if let Some(p) = ev.paths.iter().find(|p| wanted.contains(p) || configmap_swap(p)) {
                debug!(paths = ?ev.paths, "config or template changed");
                let _ = tx.send(p.clone());
            }
        }
        Err(e) => warn!("watching the config files: {e}"),
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch the config and template files (reload on SIGHUP still works): {e}");
            return None;
        }
    };
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            warn!("cannot watch {} for config or template edits (reload on SIGHUP still works): {e}", d.display());
        }
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file beside the config, written 10,000 times, sends nothing to the reload loop; an edit
    /// of the config, made after them, does (inotify keeps the order of events, so once the edit has
    /// arrived every write before it has been seen and dropped).
    #[tokio::test]
    async fn a_file_beside_the_config_wakes_nothing() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kvsync.yaml");
        std::fs::write(&config, "sources: []\n").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = start_watcher(std::slice::from_ref(&config), tx).expect("inotify is available");
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("kvsync.log")).unwrap();
        for i in 0..10_000 {
            writeln!(log, "line {i}").unwrap();
        }
        std::fs::write(dir.path().join("other.json"), "{}").unwrap();
        std::fs::write(&config, "sources: []\noutputs: []\n").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("the config edit is seen");
        assert_eq!(first.as_deref(), Some(config.as_path()));
        // Whatever else arrived names the config too (an edit is several events), never the others.
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            assert_eq!(p, config, "an event about another file reached the reload loop");
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/kvsync/k.yaml"), text).unwrap()
    }

    #[test]
    fn a_template_edit_rerenders_and_a_new_prefix_restarts() {
        let base = "sources:\n  - name: main\n    type: file\n    path: /tmp\noutputs:\n  - name: a\n    source: main\n    prefix: app/\n    format: json\n    destination: /tmp/a.json\n";
        let old = config(base);
        assert_eq!(plan(&old, &config(base)), Plan::Rerender);
        assert_eq!(plan(&old, &config(&base.replace("format: json", "format: yaml"))), Plan::Rerender);
        assert_eq!(plan(&old, &config(&base.replace("prefix: app/", "prefix: other/"))), Plan::Restart);
    }
}
