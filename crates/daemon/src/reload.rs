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
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = if initial.watch_config { start_watcher(&files, ev_tx.clone()) } else { None };
    loop {
        let why = tokio::select! {
            // Shutdown.
            _ = cancel.cancelled() => return,
            // SIGHUP: reload now.
            Some(()) = recv_hup(hup.as_mut()) => "SIGHUP",
            // Something changed in a directory holding the config or a template.
            Some(()) = ev_rx.recv() => {
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
/// watch on the file itself) and sends a tick for every event that names one of them, or that swaps a
/// `..data` symlink: a Kubernetes ConfigMap volume updates its files by renaming `..data_tmp` over
/// `..data`, and the visible files (symlinks through `..data`) see no event of their own.
fn start_watcher(files: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let wanted: Vec<PathBuf> = files.to_vec();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.kind.is_access() {
                return; // reads (including our own) change nothing
            }
            let configmap_swap =
                |p: &PathBuf| p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"..data"));
            if ev.paths.iter().any(|p| wanted.contains(p) || configmap_swap(p)) {
                debug!(paths = ?ev.paths, "config or template changed");
                let _ = tx.send(());
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
