//! The HTTP side of the test server: routing, parameters, blocking, ACL checks and Consul's answers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use super::acl::{Authz, Denied};
use super::store::{Cas, Store};
use super::Shared;

/// Consul's `kv_max_value_size` default.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;
/// A blocking query without `wait` (or with one <= 0) waits this long; longer waits are cut to `MAX_WAIT`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// The JSON form of one entry, fields in Consul's order; `Session` omitted when empty.
#[derive(Serialize)]
struct KvPair<'a> {
    #[serde(rename = "LockIndex")]
    lock_index: u64,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "Flags")]
    flags: u64,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

/// A query string as Go parses it: repeated keys allowed, `+` is a space, flags are presence-only.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, ()> {
        let mut out = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.push((decode(&k.replace('+', " "))?, decode(&v.replace('+', " "))?));
        }
        Ok(Query(out))
    }
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding (invalid escapes are an error, as in Go).
fn decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Parses a Go duration (`300ms`, `1.5s`, `1m30s`, `0`); a number without a unit is an error.
pub fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos;
    }
    Some((negative, Duration::from_nanos(total as u64)))
}

/// A plain-text error answer (errors carry no `X-Consul-Index`).
pub(crate) fn error(shared: &Shared, status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(full(message.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    shared.default_policy_header(&mut r);
    r
}

fn denied(shared: &Shared, d: Denied) -> Response<Body> {
    error(shared, StatusCode::FORBIDDEN, &d.message())
}

/// Entry point for every request on every connection.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset_connection: Arc<AtomicBool>,
) -> Result<Response<Body>, Infallible> {
    shared.count(req.uri().path());
    // Injected faults first: they stand for trouble in front of the KV endpoint.
    if let Some(status) = shared.take_failure() {
        let message = match status.as_u16() {
            429 => "Rate limit reached, try again later",
            500 => "No cluster leader",
            503 => "rate limit exceeded",
            _ => status.canonical_reason().unwrap_or("error"),
        };
        return Ok(error(&shared, status, message));
    }
    if shared.take_hang() {
        // Never answers; the handler ends when the connection is reset or the server stops.
        shared.shutdown.cancelled().await;
        return Ok(error(&shared, StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let delay = shared.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = route(req, &shared).await;
    // Decided when the answer is ready, so a blocking query already waiting is the one cut off.
    let ok = response.status() == StatusCode::OK;
    if ok && shared.take_truncate() {
        return Ok(truncated(response, reset_connection, shared.framing()).await);
    }
    Ok(super::body::frame(response, shared.body_plan(ok)).await)
}

/// Sends half of the body (under the full `Content-Length`, or chunked without the last chunk, by the
/// framing), then breaks the connection (reset).
async fn truncated(
    response: Response<Body>,
    reset_connection: Arc<AtomicBool>,
    framing: super::Framing,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let (mut tx, channel) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    reset_connection.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        let _ = tx.send_data(half).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.abort("connection reset by the test server".into());
    });
    let mut r = Response::from_parts(parts, channel.boxed());
    if !framing.chunked(bytes.len()) {
        r.headers_mut().insert("content-length", HeaderValue::from(bytes.len()));
    }
    r
}

async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.contains("//") {
        // Go's mux cleans the path and redirects.
        let mut clean = path.clone();
        while clean.contains("//") {
            clean = clean.replace("//", "/");
        }
        let mut r = error(shared, StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = HeaderValue::from_str(&clean) {
            r.headers_mut().insert("location", v);
        }
        return r;
    }
    let raw_key = match path.strip_prefix("/v1/kv/") {
        Some(k) => k,
        None if path == "/v1/kv" => "",
        None => return error(shared, StatusCode::NOT_FOUND, "404 page not found"),
    };
    let Ok(key) = decode(raw_key) else {
        return error(shared, StatusCode::BAD_REQUEST, "Invalid URL path");
    };
    if key.chars().any(|c| c.is_control()) {
        return error(shared, StatusCode::BAD_REQUEST, "Request contains unprintable characters");
    }
    let Ok(query) = Query::parse(req.uri().query()) else {
        return error(shared, StatusCode::BAD_REQUEST, "Invalid query string");
    };
    if query.has("ns") {
        return error(
            shared,
            StatusCode::BAD_REQUEST,
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
        );
    }
    if query.has("partition") {
        return error(
            shared,
            StatusCode::BAD_REQUEST,
            "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
        );
    }
    // Token precedence: ?token= > X-Consul-Token > Authorization: Bearer.
    let header_token = req.headers().get("x-consul-token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme is case-insensitive (RFC 7235), as Consul reads it.
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let token = query.value("token").map(str::to_string).or(header_token).or(bearer);
    let token_given = token.as_deref().is_some_and(|t| !t.is_empty());
    let authz = match shared.authorize(token.as_deref()) {
        Ok(a) => a,
        Err(d) => return denied(shared, d),
    };
    match *req.method() {
        Method::GET => get(shared, &key, &query, &authz, token_given).await,
        Method::PUT => put(req, shared, &key, &query, &authz).await,
        Method::DELETE => delete(shared, &key, &query, &authz),
        ref m => error(shared, StatusCode::METHOD_NOT_ALLOWED, &format!("method {m} not allowed")),
    }
}

/// What a read finds, computed under the store lock.
struct Found {
    index: u64,
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    filtered: bool,
    /// A single key that does not exist (blocks through unrelated writes, Consul 1.12+).
    missing_key: bool,
}

enum ReadMode<'a> {
    Single { raw: bool },
    Recurse,
    Keys { separator: Option<&'a str> },
}

fn read(store: &Store, key: &str, mode: &ReadMode<'_>, authz: &Authz) -> Found {
    let not_found = |index| Found {
        index,
        status: StatusCode::NOT_FOUND,
        body: Bytes::new(),
        content_type: "text/plain",
        filtered: false,
        missing_key: false,
    };
    match mode {
        ReadMode::Single { raw } => {
            let index = store.key_index(key);
            let Some(e) = store.get(key) else {
                return Found { missing_key: true, ..not_found(index) };
            };
            if *raw {
                let body = e.value.clone().unwrap_or_default();
                let content_type = if std::str::from_utf8(&body).is_ok() {
                    "text/plain; charset=utf-8"
                } else {
                    "application/octet-stream"
                };
                return Found {
                    index,
                    status: StatusCode::OK,
                    body,
                    content_type,
                    filtered: false,
                    missing_key: false,
                };
            }
            let body = listing_json([(key.to_string(), e.clone())].iter().map(|(k, e)| (k.as_str(), e)));
            Found {
                index,
                status: StatusCode::OK,
                body,
                content_type: "application/json",
                filtered: false,
                missing_key: false,
            }
        }
        ReadMode::Recurse => {
            let index = store.prefix_index(key);
            let all: Vec<_> = store.list(key).collect();
            let visible: Vec<_> =
                all.iter().filter(|(k, _)| authz.can_read(k)).map(|(k, e)| (k.as_str(), *e)).collect();
            if visible.is_empty() {
                // Consul sets its query meta (the filtered flag among it) before answering 404 for
                // an empty listing, so a listing emptied by ACLs says so.
                return Found { filtered: !all.is_empty(), ..not_found(index) };
            }
            let filtered = visible.len() < all.len();
            Found {
                index,
                status: StatusCode::OK,
                body: listing_json(visible.into_iter()),
                content_type: "application/json",
                filtered,
                missing_key: false,
            }
        }
        ReadMode::Keys { separator } => {
            let index = store.prefix_index(key);
            let all: Vec<&String> = store.list(key).map(|(k, _)| k).collect();
            let visible: Vec<&String> = all.iter().copied().filter(|k| authz.can_read(k)).collect();
            let mut names: Vec<String> = Vec::new();
            for k in &visible {
                let name = match separator.filter(|s| !s.is_empty()) {
                    Some(sep) => match k[key.len()..].find(sep) {
                        Some(pos) => k[..key.len() + pos + sep.len()].to_string(),
                        None => k.to_string(),
                    },
                    None => k.to_string(),
                };
                names.push(name);
            }
            // Keys are sorted, so folded names repeat only next to each other.
            names.dedup();
            if names.is_empty() && !key.is_empty() {
                return not_found(index);
            }
            let body = serde_json::to_vec(&names).unwrap_or_default().into();
            Found {
                index,
                status: StatusCode::OK,
                body,
                content_type: "application/json",
                filtered: visible.len() < all.len(),
                missing_key: false,
            }
        }
    }
}

fn listing_json<'a>(entries: impl Iterator<Item = (&'a str, &'a super::store::Entry)>) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pairs: Vec<KvPair<'_>> = entries
        .map(|(k, e)| KvPair {
            lock_index: e.lock_index,
            key: k,
            flags: e.flags,
            value: e.value.as_ref().map(|v| b64.encode(v)),
            session: e.session.as_deref(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        })
        .collect();
    serde_json::to_vec(&pairs).unwrap_or_default().into()
}

async fn get(shared: &Shared, key: &str, query: &Query, authz: &Authz, token_given: bool) -> Response<Body> {
    let min_index = match query.value("index") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(i) => i,
            Err(_) => return error(shared, StatusCode::BAD_REQUEST, "Invalid index"),
        },
    };
    let wait = match query.value("wait") {
        None => None,
        Some(v) => match parse_go_duration(v) {
            Some(w) => Some(w),
            None => return error(shared, StatusCode::BAD_REQUEST, "Invalid wait time"),
        },
    };
    // `max_stale` acts as `stale` on KV reads.
    if (query.has("stale") || query.has("max_stale")) && query.has("consistent") {
        return error(
            shared,
            StatusCode::BAD_REQUEST,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );
    }
    if query.value("dc").is_some_and(|d| !d.is_empty() && d != super::DATACENTER) {
        return error(shared, StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    let mode = if query.has("keys") {
        ReadMode::Keys { separator: query.value("separator").or_else(|| query.value("seperator")) }
    } else if query.has("recurse") {
        ReadMode::Recurse
    } else {
        ReadMode::Single { raw: query.has("raw") }
    };
    if let ReadMode::Single { .. } = mode {
        // A single key without permission is refused at once, whether it exists or not.
        if let Err(d) = authz.check(key, false) {
            return denied(shared, d);
        }
    }
    // Timeout: wait (<= 0 or absent: 5 minutes; at most 10) plus jitter in [0, timeout/16).
    let timeout = match wait {
        Some((false, w)) if !w.is_zero() => w.min(MAX_WAIT),
        _ => DEFAULT_WAIT,
    };
    let jitter = timeout.as_nanos() as u64 / 16;
    let deadline = tokio::time::Instant::now()
        + timeout
        + Duration::from_nanos(if jitter > 0 { fastrand::u64(0..jitter) } else { 0 });
    // A stale read may be answered by a follower (when the test set one up), with its own view and
    // its own contact with the leader; every other read is the leader's.
    let stale = query.has("stale") || query.has("max_stale");
    let follower = if stale { shared.follower() } else { None };
    let mut changes = shared.changes.subscribe();
    let restores = shared.store().restores();
    let found = loop {
        changes.borrow_and_update();
        let (found, restored) = {
            let store = shared.store();
            let found = match &follower {
                Some(f) => read(&f.view.lock().unwrap_or_else(|e| e.into_inner()), key, &mode, authz),
                None => read(&store, key, &mode, authz),
            };
            (found, store.restores() != restores)
        };
        let fresh = found.index.max(1) > min_index && !(found.missing_key && min_index > 0);
        // A snapshot restore abandons the state store: every blocked query returns at once, with
        // the restored state and its (possibly lower) index.
        if min_index == 0 || fresh || restored {
            break found;
        }
        let _waiting = Blocked::enter(&shared.blocked);
        tokio::select! {
            // Something was written: run the query again.
            changed = changes.changed() => if changed.is_err() { break found },
            // The wait is over: answer with what is there (same index, or a lower one after a reset).
            _ = tokio::time::sleep_until(deadline) => break found,
            // The server is stopping.
            _ = shared.shutdown.cancelled() => break found,
        }
    };
    let mut r = Response::new(full(found.body));
    *r.status_mut() = found.status;
    let h = r.headers_mut();
    h.insert("x-consul-index", HeaderValue::from(found.index.max(1)));
    let (known_leader, last_contact) = match &follower {
        Some(f) => (f.known_leader, f.last_contact.as_millis() as u64),
        None => (true, 0),
    };
    h.insert("x-consul-knownleader", HeaderValue::from_static(if known_leader { "true" } else { "false" }));
    h.insert("x-consul-lastcontact", HeaderValue::from(last_contact));
    let consistency = if stale {
        "stale"
    } else if query.has("consistent") {
        "consistent"
    } else {
        "leader"
    };
    h.insert("x-consul-effective-consistency", HeaderValue::from_static(consistency));
    h.insert("x-consul-query-backend", HeaderValue::from_static("blocking-query"));
    if found.status == StatusCode::OK {
        h.insert("content-type", HeaderValue::from_static(found.content_type));
        if let ReadMode::Single { raw: true } = mode {
            h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
            h.insert("content-security-policy", HeaderValue::from_static("sandbox"));
        }
    }
    if found.filtered && token_given {
        h.insert("x-consul-results-filtered-by-acls", HeaderValue::from_static("true"));
    }
    shared.default_policy_header(&mut r);
    r
}

/// Counts a blocking query as waiting for as long as it lives.
struct Blocked<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Blocked<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Blocked<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Blocked(n)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Parses an optional unsigned number parameter; Consul answers 500 for a malformed one.
fn number(query: &Query, name: &str) -> Result<Option<u64>, String> {
    match query.value(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|e| format!("strconv.ParseUint: parsing {v:?}: {e}")),
    }
}

async fn put(req: Request<Incoming>, shared: &Shared, key: &str, query: &Query, authz: &Authz) -> Response<Body> {
    if key.is_empty() {
        return error(shared, StatusCode::BAD_REQUEST, "Missing key name");
    }
    let given: Vec<&str> = ["cas", "acquire", "release"].into_iter().filter(|f| query.has(f)).collect();
    if given.len() > 1 {
        return error(shared, StatusCode::BAD_REQUEST, &format!("Conflicting flags: {}", given.join("&")));
    }
    let flags = match number(query, "flags") {
        Ok(f) => f.unwrap_or(0),
        Err(e) => return error(shared, StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let cas = match number(query, "cas") {
        Ok(Some(i)) => Cas::Index(i),
        Ok(None) => Cas::None,
        Err(e) => return error(shared, StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    if let Some(session) = query.value("acquire").or_else(|| query.value("release")) {
        return error(shared, StatusCode::INTERNAL_SERVER_ERROR, &format!("invalid session \"{session}\""));
    }
    let length =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = length.filter(|n| *n > MAX_VALUE_SIZE) {
        return too_large(shared, n);
    }
    if let Err(d) = authz.check(key, true) {
        return denied(shared, d);
    }
    let body = match Limited::new(req.into_body(), MAX_VALUE_SIZE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return too_large(shared, MAX_VALUE_SIZE + 1),
    };
    let value = if body.is_empty() { None } else { Some(body) };
    let (ok, changed) = shared.store().put(key, value, flags, cas);
    if changed {
        shared.notify();
    }
    json_bool(shared, ok)
}

fn too_large(shared: &Shared, n: usize) -> Response<Body> {
    error(
        shared,
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("Request body({n} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."),
    )
}

fn delete(shared: &Shared, key: &str, query: &Query, authz: &Authz) -> Response<Body> {
    if let Err(d) = authz.check(key, true) {
        return denied(shared, d);
    }
    let cas = match number(query, "cas") {
        Ok(Some(i)) => Cas::Index(i),
        Ok(None) => Cas::None,
        Err(e) => return error(shared, StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let (ok, changed) = if query.has("recurse") {
        let changed = shared.store().delete_tree(key);
        (true, changed)
    } else {
        shared.store().delete(key, cas)
    };
    if changed {
        shared.notify();
    }
    json_bool(shared, ok)
}

fn json_bool(shared: &Shared, ok: bool) -> Response<Body> {
    let mut r = Response::new(full(if ok { "true" } else { "false" }));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    shared.default_policy_header(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some((false, Duration::from_secs(1))));
        assert_eq!(parse_go_duration("1m30s"), Some((false, Duration::from_secs(90))));
        assert_eq!(parse_go_duration("1.5s"), Some((false, Duration::from_millis(1500))));
        assert_eq!(parse_go_duration("250ms"), Some((false, Duration::from_millis(250))));
        assert_eq!(parse_go_duration("0"), Some((false, Duration::ZERO)));
        assert_eq!(parse_go_duration("-1s"), Some((true, Duration::from_secs(1))));
        assert_eq!(parse_go_duration("10"), None, "a unit is required");
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn query_flags_are_presence_only() {
        let q = Query::parse(Some("recurse=false&index=5&dc=a%2Fb&x=a+b")).unwrap();
        assert!(q.has("recurse"));
        assert_eq!(q.value("index"), Some("5"));
        assert_eq!(q.value("dc"), Some("a/b"));
        assert_eq!(q.value("x"), Some("a b"));
        assert!(Query::parse(Some("a=%zz")).is_err());
    }
}
