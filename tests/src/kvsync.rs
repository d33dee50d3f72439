//! The real `kvsync` binary, started as a separate process.
//!
//! The binary is found through `KVSYNC_BIN`, or next to the test executable's target directory
//! (`target/<profile>/kvsync`); `./scripts/test` builds it before running the tests. A binary older
//! than any source file it was built from is refused, so `cargo test` alone never tests stale code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The path of the kvsync binary under test; panics when it is missing or older than its sources.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY.get_or_init(find_binary).clone().unwrap_or_else(|e| panic!("{e}"))
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KVSYNC_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/kvsync
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or("no target/<profile> above the test binary")?;
    let bin = profile_dir.join("kvsync");
    let build = "run ./scripts/test, or `cargo build -p kvsync --bin kvsync` before `cargo test`, or set KVSYNC_BIN";
    let built =
        std::fs::metadata(&bin).and_then(|m| m.modified()).map_err(|e| format!("{}: {e}: {build}", bin.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace above tests/")?;
    if let Some((newer, when)) = newest_source(&profile_dir.join("kvsync.d"), workspace).filter(|(_, t)| *t > built) {
        let by = when.duration_since(built).unwrap_or_default();
        return Err(format!(
            "{} is older than its source {} (changed {by:.1?} after the build): the tests would run stale code; {build}",
            bin.display(),
            newer.display()
        ));
    }
    Ok(bin)
}

/// The most recently modified source file of the binary, from cargo's dep-info file next to it
/// (`kvsync.d`: `target: src1 src2 ...`); without one, every file under `crates/`. Paths recorded in
/// another checkout of the same workspace (a copied target directory) are read in this one.
fn newest_source(dep_info: &Path, workspace: &Path) -> Option<(PathBuf, SystemTime)> {
    let files: Vec<PathBuf> = match std::fs::read_to_string(dep_info) {
        Ok(text) => {
            // Spaces inside a path are escaped as `\ `.
            let deps = text.lines().next()?.split_once(": ")?.1.replace("\\ ", "\u{0}");
            deps.split(' ')
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d.replace('\u{0}', " ")))
                .filter_map(|p| {
                    if p.starts_with(workspace) {
                        return Some(p);
                    }
                    let s = p.to_string_lossy();
                    // Only the workspace's own sources; registry crates and generated files are skipped.
                    s.find("/crates/").map(|i| workspace.join(&s[i + 1..]))
                })
                .collect()
        }
        Err(_) => {
            let mut all = Vec::new();
            let mut dirs = vec![workspace.join("crates")];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(p);
                    } else {
                        all.push(p);
                    }
                }
            }
            all
        }
    };
    files
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).and_then(|m| m.modified()).ok().map(|t| (p, t)))
        .max_by_key(|(_, t)| *t)
}

/// A command for the kvsync binary with logs at debug level in text form.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args).env_remove("KVSYNC_LOG").env("NO_COLOR", "1").stdin(Stdio::null());
    c
}

/// Runs kvsync to completion (bounded by `timeout`); returns its status, stdout and stderr, complete.
pub fn run(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kvsync");
    let mut out = Capture::start(child.stdout.take().expect("stdout"));
    let mut err = Capture::start(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvsync {args:?} did not exit within {timeout:?}; stderr so far:\n{}", err.text());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The output is complete once each reader has seen the end of its pipe.
    (status, out.finish(timeout), err.finish(timeout))
}

/// A pipe read line by line into a shared buffer by a thread of its own.
struct Capture {
    buf: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(r: impl std::io::Read + Send + 'static) -> Capture {
        let buf = Arc::new(Mutex::new(String::new()));
        let b = Arc::clone(&buf);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                let mut g = b.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Capture { buf, reader: Some(reader) }
    }

    fn text(&self) -> String {
        self.buf.lock().unwrap().clone()
    }

    /// Waits (bounded) until the writer's end of the pipe is closed and everything is read, then
    /// returns all of it. Panics when a process that inherited the pipe keeps it open.
    #[track_caller]
    fn finish(&mut self, timeout: Duration) -> String {
        if let Some(reader) = self.reader.take() {
            let start = Instant::now();
            while !reader.is_finished() {
                if start.elapsed() > timeout {
                    panic!(
                        "the output of kvsync did not end within {timeout:?} after it exited (a process it \
                         started still holds the pipe); so far:\n{}",
                        self.text()
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            reader.join().expect("the reader thread");
        }
        self.text()
    }
}

/// A running kvsync daemon. Killed when dropped; `stop` asks it to shut down with SIGTERM.
pub struct Daemon {
    child: Option<Child>,
    log: Capture,
}

impl Daemon {
    /// Starts `kvsync <args>` with its stderr (the log) captured.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with(command(args))
    }

    /// Starts a prepared command (extra env, cwd) with its stderr captured.
    pub fn start_with(mut cmd: Command) -> Daemon {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start kvsync");
        let log = Capture::start(child.stderr.take().expect("stderr"));
        Daemon { child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything kvsync logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until the log contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {needle:?} in the kvsync log:\n{}", self.log());
            }
            if self.has_exited() {
                panic!("kvsync exited before logging {needle:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address of the HTTP endpoint, from the "listening on" log line (for `http.listen:
    /// 127.0.0.1:0`, where the kernel picks the port).
    #[track_caller]
    pub fn http_addr(&self, timeout: Duration) -> String {
        self.wait_log("listening on http://", timeout);
        crate::http::endpoint_in_log(&self.log()).expect("an address after `listening on http://`")
    }

    /// Whether the process has exited (it is a zombie or gone), without reaping it.
    pub fn has_exited(&self) -> bool {
        let Some(c) = self.child.as_ref() else { return true };
        match std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
            // The state is the field after the parenthesised command name.
            Ok(s) => s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Sends a signal by number.
    pub fn signal(&self, sig: i32) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        let sig = rustix::process::Signal::from_named_raw(sig).expect("signal");
        let _ = rustix::process::kill_process(pid, sig);
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(15);
        self.wait(Duration::from_secs(15))
    }

    /// Waits for the process to exit by itself; the log is complete when it returns.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                self.child = None;
                self.log.finish(timeout);
                return s;
            }
            if start.elapsed() > timeout {
                panic!("kvsync did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
