//! One output at run time: render its inputs, compare with what is on disk, check, commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvsync_watch::View;
use sha2::{Digest, Sha256};

use crate::commit;
use crate::config::{Format, Limits, OutputConfig};
use crate::format::{self, Rendered};
use crate::template::InputData;

/// Counters for one output, read by /metrics and /status.
#[derive(Debug, Default)]
pub struct OutputStats {
    pub renders: AtomicU64,
    pub writes: AtomicU64,
    pub skipped_unchanged: AtomicU64,
    pub failures: AtomicU64,
    /// Unix seconds of the last successful render (written or unchanged); 0 = never.
    pub last_success: AtomicU64,
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
}

impl Default for OutputRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputRuntime {
    pub fn new() -> Self {
        OutputRuntime { last: None, rendered: false }
    }

    /// Renders `views` (one per input, in config order) and commits the result if it differs from
    /// what is on disk. On any error the destination is left as it was.
    pub fn render_commit(
        &mut self,
        cfg: &OutputConfig,
        views: &[View],
        limits: &Limits,
        stats: &OutputStats,
    ) -> Result<Outcome, String> {
        stats.renders.fetch_add(1, Ordering::Relaxed);
        let result = self.render_commit_inner(cfg, views, limits);
        match &result {
            Ok(o) => {
                self.rendered = true;
                let counter = if *o == Outcome::Written { &stats.writes } else { &stats.skipped_unchanged };
                counter.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                stats.last_success.store(now, Ordering::Relaxed);
            }
            Err(_) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn render_commit_inner(&mut self, cfg: &OutputConfig, views: &[View], limits: &Limits) -> Result<Outcome, String> {
        let raw = matches!(cfg.format, Format::Raw { .. });
        let mut inputs = Vec::with_capacity(views.len());
        for (input, view) in cfg.inputs.iter().zip(views) {
            if view.entries.len() > limits.max_keys {
                return Err(format!(
                    "{}:{} holds {} keys, over the limit of {} (limits.max_keys)",
                    input.source,
                    input.prefix,
                    view.entries.len(),
                    limits.max_keys
                ));
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
                    return Err(format!(
                        "key `{}{rel}` is {} bytes, over the limit of {} bytes (limits.max_value_size)",
                        input.prefix,
                        value.len(),
                        limits.max_value_size
                    ));
                }
                kv.insert(rel, value.as_ref());
            }
            inputs.push(InputData { name: &input.name, origin: format!("{}:{}", input.source, input.prefix), kv });
        }
        let rendered = format::render(&cfg.format, &inputs, cfg.single)?;
        if rendered.size() > limits.max_output_size {
            return Err(format!(
                "rendered output is {} bytes, over the limit of {} bytes (limits.max_output_size)",
                rendered.size(),
                limits.max_output_size
            ));
        }
        drop(inputs);
        match rendered {
            Rendered::File(bytes) => self.commit_file(cfg, bytes),
            Rendered::Tree(tree) => self.commit_tree(cfg, tree),
        }
    }

    fn commit_file(&mut self, cfg: &OutputConfig, bytes: Vec<u8>) -> Result<Outcome, String> {
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
        commit::check_parent(dest)?;
        let mode = commit::target_mode(dest, cfg.perms);
        let staged = commit::stage_file(dest, &bytes, mode).map_err(|e| e.to_string())?;
        if let Some(check) = &cfg.check {
            crate::check::run(check, staged.path())?;
        }
        staged.commit().map_err(|e| e.to_string())?;
        self.last = Some(Last::File(hash));
        Ok(Outcome::Written)
    }

    fn commit_tree(&mut self, cfg: &OutputConfig, tree: BTreeMap<String, Bytes>) -> Result<Outcome, String> {
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
        commit::check_parent(dest)?;
        let mode = cfg.perms.unwrap_or(commit::DEFAULT_MODE);
        let result = (|| {
            let generation =
                commit::stage_generation(dest, &tree, previous.as_ref(), mode).map_err(|e| e.to_string())?;
            if let Some(check) = &cfg.check {
                crate::check::run(check, &generation.path())?;
            }
            commit::commit_generation(generation).map_err(|e| e.to_string())
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

/// The files a previous run left in a `files` destination (through `..data`), if it has a generation.
fn on_disk_tree(dest: &Path) -> Option<BTreeMap<String, Bytes>> {
    commit::current_generation(dest)?;
    let data = dest.join("..data");
    kvsync_watch::file::read_tree(&data, usize::MAX).ok()
}
