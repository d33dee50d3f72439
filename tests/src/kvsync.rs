//! The real `kvsync` binary, started as a separate process.
//!
//! The binary is found through `KVSYNC_BIN`, or next to the test executable's target directory
//! (`target/<profile>/kvsync`); `./scripts/test` builds it before running the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of the kvsync binary under test.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KVSYNC_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/kvsync
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("kvsync");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p kvsync`, which ./scripts/test does) or set KVSYNC_BIN",
        bin.display()
    );
    bin
}

/// A command for the kvsync binary with logs at debug level in text form.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args).env_remove("KVSYNC_LOG").env("NO_COLOR", "1").stdin(Stdio::null());
    c
}

/// Runs kvsync to completion (bounded by `timeout`); returns its status, stdout and stderr.
pub fn run(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kvsync");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvsync {args:?} did not exit within {timeout:?}; stderr so far:\n{}", err.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Let the reader threads see EOF.
    std::thread::sleep(Duration::from_millis(20));
    let o = out.lock().unwrap().clone();
    let e = err.lock().unwrap().clone();
    (status, o, e)
}

fn drain(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = Arc::clone(&buf);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut g = b.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    buf
}

/// A running kvsync daemon. Killed when dropped; `stop` asks it to shut down with SIGTERM.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `kvsync <args>` with its stderr (the log) captured.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with(command(args))
    }

    /// Starts a prepared command (extra env, cwd) with its stderr captured.
    pub fn start_with(mut cmd: Command) -> Daemon {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start kvsync");
        let log = drain(child.stderr.take().expect("stderr"));
        Daemon { child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything kvsync logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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

    /// Waits for the process to exit by itself.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                self.child = None;
                std::thread::sleep(Duration::from_millis(20));
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
