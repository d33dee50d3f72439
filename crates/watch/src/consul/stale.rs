//! `stale: true` with `max_stale`: an answer too old to trust is read again from the leader.
//!
//! A stale read (`?stale`) may be answered by any server, which may lag behind the leader. Consul says
//! how far in two headers: `X-Consul-LastContact` (milliseconds since that server last heard from the
//! leader) and `X-Consul-KnownLeader` (whether it knows one at all). When the contact is older than
//! `max_stale`, or there is no known leader, the answer is read again with a consistent query, as
//! consul-template does with its `max_stale`; the log says so.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tracing::info;

use super::client::{kv_query, Fetcher, Response};
use super::failure::Failure;
use super::LoopContext;
use crate::stats::SourceStats;

/// What an answer says about its server's contact with the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LeaderContact {
    /// `X-Consul-LastContact`, when present and a number.
    pub last_contact: Option<Duration>,
    /// `X-Consul-KnownLeader`, when present.
    pub known_leader: Option<bool>,
}

impl LeaderContact {
    pub fn from_headers(h: &HeaderMap) -> LeaderContact {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        LeaderContact {
            last_contact: text("x-consul-lastcontact").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis),
            known_leader: text("x-consul-knownleader").map(|v| v.eq_ignore_ascii_case("true")),
        }
    }

    /// Why an answer with this contact is too stale for `max_stale`; None when it is fresh enough.
    pub fn too_stale(&self, max_stale: Duration) -> Option<String> {
        if self.known_leader == Some(false) {
            return Some("the server that answered knows no leader".into());
        }
        match self.last_contact {
            Some(c) if c > max_stale => {
                Some(format!("the server that answered last heard from the leader {c:?} ago (max_stale {max_stale:?})"))
            }
            _ => None,
        }
    }
}

/// With `stale` and `max_stale` set, reads `response` again with a consistent query when it is too
/// stale (same index and wait, so it answers as the leader would have); otherwise returns it as is.
pub(crate) async fn reread_if_too_stale(
    ctx: &LoopContext,
    fetcher: &mut Fetcher,
    response: Response,
    blocking: Option<(u64, Duration)>,
    deadline: Duration,
    stats: &Arc<SourceStats>,
) -> Result<Response, Failure> {
    let (true, Some(max_stale)) = (ctx.settings.stale, ctx.settings.max_stale) else { return Ok(response) };
    let Some(why) = response.leader.too_stale(max_stale) else { return Ok(response) };
    info!(
        source = ctx.sink.name(),
        prefix = %ctx.prefix,
        "consul: a stale answer from {} is too old: {why}; reading the prefix again with a consistent query",
        response.address
    );
    drop(response);
    let query = kv_query(&ctx.prefix, false, ctx.settings.datacenter.as_deref(), blocking) + "&consistent";
    stats.request();
    fetcher.get(&query, deadline, blocking.is_some(), stats).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(last: Option<&str>, known: Option<&str>) -> LeaderContact {
        let mut h = HeaderMap::new();
        if let Some(l) = last {
            h.insert("X-Consul-LastContact", l.parse().unwrap());
        }
        if let Some(k) = known {
            h.insert("X-Consul-KnownLeader", k.parse().unwrap());
        }
        LeaderContact::from_headers(&h)
    }

    #[test]
    fn too_old_or_leaderless_answers_are_too_stale() {
        let max = Duration::from_secs(2);
        assert_eq!(contact(Some("0"), Some("true")).too_stale(max), None);
        assert_eq!(contact(Some("2000"), Some("true")).too_stale(max), None, "exactly max_stale is fine");
        assert!(contact(Some("2001"), Some("true")).too_stale(max).unwrap().contains("2.001s"));
        assert!(contact(Some("5"), Some("false")).too_stale(max).unwrap().contains("knows no leader"));
        assert_eq!(contact(None, None).too_stale(max), None, "a server that says nothing is taken as fresh");
        assert_eq!(contact(Some("soon"), Some("TRUE")).too_stale(max), None);
    }
}
