//! The `Source` trait: a task that watches prefixes in one backend and reports what it sees.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Stores;
use crate::snapshot::Update;
use crate::stats::SourceStats;

/// How a source notices changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The backend's own change notification: Consul blocking queries, the etcd Watch stream, inotify.
    Watch,
    /// A plain read every `interval` (jittered), change detected by SHA-256 of the content.
    Poll { interval: std::time::Duration },
}

/// TLS material for https:// endpoints, as paths (read when connecting, so renewed files are picked up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA bundle that signs the server's certificate; None: the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain and key, for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify the server certificate against, when it differs from the URL's host.
    pub server_name: Option<String>,
}

/// A boxed future, for the object-safe `Source::run`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a source stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `retry.attempts` consecutive failures; the last error is attached.
    #[error("gave up after {attempts} consecutive failures: {last}")]
    GaveUp { attempts: u32, last: String },
    /// The source cannot work as configured (bad address, unreadable credentials, ...).
    #[error("{0}")]
    Config(String),
}

/// One backend connection that watches a set of prefixes.
///
/// `run` is handed every prefix it must watch (already reduced to the widest ones), a sink for its
/// updates, and a cancellation token. It delivers a first `Change::Full` per prefix as soon as it has
/// one (an empty prefix is an empty snapshot, not a wait), then changes as they happen; it handles
/// its own reconnects and backoff, and returns only when cancelled or when it gives up.
pub trait Source: Send + 'static {
    /// A short name of the backend kind for logs ("consul", "etcd", "file").
    fn kind(&self) -> &'static str;

    fn run(
        self: Box<Self>,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> BoxFuture<Result<(), SourceError>>;
}

/// An update on its way to the engine, with where and when it came from.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub source: Arc<str>,
    pub received: Instant,
    pub update: Update,
}

/// Where a source sends its updates. Cheap to clone; one per source.
#[derive(Clone)]
pub struct UpdateSink {
    source: Arc<str>,
    to: To,
    stats: Arc<SourceStats>,
}

/// Where the updates of a sink go.
#[derive(Clone)]
enum To {
    /// Applied at once to the engine's snapshots, in the source's own task; `cancel` is the engine's.
    Engine { stores: Arc<Stores>, cancel: CancellationToken },
    /// Queued for a test that reads them.
    Channel(mpsc::Sender<Envelope>),
}

/// The engine has stopped; the source should return.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct Closed;

impl UpdateSink {
    pub(crate) fn to_engine(stores: Arc<Stores>, stats: Arc<SourceStats>, cancel: CancellationToken) -> Self {
        let source = Arc::clone(stores.source());
        UpdateSink { source, to: To::Engine { stores, cancel }, stats }
    }

    /// A sink whose updates arrive on the returned receiver; for testing a source on its own.
    pub fn channel(source: &str, capacity: usize) -> (UpdateSink, SinkReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        (UpdateSink { source: source.into(), to: To::Channel(tx), stats: Arc::default() }, SinkReceiver { rx })
    }

    /// Delivers an update: to the engine, it is applied and published before this returns.
    pub async fn send(&self, update: Update) -> Result<(), Closed> {
        self.stats.ok(update.version);
        let env = Envelope { source: Arc::clone(&self.source), received: Instant::now(), update };
        match &self.to {
            To::Engine { cancel, .. } if cancel.is_cancelled() => Err(Closed),
            To::Engine { stores, .. } => {
                stores.apply(env);
                Ok(())
            }
            To::Channel(tx) => tx.send(env).await.map_err(|_| Closed),
        }
    }

    /// The source's counters.
    pub fn stats(&self) -> &Arc<SourceStats> {
        &self.stats
    }

    /// The configured name of the source, for logs.
    pub fn name(&self) -> &str {
        &self.source
    }
}

/// The receiving end of [`UpdateSink::channel`].
pub struct SinkReceiver {
    rx: mpsc::Receiver<Envelope>,
}

impl SinkReceiver {
    pub async fn recv(&mut self) -> Option<Update> {
        self.rx.recv().await.map(|e| e.update)
    }

    pub fn try_recv(&mut self) -> Option<Update> {
        self.rx.try_recv().ok().map(|e| e.update)
    }
}
