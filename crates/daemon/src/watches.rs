//! The running sources: one watch engine per configured source, kept across config reloads.
//!
//! A reload must not reconnect to every backend: a source whose settings and watched prefixes are the
//! same in the new config keeps running (its connection, its snapshot, its blocking query or watch
//! stream); a source that changed, or whose set of prefixes changed, is stopped and started anew; a
//! source the new config no longer names is stopped. Giving each source its own engine is what makes
//! that possible: the engine's set of sources and prefixes is fixed when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kvsync_watch::{Engine, EngineBuilder, EngineStopped, SourceStats, Subscription, Wake};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{CacheConfig, Config, Limits, RetryConfig, SourceConfig};
use crate::sources;

/// How long a stopping source may take to return.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// The settings outside `sources:` that a source is built with: a change to them restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    retry: RetryConfig,
    limits: Limits,
    cache: Option<CacheConfig>,
}

impl Settings {
    fn of(cfg: &Config) -> Settings {
        Settings { retry: cfg.retry.clone(), limits: cfg.limits, cache: cfg.cache.clone() }
    }
}

/// One source at work.
struct RunningSource {
    config: SourceConfig,
    settings: Settings,
    /// consul | etcd | file
    kind: &'static str,
    stats: Arc<SourceStats>,
    /// One subscription per requested prefix (the prefixes it was started with).
    subs: BTreeMap<String, Subscription>,
    cancel: CancellationToken,
    engine: Engine,
}

impl RunningSource {
    async fn stop(self, name: &str) {
        self.cancel.cancel();
        if tokio::time::timeout(STOP_WITHIN, self.engine.wait()).await.is_err() {
            warn!(source = name, "the source did not stop within {STOP_WITHIN:?}");
        }
    }
}

/// Every running source, by name, and the one signal they all ring.
pub struct Watches {
    running: BTreeMap<String, RunningSource>,
    /// Rung once for every change that published a view, by whichever source it came from.
    wake: Wake,
    /// Sources that ended by themselves, reported by their engines.
    stopped_tx: mpsc::UnboundedSender<EngineStopped>,
    stopped_rx: mpsc::UnboundedReceiver<EngineStopped>,
}

impl Default for Watches {
    fn default() -> Self {
        let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
        Watches { running: BTreeMap::new(), wake: Wake::new(), stopped_tx, stopped_rx }
    }
}

/// What a config wants watched: for each source name, the prefixes read from it.
pub type Wanted = BTreeMap<String, BTreeSet<String>>;

impl Watches {
    /// Brings the running sources in line with `cfg`. Every source that must (re)start is built
    /// first: if one cannot be built, nothing is touched and the error names it.
    pub async fn apply(&mut self, cfg: &Config, wanted: &Wanted) -> Result<(), String> {
        let settings = Settings::of(cfg);
        // Which sources keep running, which (re)start.
        let mut to_start = Vec::new();
        for s in &cfg.sources {
            let Some(prefixes) = wanted.get(&s.name) else { continue }; // nobody reads it
            let keep = self
                .running
                .get(&s.name)
                .is_some_and(|r| r.config == *s && r.settings == settings && r.subs.keys().eq(prefixes.iter()));
            if !keep {
                let built = sources::build(cfg, s)?;
                to_start.push((built, prefixes));
            }
        }
        // Stop what goes away (no output reads it any more) or changes (it restarts below).
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let restarts = to_start.iter().any(|(b, _)| b.name == name);
            if restarts || !wanted.contains_key(&name) {
                if let Some(r) = self.running.remove(&name) {
                    info!(source = %name, "stopping the source (changed or no longer used)");
                    r.stop(&name).await;
                }
            }
        }
        // Start the new and the changed.
        for (built, prefixes) in to_start {
            let config = cfg.sources.iter().find(|s| s.name == built.name).cloned().ok_or("source vanished")?;
            let mut builder = EngineBuilder::new();
            if let Some(c) = &cfg.cache {
                builder.cache(kvsync_watch::Cache { dir: c.dir.clone(), max_age: c.max_age });
            }
            let kind = built.source.kind();
            let name = built.name.clone();
            let stats = Arc::clone(&built.stats);
            builder.add_source(&name, built.source, built.stats);
            let mut subs = BTreeMap::new();
            for p in prefixes {
                let sub = builder.subscribe(&name, p).map_err(|e| e.to_string())?;
                subs.insert(p.clone(), sub);
            }
            builder.wake(self.wake.clone());
            builder.report_stops(self.stopped_tx.clone());
            let cancel = CancellationToken::new();
            let engine = builder.start(cancel.clone());
            self.running
                .insert(name, RunningSource { config, settings: settings.clone(), kind, stats, subs, cancel, engine });
        }
        Ok(())
    }

    /// A subscription to `prefix` of `source`, which `apply` started.
    pub fn subscription(&self, source: &str, prefix: &str) -> Result<Subscription, String> {
        self.running
            .get(source)
            .and_then(|r| r.subs.get(prefix))
            .cloned()
            .ok_or_else(|| format!("source `{source}` does not watch prefix `{prefix}`"))
    }

    /// What every source rings when it publishes a new view.
    pub fn wake(&self) -> Wake {
        self.wake.clone()
    }

    /// Resolves when a running source ends by itself, saying which and why. A report from a source
    /// that has been replaced or stopped since is skipped.
    pub async fn stopped(&mut self) -> EngineStopped {
        loop {
            match self.stopped_rx.recv().await {
                Some(s) if self.running.contains_key(&s.name) => return s,
                Some(_) => continue,
                // Never: this holds a sender.
                None => std::future::pending().await,
            }
        }
    }

    /// (name, kind, stats) of every running source, for reporting.
    pub fn reported(&self) -> Vec<(String, &'static str, Arc<SourceStats>)> {
        self.running.iter().map(|(n, r)| (n.clone(), r.kind, Arc::clone(&r.stats))).collect()
    }

    /// Stops every source and waits (bounded) for each to return.
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        for (name, r) in running {
            r.stop(&name).await;
        }
    }
}
