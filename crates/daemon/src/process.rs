//! Signals to processes and process groups, by number (safe wrappers over rustix).

use rustix::process::{Pid, Signal};

fn parts(pid: u32, sig: i32) -> std::io::Result<(Pid, Signal)> {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| std::io::Error::other("invalid pid"))?;
    let sig = Signal::from_named_raw(sig).ok_or_else(|| std::io::Error::other(format!("unsupported signal {sig}")))?;
    Ok((pid, sig))
}

/// Sends `sig` to process `pid`.
#[allow(dead_code)] // used by signal actions
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let (pid, sig) = parts(pid, sig)?;
    rustix::process::kill_process(pid, sig).map_err(Into::into)
}

/// Sends `sig` to every process in the group led by `pgid`.
pub fn signal_group(pgid: u32, sig: i32) -> std::io::Result<()> {
    let (pid, sig) = parts(pgid, sig)?;
    rustix::process::kill_process_group(pid, sig).map_err(Into::into)
}

/// SIGKILL, for killing a command's whole group at its timeout.
pub const SIGKILL: i32 = 9;
