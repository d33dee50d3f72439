//! The `etcd` source: etcd v3 over gRPC, in `watch` or `poll` mode.
//!
//! How it is organised, one concept per file:
//! - [`endpoints`]: which member to talk to, failover on UNAVAILABLE, and making the one HTTP/2
//!   connection per source (TLS files are read at each connect, so renewed certificates are picked up).
//! - [`auth`]: username + password file -> token; re-authentication when the server refuses a token.
//! - [`snapshot`]: the paged Range of one prefix at one fixed revision R.
//! - [`stream`]: `mode: watch`: one Watch stream multiplexing every prefix, snapshot then watch from R+1.
//! - [`resume`]: per-prefix state across reconnects: where to resume (last event's mod_revision + 1).
//! - [`compaction`]: the resume point was compacted away: re-list (a resync) and re-watch.
//! - [`poll`]: `mode: poll`: a Range every interval, change detected by revision and SHA-256.
//!
//! Keys are reported as UTF-8 strings (the engine's key type); a key that is not UTF-8 is left out
//! with a warning, as is a value over `max_value_bytes` (reported as a deletion if it replaced a value).

mod auth;
mod compaction;
mod endpoints;
mod poll;
mod resume;
mod snapshot;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use kvsync_etcd_grpc::{Code, Status};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::retry::Backoff;
use crate::source::{BoxFuture, Mode, Source, SourceError, TlsFiles, UpdateSink};
use crate::stats::ErrorKind;

/// How long one unary call (a Range page, Authenticate, Status) may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What an etcd source connects to and how it watches.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://127.0.0.1:2379`, `https://...`, or `host:port`).
    /// The source talks to one at a time and moves to the next when it becomes unavailable.
    pub endpoints: Vec<String>,
    /// TLS for https:// endpoints (CA, client certificate for mTLS, server name).
    pub tls: Option<TlsFiles>,
    /// etcd user to authenticate as; needs `password_file`.
    pub username: Option<String>,
    /// File holding the user's password (re-read at every authentication; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// `Watch`: one gRPC Watch stream; `Poll`: a Range every interval.
    pub mode: Mode,
    /// Retry delays after failures; persistent errors (permission denied, bad credentials) wait the max.
    pub backoff: Backoff,
    /// Values larger than this are left out and reported.
    pub max_value_bytes: usize,
}

/// An etcd v3 source. Build with [`EtcdSource::new`], start with [`Source::run`].
///
/// ```no_run
/// use std::time::Duration;
/// use kvsync_watch::{Backoff, EtcdConfig, EtcdSource, Mode, Source};
///
/// let source: Box<dyn Source> = Box::new(EtcdSource::new(EtcdConfig {
///     endpoints: vec!["http://127.0.0.1:2379".into()],
///     tls: None,
///     username: None,
///     password_file: None,
///     mode: Mode::Watch,
///     backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), None),
///     max_value_bytes: 1024 * 1024,
/// })?);
/// # Ok::<(), kvsync_watch::SourceError>(())
/// ```
pub struct EtcdSource {
    config: EtcdConfig,
}

impl EtcdSource {
    /// Checks the configuration (nothing touches the network or the disk yet).
    pub fn new(config: EtcdConfig) -> Result<Self, SourceError> {
        if config.endpoints.is_empty() {
            return Err(SourceError::Config(
                "etcd source: `endpoints` is empty; give at least one client URL such as http://127.0.0.1:2379".into(),
            ));
        }
        for e in &config.endpoints {
            if e.trim().is_empty() || e.contains(char::is_whitespace) {
                return Err(SourceError::Config(format!("etcd source: invalid endpoint `{e}`")));
            }
            if let Some((scheme, _)) = e.split_once("://") {
                if scheme != "http" && scheme != "https" {
                    return Err(SourceError::Config(format!(
                        "etcd source: endpoint `{e}`: the scheme must be http:// or https://"
                    )));
                }
                if scheme == "http" && config.tls.is_some() {
                    return Err(SourceError::Config(format!(
                        "etcd source: endpoint `{e}` is http:// but `tls` is set; write it as https://"
                    )));
                }
            }
        }
        match (&config.username, &config.password_file) {
            (Some(_), None) => {
                return Err(SourceError::Config(
                    "etcd source: `username` is set but `password_file` is not; give both or neither".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(SourceError::Config(
                    "etcd source: `password_file` is set but `username` is not; give both or neither".into(),
                ))
            }
            _ => {}
        }
        if let Some(tls) = &config.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(SourceError::Config(
                    "etcd source: tls `cert_file` and `key_file` go together; give both or neither".into(),
                ));
            }
        }
        if config.max_value_bytes == 0 {
            return Err(SourceError::Config("etcd source: `max_value_bytes` must be above 0".into()));
        }
        if let Mode::Poll { interval } = config.mode {
            if interval.is_zero() {
                return Err(SourceError::Config("etcd source: poll `interval` must be above 0".into()));
            }
        }
        Ok(EtcdSource { config })
    }
}

impl Source for EtcdSource {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn run(
        self: Box<Self>,
        prefixes: Vec<String>,
        sink: UpdateSink,
        cancel: CancellationToken,
    ) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            if prefixes.is_empty() {
                // Nothing to watch: no connection either.
                cancel.cancelled().await;
                return Ok(());
            }
            match self.config.mode {
                Mode::Watch => stream::run(self.config, prefixes, sink, cancel).await,
                Mode::Poll { interval } => poll::run(self.config, interval, prefixes, sink, cancel).await,
            }
        })
    }
}

/// Why a connection, a call or the stream failed, sorted by what to do next.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The member is gone, unreachable or without a leader: move to the next endpoint, with backoff.
    Unavailable(String),
    /// The server refused our auth token (expired, or the member restarted): authenticate again now.
    TokenRefused(String),
    /// Persistent refusal (permission denied, wrong credentials, auth not enabled): report it clearly
    /// and retry only at the backoff's maximum, so the server is not hammered.
    Persistent(String),
    /// Anything else: retry with backoff on the same endpoint.
    Other(String),
    /// The engine has stopped: return.
    Closed,
}

impl Failure {
    /// Sorts a gRPC status from `what` (e.g. "Range of `config/`") into what to do about it.
    pub(crate) fn from_status(what: &str, endpoint: &str, s: &Status) -> Failure {
        let msg = format!("etcd at {endpoint}: {what}: {}{} ({:?})", s.message(), causes(s), s.code());
        if auth::is_token_refused(s) {
            return Failure::TokenRefused(msg);
        }
        match s.code() {
            Code::PermissionDenied => Failure::Persistent(format!(
                "{msg}; grant the user's role read access to this prefix (etcdctl role grant-permission ROLE --prefix=true read PREFIX)"
            )),
            Code::InvalidArgument if s.message().contains("authentication failed") => Failure::Persistent(format!(
                "{msg}; check `username` and the content of `password_file`"
            )),
            Code::FailedPrecondition if s.message().contains("authentication is not enabled") => {
                Failure::Persistent(format!("{msg}; remove `username`/`password_file` or enable auth on the cluster"))
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted => {
                Failure::Unavailable(msg)
            }
            _ => Failure::Other(msg),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Unavailable(m) | Failure::TokenRefused(m) | Failure::Persistent(m) | Failure::Other(m) => m,
            Failure::Closed => "the engine has stopped",
        }
    }
}

/// The causes behind a status, `: `-prefixed: a transport error's message alone ("transport error")
/// hides the reason, e.g. the TLS alert a server sent when it refused the handshake.
fn causes(s: &Status) -> String {
    let mut out = String::new();
    let mut cur = std::error::Error::source(s);
    for _ in 0..8 {
        let Some(c) = cur else { break };
        let m = c.to_string();
        if !s.message().contains(&m) && !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = c.source();
    }
    out
}

/// Logs a failure and counts it in the source's stats (messages never carry values or tokens).
pub(crate) fn report(sink: &UpdateSink, failure: &Failure) {
    let kind = match failure {
        Failure::Unavailable(_) => ErrorKind::Connect,
        Failure::TokenRefused(_) | Failure::Persistent(_) => ErrorKind::Status,
        Failure::Other(_) | Failure::Closed => ErrorKind::Other,
    };
    warn!(source = sink.name(), "{}", failure.message());
    sink.stats().error(kind, failure.message());
}

/// The delay before the next attempt after `failure`, or None when the attempts are used up.
/// `token_retries` counts consecutive token refusals: the first is retried at once (a fresh token
/// is all it needs), later ones with backoff.
pub(crate) fn delay_after(failure: &Failure, backoff: &mut Backoff, token_retries: &mut u32) -> Option<Duration> {
    if let Failure::TokenRefused(_) = failure {
        *token_retries += 1;
        if *token_retries == 1 {
            return Some(Duration::ZERO);
        }
    } else {
        *token_retries = 0;
    }
    let d = backoff.next_delay()?;
    Some(match failure {
        Failure::Persistent(_) => backoff.slowest(),
        _ => d,
    })
}

/// `interval` +/- 10%, so many pollers do not hit the server in step.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let tenth = interval / 10;
    let spread = tenth.as_nanos().min(u64::MAX as u128) as u64;
    interval - tenth + Duration::from_nanos(fastrand::u64(0..=spread.saturating_mul(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted_by_what_to_do() {
        let f = |s: Status| Failure::from_status("Range of `a/`", "http://e", &s);
        assert!(matches!(f(Status::unavailable("connection refused")), Failure::Unavailable(_)));
        assert!(matches!(f(Status::unauthenticated("etcdserver: invalid auth token")), Failure::TokenRefused(_)));
        match f(Status::permission_denied("etcdserver: permission denied")) {
            Failure::Persistent(m) => {
                assert!(m.contains("http://e") && m.contains("Range of `a/`") && m.contains("grant-permission"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match f(Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")) {
            Failure::Persistent(m) => assert!(m.contains("password_file"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(f(Status::internal("boom")), Failure::Other(_)));
    }

    #[test]
    fn persistent_failures_wait_the_backoff_max_and_a_refused_token_retries_at_once() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(7), None);
        let mut t = 0;
        assert_eq!(delay_after(&Failure::Persistent("x".into()), &mut b, &mut t), Some(Duration::from_secs(7)));
        assert_eq!(delay_after(&Failure::TokenRefused("x".into()), &mut b, &mut t), Some(Duration::ZERO));
        assert!(delay_after(&Failure::TokenRefused("x".into()), &mut b, &mut t).unwrap() > Duration::ZERO);
        let mut limited = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), Some(1));
        assert!(delay_after(&Failure::Other("x".into()), &mut limited, &mut t).is_some());
        assert!(delay_after(&Failure::Other("x".into()), &mut limited, &mut t).is_none());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11), "{d:?}");
        }
    }

    fn cfg() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            tls: None,
            username: None,
            password_file: None,
            mode: Mode::Watch,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1), None),
            max_value_bytes: 1024,
        }
    }

    #[test]
    fn bad_configs_are_refused_with_what_to_fix() {
        let err = |c: EtcdConfig| EtcdSource::new(c).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(EtcdSource::new(cfg()).is_ok());
        let mut c = cfg();
        c.tls = Some(TlsFiles::default());
        assert!(err(c).contains("write it as https://"));
        let mut c = cfg();
        c.password_file = Some("/p".into());
        assert!(err(c).contains("`username` is not"));
        let mut c = cfg();
        c.endpoints = vec!["https://e:2379".into()];
        c.tls = Some(TlsFiles { cert_file: Some("/c".into()), ..TlsFiles::default() });
        assert!(err(c).contains("key_file"));
        let mut c = cfg();
        c.mode = Mode::Poll { interval: Duration::ZERO };
        assert!(err(c).contains("interval"));
    }
}
