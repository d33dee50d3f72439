//! The engine: applies source updates to versioned snapshots and publishes them to subscribers.
//!
//! One upstream watch runs per distinct (source, widest prefix) however many subscribers share it.
//! Each subscriber gets a latest-value channel holding the view of its own prefix; a view is only
//! republished when a key under that prefix changed (or when the first snapshot arrives).
//!
//! A change travels one way: the source's task applies it to the snapshot (under a lock it shares
//! with nobody on the hot path), publishes the views it touched, and wakes the consumer once through
//! the [`Wake`] it was given. No task or channel sits in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::{Cache, Cached};
use crate::prefix;
use crate::snapshot::{Change, Entries, Rejected, Snapshot};
use crate::source::{Envelope, Source, SourceError, UpdateSink};
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
    pub received: std::time::Instant,
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
///
/// It holds the view; it does not wake anyone. A consumer of many subscriptions waits on the one
/// [`Wake`] the engines were given, then looks at which subscriptions changed.
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

/// The one signal a consumer waits on: rung once per change that published a view, by any engine it
/// was given to. Wake-ups coalesce: a consumer that was busy finds one waiting, not a queue.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Resolves at the next ring (at once if one came since the last wait).
    pub async fn rung(&self) {
        self.0.notified().await
    }

    fn ring(&self) {
        self.0.notify_one();
    }
}

/// A source ended by itself (it gave up, or its task returned): its engine publishes nothing more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the watch engine of source `{name}` stopped: {reason}; the files already written stay as they are. {remedy}")]
pub struct EngineStopped {
    /// The configured name of the source.
    pub name: String,
    /// Why, as the source said it.
    pub reason: String,
    /// What the user can do about it.
    pub remedy: &'static str,
}

impl EngineStopped {
    fn new(source: &str, outcome: Result<(), SourceError>) -> EngineStopped {
        let (reason, remedy) = match outcome {
            Err(e @ SourceError::GaveUp { .. }) => (
                e.to_string(),
                "Check that the backend is up and reachable from here, then restart kvsync; \
                 without retry.attempts in the config it keeps retrying instead of giving up",
            ),
            Err(e @ SourceError::Config(_)) => (
                e.to_string(),
                "Fix the source's settings in the config, then restart kvsync (kvsync check validates it)",
            ),
            Ok(()) => (
                "the source returned without being asked to stop".to_string(),
                "Restart kvsync; please report this with the log, it is a bug",
            ),
        };
        EngineStopped { name: source.to_string(), reason, remedy }
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
#[derive(Default)]
pub struct EngineBuilder {
    sources: BTreeMap<String, SourceEntry>,
    subs: Vec<SubEntry>,
    /// Rung after every change that published a view.
    wake: Wake,
    /// Where a source that ends by itself is reported.
    stopped: Option<mpsc::UnboundedSender<EngineStopped>>,
    cache: Option<Cache>,
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

    /// Rings `wake` whenever any subscription receives a new view (several engines may share one).
    pub fn wake(&mut self, wake: Wake) {
        self.wake = wake;
    }

    /// Reports on `tx` a source that ends by itself (not when cancelled).
    pub fn report_stops(&mut self, tx: mpsc::UnboundedSender<EngineStopped>) {
        self.stopped = Some(tx);
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

    /// Starts one task per source that has subscribers (and, with a cache, the task that saves
    /// snapshots and the one that serves cached ones). Everything stops when `cancel` fires;
    /// `Engine::wait` returns once every task has finished.
    pub fn start(self, cancel: CancellationToken) -> Engine {
        let mut tasks = JoinSet::new();
        let watched = self.watched();
        let saver = self.cache.clone().map(|cache| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(run_saver(cache, rx));
            tx
        });
        let mut subs = self.subs;
        for (name, entry) in self.sources {
            let prefixes = watched.get(&name).cloned().unwrap_or_default();
            if prefixes.is_empty() {
                continue; // nobody reads this source: do not connect to it
            }
            let name: Arc<str> = name.into();
            let mut stores = HashMap::new();
            for p in &prefixes {
                let fallback = match self.cache.as_ref().map(|c| c.load(&name, p)) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        warn!(source = %name, prefix = %p, "{e}");
                        None
                    }
                    None => None,
                };
                // Every subscription goes to the store of the watched prefix that covers it.
                let (mine, rest): (Vec<SubEntry>, Vec<SubEntry>) =
                    subs.into_iter().partition(|s| s.source == name && s.prefix.starts_with(p.as_str()));
                subs = rest;
                let store = Store {
                    prefix: p.clone(),
                    snapshot: Snapshot::default(),
                    delivered: false,
                    stale: false,
                    fallback,
                    stats: Arc::clone(&entry.stats),
                    subs: mine,
                };
                stores.insert(p.clone(), store);
            }
            let waiting = stores.values().any(|s| s.fallback.is_some());
            let stores = Arc::new(Stores {
                source: Arc::clone(&name),
                stores: Mutex::new(stores),
                wake: self.wake.clone(),
                saver: saver.clone(),
            });
            if waiting {
                tasks.spawn(serve_cache_on_failure(Arc::clone(&stores), Instant::now(), cancel.clone()));
            }
            let sink = UpdateSink::to_engine(stores, entry.stats, cancel.clone());
            let kind = entry.source.kind();
            info!(source = %name, kind, prefixes = ?prefixes, "starting source");
            let token = cancel.child_token();
            let fut = entry.source.run(prefixes, sink, token.clone());
            let stopped = self.stopped.clone();
            tasks.spawn(async move {
                let outcome = fut.await;
                if token.is_cancelled() {
                    return;
                }
                let stop = EngineStopped::new(&name, outcome);
                error!(source = %name, "source stopped: {}", stop.reason);
                if let Some(tx) = stopped {
                    let _ = tx.send(stop);
                }
            });
        }
        debug_assert!(subs.is_empty(), "every subscription has a covering watch");
        Engine { tasks }
    }
}

/// The running engine.
pub struct Engine {
    tasks: JoinSet<()>,
}

impl Engine {
    /// Waits until every task of the engine has returned (after cancellation).
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

/// The watched prefixes of one source, which its sink applies updates to.
pub(crate) struct Stores {
    source: Arc<str>,
    /// By watched prefix. Locked by the source's task for each update and, while a cached snapshot
    /// may still be served, by the task that serves it.
    stores: Mutex<HashMap<String, Store>>,
    wake: Wake,
    saver: Option<mpsc::UnboundedSender<SaveJob>>,
}

impl Stores {
    /// The source these prefixes belong to.
    pub(crate) fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// Applies one update from the source and publishes what it changed.
    pub(crate) fn apply(&self, env: Envelope) {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = stores.get_mut(env.update.prefix.as_str()) else {
            warn!(source = %env.source, prefix = %env.update.prefix, "update for a prefix nobody watches; ignored");
            return;
        };
        let (changed, published) = store.apply(env);
        if published {
            self.wake.ring();
        }
        if changed {
            if let Some(tx) = &self.saver {
                let job = (
                    Arc::clone(&self.source),
                    store.prefix.clone(),
                    store.snapshot.version,
                    Arc::clone(&store.snapshot.entries),
                );
                let _ = tx.send(job);
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
}

/// A snapshot to persist: (source, prefix, version, entries).
type SaveJob = (Arc<str>, String, u64, Arc<Entries>);

/// How long a source may stay silent at start before its cached snapshot is served anyway.
const FALLBACK_AFTER: Duration = Duration::from_secs(10);
/// How often a source that has not delivered yet is looked at, while a cached snapshot waits.
const FALLBACK_CHECK: Duration = Duration::from_millis(50);

/// Serves the cached snapshot of every prefix whose source failed before its first snapshot (or
/// stayed silent for FALLBACK_AFTER since `started`); returns once no prefix is waiting any more.
async fn serve_cache_on_failure(stores: Arc<Stores>, started: Instant, cancel: CancellationToken) {
    let mut check = tokio::time::interval(FALLBACK_CHECK);
    loop {
        tokio::select! {
            // Shutdown.
            _ = cancel.cancelled() => return,
            // Time to look again.
            _ = check.tick() => {}
        }
        let mut waiting = false;
        let mut published = false;
        {
            let mut all = stores.stores.lock().unwrap_or_else(|e| e.into_inner());
            for store in all.values_mut() {
                if store.delivered || store.fallback.is_none() {
                    continue;
                }
                if store.stats.errors_total() > 0 || started.elapsed() > FALLBACK_AFTER {
                    if let Some(c) = store.fallback.take() {
                        warn!(source = %stores.source, prefix = %store.prefix, version = c.version, keys = c.entries.len(),
                            "the backend has not answered; serving the cached snapshot until it does");
                        store.serve_cached(&stores.source, c);
                        published = true;
                    }
                } else {
                    waiting = true;
                }
            }
        }
        if published {
            stores.wake.ring();
        }
        if !waiting {
            return;
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
        self.publish(source, std::time::Instant::now(), None);
    }

    /// Applies an update; returns whether the snapshot changed (and should be persisted) and whether
    /// a view was published.
    fn apply(&mut self, env: Envelope) -> (bool, bool) {
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
                return (false, false);
            }
        };
        let first = !self.delivered;
        if diff.is_empty() && !first && !was_stale {
            return (false, false);
        }
        self.delivered = true;
        if was_stale {
            self.stale = false;
            self.stats.serving_cache.store(false, std::sync::atomic::Ordering::Relaxed);
            info!(source = %source, prefix = %update.prefix, "the backend answered; the live snapshot replaces the cached one");
        }
        info!(source = %source, prefix = %update.prefix, version = update.version, changed = diff.len(), "change received");
        let everything = first || was_stale;
        let published = self.publish(&source, received, if everything { None } else { Some(&diff) });
        (!diff.is_empty() || first, published)
    }

    /// Publishes the current snapshot to the subscribers whose keys changed (all of them when `diff`
    /// is None); returns whether any was.
    fn publish(&self, source: &Arc<str>, received: std::time::Instant, diff: Option<&crate::snapshot::Diff>) -> bool {
        let mut published = false;
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
            published = true;
        }
        published
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

    /// A source that stays silent until cancelled.
    struct Silent;

    impl Source for Silent {
        fn kind(&self) -> &'static str {
            "silent"
        }
        fn run(
            self: Box<Self>,
            _prefixes: Vec<String>,
            _sink: UpdateSink,
            cancel: CancellationToken,
        ) -> BoxFuture<Result<(), SourceError>> {
            Box::pin(async move {
                cancel.cancelled().await;
                Ok(())
            })
        }
    }

    /// A source that has not said a word for FALLBACK_AFTER gets its cached snapshot served, and not
    /// a moment before (in paused time: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn cache_serves_a_silent_source_after_the_fallback_delay() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache { dir: dir.path().to_path_buf(), max_age: Duration::from_secs(3600) };
        cache.save("s", "p/", 3, &[("p/a".to_string(), Bytes::from("cached"))].into()).unwrap();
        let mut b = EngineBuilder::new();
        b.cache(cache);
        b.add_source("s", Box::new(Silent), Arc::default());
        let sub = b.subscribe("s", "p/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());
        tokio::time::advance(FALLBACK_AFTER - Duration::from_millis(100)).await;
        assert!(sub.latest().is_none(), "nothing served before FALLBACK_AFTER");
        tokio::time::advance(Duration::from_millis(200)).await;
        // Let the fallback task run its check at the new time.
        for _ in 0..100 {
            if sub.latest().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let v = sub.latest().expect("the cached snapshot is served after FALLBACK_AFTER");
        assert!(v.stale);
        assert_eq!(v.version, 3);
        cancel.cancel();
        engine.wait().await;
    }

    /// One change rings the wake-up once: a second wait finds nothing.
    #[tokio::test(start_paused = true)]
    async fn a_change_rings_once() {
        let wake = Wake::new();
        let mut b = EngineBuilder::new();
        b.wake(wake.clone());
        b.add_source(
            "s",
            Box::new(Scripted { updates: vec![full("p/", 1, &[("p/a", "1")])], asked: Arc::default() }),
            Arc::default(),
        );
        let mut sub = b.subscribe("s", "p/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());
        tokio::time::timeout(Duration::from_secs(5), wake.rung()).await.expect("the change rings");
        assert_eq!(sub.take().unwrap().version, 1);
        assert!(tokio::time::timeout(Duration::from_secs(5), wake.rung()).await.is_err(), "one change, one ring");
        cancel.cancel();
        engine.wait().await;
    }

    /// A source that gives up at once.
    struct GivesUp;

    impl Source for GivesUp {
        fn kind(&self) -> &'static str {
            "gives-up"
        }
        fn run(
            self: Box<Self>,
            _prefixes: Vec<String>,
            _sink: UpdateSink,
            _cancel: CancellationToken,
        ) -> BoxFuture<Result<(), SourceError>> {
            Box::pin(async move { Err(SourceError::GaveUp { attempts: 3, last: "connection refused".into() }) })
        }
    }

    /// A source that gives up is reported with why and what to do.
    #[tokio::test]
    async fn a_source_that_gives_up_is_reported_with_the_reason_and_the_remedy() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut b = EngineBuilder::new();
        b.report_stops(tx);
        b.add_source("main", Box::new(GivesUp), Arc::default());
        let _sub = b.subscribe("main", "p/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());
        let stop = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            stop.to_string(),
            "the watch engine of source `main` stopped: gave up after 3 consecutive failures: connection refused; \
             the files already written stay as they are. Check that the backend is up and reachable from here, \
             then restart kvsync; without retry.attempts in the config it keeps retrying instead of giving up"
        );
        cancel.cancel();
        engine.wait().await;
    }
}
