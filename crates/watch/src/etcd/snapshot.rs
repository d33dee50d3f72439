//! The snapshot of one prefix: a paged Range, every page at the same revision R.
//!
//! The first page is read at the current revision, which becomes R; later pages ask for revision R
//! explicitly and start after the last key seen, so the whole listing is one consistent state however
//! many pages it takes. Pages are limited by count, and grow while they stay small; when a page is too
//! large to be received (over the decode limit), the page size is halved and the page asked again. If
//! R is compacted while paging ("required revision has been compacted"), the listing starts over at
//! the new current revision.

use kvsync_etcd_grpc::pb::etcdserverpb::RangeRequest;
use kvsync_etcd_grpc::{Client, Code, Status};

use super::auth::Credentials;
use super::resume::{utf8_key, within_limit, PrefixState};
use super::{Failure, CALL_TIMEOUT};
use crate::snapshot::Entries;
use crate::source::UpdateSink;

/// Keys per page to start with.
const PAGE: i64 = 500;
/// The most keys one page asks for, and the size in bytes under which a page's successor asks for
/// twice as many keys. etcd 3.4 walks its index over the whole rest of the range for every page (to
/// count it), so a large prefix read 500 keys at a time costs O(keys²/500) on the server: growing the
/// pages while they stay small keeps a 100,000-key listing to about 16 pages.
const MAX_PAGE: i64 = 16_384;
const GROW_BELOW_BYTES: usize = 2 << 20;
/// Listings restarted because R was compacted while paging, before giving up for this attempt.
const MAX_RESTARTS: u32 = 5;

/// A consistent listing of one prefix and the revision it was taken at.
pub(crate) struct Listing {
    pub entries: Entries,
    pub revision: i64,
}

/// Lists every key under the prefix at one revision.
pub(crate) async fn list(
    client: &mut Client,
    credentials: &Option<Credentials>,
    prefix: &PrefixState,
    max_value_bytes: usize,
    sink: &UpdateSink,
) -> Result<Listing, Failure> {
    let what = format!("Range of prefix `{}`", prefix.prefix);
    let mut restarts = 0;
    'listing: loop {
        let mut entries = Entries::new();
        let mut revision = 0i64;
        let mut start = prefix.key.clone();
        let mut page = PAGE;
        // Every page either advances `start` past at least one key or ends the listing; the page size
        // only shrinks a bounded number of times (down to 1); so the loop ends.
        loop {
            let req = RangeRequest {
                key: start.clone().into(),
                range_end: prefix.range_end.clone().into(),
                limit: page,
                revision,
                ..RangeRequest::default()
            };
            let resp = Credentials::call(credentials, client, sink, |c| {
                let req = req.clone();
                async move { c.range(req, CALL_TIMEOUT).await }
            })
            .await?;
            let resp = match resp {
                Ok(r) => r,
                Err(s) if too_large(&s) && page > 1 => {
                    page = (page / 2).max(1);
                    continue;
                }
                Err(s) if s.message().contains("compacted") && revision != 0 && restarts < MAX_RESTARTS => {
                    restarts += 1;
                    continue 'listing;
                }
                Err(s) => return Err(Failure::from_status(&what, client.endpoint(), &s)),
            };
            if revision == 0 {
                revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if revision <= 0 {
                    return Err(Failure::Other(format!(
                        "etcd at {}: {what}: the response has no revision",
                        client.endpoint()
                    )));
                }
            }
            let Some(last) = resp.kvs.last().map(|kv| kv.key.clone()) else { break };
            let bytes: usize = resp.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
            if bytes < GROW_BELOW_BYTES && resp.kvs.len() as i64 >= page {
                page = (page * 2).min(MAX_PAGE);
            }
            for kv in resp.kvs {
                let Some(key) = utf8_key(&kv.key, sink) else { continue };
                if let Some(v) = within_limit(&key, kv.value, max_value_bytes, sink) {
                    entries.insert(key, v);
                }
            }
            if !resp.more {
                break;
            }
            // The next page starts right after the last key: the key with a 0 byte appended.
            let mut next = last.to_vec();
            next.push(0);
            start = next;
        }
        return Ok(Listing { entries, revision });
    }
}

/// Whether a page was refused for its size: by the server (RESOURCE_EXHAUSTED) or by our own
/// decoder (tonic reports "decoded message length too large" as OUT_OF_RANGE).
fn too_large(s: &Status) -> bool {
    s.code() == Code::ResourceExhausted || s.message().contains("message length too large")
}
