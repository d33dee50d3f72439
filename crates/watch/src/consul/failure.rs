//! Why a request to Consul failed, and how soon it may be tried again.
//!
//! Two retry speeds: transient trouble (a broken or stalled connection, 429 "rate limit", 5xx) backs
//! off exponentially from `retry.initial`; a refusal that will not go away by itself (403: the token or
//! its policy; 400: the request) is reported clearly and retried only at `retry.max`, because someone
//! has to fix something (the token file is re-read on every try, so fixing it is enough).

use std::time::Duration;

use http::StatusCode;

use crate::stats::ErrorKind;

/// A failed request, described without the token or any value.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No address accepted a connection, or the connection broke before the answer was complete.
    Connection { address: String, error: String },
    /// The connection was open but no answer at all (not even its status line) arrived within `after`:
    /// a silent network path. `blocking`: the request was a blocking query (`after` covers its wait).
    NoAnswer { address: String, after: Duration, blocking: bool },
    /// The answer's head arrived, then its body stopped arriving part-way: `received` bytes, then
    /// nothing for `idle`. A body that keeps arriving is never cut off, however long it takes.
    Stalled { address: String, received: usize, idle: Duration },
    /// Consul answered with an error status. `body` is a cleaned excerpt of its message.
    Status { address: String, status: StatusCode, body: String },
    /// The answer arrived but cannot be understood (not the JSON Consul sends).
    Malformed { address: String, error: String },
    /// The token file cannot be read (or its content cannot be sent).
    Token { error: String },
    /// The TLS files cannot be read or do not fit together.
    Tls { error: String },
    /// Consul answered 404 with `X-Consul-Results-Filtered-By-ACLs`: keys exist under the prefix but the
    /// token may read none of them. Not an empty prefix: rendering it would empty the outputs.
    Hidden { address: String },
}

/// How long to wait before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Exponential backoff from `retry.initial` (transient trouble).
    Backoff,
    /// Only at `retry.max` (needs a fix by someone: token, policy, configuration).
    Slow,
}

impl Failure {
    pub fn retry(&self) -> Retry {
        match self {
            Failure::Connection { .. }
            | Failure::NoAnswer { .. }
            | Failure::Stalled { .. }
            | Failure::Malformed { .. } => Retry::Backoff,
            Failure::Status { status, .. } => match status.as_u16() {
                429 | 500 | 502 | 503 | 504 => Retry::Backoff,
                // 400, 403, 404 on something else than KV, 413, ...: repeating it will not help.
                400..=499 => Retry::Slow,
                // Any other 5xx: the server's trouble, likely transient.
                _ => Retry::Backoff,
            },
            Failure::Token { .. } | Failure::Tls { .. } | Failure::Hidden { .. } => Retry::Slow,
        }
    }

    /// The counter this failure is counted in.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Connection { .. } | Failure::NoAnswer { .. } | Failure::Stalled { .. } => ErrorKind::Connect,
            Failure::Status { .. } | Failure::Hidden { .. } => ErrorKind::Status,
            Failure::Malformed { .. } | Failure::Token { .. } | Failure::Tls { .. } => ErrorKind::Other,
        }
    }

    /// A message for logs and `/status` that says what failed for which prefix and what to do.
    /// `token_file` is the configured path (the token itself is never part of a message).
    pub fn describe(&self, prefix: &str, token_file: Option<&std::path::Path>) -> String {
        match self {
            Failure::Connection { address, error } => {
                format!("consul: reading prefix `{prefix}` from {address} failed: {error}; retrying with backoff")
            }
            Failure::NoAnswer { address, after, blocking: true } => format!(
                "consul: {address} did not answer the request for prefix `{prefix}` within {after:?} (the \
                 blocking wait plus Consul's jitter and a margin): no answer at all, the connection is \
                 silent; reconnecting with backoff"
            ),
            Failure::NoAnswer { address, after, blocking: false } => format!(
                "consul: {address} did not answer the request for prefix `{prefix}` within {after:?}: no \
                 answer at all, the connection is silent; reconnecting with backoff"
            ),
            Failure::Stalled { address, received, idle } => format!(
                "consul: the answer from {address} for prefix `{prefix}` stopped arriving part-way: \
                 {received} bytes of its body received, then nothing for {idle:?} (idle_timeout); the \
                 connection stalled; reconnecting with backoff"
            ),
            Failure::Status { address, status, body } => {
                let said = if body.is_empty() { String::new() } else { format!(": {body}") };
                match status.as_u16() {
                    403 => {
                        let fix = match token_file {
                            Some(p) => format!(
                                "the ACL token in {} needs `key_prefix \"{prefix}\" {{ policy = \"read\" }}`; fix \
                                 the token file (it is re-read when it changes) or the token's policy",
                                p.display()
                            ),
                            None => format!(
                                "no token_file is configured, so the agent's default token is used; set \
                                 token_file to a token with read access to key prefix `{prefix}`"
                            ),
                        };
                        format!("consul: permission denied reading prefix `{prefix}` from {address} (403{said}): {fix}; retrying slowly")
                    }
                    400 => format!(
                        "consul: {address} rejected the request for prefix `{prefix}` (400{said}): check the \
                         `datacenter` and `stale` settings and the prefix; retrying slowly"
                    ),
                    429 => format!(
                        "consul: {address} is rate limiting requests for prefix `{prefix}` (429{said}); backing off"
                    ),
                    s @ 500..=599 => {
                        format!("consul: {address} failed the request for prefix `{prefix}` ({s}{said}); backing off")
                    }
                    s => format!(
                        "consul: unexpected answer {s} from {address} for prefix `{prefix}`{said}; check that the \
                         address points at a Consul agent; retrying slowly"
                    ),
                }
            }
            Failure::Malformed { address, error } => {
                format!("consul: the answer from {address} for prefix `{prefix}` cannot be read: {error}; retrying")
            }
            Failure::Token { error } => format!("consul: prefix `{prefix}`: {error}; retrying slowly"),
            Failure::Tls { error } => format!("consul: prefix `{prefix}`: TLS setup failed: {error}; retrying slowly"),
            Failure::Hidden { address } => {
                let whose = match token_file {
                    Some(p) => format!("the ACL token in {}", p.display()),
                    None => "the agent's default token (no token_file is configured)".to_string(),
                };
                format!(
                    "consul: {address} hides every key under prefix `{prefix}` from {whose} (404 with \
                     X-Consul-Results-Filtered-By-ACLs); the last good output stays; grant the token \
                     `key_prefix \"{prefix}\" {{ policy = \"read\" }}`; retrying slowly"
                )
            }
        }
    }
}

/// A short, printable excerpt of an error body: the first line-ish of what Consul said, with control
/// characters removed, and with `secret` (the token, if any) blanked out in case a proxy echoes it.
pub(crate) fn excerpt(body: &[u8], secret: Option<&[u8]>) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut text: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if let Some(secret) = secret.and_then(|s| std::str::from_utf8(s).ok()).filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    if text.chars().count() > MAX {
        text = text.chars().take(MAX).collect::<String>() + "...";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Failure {
        Failure::Status {
            address: "http://127.0.0.1:8500".into(),
            status: StatusCode::from_u16(code).unwrap(),
            body: "Permission denied".into(),
        }
    }

    #[test]
    fn transient_statuses_back_off_and_refusals_retry_slowly() {
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(status(code).retry(), Retry::Backoff, "{code}");
        }
        for code in [400, 403, 413] {
            assert_eq!(status(code).retry(), Retry::Slow, "{code}");
        }
    }

    #[test]
    fn forbidden_names_the_prefix_and_the_fix() {
        let msg = status(403).describe("config/app/", Some(std::path::Path::new("/run/secrets/consul-token")));
        assert!(msg.contains("`config/app/`"), "{msg}");
        assert!(msg.contains("/run/secrets/consul-token"), "{msg}");
        assert!(msg.contains("key_prefix"), "{msg}");
        let msg = status(403).describe("config/app/", None);
        assert!(msg.contains("token_file"), "{msg}");
    }

    #[test]
    fn no_answer_and_a_body_stopped_part_way_are_told_apart() {
        let address = "http://127.0.0.1:8500".to_string();
        let silent = Failure::NoAnswer { address: address.clone(), after: Duration::from_millis(3062), blocking: true };
        let msg = silent.describe("config/app/", None);
        assert!(msg.contains("did not answer") && msg.contains("no answer at all") && msg.contains("3.062s"), "{msg}");
        assert!(msg.contains("`config/app/`") && msg.contains("blocking wait"), "{msg}");
        let plain = Failure::NoAnswer { address: address.clone(), after: Duration::from_secs(10), blocking: false };
        assert!(!plain.describe("p/", None).contains("blocking wait"));
        let part = Failure::Stalled { address, received: 65536, idle: Duration::from_secs(5) };
        let msg = part.describe("config/app/", None);
        assert!(msg.contains("stopped arriving part-way") && msg.contains("65536 bytes"), "{msg}");
        assert!(msg.contains("nothing for 5s") && msg.contains("idle_timeout"), "{msg}");
        for f in [silent, part] {
            assert_eq!(f.retry(), Retry::Backoff);
            assert_eq!(f.kind(), ErrorKind::Connect);
        }
    }

    #[test]
    fn excerpt_is_short_printable_and_redacted() {
        let e = excerpt(b"ACL not found\r\n", None);
        assert_eq!(e, "ACL not found");
        let e = excerpt(b"bad token s3cr3t here", Some(b"s3cr3t"));
        assert_eq!(e, "bad token <redacted> here");
        assert!(excerpt(&[b'x'; 1000], None).len() < 210);
    }
}
