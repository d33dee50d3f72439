//! Private mount and PID namespaces for tests that need a file system of their own (a small tmpfs,
//! a read-only remount, a bind mount) or a PID 1, without touching the machine's mounts.
//!
//! A process started through [`Private::command`] runs `unshare -m` (as root) or `unshare -Urm` (as
//! any other user, in a user namespace of its own), runs a setup script there (the mounts), then
//! execs the program. The mounts exist only in that namespace and vanish with it. The test reaches
//! them through `/proc/<pid>/root/...` (the namespace's view of the file system) and changes them with
//! `nsenter` into the same namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The `unshare` options that give a private mount namespace to the current user (root or not).
fn unshare_mount_args() -> &'static [&'static str] {
    if is_root() {
        &["--mount", "--propagation", "private"]
    } else {
        &["--user", "--map-root-user", "--mount", "--propagation", "private"]
    }
}

/// Why a private mount namespace with a tmpfs cannot be had here, or None when it can.
pub fn mount_namespace_unavailable() -> Option<String> {
    let probe = tempfile::tempdir().ok()?;
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {d} && mount -o remount,ro {d} && mount --bind {d} {d}",
        d = probe.path().display()
    );
    let out =
        Command::new("unshare").args(unshare_mount_args()).args(["sh", "-c", &script]).stdin(Stdio::null()).output();
    match out {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`unshare {} sh -c '{script}'` failed ({}): {}",
            unshare_mount_args().join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}

/// A program to be run in a private mount namespace after a setup script.
pub struct Private {
    setup: String,
}

impl Private {
    /// `setup` is a POSIX shell script run in the new namespace before the program (it should stop
    /// at the first error: it runs under `set -e`).
    pub fn new(setup: impl Into<String>) -> Private {
        Private { setup: setup.into() }
    }

    /// The command: `unshare ... sh -c 'set -e; <setup>; exec "$@"' sh <program> <args>`.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(unshare_mount_args())
            .args(["sh", "-c", &format!("set -e\n{}\nexec \"$@\"", self.setup), "sh"])
            .arg(program)
            .args(args);
        c
    }
}

/// `path` as seen inside the mount namespace of process `pid`.
pub fn inside(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// Runs `sh -c script` in the mount namespace (and user namespace, when not root) of `pid`; panics
/// with its output when it fails.
#[track_caller]
pub fn run_inside(pid: u32, script: &str) {
    let mut c = Command::new("nsenter");
    c.args(["--target", &pid.to_string()]);
    if !is_root() {
        c.args(["--user", "--preserve-credentials"]);
    }
    let out = c.args(["--mount", "sh", "-c", script]).stdin(Stdio::null()).output().expect("run nsenter");
    assert!(
        out.status.success(),
        "`{script}` in the namespace of {pid} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pids whose parent is `ppid` (from `/proc/*/stat`, which every kernel has, unlike
/// `/proc/<pid>/task/<tid>/children`).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = s.rsplit_once(") ") else { continue };
        let parent: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if parent == ppid {
            out.push(pid);
        }
    }
    out
}

/// Why `setpriv` cannot run a command without capabilities here, or None when it can.
pub fn capability_drop_unavailable() -> Option<String> {
    let out =
        Command::new("setpriv").args(WITHOUT_CAPABILITIES).args(["sh", "-c", "exit 0"]).stdin(Stdio::null()).output();
    match out {
        Err(e) => Some(format!("cannot run setpriv: {e}")),
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("setpriv failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
    }
}

/// `setpriv` options that run a program as the same user with no capabilities at all: root then
/// obeys file permissions like any other user (no CAP_DAC_OVERRIDE), which is what a read-only
/// directory check needs.
pub const WITHOUT_CAPABILITIES: &[&str] = &["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"];
