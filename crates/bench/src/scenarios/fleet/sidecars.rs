//! The fleet: N separate `kvsync run` processes, each with its own config and directories, and the
//! watcher that learns when each of their destinations holds a new value.
//!
//! Each sidecar renders two prefixes: `shared/` (the same for all) into a `json` output, and its own
//! `own/<i>/` into an `env` output, each in a directory of its own. Every destination directory is
//! watched by one inotify instance in the benchmark (see `dest::watch_many`): when a destination is
//! renamed into place the watcher reads it (about 1 KiB) and records the sequence number it carries,
//! with the time of that read. The benchmark does not poll the files, so it adds one read per new
//! version and nothing while the fleet idles.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dest::{self, DestWatcher};
use crate::kvsync_proc::Kvsync;
use crate::measure::Recorder;
use crate::procstat;
use crate::scenarios::{json_output, write_config};

/// The key every sidecar renders (under `shared/`), and each sidecar's own key (under `own/<i>/`).
pub const SHARED_KEY: &str = "shared/k";

pub fn own_key(i: usize) -> String {
    format!("own/{i}/v")
}

pub struct Sidecar {
    pub kvsync: Kvsync,
    /// Versions of the shared key seen in its json output, and of its own key in its env output.
    pub json: Arc<Recorder>,
    pub env: Arc<Recorder>,
}

pub struct Fleet {
    pub sidecars: Vec<Sidecar>,
    /// From the first process started to the last first render seen.
    pub start_took: Duration,
    _watcher: DestWatcher,
}

/// What one sidecar costs at a moment: CPU time so far and resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub cpu: Duration,
    pub rss: u64,
}

impl Fleet {
    /// Writes the configs under `root`, starts `n` sidecars with `source` (a `sources:` entry named
    /// `s`), and waits (bounded) until every one has rendered both outputs with the values already in
    /// the backend (sequence 0).
    pub fn start(root: &Path, n: usize, source: &str, timeout: Duration) -> anyhow::Result<Fleet> {
        let mut plans = Vec::with_capacity(n);
        let mut watched = Vec::with_capacity(2 * n);
        for i in 0..n {
            let dir = root.join(format!("s{i:04}"));
            let (json_dir, env_dir) = (dir.join("json"), dir.join("env"));
            std::fs::create_dir_all(&json_dir)?;
            std::fs::create_dir_all(&env_dir)?;
            let (json_file, env_file) = (json_dir.join("app.json"), env_dir.join("own.env"));
            let outputs = format!(
                "{}  - {{ name: own, source: s, prefix: own/{i}/, format: env, destination: {} }}\n\
                 watch_config: false\n",
                json_output("s", "shared/", &json_file),
                env_file.display()
            );
            let cfg = write_config(&dir, source, &outputs)?;
            let (json, env) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
            watched.push((json_file, Arc::clone(&json)));
            watched.push((env_file, Arc::clone(&env)));
            plans.push((dir, cfg, json, env));
        }
        // Watching before the first process starts: the first renders are seen too.
        let watcher = dest::watch_many(&watched)?;
        let started = Instant::now();
        let mut sidecars = Vec::with_capacity(n);
        for (dir, cfg, json, env) in plans {
            let kvsync = Kvsync::start(&cfg, &dir.join("kvsync.log"))?;
            sidecars.push(Sidecar { kvsync, json, env });
        }
        let fleet = Fleet { sidecars, start_took: Duration::ZERO, _watcher: watcher };
        fleet.wait_all("the first render of every sidecar", timeout, |s| s.json.has_seen(0) && s.env.has_seen(0))?;
        Ok(Fleet { start_took: started.elapsed(), ..fleet })
    }

    pub fn len(&self) -> usize {
        self.sidecars.len()
    }

    /// Waits (bounded) until `done` holds for every sidecar, looking every 5 ms (the times measured
    /// are the watcher's, not this loop's). On timeout, names the sidecars still missing and shows
    /// the end of the first one's log.
    pub fn wait_all(&self, what: &str, timeout: Duration, done: impl Fn(&Sidecar) -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut from = 0;
        loop {
            while from < self.sidecars.len() && done(&self.sidecars[from]) {
                from += 1;
            }
            if from == self.sidecars.len() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let missing: Vec<usize> = (0..self.sidecars.len()).filter(|&i| !done(&self.sidecars[i])).collect();
                let log = self.sidecars[missing[0]].kvsync.log_text();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}: {} of {} sidecars missing (first: s{:04}); its log ends:\n{}",
                    missing.len(),
                    self.sidecars.len(),
                    missing[0],
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every sidecar's cost now.
    pub fn costs(&self) -> Vec<Cost> {
        self.sidecars
            .iter()
            .map(|s| {
                let pid = s.kvsync.pid();
                Cost { cpu: procstat::cpu(pid), rss: procstat::rss(pid) }
            })
            .collect()
    }

    /// The largest number of established connections one sidecar holds to `port`.
    pub fn max_connections(&self, port: u16) -> usize {
        self.sidecars.iter().map(|s| procstat::tcp_connections(s.kvsync.pid(), port)).max().unwrap_or(0)
    }

    /// Sidecars whose process has exited (a crash would otherwise show as a fast, cheap sidecar).
    pub fn exited(&self) -> usize {
        let gone = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // No such process, or a zombie: after the name, the state.
            stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
        };
        self.sidecars.iter().filter(|s| gone(s.kvsync.pid())).count()
    }
}
