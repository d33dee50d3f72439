//! kvsync against what Consul does that a simpler server would not: a snapshot restore that wakes
//! every blocked query with a lower index, stale reads answered by a follower that has lost touch
//! with its leader (`max_stale`), and keys locked by sessions (`LockIndex`, `Session`).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kvsync_tests::consul_server::ConsulServer;
use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// A Consul test server on its own runtime, so the test body can block.
struct Consul {
    server: ConsulServer,
    _rt: tokio::runtime::Runtime,
}

impl Consul {
    fn start() -> Consul {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let server = rt.block_on(ConsulServer::start()).unwrap();
        Consul { server, _rt: rt }
    }
}

/// A config with one Consul source (`source` is the rest of its flow mapping) and a json output of
/// `app/` at `dir/app.json`.
fn config(dir: &Path, source: &str, retry_initial: &str) -> String {
    let p = dir.join("k.yaml");
    fs::write(
        &p,
        format!(
            "sources:\n  - {{ name: c, type: consul, {source} }}\nhttp: {{ listen: \"\" }}\n\
             retry: {{ initial: {retry_initial}, max: 2s }}\noutputs:\n  \
             - {{ name: app, source: c, prefix: app/, format: json, destination: {} }}\n",
            dir.join("app.json").display()
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// A snapshot restore while kvsync's blocking query waits (wait: 60s): the query returns at once
/// with the restored, lower index, kvsync re-reads the prefix and renders the restored state within
/// retry.initial + 1 s, not after the wait.
#[test]
fn a_snapshot_restore_is_rendered_promptly() {
    let c = Consul::start();
    c.server.put("app/a", "before");
    let snap = c.server.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.json");
    let cfg = config(dir.path(), &format!("address: {}, wait: 60s", c.server.url()), "1s");
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || read(&out).contains("before"));
    c.server.put("app/a", "after");
    c.server.put("app/b", "new");
    wait::until(T, "the change", || read(&out).contains("new"));
    // kvsync's blocking query waits on the current index.
    wait::until(T, "kvsync's blocking query to wait", || c.server.blocked_queries() == 1);
    let restored_at = Instant::now();
    c.server.restore(snap);
    wait::until(T, "the restored state", || {
        let text = read(&out);
        text.contains("before") && !text.contains("new")
    });
    let took = restored_at.elapsed();
    assert!(took < Duration::from_secs(2), "the restored state took {took:?} (retry.initial 1s + 1s allowed)");
    d.wait_log("the index went backwards", T);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&read(&out)).unwrap(), serde_json::json!({ "a": "before" }));
}

/// Keys locked by a session carry `LockIndex` and `Session` in the listing; kvsync renders their
/// values only, and a lock taken or released (a new ModifyIndex, the same value) rewrites nothing.
#[test]
fn locked_keys_render_as_their_values() {
    let c = Consul::start();
    c.server.put("app/leader", "node-1");
    c.server.put("app/plain", "x");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.json");
    let cfg = config(dir.path(), &format!("address: {}, wait: 5s", c.server.url()), "50ms");
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || read(&out).contains("node-1"));
    assert!(c.server.lock("app/leader", "adf4238a-882b-9ddc-4a9d-5b6758e4159e"));
    // The lock is seen (the prefix is read again at its new index) and changes nothing on disk.
    let asked = c.server.requests("/v1/kv/app/");
    wait::until(T, "kvsync to read the locked listing", || c.server.requests("/v1/kv/app/") >= asked + 2);
    assert!(c.server.unlock("app/leader"));
    c.server.put("app/plain", "y");
    wait::until(T, "the next change", || read(&out).contains("\"y\""));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&read(&out)).unwrap(),
        serde_json::json!({ "leader": "node-1", "plain": "y" }),
        "no LockIndex or Session in the output"
    );
    let mut d = d;
    d.signal(15);
    d.wait(T);
    let log = d.log();
    assert_eq!(log.matches("rendered and written").count(), 2, "the lock and its release wrote nothing: {log}");
}

/// `stale: true` reads from a follower that lags behind the leader. Without `max_stale` kvsync takes
/// the follower's answer; with `max_stale` shorter than the follower's last contact with its leader
/// (or with a follower that knows no leader) it reads again with a consistent query, renders the
/// leader's data, and says so in the log.
#[test]
fn stale_answers_past_max_stale_are_read_again_consistently() {
    let c = Consul::start();
    c.server.put("app/v", "replicated");
    // The follower has replicated "replicated" and nothing after; it last heard from the leader 5 s ago.
    c.server.set_follower(Some((Duration::from_secs(5), true)));
    c.server.put("app/v", "leader-only");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.json");
    let once = |source: &str| {
        let cfg = config(dir.path(), &format!("address: {}, wait: 2s, {source}", c.server.url()), "50ms");
        let (status, _, err) = kvsync_tests::kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
        assert!(status.success(), "{err}");
        (read(&out), err)
    };
    // Control: plain stale reads take the follower's answer.
    let (text, err) = once("stale: true");
    assert!(text.contains("\"replicated\""), "{text}\n{err}");
    assert!(!err.contains("consistent query"), "{err}");
    // max_stale 1s: 5 s since the leader's contact is too old.
    let (text, err) = once("stale: true, max_stale: 1s");
    assert!(text.contains("\"leader-only\""), "{text}\n{err}");
    assert!(err.contains("last heard from the leader 5s ago (max_stale 1s)"), "{err}");
    assert!(err.contains("reading the prefix again with a consistent query"), "{err}");
    // max_stale 10s: 5 s is recent enough; the follower's answer stands.
    let (text, _) = once("stale: true, max_stale: 10s");
    assert!(text.contains("\"replicated\""), "{text}");
    // A follower that knows no leader is too stale whatever its last contact.
    c.server.set_follower(Some((Duration::ZERO, false)));
    let (text, err) = once("stale: true, max_stale: 10s");
    assert!(text.contains("\"leader-only\""), "{text}\n{err}");
    assert!(err.contains("knows no leader"), "{err}");
}

/// max_stale without stale is a config error naming the source and the fix.
#[test]
fn max_stale_without_stale_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "address: http://127.0.0.1:1, max_stale: 2s", "50ms");
    let (status, _, err) = kvsync_tests::kvsync::run(&["check", "--config", &cfg], T);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("max_stale limits stale reads; set `stale: true` too"), "{err}");
    assert!(err.contains("source") && err.contains("`c`"), "the message names the source: {err}");
}
