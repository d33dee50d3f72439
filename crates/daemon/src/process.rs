//! Processes: signals by number and name (safe wrappers over rustix), the registry of the children
//! kvsync started itself, and the reaper of orphaned zombies (PID 1 / child-subreaper duty).
//!
//! Why a registry: when kvsync is PID 1 (or a child subreaper), processes orphaned by the supervised
//! application are re-parented to kvsync and must be reaped, or they stay zombies forever. A blanket
//! `waitpid(-1)` would also reap kvsync's own children (the supervised child, action commands,
//! check commands) before tokio or std could, and steal their exit status. So every child kvsync
//! starts is spawned through [`spawn_tracked`], which records its pid under the same lock the reaper
//! holds while it looks for zombies: the reaper only ever waits for a pid that is not in the registry.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rustix::process::{Pid, Signal, WaitOptions};

fn pid_of(pid: u32) -> std::io::Result<Pid> {
    // Pid 0 and 1 are never a valid target: 0 would mean "my process group", 1 is init.
    if pid <= 1 {
        return Err(std::io::Error::other(format!("refusing to signal pid {pid}")));
    }
    i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| std::io::Error::other(format!("invalid pid {pid}")))
}

fn sig_of(sig: i32) -> std::io::Result<Signal> {
    Signal::from_named_raw(sig).ok_or_else(|| std::io::Error::other(format!("unsupported signal {sig}")))
}

/// Sends `sig` to process `pid` (> 1).
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    rustix::process::kill_process(pid_of(pid)?, sig_of(sig)?).map_err(Into::into)
}

/// Sends `sig` to every process in the group led by `pgid` (> 1).
pub fn signal_group(pgid: u32, sig: i32) -> std::io::Result<()> {
    rustix::process::kill_process_group(pid_of(pgid)?, sig_of(sig)?).map_err(Into::into)
}

/// SIGKILL, for killing a command's whole group at its timeout.
pub const SIGKILL: i32 = 9;

/// "SIGHUP" for 1, "signal 42" for a number without a name in the config's vocabulary.
pub fn signal_name(sig: i32) -> String {
    match crate::config::units::signal_name(sig) {
        "signal" => format!("signal {sig}"),
        name => name.to_string(),
    }
}

/// The pids of the children kvsync spawned itself and has not waited for yet.
static OURS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn ours() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    OURS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a child with `spawn` and records its pid (given by `pid`) so that the reaper leaves it to
/// its owner. The registry lock is held across the spawn: a child that exits at once cannot be
/// mistaken for an orphan between its birth and its registration.
pub fn spawn_tracked<C>(
    spawn: impl FnOnce() -> std::io::Result<C>,
    pid: impl Fn(&C) -> Option<u32>,
) -> std::io::Result<C> {
    let mut set = ours();
    let child = spawn()?;
    if let Some(p) = pid(&child) {
        set.insert(p);
    }
    Ok(child)
}

/// Forgets a child once its owner has collected its exit status.
pub fn untrack(pid: u32) {
    ours().remove(&pid);
}

/// Registers kvsync as a child subreaper (PR_SET_CHILD_SUBREAPER): processes orphaned anywhere below
/// it are re-parented to it instead of to PID 1, so it can reap them. A no-op need when it is PID 1.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(Into::into)
}

/// Reaps every zombie whose parent is this process and which kvsync did not spawn itself; returns
/// how many it reaped. Bounded by the number of processes in /proc.
pub fn reap_orphans() -> usize {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    // Hold the registry for the whole scan so a child being spawned right now is not taken for an orphan.
    let set = ours();
    let mut reaped = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid <= 1 || set.contains(&pid) {
            continue;
        }
        let Some((state, ppid)) = stat_state_ppid(pid) else { continue };
        if state != 'Z' || ppid != me {
            continue;
        }
        let Ok(p) = pid_of(pid) else { continue };
        // NOHANG: it is a zombie already, so this returns at once; never blocks the caller.
        if let Ok(Some(_)) = rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            reaped += 1;
        }
    }
    reaped
}

/// The state letter and parent pid from /proc/PID/stat.
fn stat_state_ppid(pid: u32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) S PPID ...": comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Pids (> 1, not kvsync itself) whose /proc/PID/comm or argv[0] (or its basename) is `name`.
pub fn find_by_name(name: &str) -> Vec<u32> {
    let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid <= 1 || pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().map(String::from_utf8_lossy).unwrap_or_default();
        let base = argv0.rsplit('/').next().unwrap_or_default();
        // Zombies have no cmdline and cannot take a signal usefully; skip them.
        if stat_state_ppid(pid).is_some_and(|(s, _)| s == 'Z') {
            continue;
        }
        if comm.trim_end_matches('\n') == name || argv0 == name || (!base.is_empty() && base == name) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_pid_0_and_1() {
        assert!(signal(0, 0).unwrap_err().to_string().contains("refusing to signal pid 0"));
        assert!(signal(1, 15).is_err());
        assert!(signal_group(0, 9).is_err());
        assert!(signal_group(1, 9).is_err());
    }

    #[test]
    fn finds_a_process_by_name() {
        let mut c = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        // Right after fork the child may not have exec'd `sleep` yet: look again, for at most 2 s.
        let mut found = Vec::new();
        for _ in 0..200 {
            found = find_by_name("sleep");
            if found.contains(&c.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        assert!(found.contains(&c.id()), "{found:?} should hold {}", c.id());
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(1), "SIGHUP");
        assert_eq!(signal_name(42), "signal 42");
    }
}
