//! Every process the benchmark starts dies with it. A scenario's processes are killed when their
//! handles drop (an error, a panic that unwinds); this covers what drops do not: on SIGINT or SIGTERM,
//! and on a panic (before it unwinds, and even where it would not), every direct child of the
//! benchmark (etcd, the Consul test server, each kvsync, etcdctl) is killed by its pid, and the
//! directories registered here are removed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::process::{Pid, Signal};

use crate::procstat;

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the signal handler (on `rt`) and the panic hook.
pub fn install(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_children();
        default(info);
    }));
    use tokio::signal::unix::{signal, SignalKind};
    // Created here, not in the task: the handler is in place before any scenario starts a process.
    let (mut int, mut term) = {
        let _rt = rt.enter();
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };
    rt.spawn(async move {
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        let killed = kill_children();
        remove_dirs();
        eprintln!("kvsync-bench: interrupted; killed the {killed} processes it had started");
        std::process::exit(code);
    });
    Ok(())
}

/// Removes `dir` (and what is under it) if the benchmark is interrupted.
pub fn remove_on_interrupt(dir: &Path) {
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(dir.to_path_buf());
}

/// Kills every direct child of this process; returns how many were signalled.
pub fn kill_children() -> usize {
    let mut n = 0;
    for (pid, _) in procstat::children(std::process::id()) {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else { continue };
        if rustix::process::kill_process(p, Signal::KILL).is_ok() {
            n += 1;
        }
    }
    n
}

fn remove_dirs() {
    for d in DIRS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = std::fs::remove_dir_all(d);
    }
}
