//! One output at run time: render its inputs, compare with what is on disk, check, commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvsync_watch::View;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};

use crate::commit;
use crate::config::{Format, Limits, OutputConfig};
use crate::format::{self, Rendered};
use crate::template::InputData;

/// Upper bounds (seconds) of the change-to-disk latency buckets: from a local file source's
/// milliseconds to a quiescence period of a minute.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Why a render pass left an output's previous content in place (the `reason` label of
/// `kvsync_output_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A key count, value size or output size over `limits`.
    Limit,
    /// The template or format could not render the keys (undefined variable, key both value and folder...).
    Render,
    /// The `check` command refused the staged file.
    Check,
    /// Staging or committing on disk failed (missing directory, permissions, full disk).
    Write,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] =
        [FailureReason::Limit, FailureReason::Render, FailureReason::Check, FailureReason::Write];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Limit => "limit",
            FailureReason::Render => "render",
            FailureReason::Check => "check",
            FailureReason::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A failed render or commit.
#[derive(Debug, Clone)]
struct Failure {
    reason: FailureReason,
    /// What failed, safe to show anywhere (never a value).
    summary: String,
    /// The summary plus what a check command printed, for the log only.
    detail: String,
}

impl Failure {
    fn new(reason: FailureReason, summary: String) -> Self {
        Failure { reason, detail: summary.clone(), summary }
    }
}

/// The last failure of an output, for /status.
#[derive(Debug, Clone)]
pub struct LastFailure {
    pub at: SystemTime,
    pub reason: FailureReason,
    /// What failed, without any check command output (that may quote the staged file).
    pub message: String,
}

/// Counters for one output, read by /metrics and /status. Never holds a value.
#[derive(Debug)]
pub struct OutputStats {
    /// Render attempts.
    pub renders: AtomicU64,
    /// Renders that changed the destination.
    pub writes: AtomicU64,
    /// Renders whose bytes matched what was on disk, so nothing was written.
    pub skipped_unchanged: AtomicU64,
    /// Failed renders, indexed by `FailureReason as usize`.
    pub failures: [AtomicU64; FailureReason::ALL.len()],
    /// Unix seconds of the last successful render (written or unchanged); 0 = never.
    pub last_success: AtomicU64,
    /// When the output was last rendered (successfully or not), and last written.
    pub last_render: Mutex<Option<SystemTime>>,
    pub last_write: Mutex<Option<SystemTime>>,
    pub last_failure: Mutex<Option<LastFailure>>,
    /// Seconds from a source receiving a change to the commit that put it on disk.
    pub latency: Histogram,
}

impl Default for OutputStats {
    fn default() -> Self {
        OutputStats {
            renders: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            skipped_unchanged: AtomicU64::new(0),
            failures: Default::default(),
            last_success: AtomicU64::new(0),
            last_render: Mutex::new(None),
            last_write: Mutex::new(None),
            last_failure: Mutex::new(None),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl OutputStats {
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason.index()].load(Ordering::Relaxed)
    }

    pub fn last_failure(&self) -> Option<LastFailure> {
        self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn set<T>(slot: &Mutex<Option<T>>, v: T) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

/// What a successful render pass did to an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
}

/// What was last committed, to skip writing identical bytes.
enum Last {
    File([u8; 32]),
    Tree(BTreeMap<String, Bytes>),
}

pub struct OutputRuntime {
    last: Option<Last>,
    /// Whether the output has rendered successfully since start.
    pub rendered: bool,
    /// When the destination was last written, to tell which input changes were already on disk.
    last_commit: Option<Instant>,
    /// Change-to-disk latency of the last write.
    pub last_latency: Option<Duration>,
}

impl Default for OutputRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputRuntime {
    pub fn new() -> Self {
        OutputRuntime { last: None, rendered: false, last_commit: None, last_latency: None }
    }

    /// Renders `views` (one per input, in config order) and commits the result if it differs from
    /// what is on disk. On any error the destination is left as it was; the error is the full message
    /// for the log.
    pub fn render_commit(
        &mut self,
        cfg: &OutputConfig,
        views: &[View],
        limits: &Limits,
        stats: &OutputStats,
    ) -> Result<Outcome, String> {
        stats.renders.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        set(&stats.last_render, now);
        match self.render_commit_inner(cfg, views, limits) {
            Ok(o) => {
                self.rendered = true;
                let counter = if o == Outcome::Written { &stats.writes } else { &stats.skipped_unchanged };
                counter.fetch_add(1, Ordering::Relaxed);
                let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                stats.last_success.store(secs, Ordering::Relaxed);
                if o == Outcome::Written {
                    set(&stats.last_write, now);
                    let latency = self.change_to_disk(views);
                    stats.latency.observe(latency.as_secs_f64());
                    self.last_latency = Some(latency);
                    self.last_commit = Some(Instant::now());
                }
                Ok(o)
            }
            Err(f) => {
                stats.failures[f.reason.index()].fetch_add(1, Ordering::Relaxed);
                set(&stats.last_failure, LastFailure { at: now, reason: f.reason, message: f.summary });
                Err(f.detail)
            }
        }
    }

    /// How long the oldest change not yet on disk waited: from the moment its source received it
    /// (`View::received`) to now, just after the commit. Views received before the previous commit
    /// were already on disk; with the latest-value channel a view carries its newest change only, so a
    /// burst coalesced into one view is measured from its last change.
    fn change_to_disk(&self, views: &[View]) -> Duration {
        let newer = views.iter().map(|v| v.received).filter(|r| self.last_commit.is_none_or(|c| *r > c)).min();
        let since = newer.or_else(|| views.iter().map(|v| v.received).max());
        since.map(|t| t.elapsed()).unwrap_or_default()
    }

    fn render_commit_inner(&mut self, cfg: &OutputConfig, views: &[View], limits: &Limits) -> Result<Outcome, Failure> {
        let limit = |msg: String| Failure::new(FailureReason::Limit, msg);
        let raw = matches!(cfg.format, Format::Raw { .. });
        let mut inputs = Vec::with_capacity(views.len());
        for (input, view) in cfg.inputs.iter().zip(views) {
            if view.entries.len() > limits.max_keys {
                return Err(limit(format!(
                    "{}:{} holds {} keys, over the limit of {} (limits.max_keys)",
                    input.source,
                    input.prefix,
                    view.entries.len(),
                    limits.max_keys
                )));
            }
            let mut kv: BTreeMap<&str, &[u8]> = BTreeMap::new();
            for (rel, value) in view.relative() {
                if raw {
                    if !rel.is_empty() {
                        continue; // only the exact key
                    }
                } else if rel.is_empty() || rel.ends_with('/') {
                    continue; // folder markers
                }
                if value.len() as u64 > limits.max_value_size {
                    return Err(limit(format!(
                        "key `{}{rel}` is {} bytes, over the limit of {} bytes (limits.max_value_size)",
                        input.prefix,
                        value.len(),
                        limits.max_value_size
                    )));
                }
                kv.insert(rel, value.as_ref());
            }
            inputs.push(InputData { name: &input.name, origin: format!("{}:{}", input.source, input.prefix), kv });
        }
        let rendered =
            format::render(&cfg.format, &inputs, cfg.single).map_err(|e| Failure::new(FailureReason::Render, e))?;
        if rendered.size() > limits.max_output_size {
            return Err(limit(format!(
                "rendered output is {} bytes, over the limit of {} bytes (limits.max_output_size)",
                rendered.size(),
                limits.max_output_size
            )));
        }
        drop(inputs);
        match rendered {
            Rendered::File(bytes) => self.commit_file(cfg, bytes),
            Rendered::Tree(tree) => self.commit_tree(cfg, tree),
        }
    }

    fn commit_file(&mut self, cfg: &OutputConfig, bytes: Vec<u8>) -> Result<Outcome, Failure> {
        let dest = &cfg.destination;
        if self.last.is_none() {
            // First render since start: remove what an interrupted run may have left.
            commit::clean_stray_temp_files(dest);
        }
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let same = match &self.last {
            Some(Last::File(h)) => *h == hash,
            // First render since start: compare with what a previous run left.
            _ => std::fs::read(dest).map(|old| old == bytes).unwrap_or(false),
        };
        if same {
            self.last = Some(Last::File(hash));
            return Ok(Outcome::Unchanged);
        }
        commit::check_parent(dest).map_err(write_failure)?;
        let mode = commit::target_mode(dest, cfg.perms);
        let staged = commit::stage_file(dest, &bytes, mode).map_err(write_failure)?;
        if let Some(check) = &cfg.check {
            crate::check::run(check, staged.path()).map_err(check_failure)?;
        }
        staged.commit().map_err(write_failure)?;
        self.last = Some(Last::File(hash));
        Ok(Outcome::Written)
    }

    fn commit_tree(&mut self, cfg: &OutputConfig, tree: BTreeMap<String, Bytes>) -> Result<Outcome, Failure> {
        let dest = &cfg.destination;
        let previous = match self.last.take() {
            Some(Last::Tree(t)) => Some(t),
            _ => {
                // First render since start: remove generations an interrupted run left half-made.
                commit::clean_stray_generations(dest);
                on_disk_tree(dest)
            }
        };
        if previous.as_ref() == Some(&tree) && commit::current_generation(dest).is_some() {
            self.last = Some(Last::Tree(tree));
            return Ok(Outcome::Unchanged);
        }
        commit::check_parent(dest).map_err(write_failure)?;
        let mode = cfg.perms.unwrap_or(commit::DEFAULT_MODE);
        let result = (|| {
            let generation = commit::stage_generation(dest, &tree, previous.as_ref(), mode).map_err(write_failure)?;
            if let Some(check) = &cfg.check {
                crate::check::run(check, &generation.path()).map_err(check_failure)?;
            }
            commit::commit_generation(generation).map_err(write_failure)
        })();
        match result {
            Ok(()) => {
                self.last = Some(Last::Tree(tree));
                Ok(Outcome::Written)
            }
            Err(e) => {
                if let Some(p) = previous {
                    self.last = Some(Last::Tree(p));
                }
                Err(e)
            }
        }
    }
}

fn write_failure(e: impl ToString) -> Failure {
    Failure::new(FailureReason::Write, e.to_string())
}

fn check_failure(e: crate::check::CheckError) -> Failure {
    Failure { reason: FailureReason::Check, detail: e.to_string(), summary: e.summary }
}

/// The files a previous run left in a `files` destination (through `..data`), if it has a generation.
fn on_disk_tree(dest: &Path) -> Option<BTreeMap<String, Bytes>> {
    commit::current_generation(dest)?;
    let data = dest.join("..data");
    kvsync_watch::file::read_tree(&data, usize::MAX).ok()
}
