//! A test's world on disk: a `file` source directory (`kv/`), an output directory (`out/`), the
//! config file, and a recording child: a shell script that appends what happens to it (its starts,
//! the signals it receives, its environment) to files, so a test can tell exactly what kvsync did.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The recording child. Arguments: the directory to record into, then optionally the exit code to
/// use when it gets SIGTERM (default 0). It appends:
/// - `start <pid>` to `events` when it starts (after writing its environment to `env.<pid>`),
/// - `HUP`, `USR1`, `USR2`, `QUIT`, `WINCH`, `TERM` to `events` for each signal it receives.
///
/// It sleeps in short steps so that a trap runs within ~50ms of the signal.
pub const RECORDING_CHILD: &str = r#"#!/bin/sh
dir="$1"
term_code="${2:-0}"
# Traps first: once `start` is recorded, every signal is recorded too.
trap 'echo HUP >> "$dir/events"' HUP
trap 'echo USR1 >> "$dir/events"' USR1
trap 'echo USR2 >> "$dir/events"' USR2
trap 'echo QUIT >> "$dir/events"' QUIT
trap 'echo WINCH >> "$dir/events"' WINCH
trap 'echo TERM >> "$dir/events"; exit "$term_code"' TERM
env > "$dir/env.$$"
echo "start $$" >> "$dir/events"
i=0
# Bounded: a child that outlives its test ends by itself after ~60 s.
while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
"#;

pub struct Fixture {
    pub dir: TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("kv")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::create_dir_all(dir.path().join("rec")).unwrap();
        let child = dir.path().join("child.sh");
        std::fs::write(&child, RECORDING_CHILD).unwrap();
        make_executable(&child);
        Fixture { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the recording child records (`rec/`).
    pub fn rec(&self) -> PathBuf {
        self.path().join("rec")
    }

    /// The recording child's script.
    pub fn child_script(&self) -> PathBuf {
        self.path().join("child.sh")
    }

    /// An output file under `out/`.
    pub fn out(&self, name: &str) -> PathBuf {
        self.path().join("out").join(name)
    }

    /// Sets a key of the `file` source (atomically, so the source never reads half a value).
    pub fn put(&self, key: &str, value: &str) {
        let p = self.path().join("kv").join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Staged outside the watched tree, so the source never sees the temp file as a key.
        let tmp = self.path().join("put.kvsync-test-tmp");
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// Writes the config; `{kv}`, `{out}`, `{rec}` and `{dir}` in `text` are replaced by the paths.
    /// Returns the config's path.
    pub fn config(&self, text: &str) -> PathBuf {
        let p = self.path().join("kvsync.yaml");
        self.write_file("kvsync.yaml", text);
        p
    }

    /// Writes a file under the fixture directory (atomically), with the same replacements as `config`.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        let text = self.expand(text);
        let tmp = p.with_extension("kvsync-test-tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    pub fn expand(&self, text: &str) -> String {
        let d = self.path().display().to_string();
        text.replace("{kv}", &format!("{d}/kv"))
            .replace("{out}", &format!("{d}/out"))
            .replace("{rec}", &format!("{d}/rec"))
            .replace("{dir}", &d)
    }

    /// The lines the recording child wrote to `events` so far.
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.rec().join("events")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// How many times `line` appears in `events`.
    pub fn count(&self, line: &str) -> usize {
        self.events().iter().filter(|l| *l == line).count()
    }

    /// The pids of the child's starts, in order.
    pub fn starts(&self) -> Vec<u32> {
        self.events().iter().filter_map(|l| l.strip_prefix("start ")).filter_map(|p| p.parse().ok()).collect()
    }

    /// The environment the child with `pid` started with.
    pub fn child_env(&self, pid: u32) -> Vec<String> {
        std::fs::read_to_string(self.rec().join(format!("env.{pid}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// The zombies whose parent is `ppid`.
pub fn zombie_children(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = s.rsplit_once(") ") else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let parent: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state == "Z" && parent == ppid {
            out.push(pid);
        }
    }
    out
}

/// Sends `sig` to a process this test started (directly or through kvsync); refuses pids <= 1.
pub fn signal(pid: u32, sig: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let p = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    let s = rustix::process::Signal::from_named_raw(sig).expect("signal");
    let _ = rustix::process::kill_process(p, s);
}
