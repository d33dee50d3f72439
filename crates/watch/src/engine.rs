//! The engine: applies source updates to versioned snapshots and publishes them to subscribers.
//!
//! One upstream watch runs per distinct (source, widest prefix) however many subscribers share it.
//! Each subscriber gets a latest-value channel holding the view of its own prefix; a view is only
//! republished when a key under that prefix changed (or when the first snapshot arrives).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::{Cache, Cached};
use crate::prefix;
use crate::snapshot::{Change, Entries, Rejected, Snapshot};
use crate::source::{Envelope, Source, UpdateSink};
use crate::stats::SourceStats;

/// What a subscriber sees: the keys under its prefix at one version of the watched prefix.
#[derive(Debug, Clone)]
pub struct View {
    /// The source the keys come from.
    pub source: Arc<str>,
    /// The subscriber's prefix; keys in `entries` are full keys that start with it.
    pub prefix: String,
    /// The version (index, revision) of the watched prefix this view was taken at.
    pub version: u64,
    pub entries: Arc<Entries>,
    /// When the source received the change that produced this view (for change-to-disk latency).
    pub received: Instant,
    /// The view comes from the last-known-good cache: the backend has not answered since start.
    pub stale: bool,
}

impl View {
    /// The entries with keys made relative to the view's prefix.
    pub fn relative(&self) -> impl Iterator<Item = (&str, &bytes::Bytes)> {
        let n = self.prefix.len();
        self.entries.iter().map(move |(k, v)| (&k[n..], v))
    }
}

/// A subscriber's handle: the latest view of one (source, prefix), None until the first snapshot.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub source: String,
    pub prefix: String,
    rx: watch::Receiver<Option<View>>,
}

impl Subscription {
    /// The latest view, if the first snapshot has arrived.
    pub fn latest(&self) -> Option<View> {
        self.rx.borrow().clone()
    }

    /// Marks the current view as seen and returns it.
    pub fn take(&mut self) -> Option<View> {
        self.rx.borrow_and_update().clone()
    }

    /// Whether a view was published since the last `take` or `mark_seen`.
    pub fn has_changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Notes that the current view was seen, without taking it.
    pub fn mark_seen(&mut self) {
        self.rx.mark_unchanged();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no source named `{0}`")]
    UnknownSource(String),
}

struct SourceEntry {
    source: Box<dyn Source>,
    stats: Arc<SourceStats>,
    requested: Vec<String>,
}

struct SubEntry {
    source: Arc<str>,
    prefix: String,
    tx: watch::Sender<Option<View>>,
}

/// Collects sources and subscriptions, then starts everything.
pub struct EngineBuilder {
    sources: BTreeMap<String, SourceEntry>,
    subs: Vec<SubEntry>,
    /// Bumped after every publish, so a consumer of many subscriptions can wait on one channel.
    bell: watch::Sender<u64>,
    cache: Option<Cache>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder { sources: BTreeMap::new(), subs: Vec::new(), bell: watch::channel(0).0, cache: None }
    }
}

impl EngineBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps every watched prefix's snapshot in `cache` after each change, and serves the cached one
    /// (marked stale) when a source fails before its first snapshot.
    pub fn cache(&mut self, cache: Cache) {
        self.cache = Some(cache);
    }

    /// A channel that changes whenever any subscription receives a new view.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.bell.subscribe()
    }

    /// Registers a source under its configured name. `stats` is where it counts its work.
    pub fn add_source(&mut self, name: &str, source: Box<dyn Source>, stats: Arc<SourceStats>) {
        self.sources.insert(name.to_string(), SourceEntry { source, stats, requested: Vec::new() });
    }

    /// Asks for the keys under `prefix` of source `source`.
    pub fn subscribe(&mut self, source: &str, prefix: &str) -> Result<Subscription, EngineError> {
        let entry = self.sources.get_mut(source).ok_or_else(|| EngineError::UnknownSource(source.to_string()))?;
        entry.requested.push(prefix.to_string());
        // Subscribers of the same (source, prefix) share one channel.
        if let Some(sub) = self.subs.iter().find(|s| &*s.source == source && s.prefix == prefix) {
            return Ok(Subscription { source: source.to_string(), prefix: prefix.to_string(), rx: sub.tx.subscribe() });
        }
        let (tx, rx) = watch::channel(None);
        self.subs.push(SubEntry { source: source.into(), prefix: prefix.to_string(), tx });
        Ok(Subscription { source: source.to_string(), prefix: prefix.to_string(), rx })
    }

    /// The prefixes each source will really watch (narrower requests folded into wider ones).
    pub fn watched(&self) -> BTreeMap<String, Vec<String>> {
        self.sources.iter().map(|(n, e)| (n.clone(), prefix::widest(e.requested.iter().cloned()))).collect()
    }

    /// Starts one task per source that has subscribers and the engine loop. Everything stops when
    /// `cancel` fires; `Engine::wait` returns once every task has finished.
    pub fn start(self, cancel: CancellationToken) -> Engine {
        let (tx, rx) = mpsc::channel::<Envelope>(1024);
        let mut tasks = JoinSet::new();
        let mut stores: HashMap<(Arc<str>, String), Store> = HashMap::new();
        let watched = self.watched();
        for (name, entry) in self.sources {
            let prefixes = watched.get(&name).cloned().unwrap_or_default();
            if prefixes.is_empty() {
                continue; // nobody reads this source: do not connect to it
            }
            let name: Arc<str> = name.into();
            for p in &prefixes {
                let fallback = match self.cache.as_ref().map(|c| c.load(&name, p)) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        warn!(source = %name, prefix = %p, "{e}");
                        None
                    }
                    None => None,
                };
                let store = Store {
                    prefix: p.clone(),
                    snapshot: Snapshot::default(),
                    delivered: false,
                    stale: false,
                    fallback,
                    stats: Arc::clone(&entry.stats),
                    subs: Vec::new(),
                    bell: self.bell.clone(),
                };
                stores.insert((Arc::clone(&name), p.clone()), store);
            }
            let sink = UpdateSink::new(Arc::clone(&name), tx.clone(), entry.stats);
            let kind = entry.source.kind();
            info!(source = %name, kind, prefixes = ?prefixes, "starting source");
            let fut = entry.source.run(prefixes, sink, cancel.child_token());
            tasks.spawn(async move {
                if let Err(e) = fut.await {
                    error!(source = %name, "source stopped: {e}");
                }
            });
        }
        drop(tx);
        // Attach every subscription to the store that serves it.
        for sub in self.subs {
            let key = stores
                .keys()
                .find(|(s, p)| *s == sub.source && sub.prefix.starts_with(p.as_str()))
                .cloned()
                .expect("every subscription has a covering watch");
            stores.get_mut(&key).expect("store exists").subs.push(sub);
        }
        let saver = self.cache.map(|cache| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(run_saver(cache, rx));
            tx
        });
        let loop_cancel = cancel.clone();
        tasks.spawn(run_loop(rx, stores, saver, loop_cancel));
        Engine { tasks }
    }
}

/// The running engine.
pub struct Engine {
    tasks: JoinSet<()>,
}

impl Engine {
    /// Waits until every source task and the engine loop have returned (after cancellation).
    pub async fn wait(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    error!("an engine task panicked: {e}");
                }
            }
        }
    }
}

/// One watched prefix: its snapshot and the subscribers it serves.
struct Store {
    /// The watched prefix.
    prefix: String,
    snapshot: Snapshot,
    /// Whether the first snapshot has been published.
    delivered: bool,
    /// The published snapshot came from the cache, not from the backend.
    stale: bool,
    /// A cached snapshot to serve if the source fails before delivering its first one.
    fallback: Option<Cached>,
    stats: Arc<SourceStats>,
    subs: Vec<SubEntry>,
    bell: watch::Sender<u64>,
}

/// A snapshot to persist: (source, prefix, version, entries).
type SaveJob = (Arc<str>, String, u64, Arc<Entries>);

/// How long a source may stay silent at start before its cached snapshot is served anyway.
const FALLBACK_AFTER: Duration = Duration::from_secs(10);

async fn run_loop(
    mut rx: mpsc::Receiver<Envelope>,
    mut stores: HashMap<(Arc<str>, String), Store>,
    saver: Option<mpsc::UnboundedSender<SaveJob>>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut fallback_check = tokio::time::interval(Duration::from_millis(50));
    loop {
        let waiting_with_fallback = stores.values().any(|s| !s.delivered && s.fallback.is_some());
        let env = tokio::select! {
            // Shutdown: stop applying updates.
            _ = cancel.cancelled() => return,
            // An update from a source; None once every source has returned.
            env = rx.recv() => match env { Some(e) => e, None => return },
            // A source failed before its first snapshot (or stayed silent too long): serve the cached one.
            _ = fallback_check.tick(), if waiting_with_fallback => {
                for ((source, prefix), store) in stores.iter_mut() {
                    if !store.delivered && (store.stats.errors_total() > 0 || started.elapsed() > FALLBACK_AFTER) {
                        if let Some(c) = store.fallback.take() {
                            warn!(source = %source, prefix = %prefix, version = c.version, keys = c.entries.len(),
                                "the backend has not answered; serving the cached snapshot until it does");
                            store.serve_cached(source, c);
                        }
                    }
                }
                continue;
            }
        };
        let key = (Arc::clone(&env.source), env.update.prefix.clone());
        let Some(store) = stores.get_mut(&key) else {
            warn!(source = %env.source, prefix = %env.update.prefix, "update for a prefix nobody watches; ignored");
            continue;
        };
        if store.apply(env) {
            if let Some(tx) = &saver {
                let _ = tx.send((key.0, key.1, store.snapshot.version, Arc::clone(&store.snapshot.entries)));
            }
        }
    }
}

/// Persists snapshots off the hot path, writing only the latest of each prefix when it falls behind.
async fn run_saver(cache: Cache, mut rx: mpsc::UnboundedReceiver<SaveJob>) {
    while let Some(job) = rx.recv().await {
        let mut latest: HashMap<(Arc<str>, String), (u64, Arc<Entries>)> = HashMap::new();
        latest.insert((job.0, job.1), (job.2, job.3));
        while let Ok(j) = rx.try_recv() {
            latest.insert((j.0, j.1), (j.2, j.3));
        }
        let cache = cache.clone();
        let r = tokio::task::spawn_blocking(move || {
            for ((source, prefix), (version, entries)) in latest {
                if let Err(e) = cache.save(&source, &prefix, version, &entries) {
                    warn!(source = %source, prefix = %prefix, "{e}");
                }
            }
        })
        .await;
        if r.is_err() {
            error!("the cache writer panicked");
        }
    }
}

impl Store {
    fn serve_cached(&mut self, source: &Arc<str>, c: Cached) {
        self.snapshot = Snapshot { version: c.version, entries: Arc::new(c.entries) };
        self.delivered = true;
        self.stale = true;
        self.stats.serving_cache.store(true, std::sync::atomic::Ordering::Relaxed);
        self.publish(source, Instant::now(), None);
    }

    /// Applies an update; returns whether the snapshot changed (and should be persisted).
    fn apply(&mut self, env: Envelope) -> bool {
        let Envelope { source, received, update } = env;
        // The first live snapshot after serving the cache replaces it whatever its version.
        let was_stale = self.stale;
        let change = match update.change {
            Change::Full { entries, .. } if was_stale => Change::Full { entries, resync: true },
            other => other,
        };
        self.fallback = None;
        let diff = match self.snapshot.apply(update.version, change) {
            Ok(d) => d,
            Err(Rejected::Stale { have, got }) => {
                debug!(source = %source, prefix = %update.prefix, have, got, "ignored an update older than the snapshot");
                return false;
            }
        };
        let first = !self.delivered;
        if diff.is_empty() && !first && !was_stale {
            return false;
        }
        self.delivered = true;
        if was_stale {
            self.stale = false;
            self.stats.serving_cache.store(false, std::sync::atomic::Ordering::Relaxed);
            info!(source = %source, prefix = %update.prefix, "the backend answered; the live snapshot replaces the cached one");
        }
        info!(source = %source, prefix = %update.prefix, version = update.version, changed = diff.len(), "change received");
        let everything = first || was_stale;
        self.publish(&source, received, if everything { None } else { Some(&diff) });
        !diff.is_empty() || first
    }

    /// Publishes the current snapshot to the subscribers whose keys changed (all of them when `diff` is None).
    fn publish(&self, source: &Arc<str>, received: Instant, diff: Option<&crate::snapshot::Diff>) {
        for sub in &self.subs {
            let touched = match diff {
                None => true,
                Some(d) => sub.prefix.is_empty() || d.keys().any(|k| k.starts_with(sub.prefix.as_str())),
            };
            if !touched {
                continue;
            }
            let entries = if sub.prefix == self.prefix {
                Arc::clone(&self.snapshot.entries)
            } else {
                Arc::new(
                    self.snapshot
                        .entries
                        .range(sub.prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(sub.prefix.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            };
            let view = View {
                source: Arc::clone(source),
                prefix: sub.prefix.clone(),
                version: self.snapshot.version,
                entries,
                received,
                stale: self.stale,
            };
            sub.tx.send_replace(Some(view));
        }
        self.bell.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Change, Update};
    use crate::source::{BoxFuture, SourceError};
    use bytes::Bytes;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A source that replays scripted updates and records which prefixes it was asked to watch.
    struct Scripted {
        updates: Vec<Update>,
        asked: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Source for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn run(
            self: Box<Self>,
            prefixes: Vec<String>,
            sink: UpdateSink,
            cancel: CancellationToken,
        ) -> BoxFuture<Result<(), SourceError>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push(prefixes);
                for u in self.updates {
                    sink.send(u).await.ok();
                }
                cancel.cancelled().await;
                Ok(())
            })
        }
    }

    fn full(prefix: &str, version: u64, kv: &[(&str, &str)]) -> Update {
        Update {
            prefix: prefix.into(),
            version,
            change: Change::Full {
                entries: kv.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect(),
                resync: false,
            },
        }
    }

    async fn wait_for(sub: &mut Subscription, version: u64) -> View {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(v) = sub.take() {
                    if v.version >= version {
                        return v;
                    }
                }
                sub.rx.changed().await.unwrap();
            }
        })
        .await
        .expect("view arrives")
    }

    #[tokio::test]
    async fn one_watch_serves_nested_prefixes() {
        let asked = Arc::default();
        let updates = vec![
            full("config/", 1, &[("config/app/a", "1"), ("config/db/b", "2")]),
            full("config/", 2, &[("config/app/a", "1"), ("config/db/b", "3")]),
        ];
        let mut b = EngineBuilder::new();
        b.add_source("main", Box::new(Scripted { updates, asked: Arc::clone(&asked) }), Arc::default());
        let mut app = b.subscribe("main", "config/app/").unwrap();
        let mut all = b.subscribe("main", "config/").unwrap();
        let mut app2 = b.subscribe("main", "config/app/").unwrap();
        assert!(b.subscribe("nope", "x").is_err());
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());

        let v = wait_for(&mut all, 2).await;
        assert_eq!(v.entries.get("config/db/b").unwrap(), "3");
        let v = wait_for(&mut app, 1).await;
        assert_eq!(v.relative().map(|(k, _)| k.to_string()).collect::<Vec<_>>(), vec!["a"]);
        // The change at version 2 touched only config/db/: the app view was not republished.
        assert_eq!(v.version, 1);
        assert!(!app.has_changed());
        assert_eq!(wait_for(&mut app2, 1).await.version, 1);
        assert_eq!(*asked.lock().unwrap(), vec![vec!["config/".to_string()]]);
        cancel.cancel();
        engine.wait().await;
    }

    /// A source that fails first, then (when told) delivers a live snapshot.
    struct FailsThenAnswers {
        live: Update,
        go: Arc<tokio::sync::Notify>,
    }

    impl Source for FailsThenAnswers {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn run(
            self: Box<Self>,
            _prefixes: Vec<String>,
            sink: UpdateSink,
            cancel: CancellationToken,
        ) -> BoxFuture<Result<(), SourceError>> {
            Box::pin(async move {
                sink.stats().error(crate::stats::ErrorKind::Connect, "connection refused");
                self.go.notified().await;
                sink.send(self.live).await.ok();
                cancel.cancelled().await;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn cache_serves_an_outage_at_start_then_yields_to_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache { dir: dir.path().to_path_buf(), max_age: Duration::from_secs(3600) };
        let cached: Entries = [("p/a".to_string(), Bytes::from("cached"))].into();
        cache.save("s", "p/", 50, &cached).unwrap();

        let go = Arc::new(tokio::sync::Notify::new());
        // The live state has a LOWER version (a restored backend): it must still replace the cache.
        let live = full("p/", 7, &[("p/a", "live"), ("p/b", "new")]);
        let stats: Arc<SourceStats> = Arc::default();
        let mut b = EngineBuilder::new();
        b.cache(cache.clone());
        b.add_source("s", Box::new(FailsThenAnswers { live, go: Arc::clone(&go) }), Arc::clone(&stats));
        let mut sub = b.subscribe("s", "p/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());

        let v = wait_for(&mut sub, 0).await;
        assert!(v.stale, "the first view comes from the cache");
        assert_eq!(v.entries.get("p/a").unwrap(), "cached");
        assert!(stats.serving_cache.load(std::sync::atomic::Ordering::Relaxed));

        go.notify_one();
        let v = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                sub.rx.changed().await.unwrap();
                if let Some(v) = sub.take() {
                    if !v.stale {
                        return v;
                    }
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v.entries.get("p/a").unwrap(), "live");
        assert_eq!(v.version, 7);
        assert!(!stats.serving_cache.load(std::sync::atomic::Ordering::Relaxed));
        // The live snapshot is persisted in turn.
        tokio::time::timeout(Duration::from_secs(5), async {
            while cache.load("s", "p/").unwrap().unwrap().version != 7 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the live snapshot is saved");
        assert_eq!(cache.load("s", "p/").unwrap().unwrap().entries.len(), 2);
        cancel.cancel();
        engine.wait().await;
    }

    #[tokio::test]
    async fn empty_first_snapshot_is_published() {
        let mut b = EngineBuilder::new();
        b.add_source(
            "s",
            Box::new(Scripted { updates: vec![full("p/", 7, &[])], asked: Arc::default() }),
            Arc::default(),
        );
        let mut sub = b.subscribe("s", "p/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());
        let v = wait_for(&mut sub, 7).await;
        assert!(v.entries.is_empty());
        cancel.cancel();
        engine.wait().await;
    }
}
