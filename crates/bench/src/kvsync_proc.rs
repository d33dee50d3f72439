//! The release kvsync binary, run as a separate process for a scenario.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The kvsync binary: `KVSYNC_BIN`, or `kvsync` next to this benchmark's executable.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KVSYNC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.parent().map(|d| d.join("kvsync")).unwrap_or_default();
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist; build it with `cargo build --release -p kvsync` (or set KVSYNC_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// A running kvsync, killed on drop; its log goes to `log`.
pub struct Kvsync {
    child: std::sync::Mutex<Child>,
    pub log: PathBuf,
    pub started: Instant,
}

impl Kvsync {
    pub fn start(config: &Path, log: &Path) -> anyhow::Result<Kvsync> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(binary()?)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("KVSYNC_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()?;
        Ok(Kvsync { child: std::sync::Mutex::new(child), log: log.to_path_buf(), started: Instant::now() })
    }

    /// Starts kvsync with its log in `dir/kvsync.log` and waits (bounded) for its first full render;
    /// returns it with the moment that render was seen. Blocking: async callers use `block_in_place`.
    pub fn start_rendered(config: &Path, dir: &Path, timeout: Duration) -> anyhow::Result<(Kvsync, Instant)> {
        let k = Kvsync::start(config, &dir.join("kvsync.log"))?;
        let rendered = k.wait_log("every output has rendered", timeout)?;
        Ok((k, rendered))
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`; returns when it was first noticed.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "kvsync did not log {needle:?} within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How many times kvsync wrote an output so far (from its log).
    pub fn writes(&self) -> usize {
        self.log_text().matches("rendered and written").count()
    }
}

impl Drop for Kvsync {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
