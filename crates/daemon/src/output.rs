//! One output at run time: render its inputs, compare with what is on disk, check, commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvsync_watch::snapshot::{same_bytes, Entries};
use kvsync_watch::View;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};

use crate::commit;
use crate::config::{Format, Limits, OutputConfig};
use crate::format;
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
    /// A template's output, by its SHA-256.
    Hash([u8; 32]),
    /// Any other single-file format, by the inputs it was rendered from (prefix and entries), and the
    /// SHA-256 of its output when it was rendered in memory (two inputs may give the same bytes:
    /// `a/b` and `a.b` are one property).
    Inputs(Vec<(String, Arc<Entries>)>, Option<[u8; 32]>),
    /// `files`: what the destination's generations hold.
    Tree(commit::TreeState),
}

impl Last {
    fn inputs(views: &[View], hash: Option<[u8; 32]>) -> Last {
        Last::Inputs(views.iter().map(|v| (v.prefix.clone(), Arc::clone(&v.entries))).collect(), hash)
    }
}

/// Whether `views` hold the same rendered keys and values as `prev` (folder markers, and for `raw`
/// every key but the exact one, do not count). Unchanged values share their allocation between
/// snapshots, so this is a walk over the keys, not a comparison of every byte.
fn same_inputs(prev: &[(String, Arc<Entries>)], views: &[View], raw: bool) -> bool {
    prev.len() == views.len()
        && prev.iter().zip(views).all(|((prefix, entries), view)| {
            if *prefix != view.prefix {
                return false;
            }
            if Arc::ptr_eq(entries, &view.entries) {
                return true;
            }
            let n = prefix.len();
            let mut old = entries.iter().map(|(k, v)| (&k[n..], v)).filter(|(k, _)| rendered(k, raw));
            let mut new = view.relative().filter(|(k, _)| rendered(k, raw));
            loop {
                match (old.next(), new.next()) {
                    (None, None) => return true,
                    (Some((ka, va)), Some((kb, vb))) if ka == kb && same_bytes(va, vb) => {}
                    _ => return false,
                }
            }
        })
}

pub struct OutputRuntime {
    last: Option<Last>,
    /// Whether the output has rendered successfully since start.
    pub rendered: bool,
    /// When the destination was last written, to tell which input changes were already on disk.
    last_commit: Option<Instant>,
    /// Change-to-disk latency of the last write.
    pub last_latency: Option<Duration>,
    /// Whether a `files` output keeps a spare generation for the next change (not for `kvsync once`,
    /// which renders once and exits).
    spares: bool,
}

impl Default for OutputRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputRuntime {
    pub fn new() -> Self {
        OutputRuntime { last: None, rendered: false, last_commit: None, last_latency: None, spares: true }
    }

    /// A runtime for one render pass (`kvsync once`): a `files` output keeps one generation only.
    pub fn single_pass() -> Self {
        OutputRuntime { spares: false, ..Self::new() }
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
        if matches!(cfg.format, Format::Files) {
            return self.render_files(cfg, &views[0], limits);
        }
        let raw = matches!(cfg.format, Format::Raw { .. });
        // Every format but a template is a function of its keys and values alone: when they are
        // what the last commit rendered, so is the output, and nothing needs rendering.
        let pure = !matches!(cfg.format, Format::Template(_));
        if let (true, Some(Last::Inputs(prev, _))) = (pure, &self.last) {
            if same_inputs(prev, views, raw) {
                return Ok(Outcome::Unchanged);
            }
        }
        let mut inputs = Vec::with_capacity(views.len());
        for (input, view) in cfg.inputs.iter().zip(views) {
            let mut kv: BTreeMap<&str, &[u8]> = BTreeMap::new();
            each_value(input, view, raw, limits, |k, v| {
                kv.insert(k, v.as_ref());
            })?;
            inputs.push(InputData { name: &input.name, origin: format!("{}:{}", input.source, input.prefix), kv });
        }
        let dest = &cfg.destination;
        let first_since_start = self.last.is_none();
        if first_since_start {
            // First render since start: remove what an interrupted run may have left.
            commit::clean_stray_temp_files(dest);
        }
        let render_failure = |e: String| Failure::new(FailureReason::Render, e);
        let (staged, last) = if let Format::Json = cfg.format {
            // Written straight into the staged file: a large output is never held in memory.
            let tree = format::json_tree(&inputs[0].kv).map_err(render_failure)?;
            let mode = prepare(cfg)?;
            let over = std::cell::Cell::new(false);
            let staged = commit::stage_with(dest, mode, |w| {
                let mut w = Limited { inner: w, left: limits.max_output_size, over: &over };
                format::json::write(&tree, &mut w)
            });
            if over.get() {
                return Err(output_size_failure(limits));
            }
            (staged.map_err(write_failure)?, Last::inputs(views, None))
        } else {
            let bytes = format::render(&cfg.format, &inputs, cfg.single).map_err(render_failure)?;
            if bytes.len() as u64 > limits.max_output_size {
                return Err(output_size_failure(limits));
            }
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            let same = match &self.last {
                Some(Last::Hash(h)) | Some(Last::Inputs(_, Some(h))) => *h == hash,
                // First render since start (a pure format compares the staged file below).
                None if !pure => std::fs::read(dest).is_ok_and(|old| old == bytes),
                _ => false,
            };
            let last = if pure { Last::inputs(views, Some(hash)) } else { Last::Hash(hash) };
            if same {
                self.last = Some(last);
                return Ok(Outcome::Unchanged);
            }
            let mode = prepare(cfg)?;
            (commit::stage_file(dest, &bytes, mode).map_err(write_failure)?, last)
        };
        drop(inputs);
        if pure && first_since_start && commit::same_contents(staged.path(), dest) {
            // What a previous run left is already right.
            self.last = Some(last);
            return Ok(Outcome::Unchanged);
        }
        if let Some(check) = &cfg.check {
            crate::check::run(check, staged.path()).map_err(check_failure)?;
        }
        crate::keep::before_publish(cfg);
        staged.commit().map_err(write_failure)?;
        self.last = Some(last);
        Ok(Outcome::Written)
    }

    /// `format: files`: compares the view with what the destination holds and commits only the
    /// difference. Values go from the snapshot to the files without a copy.
    fn render_files(&mut self, cfg: &OutputConfig, view: &View, limits: &Limits) -> Result<Outcome, Failure> {
        let input = &cfg.inputs[0];
        let dest = &cfg.destination;
        let mode = cfg.perms.unwrap_or(commit::DEFAULT_MODE);
        let state = match self.last.take() {
            Some(Last::Tree(t)) => Some(t),
            _ => {
                // First render since start: remove generations an interrupted run left half-made.
                commit::clean_stray_generations(dest);
                commit::TreeState::on_disk(dest, mode)
            }
        };
        let render_failure = |e: String| Failure::new(FailureReason::Render, e);
        let Some(mut state) = state else {
            // Nothing on disk yet: every key is new.
            let mut kv: Vec<(&str, Bytes)> = Vec::with_capacity(view.entries.len());
            each_value(input, view, false, limits, |k, v| kv.push((k, v.clone())))?;
            let tree = format::files::layout(kv).map_err(render_failure)?;
            if tree.values().map(|v| v.len() as u64).sum::<u64>() > limits.max_output_size {
                return Err(output_size_failure(limits));
            }
            let changes = tree.into_iter().map(|(k, v)| (k, Some(v))).collect();
            return self.commit_files(cfg, None, changes, mode);
        };
        let diffed = diff_files(&state.files, input, view, limits).and_then(|(changes, size)| {
            format::files::check_changes(&state.files, &changes).map_err(render_failure)?;
            if size > limits.max_output_size {
                return Err(output_size_failure(limits));
            }
            Ok(changes)
        });
        let changes = match diffed {
            Ok(c) => c,
            Err(f) => {
                self.last = Some(Last::Tree(state));
                return Err(f);
            }
        };
        if changes.is_empty() && commit::current_generation(dest).as_deref() == Some(state.current.as_str()) {
            if self.spares {
                state.ensure_spare(dest);
            }
            self.last = Some(Last::Tree(state));
            return Ok(Outcome::Unchanged);
        }
        self.commit_files(cfg, Some(state), changes, mode)
    }

    fn commit_files(
        &mut self,
        cfg: &OutputConfig,
        mut state: Option<commit::TreeState>,
        changes: commit::Changes,
        mode: u32,
    ) -> Result<Outcome, Failure> {
        let dest = &cfg.destination;
        let staged = commit::check_parent(dest)
            .map_err(write_failure)
            .and_then(|()| commit::stage_generation(dest, state.as_mut(), changes, mode).map_err(write_failure))
            .and_then(|generation| {
                if let Some(check) = &cfg.check {
                    crate::check::run(check, &generation.path()).map_err(check_failure)?;
                }
                Ok(generation)
            });
        let generation = match staged {
            Ok(g) => g,
            Err(e) => {
                // Nothing was swapped: the destination still holds what the state says.
                self.last = state.map(Last::Tree);
                return Err(e);
            }
        };
        crate::keep::before_publish(cfg);
        // Once the swap is attempted the state is only known again by reading the disk.
        let committed = commit::commit_generation(generation, state, mode, self.spares).map_err(write_failure)?;
        self.last = Some(Last::Tree(committed));
        Ok(Outcome::Written)
    }
}

/// The changes that turn `files` into the keys and values `view` renders (limits checked on the
/// way), and the total size of those values. A walk over both sorted lists: unchanged values share
/// their allocation, so nothing is copied and only changed values are compared byte by byte.
fn diff_files(
    files: &BTreeMap<String, Bytes>,
    input: &crate::config::InputConfig,
    view: &View,
    limits: &Limits,
) -> Result<(commit::Changes, u64), Failure> {
    let mut old = files.iter().peekable();
    let mut changes = commit::Changes::new();
    let mut size = 0u64;
    each_value(input, view, false, limits, |k, v| {
        size += v.len() as u64;
        while let Some((gone, _)) = old.next_if(|(o, _)| o.as_str() < k) {
            changes.push((gone.clone(), None));
        }
        match old.next_if(|(o, _)| o.as_str() == k) {
            Some((_, was)) if same_bytes(was, v) => {}
            _ => changes.push((k.to_string(), Some(v.clone()))),
        }
    })?;
    changes.extend(old.map(|(gone, _)| (gone.clone(), None)));
    Ok((changes, size))
}

/// Whether an output renders the key `rel` (relative to its prefix): `raw` renders the exact key
/// only; every other format leaves out the exact key and folder markers (keys ending in `/`).
fn rendered(rel: &str, raw: bool) -> bool {
    if raw {
        rel.is_empty()
    } else {
        !rel.is_empty() && !rel.ends_with('/')
    }
}

/// Calls `f` with every key (relative to the input's prefix) and value of `view` that an output
/// renders: folder markers are left out, and for `raw` only the exact key is kept. Limits are
/// checked on the way.
fn each_value<'v>(
    input: &crate::config::InputConfig,
    view: &'v View,
    raw: bool,
    limits: &Limits,
    mut f: impl FnMut(&'v str, &'v Bytes),
) -> Result<(), Failure> {
    if view.entries.len() > limits.max_keys {
        return Err(Failure::new(
            FailureReason::Limit,
            format!(
                "{}:{} holds {} keys, over the limit of {} (limits.max_keys)",
                input.source,
                input.prefix,
                view.entries.len(),
                limits.max_keys
            ),
        ));
    }
    for (rel, value) in view.relative().filter(|(rel, _)| rendered(rel, raw)) {
        if value.len() as u64 > limits.max_value_size {
            return Err(Failure::new(
                FailureReason::Limit,
                format!(
                    "key `{}{rel}` is {} bytes, over the limit of {} bytes (limits.max_value_size)",
                    input.prefix,
                    value.len(),
                    limits.max_value_size
                ),
            ));
        }
        f(rel, value);
    }
    Ok(())
}

fn output_size_failure(limits: &Limits) -> Failure {
    Failure::new(
        FailureReason::Limit,
        format!("the rendered output is over the limit of {} bytes (limits.max_output_size)", limits.max_output_size),
    )
}

/// Checks that the destination's directory exists and returns the mode to write the file with.
fn prepare(cfg: &OutputConfig) -> Result<u32, Failure> {
    commit::check_parent(&cfg.destination).map_err(write_failure)?;
    Ok(commit::target_mode(&cfg.destination, cfg.perms))
}

/// A writer that refuses to pass more than `left` bytes (limits.max_output_size) and says so.
struct Limited<'a, W: ?Sized> {
    inner: &'a mut W,
    left: u64,
    over: &'a std::cell::Cell<bool>,
}

impl<W: std::io::Write + ?Sized> std::io::Write for Limited<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.over.set(true);
            return Err(std::io::Error::other("over limits.max_output_size"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_failure(e: impl ToString) -> Failure {
    Failure::new(FailureReason::Write, e.to_string())
}

fn check_failure(e: crate::check::CheckError) -> Failure {
    Failure { reason: FailureReason::Check, detail: e.to_string(), summary: e.summary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn view(entries: &[(&str, &str)]) -> View {
        View {
            source: "s".into(),
            prefix: "p/".into(),
            version: 1,
            entries: Arc::new(entries.iter().map(|(k, v)| (format!("p/{k}"), Bytes::from(v.to_string()))).collect()),
            received: Instant::now(),
            stale: false,
        }
    }

    fn config(dir: &std::path::Path, format: &str) -> Config {
        let text = format!(
            "sources:\n  - {{ name: s, type: file, path: {d} }}\noutputs:\n  - {{ name: o, source: s, prefix: p/, format: {format}, destination: {d}/out }}\n",
            d = dir.display()
        );
        Config::parse(&dir.join("kvsync.yaml"), &text).unwrap()
    }

    #[test]
    fn the_same_inputs_are_not_rendered_again_and_the_same_bytes_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let stats = OutputStats::default();
        let cfg = config(d.path(), "json");
        let (o, limits) = (&cfg.outputs[0], &cfg.limits);
        let mut rt = OutputRuntime::new();
        assert_eq!(rt.render_commit(o, &[view(&[("a", "1")])], limits, &stats), Ok(Outcome::Written));
        // A new snapshot with the same values (and a folder marker, which renders nothing).
        let v2 = view(&[("a", "1"), ("dir/", "")]);
        assert_eq!(rt.render_commit(o, &[v2], limits, &stats), Ok(Outcome::Unchanged));
        assert_eq!(rt.render_commit(o, &[view(&[("a", "2")])], limits, &stats), Ok(Outcome::Written));
        assert_eq!(std::fs::read_to_string(d.path().join("out")).unwrap(), "{\n  \"a\": \"2\"\n}\n");

        // Two different sets of keys that render the same properties file: not rewritten.
        let cfg = config(d.path(), "properties");
        let (o, limits) = (&cfg.outputs[0], &cfg.limits);
        let mut rt = OutputRuntime::new();
        assert_eq!(rt.render_commit(o, &[view(&[("a/b", "1")])], limits, &stats), Ok(Outcome::Written));
        assert_eq!(rt.render_commit(o, &[view(&[("a.b", "1")])], limits, &stats), Ok(Outcome::Unchanged));

        // A fresh runtime (a restart) finds the file already right.
        let mut rt = OutputRuntime::new();
        assert_eq!(rt.render_commit(o, &[view(&[("a.b", "1")])], limits, &stats), Ok(Outcome::Unchanged));
    }
}
