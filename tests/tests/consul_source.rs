//! The Consul source through its `Source` interface, against the test Consul server (and the fault
//! proxy). Every wait is bounded; behaviour is checked, not timing.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvsync_tests::consul_server::{Access, ConsulServer, Framing, Pace, TestPki};
use kvsync_tests::fault_proxy::{FaultProxy, ProxyMode};
use kvsync_watch::consul::{ConsulConfig, ConsulSource};
use kvsync_watch::source::SinkReceiver;
use kvsync_watch::{
    Backoff, Change, EngineBuilder, Entries, Mode, Source, SourceError, SourceStats, TlsFiles, UpdateSink,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any single expectation may take before the test fails.
const BOUND: Duration = Duration::from_secs(10);

fn config(address: String) -> ConsulConfig {
    ConsulConfig {
        addresses: vec![address],
        token_file: None,
        tls: None,
        wait: Duration::from_secs(1),
        mode: Mode::Watch,
        stale: false,
        max_stale: None,
        datacenter: None,
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(400), None),
        max_value_bytes: 1 << 20,
        max_keys: 1_000_000,
        idle_timeout: kvsync_watch::consul::DEFAULT_IDLE_TIMEOUT,
    }
}

/// A running source and what it reports.
struct Running {
    rx: SinkReceiver,
    stats: Arc<SourceStats>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), SourceError>>,
}

impl Running {
    fn start(config: ConsulConfig, prefixes: &[&str]) -> Running {
        let source = ConsulSource::new(config).expect("valid configuration");
        let (sink, rx) = UpdateSink::channel("consul", 64);
        let stats = Arc::clone(sink.stats());
        let cancel = CancellationToken::new();
        let prefixes = prefixes.iter().map(|p| p.to_string()).collect();
        let task = tokio::spawn(Box::new(source).run(prefixes, sink, cancel.clone()));
        Running { rx, stats, cancel, task }
    }

    /// The next full snapshot: (version, entries, resync).
    async fn next(&mut self) -> (u64, Entries, bool) {
        let update = tokio::time::timeout(BOUND, self.rx.recv())
            .await
            .expect("an update within the bound")
            .expect("the source is running");
        match update.change {
            Change::Full { entries, resync } => (update.version, entries, resync),
            Change::Delta(_) => panic!("the Consul source sends full snapshots"),
        }
    }

    /// Skips updates until one satisfies `want`.
    async fn until(&mut self, want: impl Fn(&Entries, bool) -> bool) -> (u64, Entries, bool) {
        tokio::time::timeout(BOUND, async {
            loop {
                let (v, e, r) = self.next().await;
                if want(&e, r) {
                    return (v, e, r);
                }
            }
        })
        .await
        .expect("the expected state within the bound")
    }

    fn last_error(&self) -> Option<String> {
        self.stats.last_error.lock().unwrap().as_ref().map(|(_, m)| m.clone())
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(BOUND, self.task).await.expect("stops when cancelled").unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

/// Waits until `cond` holds, checking every 20 ms, for at most `BOUND`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let ok = tokio::time::timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

fn value<'a>(e: &'a Entries, k: &str) -> Option<&'a [u8]> {
    e.get(k).map(Bytes::as_ref)
}

#[tokio::test]
async fn watch_delivers_the_prefix_then_each_change() {
    let server = ConsulServer::start().await.unwrap();
    server.put("app/", ""); // a folder marker, as the UI makes
    server.put("app/db/host", "db.internal");
    server.put("app/empty", "");
    server.put("other/x", "not ours");
    let mut src = Running::start(config(server.url()), &["app/"]);

    let (v1, e, resync) = src.next().await;
    assert!(!resync);
    let keys: Vec<_> = e.keys().map(String::as_str).collect();
    assert_eq!(keys, ["app/db/host", "app/empty"], "folder markers and other prefixes are left out");
    assert_eq!(value(&e, "app/empty"), Some(&b""[..]), "a null value is empty");

    server.put("app/db/host", "db2.internal");
    let (v2, e, _) = src.until(|e, _| value(e, "app/db/host") == Some(b"db2.internal")).await;
    assert!(v2 > v1, "the version follows the index");
    assert_eq!(e.len(), 2);

    server.delete("app/empty");
    let (_, e, _) = src.until(|e, _| !e.contains_key("app/empty")).await;
    assert_eq!(e.len(), 1);
    src.stop().await;
}

#[tokio::test]
async fn idle_watch_makes_about_one_request_per_wait() {
    let server = ConsulServer::start().await.unwrap();
    server.put("idle/k", "v");
    let mut src = Running::start(config(server.url()), &["idle/"]);
    src.next().await;
    let before = server.requests("/v1/kv/idle/");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let during = server.requests("/v1/kv/idle/") - before;
    // wait = 1s (+ up to 1/16 jitter): about 3 requests in 3.5 s; a loop that did not block would make hundreds.
    assert!((2..=5).contains(&during), "{during} requests in 3.5 s of idling with wait=1s");
    assert!(src.rx.try_recv().is_none(), "nothing changed, nothing delivered");
    src.stop().await;
}

#[tokio::test]
async fn empty_prefix_is_an_empty_snapshot_and_its_first_key_arrives() {
    let server = ConsulServer::start().await.unwrap();
    server.put("elsewhere", "x");
    let mut cfg = config(server.url());
    // A long wait: both deliveries below must come from the server waking the query, not a timeout.
    cfg.wait = Duration::from_secs(60);
    let mut src = Running::start(cfg, &["new/"]);
    let (_, e, _) = src.next().await;
    assert!(e.is_empty(), "a 404 prefix is an empty snapshot, delivered at once");
    // Unrelated writes raise the global index the 404 carries; they change nothing here.
    server.put("elsewhere", "y");
    server.put("new/k", "v");
    let (_, e, _) = src.until(|e, _| !e.is_empty()).await;
    assert_eq!(value(&e, "new/k"), Some(&b"v"[..]));
    src.stop().await;
}

#[tokio::test]
async fn snapshot_restore_resyncs_and_drops_keys_written_after_it() {
    let server = ConsulServer::start().await.unwrap();
    server.put("cfg/a", "1");
    server.put("cfg/b", "1");
    let before = server.snapshot();
    server.put("cfg/a", "2");
    server.put("cfg/c", "new");
    server.delete("cfg/b");
    let mut src = Running::start(config(server.url()), &["cfg/"]);
    let (v, e, _) = src.next().await;
    assert_eq!(e.keys().map(String::as_str).collect::<Vec<_>>(), ["cfg/a", "cfg/c"]);

    // The restore takes the index below the one the client blocks on: Consul holds the wait, then
    // answers with the lower index; the client must start over and resync.
    server.restore(before);
    let (v2, e, resync) = src.until(|_, resync| resync).await;
    assert!(v2 < v, "the version went back ({v2} < {v}) through a resync");
    assert_eq!(e.keys().map(String::as_str).collect::<Vec<_>>(), ["cfg/a", "cfg/b"], "cfg/c is gone, cfg/b is back");
    assert_eq!(value(&e, "cfg/a"), Some(&b"1"[..]));
    assert!(resync);
    assert!(src.stats.resyncs.load(Ordering::Relaxed) >= 1);

    // And it keeps watching from the new index.
    server.put("cfg/a", "3");
    src.until(|e, _| value(e, "cfg/a") == Some(b"3")).await;
    src.stop().await;
}

#[tokio::test]
async fn renumbered_indexes_resync_with_the_same_content() {
    let server = ConsulServer::start().await.unwrap();
    for i in 0..5 {
        server.put(&format!("r/{i}"), "v");
    }
    let mut src = Running::start(config(server.url()), &["r/"]);
    let (_, first, _) = src.next().await;
    server.force_index_reset();
    let (_, e, resync) = src.next().await;
    assert!(resync, "a lower index is delivered as a resync");
    assert_eq!(e, first);
    src.stop().await;
}

#[tokio::test]
async fn tombstone_reap_lowers_the_index_and_resyncs() {
    let server = ConsulServer::start().await.unwrap();
    server.put("t/keep", "1");
    server.put("t/gone", "1");
    let mut src = Running::start(config(server.url()), &["t/"]);
    src.next().await;
    server.delete("t/gone");
    src.until(|e, _| !e.contains_key("t/gone")).await;
    let before = server.prefix_index("t/");
    server.reap_tombstones();
    assert!(server.prefix_index("t/") < before, "reaping took the prefix index back");
    let (_, e, resync) = src.next().await;
    assert!(resync);
    assert_eq!(e.keys().map(String::as_str).collect::<Vec<_>>(), ["t/keep"]);
    src.stop().await;
}

#[tokio::test]
async fn error_storm_backs_off_then_recovers_with_the_right_content() {
    let server = ConsulServer::start().await.unwrap();
    server.put("s/k", "before");
    let mut src = Running::start(config(server.url()), &["s/"]);
    src.next().await;

    let before = server.requests("/v1/kv/s/");
    server.fail_for(429, Duration::from_secs(2));
    // Break the blocking request in flight so the next ones run into the storm.
    server.reset_connections();
    server.put("s/k", "during");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = server.requests("/v1/kv/s/") - before;
    // Backoff 50 ms doubling to 400 ms: about 10 requests in 2 s. Without backoff (only the rate
    // limit) there would be about 200.
    assert!(during <= 20, "{during} requests during a 2 s storm of 429");
    assert!(src.stats.errors_status.load(Ordering::Relaxed) >= 2);
    let msg = src.last_error().unwrap();
    assert!(msg.contains("429") && msg.contains("`s/`"), "{msg}");

    src.until(|e, _| value(e, "s/k") == Some(b"during")).await;
    assert!(src.stats.is_connected());

    // Short bursts of 500 and 503 are retried too.
    server.fail_next(500, 2);
    server.reset_connections();
    server.put("s/k", "after-500");
    src.until(|e, _| value(e, "s/k") == Some(b"after-500")).await;
    server.fail_next(503, 2);
    server.reset_connections();
    server.put("s/k", "after-503");
    src.until(|e, _| value(e, "s/k") == Some(b"after-503")).await;
    src.stop().await;
}

#[tokio::test]
async fn stalled_connection_is_detected_and_the_watch_recovers() {
    let server = ConsulServer::start().await.unwrap();
    server.put("p/k", "1");
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut src = Running::start(config(proxy.url()), &["p/"]);
    src.next().await;

    proxy.set_mode(ProxyMode::Stall);
    server.put("p/k", "2"); // the answer to the blocking request is held by the proxy
                            // wait 1s + 1/16 + 2s margin: the client gives up on the stalled request and reconnects.
    eventually("the stall is reported", || {
        src.last_error().is_some_and(|m| m.contains("did not answer") && m.contains("`p/`"))
    })
    .await;
    assert!(src.stats.errors_connect.load(Ordering::Relaxed) >= 1);
    proxy.set_mode(ProxyMode::Pass);
    src.until(|e, _| value(e, "p/k") == Some(b"2")).await;
    assert!(proxy.accepted() >= 2, "a new connection was made");
    src.stop().await;
}

/// `n` keys of `len`-byte values under `prefix`.
fn fill(server: &ConsulServer, prefix: &str, n: usize, len: usize) {
    for i in 0..n {
        server.put(&format!("{prefix}k{i:03}"), format!("{i:0len$}"));
    }
}

#[tokio::test]
async fn a_slow_body_that_keeps_arriving_is_received_however_long_it_takes() {
    let server = ConsulServer::start().await.unwrap();
    fill(&server, "slow/", 40, 20);
    // The answer's head comes at once; its body in 256-byte pieces 300 ms apart: about 5 s in all,
    // longer than the head's deadline (wait 1 s + 1/16 + 2 s), never a pause near the idle timeout.
    server.set_pace(Some(Pace { chunk: 256, pause: Duration::from_millis(300) }));
    let mut cfg = config(server.url());
    cfg.idle_timeout = Duration::from_secs(2);
    let deadline = Duration::from_secs(1) + Duration::from_secs(1) / 16 + Duration::from_secs(2);
    let started = tokio::time::Instant::now();
    let mut src = Running::start(cfg, &["slow/"]);
    let (_, e, _) = tokio::time::timeout(BOUND * 3, src.next()).await.expect("the slow listing arrives");
    assert_eq!(e.len(), 40, "the whole listing");
    // What makes this test mean something: the answer took longer than the head's deadline.
    assert!(started.elapsed() > deadline, "the body took only {:?}", started.elapsed());
    assert_eq!(src.last_error(), None, "a body that keeps arriving is not a stall");
    // A blocking answer paced the same way: received too.
    server.put("slow/k000", "changed");
    let (_, e, _) = tokio::time::timeout(BOUND * 3, src.until(|e, _| value(e, "slow/k000") == Some(b"changed")))
        .await
        .expect("the slow change arrives");
    assert_eq!(e.len(), 40);
    assert_eq!(src.last_error(), None);
    assert_eq!(src.stats.reconnects.load(Ordering::Relaxed), 0, "one connection all along");
    src.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_part_way_is_a_stall_with_its_bytes_and_is_retried() {
    for framing in [Framing::Chunked, Framing::ContentLength] {
        // A server each: a blocking request left over from the first round must not take the fault.
        let server = ConsulServer::start().await.unwrap();
        fill(&server, "stop/", 40, 20);
        server.set_framing(framing);
        server.stop_body_next(1, 1000);
        let mut cfg = config(server.url());
        cfg.idle_timeout = Duration::from_millis(800);
        let mut src = Running::start(cfg, &["stop/"]);
        eventually("the stall is reported", || src.last_error().is_some()).await;
        let msg = src.last_error().unwrap();
        assert!(
            msg.contains("stopped arriving part-way") && msg.contains("1000 bytes") && msg.contains("`stop/`"),
            "{framing:?}: {msg}"
        );
        assert!(!msg.contains("did not answer"), "{framing:?}: the head did arrive: {msg}");
        // Retried (with backoff) on a new connection: the whole listing, never the 1000 bytes.
        let (_, e, _) = src.next().await;
        assert_eq!(e.len(), 40, "{framing:?}");
        assert!(server.requests("/v1/kv/stop/") >= 2);
        assert!(src.stats.reconnects.load(Ordering::Relaxed) >= 1, "{framing:?}: a new connection");
        assert!(src.stats.errors_connect.load(Ordering::Relaxed) >= 1);
        src.stop().await;
    }
}

#[tokio::test]
async fn a_body_cut_in_the_middle_is_an_error_never_a_short_listing() {
    for framing in [Framing::Chunked, Framing::ContentLength] {
        let server = ConsulServer::start().await.unwrap();
        fill(&server, "cut/", 60, 20);
        server.set_framing(framing);
        server.truncate_next(1);
        let mut src = Running::start(config(server.url()), &["cut/"]);
        // The first listing delivered is the whole one: the cut answer delivered nothing.
        let (_, e, _) = src.next().await;
        assert_eq!(e.len(), 60, "{framing:?}");
        let msg = src.last_error().expect("the cut answer is reported");
        assert!(msg.contains("broke off after") && msg.contains("`cut/`"), "{framing:?}: {msg}");
        src.stop().await;
    }
}

#[tokio::test]
async fn listings_and_limits_are_the_same_with_content_length_and_chunked() {
    let server = ConsulServer::start().await.unwrap();
    fill(&server, "fr/", 50, 30);
    let mut listings = Vec::new();
    for framing in [Framing::ContentLength, Framing::Chunked] {
        server.set_framing(framing);
        let mut src = Running::start(config(server.url()), &["fr/"]);
        let (_, e, _) = src.next().await;
        listings.push(e);
        src.stop().await;

        let mut cfg = config(server.url());
        cfg.max_keys = 49;
        let src = Running::start(cfg, &["fr/"]);
        eventually("max_keys", || src.last_error().is_some()).await;
        let msg = src.last_error().unwrap();
        assert!(msg.contains("50 keys, over the limit of 49 keys (max_keys)"), "{framing:?}: {msg}");
        let mut src = src;
        assert!(src.rx.try_recv().is_none(), "{framing:?}: nothing delivered over max_keys");
        src.stop().await;

        let mut cfg = config(server.url());
        cfg.max_value_bytes = 29;
        let mut src = Running::start(cfg, &["fr/"]);
        eventually("max_value_bytes", || src.last_error().is_some()).await;
        let msg = src.last_error().unwrap();
        assert!(msg.contains("`fr/k000`") && msg.contains("30 bytes") && msg.contains("29-byte"), "{framing:?}: {msg}");
        assert!(src.rx.try_recv().is_none(), "{framing:?}: nothing delivered over max_value_bytes");
        src.stop().await;
    }
    assert_eq!(listings[0].len(), 50);
    assert_eq!(listings[0], listings[1], "the same listing in either framing");
}

#[tokio::test]
async fn dropped_connections_are_retried_until_the_path_heals() {
    let server = ConsulServer::start().await.unwrap();
    server.put("d/k", "v");
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Drop);
    let mut src = Running::start(config(proxy.url()), &["d/"]);
    eventually("several refused attempts", || proxy.accepted() >= 2).await;
    let msg = src.last_error().expect("the failure is reported");
    assert!(msg.contains(&proxy.url()) && msg.contains("`d/`"), "{msg}");
    assert!(src.rx.try_recv().is_none(), "nothing delivered while nothing was read");
    proxy.set_mode(ProxyMode::Pass);
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "d/k"), Some(&b"v"[..]));
    src.stop().await;
}

#[tokio::test]
async fn connection_reset_mid_body_is_retried() {
    let server = ConsulServer::start().await.unwrap();
    server.put("m/k", "1");
    let mut src = Running::start(config(server.url()), &["m/"]);
    src.next().await;
    server.truncate_next(1);
    server.put("m/k", "2".repeat(5000));
    let (_, e, _) = src.until(|e, _| value(e, "m/k").is_some_and(|v| v.len() == 5000)).await;
    assert_eq!(e.len(), 1);
    let msg = src.last_error().expect("the broken answer is reported");
    assert!(msg.contains("broke off") || msg.contains("connection"), "{msg}");
    src.stop().await;
}

#[tokio::test]
async fn proxy_reset_of_live_connections_reconnects() {
    let server = ConsulServer::start().await.unwrap();
    server.put("x/k", "1");
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut src = Running::start(config(proxy.url()), &["x/"]);
    src.next().await;
    eventually("the blocking request is in flight", || proxy.live() == 1).await;
    proxy.reset_all();
    server.put("x/k", "2");
    src.until(|e, _| value(e, "x/k") == Some(b"2")).await;
    assert!(src.stats.reconnects.load(Ordering::Relaxed) >= 1);
    src.stop().await;
}

#[tokio::test]
async fn forbidden_is_reported_clearly_then_recovers_when_the_token_file_is_fixed() {
    let server = ConsulServer::start().await.unwrap();
    server.put("sec/k", "1");
    server.set_token("good-secret-token", &[("sec/", Access::Read)]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "good-secret-token\n").unwrap();
    let mut cfg = config(server.url());
    cfg.token_file = Some(token_file.clone());
    let mut src = Running::start(cfg, &["sec/"]);
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "sec/k"), Some(&b"1"[..]));

    // The token file is rewritten with a token Consul does not know: 403 "ACL not found".
    std::fs::write(&token_file, "unknown-secret-token").unwrap();
    server.put("sec/k", "2"); // wakes the request in flight; the next one carries the new token
    eventually("the refusal is reported", || src.last_error().is_some_and(|m| m.contains("403"))).await;
    let msg = src.last_error().unwrap();
    assert!(msg.contains("`sec/`"), "names the prefix: {msg}");
    assert!(msg.contains(&token_file.display().to_string()), "names the token file: {msg}");
    assert!(!msg.contains("secret-token"), "never shows a token: {msg}");
    // Slow retries only: with retry.max = 400ms, a handful of requests in a second.
    let before = server.requests("/v1/kv/sec/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = server.requests("/v1/kv/sec/") - before;
    assert!(during <= 5, "{during} requests in 1 s while refused");
    // Whatever was delivered so far never lost the key (the last good content stays).
    while let Some(u) = src.rx.try_recv() {
        if let Change::Full { entries, .. } = u.change {
            assert!(entries.contains_key("sec/k"), "a refused read is not an empty prefix");
        }
    }

    std::fs::write(&token_file, "good-secret-token").unwrap();
    server.put("sec/k", "3");
    src.until(|e, _| value(e, "sec/k") == Some(b"3")).await;
    src.stop().await;
}

/// A token that may read none of the keys under the prefix gets Consul's 404 for a fully filtered
/// listing: that is reported and retried, never delivered as an empty prefix (which would empty the
/// outputs), in both modes.
#[tokio::test]
async fn a_prefix_hidden_by_acls_is_not_an_empty_prefix() {
    for mode in [Mode::Watch, Mode::Poll { interval: Duration::from_millis(100) }] {
        let server = ConsulServer::start().await.unwrap();
        server.put("sec/k", "1");
        server.enable_acl();
        server.set_token("reader-token", &[("sec/", Access::Read)]);
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "reader-token").unwrap();
        let mut cfg = config(server.url());
        cfg.token_file = Some(token_file.clone());
        cfg.mode = mode;
        let mut src = Running::start(cfg, &["sec/"]);
        let (_, e, _) = src.next().await;
        assert_eq!(value(&e, "sec/k"), Some(&b"1"[..]));

        // The token now reads another prefix only: every key under sec/ is filtered out.
        server.set_token("reader-token", &[("other/", Access::Read)]);
        server.put("sec/k", "2");
        eventually("the hidden prefix is reported", || {
            src.last_error().is_some_and(|m| m.contains("hides every key under prefix `sec/`"))
        })
        .await;
        let msg = src.last_error().unwrap();
        assert!(msg.contains(&token_file.display().to_string()) && !msg.contains("reader-token"), "{msg}");
        while let Some(u) = src.rx.try_recv() {
            if let Change::Full { entries, .. } = u.change {
                assert!(!entries.is_empty(), "a filtered listing must not be delivered as an empty prefix ({mode:?})");
            }
        }
        // Rights come back: the prefix is delivered again.
        server.set_token("reader-token", &[("sec/", Access::Read)]);
        server.put("sec/k", "3");
        src.until(|e, _| value(e, "sec/k") == Some(b"3")).await;
        src.stop().await;
    }
}

/// TLS configuration for the test PKI; `client_cert` adds the client certificate.
fn tls_files(pki: &TestPki, client_cert: bool) -> TlsFiles {
    TlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        cert_file: client_cert.then(|| pki.client_cert_file.clone()),
        key_file: client_cert.then(|| pki.client_key_file.clone()),
        server_name: Some("localhost".into()),
    }
}

#[tokio::test]
async fn tls_with_a_test_ca_and_a_client_certificate() {
    let pki = TestPki::generate().unwrap();
    let server = ConsulServer::start_tls(pki.server_config(true).unwrap()).await.unwrap();
    server.put("tls/k", "secure");
    let mut cfg = config(server.url());
    assert!(server.url().starts_with("https://127.0.0.1:"));
    cfg.tls = Some(tls_files(&pki, true));
    let mut src = Running::start(cfg, &["tls/"]);
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "tls/k"), Some(&b"secure"[..]));
    server.put("tls/k", "still secure");
    src.until(|e, _| value(e, "tls/k") == Some(b"still secure")).await;
    src.stop().await;

    // Without server_name the certificate is checked against the address's IP (a SAN of the test cert).
    let mut cfg = config(server.url());
    cfg.tls = Some(TlsFiles { server_name: None, ..tls_files(&pki, true) });
    let mut src = Running::start(cfg, &["tls/"]);
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "tls/k"), Some(&b"still secure"[..]));
    src.stop().await;
}

#[tokio::test]
async fn tls_without_the_client_certificate_is_reported_and_delivers_nothing() {
    let pki = TestPki::generate().unwrap();
    let server = ConsulServer::start_tls(pki.server_config(true).unwrap()).await.unwrap();
    server.put("tls/k", "secure");
    let mut cfg = config(server.url());
    cfg.tls = Some(tls_files(&pki, false));
    let mut src = Running::start(cfg, &["tls/"]);
    eventually("the failure is reported", || src.last_error().is_some()).await;
    let msg = src.last_error().unwrap();
    assert!(msg.contains(&server.url()) && msg.contains("`tls/`"), "{msg}");
    assert!(src.rx.try_recv().is_none());
    src.stop().await;

    // A server name the certificate does not carry is refused too.
    let mut cfg = config(server.url());
    cfg.tls = Some(TlsFiles { server_name: Some("consul.example".into()), ..tls_files(&pki, true) });
    let src = Running::start(cfg, &["tls/"]);
    eventually("the name mismatch is reported", || src.last_error().is_some_and(|m| m.contains("TLS"))).await;
    src.stop().await;
}

#[tokio::test]
async fn poll_mode_detects_changes_and_ignores_identical_content() {
    let server = ConsulServer::start().await.unwrap();
    server.put("poll/k", "1");
    let mut cfg = config(server.url());
    cfg.mode = Mode::Poll { interval: Duration::from_millis(100) };
    let mut src = Running::start(cfg, &["poll/"]);
    src.next().await;

    assert!(!server.put("poll/k", "1"), "an identical rewrite changes nothing");
    let before = server.requests("/v1/kv/poll/");
    eventually("several polls", || server.requests("/v1/kv/poll/") >= before + 3).await;
    assert!(src.rx.try_recv().is_none(), "identical content is not delivered");

    server.put("poll/k", "2");
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "poll/k"), Some(&b"2"[..]));
    src.stop().await;
}

#[tokio::test]
async fn fails_over_to_the_next_address() {
    // An address where nothing listens (bound, then closed).
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let server = ConsulServer::start().await.unwrap();
    server.put("f/k", "v");
    let mut cfg = config(format!("http://{dead}"));
    cfg.addresses.push(server.url());
    let mut src = Running::start(cfg, &["f/"]);
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "f/k"), Some(&b"v"[..]));
    src.stop().await;
}

#[tokio::test]
async fn a_404_that_is_not_consuls_is_an_error_not_an_empty_prefix() {
    let server = ConsulServer::start().await.unwrap();
    server.put("app/k", "v");
    // A base path the server does not serve: plain 404s without X-Consul-Index.
    let mut cfg = config(format!("{}/not-consul", server.url()));
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5), None);
    let mut src = Running::start(cfg, &["app/"]);
    eventually("the wrong answer is reported", || src.last_error().is_some()).await;
    let msg = src.last_error().unwrap();
    assert!(msg.contains("404") && msg.contains("Consul agent"), "{msg}");
    assert!(src.rx.try_recv().is_none(), "nothing is delivered, certainly not an empty prefix");
    // Retried only at the slow end of the backoff (3.75 s to 5 s here), not with fast backoff.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.requests("/not-consul/v1/kv/app/"), 1, "retried slowly");
    src.stop().await;
}

#[tokio::test]
async fn oversized_value_is_reported_and_the_last_good_content_kept() {
    let server = ConsulServer::start().await.unwrap();
    server.put("big/k", "small");
    let mut cfg = config(server.url());
    cfg.max_value_bytes = 16;
    let mut src = Running::start(cfg, &["big/"]);
    src.next().await;
    server.put("big/k", "x".repeat(100));
    eventually("the oversized value is reported", || src.last_error().is_some()).await;
    let msg = src.last_error().unwrap();
    assert!(msg.contains("`big/k`") && msg.contains("16-byte"), "{msg}");
    assert!(src.rx.try_recv().is_none(), "the listing with the oversized value is not delivered");
    server.put("big/k", "fits again");
    let (_, e, _) = src.next().await;
    assert_eq!(value(&e, "big/k"), Some(&b"fits again"[..]));
    src.stop().await;
}

#[tokio::test]
async fn several_prefixes_each_get_a_snapshot() {
    let server = ConsulServer::start().await.unwrap();
    server.put("one/k", "1");
    server.put("two/k", "2");
    let mut src = Running::start(config(server.url()), &["one/", "two/"]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let u = tokio::time::timeout(BOUND, src.rx.recv()).await.unwrap().unwrap();
        seen.push(u.prefix);
    }
    seen.sort();
    assert_eq!(seen, ["one/", "two/"]);
    src.stop().await;
}

#[tokio::test]
async fn outputs_sharing_a_prefix_make_one_upstream_loop() {
    let server = ConsulServer::start().await.unwrap();
    server.put("config/app/k", "v");
    server.put("config/db/k", "w");
    let source = ConsulSource::new(config(server.url())).unwrap();
    let mut builder = EngineBuilder::new();
    builder.add_source("main", Box::new(source), Arc::default());
    let app1 = builder.subscribe("main", "config/app/").unwrap();
    let app2 = builder.subscribe("main", "config/app/").unwrap();
    let all = builder.subscribe("main", "config/").unwrap();
    let cancel = CancellationToken::new();
    let engine = builder.start(cancel.clone());
    eventually("every subscriber has its view", || {
        app1.latest().is_some() && app2.latest().is_some() && all.latest().is_some()
    })
    .await;
    assert_eq!(app1.latest().unwrap().entries.len(), 1);
    assert_eq!(all.latest().unwrap().entries.len(), 2);
    assert_eq!(server.requests("/v1/kv/config/app/"), 0, "the narrower prefix is served by the wider watch");
    assert!(server.requests("/v1/kv/config/") >= 1);
    assert_eq!(server.live_connections(), 1, "one loop, one connection");
    cancel.cancel();
    tokio::time::timeout(BOUND, engine.wait()).await.expect("the engine stops");
}

#[tokio::test]
async fn bad_configuration_is_rejected_with_a_clear_message() {
    let err = |cfg: ConsulConfig| ConsulSource::new(cfg).err().expect("rejected").to_string();
    let mut cfg = config("127.0.0.1:8500".into());
    assert!(err(cfg.clone()).contains("http://"), "{}", err(cfg.clone()));
    cfg.addresses = vec![];
    assert!(err(cfg.clone()).contains("no address"));
    let mut cfg = config("http://127.0.0.1:8500".into());
    cfg.wait = Duration::ZERO;
    assert!(err(cfg.clone()).contains("`wait`"));
    let mut cfg = config("http://127.0.0.1:8500".into());
    cfg.token_file = Some(PathBuf::from("/nonexistent/consul-token"));
    assert!(err(cfg.clone()).contains("/nonexistent/consul-token"));
    let mut cfg = config("https://127.0.0.1:8501".into());
    cfg.tls = Some(TlsFiles { cert_file: Some("/nonexistent/c.pem".into()), ..Default::default() });
    let msg = err(cfg);
    assert!(msg.contains("cert_file") && msg.contains("key_file"), "{msg}");
    let mut cfg = config("http://127.0.0.1:8500".into());
    cfg.datacenter = Some("dc 1/..".into());
    assert!(err(cfg).contains("datacenter"));
}

#[tokio::test]
async fn gives_up_after_the_configured_attempts() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut cfg = config(format!("http://{dead}"));
    cfg.backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(10), Some(3));
    let src = Running::start(cfg, &["k/"]);
    let result = tokio::time::timeout(BOUND, src.task).await.expect("gives up within the bound").unwrap();
    let msg = result.expect_err("gave up").to_string();
    assert!(msg.contains("3 consecutive failures") && msg.contains(&dead.to_string()), "{msg}");
}
