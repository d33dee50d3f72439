//! etcd authentication: username + password -> a token sent as `token` metadata.
//!
//! etcd's "simple" tokens expire after `--auth-token-ttl` (300 s by default, extended on each use) and
//! do not survive a member restart. A refused token shows up three ways, all handled:
//! - a unary call fails with `Unauthenticated` ("etcdserver: invalid auth token"): authenticate again
//!   and retry the call once ([`Credentials::call`]);
//! - the Watch stream's token is checked only when a watcher is created, so a running watch is not
//!   affected, but a create after the token expired comes back created+canceled with the error in
//!   `cancel_reason`: the stream is reopened with a fresh token (the token belongs to the stream);
//! - after a reconnect, [`Credentials::login`] runs before anything else.
//!
//! `PermissionDenied` is not a token problem: it is reported and retried only at the backoff maximum.

use std::future::Future;
use std::path::PathBuf;

use kvsync_etcd_grpc::{Client, Code, Status};

use super::{Failure, CALL_TIMEOUT};
use crate::source::UpdateSink;

/// Who to authenticate as.
pub(crate) struct Credentials {
    pub username: String,
    pub password_file: PathBuf,
}

impl Credentials {
    pub(crate) fn from_config(username: &Option<String>, password_file: &Option<PathBuf>) -> Option<Credentials> {
        match (username, password_file) {
            (Some(u), Some(p)) => Some(Credentials { username: u.clone(), password_file: p.clone() }),
            _ => None,
        }
    }

    /// Reads the password (each time: it may have been rotated) and gets a fresh token.
    pub(crate) async fn login(&self, client: &mut Client, sink: &UpdateSink) -> Result<(), Failure> {
        let raw = tokio::fs::read_to_string(&self.password_file).await.map_err(|e| {
            Failure::Other(format!("cannot read the etcd password file {}: {e}", self.password_file.display()))
        })?;
        let password = raw.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&raw);
        client.clear_token();
        sink.stats().request();
        client.authenticate(&self.username, password, CALL_TIMEOUT).await.map_err(|s| {
            let what = format!("Authenticate as user `{}`", self.username);
            match Failure::from_status(&what, client.endpoint(), &s) {
                // A refused token cannot be the answer to a login; whatever it is, it is not transient.
                Failure::TokenRefused(m) => Failure::Persistent(m),
                f => f,
            }
        })
    }

    /// Runs a unary call; when the token is refused, authenticates again and retries once.
    pub(crate) async fn call<T, F, Fut>(
        credentials: &Option<Credentials>,
        client: &mut Client,
        sink: &UpdateSink,
        f: F,
    ) -> Result<Result<T, Status>, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        sink.stats().request();
        let first = f(client.clone()).await;
        match (&first, credentials) {
            (Err(s), Some(c)) if is_token_refused(s) => {
                c.login(client, sink).await?;
                sink.stats().request();
                Ok(f(client.clone()).await)
            }
            _ => Ok(first),
        }
    }
}

/// Whether the server refused the token itself (as opposed to what the user may do).
pub(crate) fn is_token_refused(s: &Status) -> bool {
    s.code() == Code::Unauthenticated || is_token_refused_reason(s.message())
}

/// The same, for a `cancel_reason` string of a refused watch create.
pub(crate) fn is_token_refused_reason(reason: &str) -> bool {
    reason.contains("invalid auth token")
        || reason.contains("code = Unauthenticated")
        || reason.contains("auth: revision in header is old")
        || reason.contains("user name is empty")
}

/// Whether a `cancel_reason` says the user may not read the range.
pub(crate) fn is_permission_denied_reason(reason: &str) -> bool {
    reason.contains("permission denied")
}
