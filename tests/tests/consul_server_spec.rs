//! The test Consul server against specs/consul-kv.md, spoken to with a bare HTTP/1.1 client so that
//! what is checked is what is on the wire (header casing included).

use std::time::{Duration, Instant};

use kvsync_tests::consul_server::{Access, ConsulServer, Framing, Pace, GO_RESPONSE_BUFFER, MAX_VALUE_SIZE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(10);

/// An answer as it came off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The header block exactly as sent.
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn index(&self) -> Option<u64> {
        self.header("X-Consul-Index").and_then(|v| v.parse().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection (`Connection: close`), bounded by `BOUND`.
async fn call(server: &ConsulServer, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    tokio::time::timeout(BOUND, async {
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if method == "PUT" || !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let rest = raw[split + 4..].to_vec();
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { dechunk(&rest) } else { rest };
        Reply { status, head, body }
    })
    .await
    .expect("an answer within the bound")
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

async fn get(server: &ConsulServer, target: &str) -> Reply {
    call(server, "GET", target, &[], b"").await
}

async fn put(server: &ConsulServer, target: &str, body: &[u8]) -> Reply {
    call(server, "PUT", target, &[], body).await
}

#[tokio::test]
async fn get_answers_consuls_json_with_its_headers() {
    let server = ConsulServer::start().await.unwrap();
    let r = put(&server, "/v1/kv/app/a", b"hello").await;
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert!(r.index().is_none(), "writes carry no X-Consul-Index");

    let r = get(&server, "/v1/kv/app/a").await;
    assert_eq!(r.status, 200);
    let modify = r.json()[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(r.index(), Some(modify), "a key's index is its ModifyIndex");
    let expected = format!(
        r#"[{{"LockIndex":0,"Key":"app/a","Flags":0,"Value":"aGVsbG8=","CreateIndex":{modify},"ModifyIndex":{modify}}}]"#
    );
    assert_eq!(r.text(), expected, "field order, base64 value, no Session");
    // Go's canonical header casing on the wire.
    for h in ["X-Consul-Index:", "X-Consul-Knownleader: true", "X-Consul-Query-Backend: blocking-query"] {
        assert!(r.head.contains(h), "{h} in {}", r.head);
    }
    assert!(r.head.contains("X-Consul-Default-Acl-Policy: allow"), "{}", r.head);
}

#[tokio::test]
async fn empty_values_are_null_and_flags_reset_when_absent() {
    let server = ConsulServer::start().await.unwrap();
    put(&server, "/v1/kv/k?flags=42", b"x").await;
    assert_eq!(get(&server, "/v1/kv/k").await.json()[0]["Flags"], 42);
    put(&server, "/v1/kv/k", b"").await;
    let j = get(&server, "/v1/kv/k").await.json();
    assert_eq!(j[0]["Flags"], 0, "PUT without flags resets them");
    assert!(j[0]["Value"].is_null(), "an empty body is stored as null");
    let r = put(&server, "/v1/kv/k?flags=abc", b"x").await;
    assert_eq!(r.status, 500, "a malformed number is a 500: {}", r.text());
}

#[tokio::test]
async fn not_found_still_carries_the_index() {
    let server = ConsulServer::start().await.unwrap();
    let r = get(&server, "/v1/kv/missing").await;
    assert_eq!((r.status, r.body.len()), (404, 0));
    assert_eq!(r.index(), Some(1), "the index is floored at 1 on an empty store");
    server.put("other", "x");
    server.put("other", "y");
    let r = get(&server, "/v1/kv/empty/?recurse").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.index(), Some(2), "an empty prefix has the global index");
    let r = get(&server, "/v1/kv/missing").await;
    assert_eq!(r.index(), Some(2), "a missing key has the global index");
    // keys on the root answers [] even when empty; on a missing prefix 404.
    let empty = ConsulServer::start().await.unwrap();
    let r = get(&empty, "/v1/kv/?keys").await;
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    assert_eq!(get(&server, "/v1/kv/nothing/?keys").await.status, 404);
}

#[tokio::test]
async fn flags_are_presence_only_lists_are_sorted_and_keys_fold() {
    let server = ConsulServer::start().await.unwrap();
    for k in ["a/e", "a/b/d", "a/b/c", "b/x"] {
        server.put(k, "v");
    }
    let j = get(&server, "/v1/kv/a/?recurse=false").await.json();
    let keys: Vec<_> = j.as_array().unwrap().iter().map(|e| e["Key"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["a/b/c", "a/b/d", "a/e"], "recurse=false recurses; sorted by key");
    assert_eq!(get(&server, "/v1/kv/a/?keys").await.json(), serde_json::json!(["a/b/c", "a/b/d", "a/e"]));
    assert_eq!(get(&server, "/v1/kv/a/?keys&separator=/").await.json(), serde_json::json!(["a/b/", "a/e"]));
    assert_eq!(get(&server, "/v1/kv/a/?keys&seperator=/").await.json(), serde_json::json!(["a/b/", "a/e"]));
    // keys wins over recurse.
    assert_eq!(get(&server, "/v1/kv/b/?recurse&keys").await.json(), serde_json::json!(["b/x"]));
}

#[tokio::test]
async fn raw_answers_the_bytes() {
    let server = ConsulServer::start().await.unwrap();
    server.put("r", "plain text");
    let r = get(&server, "/v1/kv/r?raw").await;
    assert_eq!((r.status, r.text().as_str()), (200, "plain text"));
    assert!(r.index().is_some());
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
}

#[tokio::test]
async fn bad_parameters_are_refused_like_consul() {
    let server = ConsulServer::start().await.unwrap();
    let cases = [
        ("/v1/kv/k?index=abc", 400, "Invalid index"),
        ("/v1/kv/k?index=1&wait=10", 400, "Invalid wait time"),
        ("/v1/kv/k?stale&consistent", 400, "conflicting"),
        ("/v1/kv/k?max_stale=5s&consistent", 400, "conflicting"),
        ("/v1/kv/k?dc=elsewhere", 500, "No path to datacenter"),
        ("/v1/kv/k?ns=team", 400, "Enterprise"),
    ];
    for (target, status, text) in cases {
        let r = get(&server, target).await;
        assert_eq!(r.status, status, "{target}: {}", r.text());
        assert!(r.text().contains(text), "{target}: {}", r.text());
        assert!(r.index().is_none(), "{target}: errors carry no X-Consul-Index");
    }
    let r = get(&server, "/v1/kv//k").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/v1/kv/k"));
    assert_eq!(get(&server, "/v1/kv/a%01b").await.status, 400, "unprintable key");
}

#[tokio::test]
async fn blocking_query_wakes_on_a_change_and_index_zero_never_blocks() {
    let server = ConsulServer::start().await.unwrap();
    server.put("w/k", "1");
    let index = server.prefix_index("w/");
    let started = Instant::now();
    let r = get(&server, "/v1/kv/w/?recurse&index=0&wait=5s").await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(4), "index=0 answers at once");

    let server = std::sync::Arc::new(server);
    let writer = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.put("w/k", "2");
        })
    };
    let started = Instant::now();
    let r = get(&server, &format!("/v1/kv/w/?recurse&index={index}&wait=5s")).await;
    assert!(started.elapsed() < Duration::from_secs(4), "woken by the write, not the timeout");
    assert!(r.index().unwrap() > index);
    writer.await.unwrap();
}

#[tokio::test]
async fn timeout_without_change_answers_the_same_index_and_identical_writes_do_not_wake() {
    let server = std::sync::Arc::new(ConsulServer::start().await.unwrap());
    server.put("i/k", "same");
    let index = server.prefix_index("i/");
    let writer = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!server.put("i/k", "same"));
        })
    };
    let started = Instant::now();
    let r = get(&server, &format!("/v1/kv/i/?recurse&index={index}&wait=500ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(500), "held for the whole wait");
    assert_eq!((r.status, r.index()), (200, Some(index)), "same body, same index");
    writer.await.unwrap();
}

#[tokio::test]
async fn missing_key_blocks_through_unrelated_writes() {
    let server = std::sync::Arc::new(ConsulServer::start().await.unwrap());
    server.put("unrelated", "1");
    let global = get(&server, "/v1/kv/nokey").await.index().unwrap();
    let writer = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.put("unrelated", "2");
        })
    };
    let started = Instant::now();
    let r = get(&server, &format!("/v1/kv/nokey?index={global}&wait=600ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(600), "an unrelated write does not wake it");
    assert_eq!(r.status, 404);
    assert!(r.index().unwrap() > global, "the answer carries the new global index");
    writer.await.unwrap();
}

#[tokio::test]
async fn client_index_ahead_waits_the_full_wait_then_answers_lower() {
    let server = ConsulServer::start().await.unwrap();
    server.put("h/k", "v");
    let started = Instant::now();
    let r = get(&server, "/v1/kv/h/?recurse&index=1000&wait=400ms").await;
    assert!(started.elapsed() >= Duration::from_millis(400), "no early return");
    assert_eq!(r.status, 200);
    assert!(r.index().unwrap() < 1000, "answers with the lower index");
}

#[tokio::test]
async fn tombstones_raise_a_prefix_index_and_reaping_lowers_it() {
    let server = ConsulServer::start().await.unwrap();
    server.put("t/a", "1");
    server.put("t/b", "1");
    server.put("elsewhere", "1");
    let before = get(&server, "/v1/kv/t/?recurse").await.index().unwrap();
    let r = call(&server, "DELETE", "/v1/kv/t/b", &[], b"").await;
    assert_eq!(r.text(), "true");
    let after_delete = get(&server, "/v1/kv/t/?recurse").await.index().unwrap();
    assert!(after_delete > before, "the delete's tombstone raises the index");
    server.reap_tombstones();
    let after_reap = get(&server, "/v1/kv/t/?recurse").await.index().unwrap();
    assert!(after_reap < after_delete, "reaped: the index went backwards");
}

#[tokio::test]
async fn cas_and_conflicting_parameters() {
    let server = ConsulServer::start().await.unwrap();
    assert_eq!(put(&server, "/v1/kv/c?cas=0", b"1").await.text(), "true", "create-only on a new key");
    assert_eq!(put(&server, "/v1/kv/c?cas=0", b"2").await.text(), "false", "create-only on an existing key");
    let m = server.get("c").unwrap().modify_index;
    assert_eq!(put(&server, &format!("/v1/kv/c?cas={}", m + 5), b"3").await.text(), "false");
    assert_eq!(put(&server, &format!("/v1/kv/c?cas={m}"), b"3").await.text(), "true");
    let r = put(&server, "/v1/kv/c?cas=1&acquire=abc", b"x").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(put(&server, "/v1/kv/c?cas=x", b"x").await.status, 500);
    // DELETE with cas: true when deleted or absent, false on a mismatch.
    let m = server.get("c").unwrap().modify_index;
    assert_eq!(call(&server, "DELETE", &format!("/v1/kv/c?cas={}", m + 1), &[], b"").await.text(), "false");
    assert_eq!(call(&server, "DELETE", &format!("/v1/kv/c?cas={m}"), &[], b"").await.text(), "true");
    assert_eq!(call(&server, "DELETE", "/v1/kv/c?cas=99", &[], b"").await.text(), "true");
    assert_eq!(call(&server, "DELETE", "/v1/kv/never", &[], b"").await.text(), "true");
}

#[tokio::test]
async fn delete_recurse_removes_a_subtree() {
    let server = ConsulServer::start().await.unwrap();
    for k in ["d/a", "d/b/c", "dz"] {
        server.put(k, "v");
    }
    assert_eq!(call(&server, "DELETE", "/v1/kv/d/?recurse", &[], b"").await.text(), "true");
    assert_eq!(get(&server, "/v1/kv/d/?recurse").await.status, 404);
    assert_eq!(get(&server, "/v1/kv/dz").await.status, 200);
}

#[tokio::test]
async fn values_over_512_kib_are_refused() {
    let server = ConsulServer::start().await.unwrap();
    let r = put(&server, "/v1/kv/big", &vec![b'x'; MAX_VALUE_SIZE + 1]).await;
    assert_eq!(r.status, 413);
    assert!(
        r.text().contains(&format!("Request body({} bytes) too large, max size: 524288 bytes", MAX_VALUE_SIZE + 1)),
        "{}",
        r.text()
    );
    assert_eq!(put(&server, "/v1/kv/big", &vec![b'x'; MAX_VALUE_SIZE]).await.text(), "true");
}

#[tokio::test]
async fn acl_refuses_single_keys_and_filters_lists() {
    let server = ConsulServer::start().await.unwrap();
    server.put("a/one", "1");
    server.put("a/two", "2");
    server.put("b/x", "3");
    server.set_token("reader", &[("a/", Access::Read)]);
    let with = |t: &'static str| vec![("X-Consul-Token", t)];

    let r = call(&server, "GET", "/v1/kv/b/x", &with("reader"), b"").await;
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("Permission denied: token with AccessorID '"), "{}", r.text());
    assert!(r.text().contains("lacks permission 'key:read' on \"b/x\""), "{}", r.text());
    assert!(!r.text().contains("reader"), "never the secret");
    let r = call(&server, "GET", "/v1/kv/b/missing", &with("reader"), b"").await;
    assert_eq!(r.status, 403, "403 even for a missing key");

    let r = call(&server, "GET", "/v1/kv/?recurse", &with("reader"), b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2, "the list is filtered");
    assert_eq!(r.header("X-Consul-Results-Filtered-By-Acls"), Some("true"));
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("deny"));
    let r = call(&server, "GET", "/v1/kv/b/?recurse", &with("reader"), b"").await;
    assert_eq!(r.status, 404, "fully filtered");
    assert_eq!(r.header("X-Consul-Results-Filtered-By-Acls"), Some("true"), "a 404 from filtering says so");

    let r = call(&server, "GET", "/v1/kv/a/one", &with("nobody-knows-me"), b"").await;
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    assert_eq!(get(&server, "/v1/kv/a/one").await.status, 403, "anonymous has no access");

    // Precedence: ?token= over X-Consul-Token over Authorization: Bearer.
    let r = call(&server, "GET", "/v1/kv/a/one?token=reader", &with("nobody-knows-me"), b"").await;
    assert_eq!(r.status, 200);
    let r = call(&server, "GET", "/v1/kv/a/one", &[("X-Consul-Token", "reader"), ("Authorization", "Bearer bad")], b"")
        .await;
    assert_eq!(r.status, 200);
    let r = call(&server, "GET", "/v1/kv/a/one", &[("Authorization", "Bearer reader")], b"").await;
    assert_eq!(r.status, 200);
    let r = call(&server, "PUT", "/v1/kv/a/one", &with("reader"), b"x").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("'key:write'"), "{}", r.text());
}

#[tokio::test]
async fn controls_inject_statuses_hangs_and_count_requests() {
    let server = ConsulServer::start().await.unwrap();
    server.put("c/k", "v");
    server.fail_next(429, 2);
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 429);
    let r = get(&server, "/v1/kv/c/k").await;
    assert_eq!((r.status, r.text().as_str()), (429, "Rate limit reached, try again later"));
    assert!(r.index().is_none());
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 200);
    server.fail_next(503, 1);
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 503);
    server.fail_next(500, 1);
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 500);
    assert_eq!(server.requests("/v1/kv/c/k"), 5);

    server.hang_next(1);
    let hung = tokio::time::timeout(Duration::from_millis(300), get(&server, "/v1/kv/c/k")).await;
    assert!(hung.is_err(), "a hung request gets no answer");

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.clear_faults();

    server.fail_for(500, Duration::from_millis(200));
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 500);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(&server, "/v1/kv/c/k").await.status, 200);
}

#[tokio::test]
async fn truncated_answers_break_off_mid_body() {
    let server = ConsulServer::start().await.unwrap();
    server.put("tr/k", "x".repeat(4000));
    server.set_framing(Framing::ContentLength);
    server.truncate_next(1);
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /v1/kv/tr/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(BOUND, s.read_to_end(&mut raw)).await.unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content length");
    assert!(read.is_err() || raw.len() - head_end < length, "the body is cut short");
    // The next answer is whole.
    assert_eq!(get(&server, "/v1/kv/tr/k").await.status, 200);
}

#[tokio::test]
async fn index_resets_take_the_index_back() {
    let server = ConsulServer::start().await.unwrap();
    server.put("x/a", "1");
    let snap = server.snapshot();
    let at_snapshot = server.prefix_index("x/");
    server.put("x/b", "2");
    assert!(server.prefix_index("x/") > at_snapshot);
    server.restore(snap);
    assert_eq!(server.prefix_index("x/"), at_snapshot);
    assert!(server.get("x/b").is_none());
    server.put("x/c", "3");
    server.put("x/d", "4");
    let high = server.prefix_index("x/");
    server.force_index_reset();
    assert!(server.prefix_index("x/") < high);
    assert_eq!(get(&server, "/v1/kv/x/?keys").await.json(), serde_json::json!(["x/a", "x/c", "x/d"]));
}

/// Reads the head of an answer on `s` (the request already sent), and what came of the body with it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            return (head, raw[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("a head within the bound").unwrap();
        assert!(n > 0, "the connection closed before the head: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
}

async fn send_get(server: &ConsulServer, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn bodies_are_framed_as_consul_frames_them_or_as_the_test_says() {
    let server = ConsulServer::start().await.unwrap();
    server.put("f/small", "v");
    for i in 0..100 {
        server.put(&format!("f/big/k{i:03}"), "some value");
    }
    let framing =
        |r: &Reply| (r.header("Content-Length").map(str::to_string), r.header("Transfer-Encoding").map(str::to_string));
    // Go's net/http: a Content-Length when the answer fits its 2 KiB buffer, chunked above.
    let small = get(&server, "/v1/kv/f/small").await;
    assert!(small.body.len() <= GO_RESPONSE_BUFFER);
    assert_eq!(framing(&small), (Some(small.body.len().to_string()), None), "{}", small.head);
    let big = get(&server, "/v1/kv/f/big/?recurse").await;
    assert!(big.body.len() > GO_RESPONSE_BUFFER);
    assert_eq!(framing(&big), (None, Some("chunked".to_string())), "{}", big.head);
    assert_eq!(big.json().as_array().unwrap().len(), 100, "the chunked body is the whole listing");
    // A 404 of an empty prefix: no body, a length of 0.
    let empty = get(&server, "/v1/kv/f/none/?recurse").await;
    assert_eq!((empty.status, framing(&empty)), (404, (Some("0".to_string()), None)));

    server.set_framing(Framing::ContentLength);
    let big_cl = get(&server, "/v1/kv/f/big/?recurse").await;
    assert_eq!(framing(&big_cl), (Some(big.body.len().to_string()), None), "{}", big_cl.head);
    assert_eq!(big_cl.body, big.body, "the same listing in either framing");
    server.set_framing(Framing::Chunked);
    let small_chunked = get(&server, "/v1/kv/f/small").await;
    assert_eq!(framing(&small_chunked), (None, Some("chunked".to_string())), "{}", small_chunked.head);
    assert_eq!(small_chunked.body, small.body);
}

#[tokio::test]
async fn paced_bodies_arrive_in_pieces_with_pauses() {
    let server = ConsulServer::start().await.unwrap();
    for i in 0..40 {
        server.put(&format!("p/k{i:02}"), "value");
    }
    let whole = get(&server, "/v1/kv/p/?recurse").await;
    let pause = Duration::from_millis(40);
    server.set_pace(Some(Pace { chunk: 256, pause }));
    let pieces = whole.body.len().div_ceil(256);
    assert!(pieces >= 4, "{pieces} pieces");
    let started = Instant::now();
    let paced = get(&server, "/v1/kv/p/?recurse").await;
    // A lower bound only: the pauses cannot be skipped, however fast the machine.
    assert!(started.elapsed() >= pause * (pieces as u32 - 1), "{:?} for {pieces} pieces", started.elapsed());
    assert_eq!(paced.header("Transfer-Encoding"), Some("chunked"), "{}", paced.head);
    assert_eq!(paced.body, whole.body);
    // Errors are not paced.
    server.fail_next(500, 1);
    assert_eq!(get(&server, "/v1/kv/p/?recurse").await.status, 500);
}

#[tokio::test]
async fn a_stopped_body_leaves_the_connection_open_and_silent() {
    let server = ConsulServer::start().await.unwrap();
    for i in 0..50 {
        server.put(&format!("s/k{i:02}"), "value");
    }
    for framing in [Framing::Chunked, Framing::ContentLength] {
        server.set_framing(framing);
        server.stop_body_next(1, 100);
        let mut s = send_get(&server, "/v1/kv/s/?recurse").await;
        let (head, mut body) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The first 100 bytes come (with the chunk header when chunked), then nothing: no close, no reset.
        let mut buf = [0u8; 4096];
        while body.len() < 100 {
            let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("the first bytes").unwrap();
            assert!(n > 0, "closed after {} bytes", body.len());
            body.extend_from_slice(&buf[..n]);
        }
        let more = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
        assert!(more.is_err(), "{framing:?}: the connection must stay open and silent, got {more:?}");
        let text = String::from_utf8_lossy(&body).to_string();
        match framing {
            // The chunk's size line, its 100 bytes and their CRLF; never the last chunk.
            Framing::Chunked => assert!(text.starts_with("64\r\n[{") && text.len() == 4 + 100 + 2, "{text:?}"),
            _ => assert!(text.starts_with("[{") && text.len() == 100, "{text:?}"),
        }
        // The next answer is whole.
        assert_eq!(get(&server, "/v1/kv/s/?recurse").await.json().as_array().unwrap().len(), 50);
    }
}

#[tokio::test]
async fn a_truncated_chunked_answer_has_no_last_chunk() {
    let server = ConsulServer::start().await.unwrap();
    server.put("tc/k", "x".repeat(4000));
    server.truncate_next(1);
    let mut s = send_get(&server, "/v1/kv/tc/k").await;
    let (head, mut body) = read_head(&mut s).await;
    assert!(head.contains("Transfer-Encoding: chunked") && !head.contains("Content-Length"), "{head}");
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut body)).await.expect("the connection ends");
    assert!(!body.ends_with(b"0\r\n\r\n"), "a cut chunked body must not end with the last chunk");
    assert!(body.len() < 4000, "the body is cut short: {} bytes", body.len());
    assert_eq!(get(&server, "/v1/kv/tc/k").await.status, 200);
}

#[tokio::test]
async fn a_snapshot_restore_wakes_every_blocked_query_at_once_with_the_restored_index() {
    let server = ConsulServer::start().await.unwrap();
    server.put("rs/a", "1");
    let snap = server.snapshot();
    let at_snapshot = server.prefix_index("rs/");
    server.put("rs/b", "2");
    let now = server.prefix_index("rs/");
    // Two queries blocked on the current index with a long wait, one on a key and one on the prefix.
    let blocked = [format!("/v1/kv/rs/?recurse&index={now}&wait=60s"), format!("/v1/kv/rs/b?index={now}&wait=60s")];
    let started = Instant::now();
    let (first, second, _) = tokio::join!(get(&server, &blocked[0]), get(&server, &blocked[1]), async {
        // Once both are waiting (a request is counted when it arrives), the restore.
        while server.requests("/v1/kv/rs/") + server.requests("/v1/kv/rs/b") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.restore(snap);
    });
    assert!(started.elapsed() < Duration::from_secs(5), "the restore woke them: {:?}", started.elapsed());
    assert_eq!(first.status, 200);
    assert_eq!(first.index(), Some(at_snapshot), "the restored, lower index");
    assert_eq!(first.json().as_array().unwrap().len(), 1, "the restored state: {}", first.text());
    assert_eq!(second.status, 404, "rs/b does not exist in the restored state");
    // A query that starts after the restore with the old, now ahead, index waits its full wait.
    let started = Instant::now();
    let r = get(&server, &format!("/v1/kv/rs/?recurse&index={now}&wait=300ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.index(), Some(at_snapshot));
}

#[tokio::test]
async fn stale_reads_carry_leader_contact_and_the_effective_consistency() {
    let server = ConsulServer::start().await.unwrap();
    server.put("st/a", "1");
    let leader = get(&server, "/v1/kv/st/?recurse").await;
    assert_eq!(leader.header("X-Consul-Effective-Consistency"), Some("leader"));
    assert_eq!(leader.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(leader.header("X-Consul-LastContact"), Some("0"));
    assert_eq!(
        get(&server, "/v1/kv/st/?recurse&consistent").await.header("X-Consul-Effective-Consistency"),
        Some("consistent")
    );
    let stale = get(&server, "/v1/kv/st/?recurse&stale").await;
    assert_eq!(stale.header("X-Consul-Effective-Consistency"), Some("stale"));
    assert_eq!(stale.header("X-Consul-KnownLeader"), Some("true"), "the leader answered");
    // A follower that lost its leader 5 s ago and has not seen the next write.
    server.set_follower(Some((Duration::from_secs(5), false)));
    server.put("st/a", "2");
    let stale = get(&server, "/v1/kv/st/?recurse&stale").await;
    assert_eq!(stale.header("X-Consul-LastContact"), Some("5000"));
    assert_eq!(stale.header("X-Consul-KnownLeader"), Some("false"));
    assert_eq!(stale.json()[0]["Value"], "MQ==", "the follower's older value");
    let consistent = get(&server, "/v1/kv/st/?recurse&consistent").await;
    assert_eq!(consistent.json()[0]["Value"], "Mg==", "the leader's value");
    assert_eq!(consistent.header("X-Consul-LastContact"), Some("0"));
    // max_stale acts as stale.
    assert_eq!(get(&server, "/v1/kv/st/?recurse&max_stale=1s").await.header("X-Consul-KnownLeader"), Some("false"));
    server.set_follower(None);
    assert_eq!(get(&server, "/v1/kv/st/?recurse&stale").await.json()[0]["Value"], "Mg==");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = ConsulServer::start().await.unwrap();
    server.put("b/k", "v");
    server.set_token("tok-b", &[("b/", Access::Read)]);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} tok-b");
        let r = call(&server, "GET", "/v1/kv/b/k", &[("Authorization", &auth)], b"").await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    let r = call(&server, "GET", "/v1/kv/b/k", &[("Authorization", "Basic tok-b")], b"").await;
    assert_eq!(r.status, 403, "another scheme is no token");
}

#[tokio::test]
async fn locked_keys_show_their_lock_index_and_session() {
    let server = ConsulServer::start().await.unwrap();
    server.put("l/a", "1");
    server.put("l/b", "2");
    let session = "adf4238a-882b-9ddc-4a9d-5b6758e4159e";
    assert!(server.lock("l/a", session));
    assert!(!server.lock("l/a", "another-session"), "held by another session");
    assert!(!server.lock("l/missing", session));
    let list = get(&server, "/v1/kv/l/?recurse").await.json();
    assert_eq!(list[0]["LockIndex"], 1);
    assert_eq!(list[0]["Session"], session);
    assert_eq!(list[1]["LockIndex"], 0);
    assert!(list[1].get("Session").is_none(), "Session is omitted when empty: {list}");
    assert!(server.unlock("l/a"));
    let list = get(&server, "/v1/kv/l/?recurse").await.json();
    assert_eq!(list[0]["LockIndex"], 1, "LockIndex stays after a release");
    assert!(list[0].get("Session").is_none());
}
