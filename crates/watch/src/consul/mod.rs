//! The `consul` source: Consul's KV HTTP API, watched with blocking queries or polled.
//!
//! Consul has no streaming API for KV: change notification is HTTP long polling ("blocking queries").
//! Each watched prefix gets its own loop and its own HTTP/1.1 connection (a blocking request occupies
//! its connection for up to `wait`):
//!
//! - `watch` mode (`blocking.rs`): `GET /v1/kv/<prefix>?recurse&index=N&wait=W`, resuming from the
//!   `X-Consul-Index` of the previous answer, with the index rules Consul's documentation asks of a
//!   client (see `blocking.rs`), a per-loop rate limit (`rate.rs`) and a request deadline longer than
//!   the server's own jittered wait.
//! - `poll` mode (`poll.rs`): a plain `GET /v1/kv/<prefix>?recurse` every `interval` (jittered); the
//!   SHA-256 of the body decides whether anything changed.
//!
//! Both share the HTTP client (`client.rs`: hyper 1 over TCP or rustls with ring, failover between
//! addresses), the ACL token file (`token.rs`, re-read when it changes, never logged), the decoding of
//! a listing (`listing.rs`) and the classification of failures into "back off" and "slow retry"
//! (`failure.rs`).
//!
//! ```no_run
//! # use std::time::Duration;
//! # use kvsync_watch::{Backoff, Mode, Source, UpdateSink};
//! # use kvsync_watch::consul::{ConsulConfig, ConsulSource};
//! # async fn example() -> Result<(), kvsync_watch::SourceError> {
//! let source = ConsulSource::new(ConsulConfig {
//!     addresses: vec!["http://127.0.0.1:8500".into()],
//!     token_file: None,
//!     tls: None,
//!     wait: Duration::from_secs(60),
//!     mode: Mode::Watch,
//!     stale: false,
//!     max_stale: None,
//!     datacenter: None,
//!     backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), None),
//!     max_value_bytes: 512 * 1024,
//!     max_keys: 100_000,
//!     idle_timeout: kvsync_watch::consul::DEFAULT_IDLE_TIMEOUT,
//! })?;
//! let (sink, mut updates) = UpdateSink::channel("main", 16);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(Box::new(source).run(vec!["config/app/".into()], sink, cancel.clone()));
//! let first = updates.recv().await; // a Change::Full of everything under config/app/
//! # Ok(()) }
//! ```

mod blocking;
mod client;
mod failure;
mod listing;
mod poll;
mod rate;
mod stale;
mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::retry::Backoff;
use crate::source::{BoxFuture, Mode, Source, SourceError, TlsFiles, UpdateSink};

use client::Client;

/// Consul never blocks longer than this; a longer `wait` is clamped to it (as the server would).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The default [`ConsulConfig::idle_timeout`]: how long the body of an answer may pause.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach Consul and how to watch it.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// Base URLs (`http://host:port` or `https://host:port`). The first that accepts a connection is
    /// used; on a connection error the next one is tried (failover between agents).
    pub addresses: Vec<String>,
    /// A file holding the ACL token, sent as `X-Consul-Token`. Re-read whenever the file changes
    /// (a rotated Kubernetes secret), never logged. None: the agent's default token.
    pub token_file: Option<PathBuf>,
    /// TLS material for `https://` addresses; None: the system roots, no client certificate.
    pub tls: Option<TlsFiles>,
    /// How long Consul may hold a blocking query (`?wait=`); at most 10 minutes.
    pub wait: Duration,
    /// Blocking queries (`Watch`) or a plain read every interval (`Poll`).
    pub mode: Mode,
    /// Allow any server to answer (`?stale`), not only the leader: less load, slightly older data.
    pub stale: bool,
    /// With `stale`: an answer from a server that last heard from the leader longer ago than this (or
    /// knows no leader) is read again with a consistent query. None: any stale answer is taken.
    pub max_stale: Option<Duration>,
    /// Query another datacenter than the agent's (`?dc=`).
    pub datacenter: Option<String>,
    /// Delays between retries after connection errors, 429 and 5xx; 403 and 400 retry at its slowest.
    pub backoff: Backoff,
    /// A value larger than this is an error naming its key; the listing that holds it is not delivered.
    pub max_value_bytes: usize,
    /// A listing with more keys than this is an error; it is not delivered, and no more than this many
    /// entries are held while it is decoded (memory stays bounded by the limit, not by the prefix).
    pub max_keys: usize,
    /// Once an answer's head has arrived, its body may take as long as it keeps arriving, but may not
    /// pause longer than this between two chunks: a pause that long is a stalled connection (reported
    /// with the bytes received, and retried with backoff). The head itself has the request's deadline:
    /// `wait` + `wait`/16 + a margin for a blocking query, 10 s for a plain read.
    pub idle_timeout: Duration,
}

/// A Consul agent or server as a source of keys. Build with [`ConsulSource::new`], then hand it to
/// the engine (or call [`Source::run`] directly).
pub struct ConsulSource {
    client: Arc<Client>,
    settings: Settings,
}

/// What every prefix loop reads: the validated configuration (with `wait` clamped to what Consul
/// allows). The addresses, token file and TLS files live on in the client.
pub(crate) type Settings = ConsulConfig;

impl ConsulSource {
    /// Validates the configuration (addresses, TLS files, token file, durations) and prepares the
    /// client. Nothing is sent to Consul until [`Source::run`].
    pub fn new(config: ConsulConfig) -> Result<Self, SourceError> {
        if config.wait.is_zero() {
            // Consul reads a zero wait as "the default, 5 minutes": never what was meant.
            return Err(SourceError::Config("consul: `wait` must be greater than 0 (for example 60s)".into()));
        }
        let wait = if config.wait > MAX_WAIT {
            warn!(wait = ?config.wait, "consul: `wait` is longer than Consul allows; using 10m");
            MAX_WAIT
        } else {
            config.wait
        };
        if let Mode::Poll { interval } = config.mode {
            if interval.is_zero() {
                return Err(SourceError::Config(
                    "consul: poll `interval` must be greater than 0 (for example 10s)".into(),
                ));
            }
        }
        if config.idle_timeout.is_zero() {
            return Err(SourceError::Config("consul: `idle_timeout` must be greater than 0 (for example 5s)".into()));
        }
        if let Some(dc) = &config.datacenter {
            if dc.is_empty() || !dc.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(SourceError::Config(format!(
                    "consul: datacenter {dc:?} is not a valid name (letters, digits, `-`, `_`, `.`)"
                )));
            }
        }
        let client =
            Client::new(&config.addresses, config.tls.as_ref(), config.token_file.as_deref(), config.idle_timeout)?;
        let settings = Settings { wait, ..config };
        Ok(ConsulSource { client: Arc::new(client), settings })
    }
}

impl Source for ConsulSource {
    fn kind(&self) -> &'static str {
        "consul"
    }

    fn run(
        self: Box<Self>,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move { self.run_inner(prefixes, sink, cancel).await })
    }
}

impl ConsulSource {
    /// One loop per prefix; the first loop that gives up stops the others and its error is returned.
    async fn run_inner(
        self,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let loops = cancel.child_token();
        let mut tasks = JoinSet::new();
        for prefix in prefixes {
            let ctx = LoopContext {
                client: Arc::clone(&self.client),
                settings: self.settings.clone(),
                sink: sink.clone(),
                cancel: loops.clone(),
                prefix,
            };
            info!(source = sink.name(), prefix = %ctx.prefix, mode = ?self.settings.mode, "consul: watching prefix");
            match self.settings.mode {
                Mode::Watch => tasks.spawn(blocking::run(ctx)),
                Mode::Poll { interval } => tasks.spawn(poll::run(ctx, interval)),
            };
        }
        let mut outcome = Ok(());
        while let Some(done) = tasks.join_next().await {
            let result = match done {
                Ok(r) => r,
                Err(join) => Err(SourceError::Config(format!("consul: a prefix loop failed: {join}"))),
            };
            if let Err(e) = result {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
                // One prefix gave up: the source as a whole has failed; stop the others.
                loops.cancel();
            }
        }
        outcome
    }
}

/// Everything one prefix loop works with.
pub(crate) struct LoopContext {
    pub client: Arc<Client>,
    pub settings: Settings,
    pub sink: UpdateSink,
    pub cancel: CancellationToken,
    /// The watched prefix, exactly as the engine handed it (keys in updates start with it).
    pub prefix: String,
}

impl LoopContext {
    /// Reports a failed request and waits before the next try: with backoff for transient trouble,
    /// at the slow end for refusals (waking early if the token file changes: someone fixed it).
    /// Returns false when the source was cancelled meanwhile, an error when `retry.attempts` ran out.
    async fn recover(&self, failure: failure::Failure, backoff: &mut Backoff) -> Result<bool, SourceError> {
        let token_file = self.client.token_file();
        let message = failure.describe(&self.prefix, token_file.map(|t| t.path()));
        warn!(source = self.sink.name(), prefix = %self.prefix, "{message}");
        self.sink.stats().error(failure.kind(), message.clone());
        let Some(delay) = backoff.next_delay() else {
            return Err(SourceError::GaveUp { attempts: backoff.failures(), last: message });
        };
        let slow = failure.retry() == failure::Retry::Slow;
        let delay = if slow { slow_end(backoff.slowest()) } else { delay };
        let watch_token = slow && token_file.is_some();
        tokio::select! {
            // Shutdown.
            _ = self.cancel.cancelled() => return Ok(false),
            // The delay is over: try again.
            _ = tokio::time::sleep(delay) => {}
            // After a refusal: the token file was rewritten, so the refusal may be fixed; try now.
            _ = token_rewritten(token_file), if watch_token => {
                info!(source = self.sink.name(), prefix = %self.prefix, "consul: the token file changed; retrying now");
            }
        }
        if let Some(file) = token_file {
            // Re-read the token on the next request even if the file's timestamp did not move.
            if slow {
                file.invalidate();
            }
        }
        Ok(true)
    }

    /// Records a successful request: counters, and a note when it ends a run of failures.
    fn succeeded(&self, backoff: &mut Backoff, index: u64) {
        if backoff.failures() > 0 {
            info!(
                source = self.sink.name(),
                prefix = %self.prefix,
                failures = backoff.failures(),
                "consul: prefix is readable again"
            );
        }
        backoff.reset();
        self.sink.stats().ok(index);
    }
}

/// A delay at the slow end of the backoff, jittered within its last quarter.
fn slow_end(slowest: Duration) -> Duration {
    let quarter = slowest / 4;
    slowest - quarter + Duration::from_nanos(fastrand::u64(0..=quarter.as_nanos().min(u64::MAX as u128) as u64))
}

/// Resolves when the token file differs from when it was last read (checked a few times a second;
/// only used while waiting after a refusal, inside a bounded `select!`).
async fn token_rewritten(file: Option<&token::TokenFile>) {
    let Some(file) = file else { return std::future::pending().await };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if file.changed() {
            return;
        }
    }
}
