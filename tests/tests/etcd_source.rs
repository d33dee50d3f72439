//! The etcd source against a real etcd (3.4, Debian's etcd-server), through the `Source` interface.
//!
//! Every test is bounded: each wait has a timeout, and a failure names what was expected.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kvsync_tests::etcd_server::{EtcdCluster, EtcdOptions, EtcdServer};
use kvsync_tests::fault_proxy::{FaultProxy, ProxyMode};
use kvsync_watch::source::SinkReceiver;
use kvsync_watch::{
    Backoff, Change, EtcdConfig, EtcdSource, Mode, Source, SourceError, SourceStats, TlsFiles, Update, UpdateSink,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any single expected event may take.
const WAIT: Duration = Duration::from_secs(20);

/// A fault proxy in front of a member's client port: the source's view of the network.
async fn proxy_to(port: u16) -> Result<FaultProxy> {
    FaultProxy::start(([127, 0, 0, 1], port).into()).await
}

/// An outage as the source sees it: live connections reset, new ones closed at once.
fn block(proxy: &FaultProxy) {
    proxy.set_mode(ProxyMode::Drop);
    proxy.reset_all();
}

fn config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        tls: None,
        username: None,
        password_file: None,
        mode: Mode::Watch,
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1), None),
        max_value_bytes: 16 * 1024 * 1024,
    }
}

/// A running source and what it delivered, applied to a model of each prefix.
struct Running {
    rx: SinkReceiver,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), SourceError>>>,
    stats: Arc<SourceStats>,
    /// Each prefix's content as the updates so far say.
    state: BTreeMap<String, BTreeMap<String, Bytes>>,
    /// Each prefix's last version.
    versions: BTreeMap<String, u64>,
    /// Every update received, in order.
    log: Vec<Update>,
}

fn start(cfg: EtcdConfig, prefixes: &[&str], capacity: usize) -> Result<Running> {
    let source = EtcdSource::new(cfg)?;
    let (sink, rx) = UpdateSink::channel("etcd-test", capacity);
    let stats = Arc::clone(sink.stats());
    let cancel = CancellationToken::new();
    let prefixes = prefixes.iter().map(|p| p.to_string()).collect();
    let task = tokio::spawn(Box::new(source).run(prefixes, sink, cancel.clone()));
    Ok(Running {
        rx,
        cancel,
        task: Some(task),
        stats,
        state: BTreeMap::new(),
        versions: BTreeMap::new(),
        log: Vec::new(),
    })
}

impl Running {
    /// The next update (applied to the model), or an error after `within`.
    async fn next(&mut self, within: Duration) -> Result<Update> {
        let u = tokio::time::timeout(within, self.rx.recv())
            .await
            .with_context(|| format!("no update within {within:?}; last error: {:?}", self.last_error()))?
            .context("the source stopped")?;
        self.apply(&u)?;
        self.log.push(u.clone());
        Ok(u)
    }

    fn apply(&mut self, u: &Update) -> Result<()> {
        let last = self.versions.get(&u.prefix).copied().unwrap_or(0);
        let resync = matches!(u.change, Change::Full { resync: true, .. });
        if u.version < last && !resync {
            bail!("version of {} went backwards without a resync: {} -> {}", u.prefix, last, u.version);
        }
        self.versions.insert(u.prefix.clone(), u.version);
        let entries = self.state.entry(u.prefix.clone()).or_default();
        match &u.change {
            Change::Full { entries: e, .. } => *entries = e.clone(),
            Change::Delta(d) => {
                for (k, v) in d {
                    match v {
                        Some(v) => entries.insert(k.clone(), v.clone()),
                        None => entries.remove(k),
                    };
                }
            }
        }
        Ok(())
    }

    /// Reads updates until `prefix`'s content satisfies `pred`.
    async fn until(&mut self, prefix: &str, what: &str, pred: impl Fn(&BTreeMap<String, Bytes>) -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.state.get(prefix).is_some_and(&pred) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{prefix}: {what} not seen within {WAIT:?}; have {:?}",
                    self.state.get(prefix).map(|m| m.keys().collect::<Vec<_>>())
                );
            }
            self.next(left).await.with_context(|| format!("waiting for {prefix}: {what}"))?;
        }
    }

    async fn until_value(&mut self, prefix: &str, key: &str, value: &str) -> Result<()> {
        self.until(prefix, &format!("{key}={value}"), |m| m.get(key).is_some_and(|v| v == value.as_bytes())).await
    }

    /// Asserts nothing arrives for `quiet`.
    async fn quiet(&mut self, quiet: Duration) -> Result<()> {
        if let Ok(Some(u)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            bail!("unexpected update: {u:?}");
        }
        Ok(())
    }

    fn last_error(&self) -> Option<String> {
        self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, m)| m.clone())
    }

    async fn wait_error(&self, containing: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.last_error().filter(|e| e.contains(containing)) {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("no error containing {containing:?} within {WAIT:?}; last error: {:?}", self.last_error());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(5), t).await.context("source did not stop")??;
            result?;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn full(u: &Update) -> Option<(&BTreeMap<String, Bytes>, bool)> {
    match &u.change {
        Change::Full { entries, resync } => Some((entries, *resync)),
        Change::Delta(_) => None,
    }
}

#[tokio::test]
async fn propagates_puts_and_deletes() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("app/a", "1").await?;
    c.put("other/x", "no").await?;
    let mut s = start(config(vec![etcd.endpoint()]), &["app/"], 64)?;
    let first = s.next(WAIT).await?;
    let (entries, resync) = full(&first).context("first update must be a Full")?;
    assert!(!resync);
    assert_eq!(entries.keys().collect::<Vec<_>>(), vec!["app/a"]);
    c.put("app/b", "2").await?;
    s.until_value("app/", "app/b", "2").await?;
    let rev = c.delete("app/a").await?;
    s.until("app/", "app/a deleted", |m| !m.contains_key("app/a")).await?;
    assert_eq!(s.versions["app/"], rev as u64, "version is the revision of the last event");
    s.stop().await
}

#[tokio::test]
async fn empty_prefix_gets_an_empty_snapshot_and_the_empty_string_watches_everything() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    let mut s = start(config(vec![etcd.endpoint()]), &["nothing/", ""], 64)?;
    let mut fulls = 0;
    while fulls < 2 {
        let u = s.next(WAIT).await?;
        let (e, _) = full(&u).context("Full first")?;
        assert!(e.is_empty());
        fulls += 1;
    }
    c.put("anything", "v").await?;
    s.until_value("", "anything", "v").await?;
    s.stop().await
}

/// The source lists prefix `a/` (revision R) and then blocks delivering `b/`'s snapshot (the channel
/// holds one update); a write to `a/` made then lies between R and the watch's creation, and must be
/// delivered exactly once.
#[tokio::test]
async fn write_between_snapshot_and_watch_is_seen_exactly_once() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("a/k", "before").await?;
    let mut s = start(config(vec![etcd.endpoint()]), &["a/", "b/"], 1)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rev = c.put("a/k", "between").await?;
    let first = s.next(WAIT).await?;
    assert_eq!(first.prefix, "a/");
    assert!(
        first.version < rev as u64,
        "the snapshot of a/ must predate the write (it was taken at {})",
        first.version
    );
    assert_eq!(s.state["a/"]["a/k"], "before");
    s.until_value("a/", "a/k", "between").await?;
    s.quiet(Duration::from_millis(700)).await?;
    let deltas_with_k =
        s.log.iter().filter(|u| matches!(&u.change, Change::Delta(d) if d.iter().any(|(k, _)| k == "a/k"))).count();
    assert_eq!(deltas_with_k, 1, "the write must be delivered once: {:?}", s.log);
    s.stop().await
}

#[tokio::test]
async fn resumes_after_etcd_restart_without_relisting() -> Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("r/a", "1").await?;
    let mut s = start(config(vec![etcd.endpoint()]), &["r/"], 64)?;
    s.until_value("r/", "r/a", "1").await?;
    etcd.kill().await;
    s.wait_error("127.0.0.1").await?;
    // An outage several times longer than the backoff maximum (1 s)...
    tokio::time::sleep(Duration::from_secs(4)).await;
    etcd.restart().await?;
    let back = Instant::now();
    let c = etcd.client().await?;
    c.put("r/a", "2").await?;
    s.until_value("r/", "r/a", "2").await?;
    // ...is over for the source within about that maximum once the server is back.
    assert!(back.elapsed() < Duration::from_millis(2500), "took {:?} after the server came back", back.elapsed());
    let fulls = s.log.iter().filter(|u| full(u).is_some()).count();
    assert_eq!(fulls, 1, "a restart without compaction must resume, not re-list: {:?}", s.log);
    assert!(s.stats.reconnects.load(Ordering::Relaxed) >= 1);
    s.stop().await
}

/// While the source is cut off, keys are deleted and added and history is compacted past its resume
/// point: it must re-list (resync) and end with exactly the server's content.
#[tokio::test]
async fn compaction_while_disconnected_relists_and_reconciles_deletes() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let proxy = proxy_to(etcd.client_port).await?;
    let c = etcd.client().await?;
    c.put("x/a", "1").await?;
    c.put("x/b", "1").await?;
    let mut s = start(config(vec![proxy.url()]), &["x/"], 64)?;
    s.until("x/", "x/a and x/b", |m| m.len() == 2).await?;
    block(&proxy);
    c.delete("x/a").await?;
    c.put("x/b", "2").await?;
    c.put("x/c", "3").await?;
    let rev = c.put("y/unrelated", "z").await?;
    c.compact(rev).await?;
    proxy.set_mode(ProxyMode::Pass);
    s.until("x/", "x/a gone, x/b=2, x/c=3", |m| {
        m.len() == 2 && m.get("x/b").is_some_and(|v| v == "2") && m.get("x/c").is_some_and(|v| v == "3")
    })
    .await?;
    assert!(s.log.iter().any(|u| full(u).is_some_and(|(_, resync)| resync)), "a resync Full is expected");
    assert_eq!(s.stats.resyncs.load(Ordering::Relaxed), 1);
    // And the watch goes on after the re-list.
    c.put("x/d", "4").await?;
    s.until_value("x/", "x/d", "4").await?;
    s.stop().await
}

/// A catch-up of 3000 revisions (etcd sends at most 1000 per response, with header.revision at the
/// current revision) is cut after its first response: the resumed watch must continue from the last
/// delivered event, with no gap and no duplicate.
#[tokio::test]
async fn catch_up_over_1000_revisions_cut_halfway_has_no_gap_or_duplicate() -> Result<()> {
    const N: usize = 3000;
    let etcd = EtcdServer::start().await?;
    let proxy = proxy_to(etcd.client_port).await?;
    let c = etcd.client().await?;
    // Capacity 1: the source cannot run ahead of the test.
    let mut s = start(config(vec![proxy.url()]), &["c/"], 1)?;
    s.next(WAIT).await?;
    // Let the watcher be created before cutting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    block(&proxy);
    for i in 1..=N {
        c.put(&format!("c/{}", i % 7), i.to_string()).await?;
    }
    proxy.set_mode(ProxyMode::Pass);
    let mut seen: Vec<usize> = Vec::new();
    let mut cut = false;
    let mut before_cut = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last() != Some(&N) {
        if Instant::now() > deadline {
            bail!("catch-up incomplete: {} values seen", seen.len());
        }
        let u = s.next(WAIT).await?;
        match &u.change {
            Change::Delta(d) => {
                for (_, v) in d {
                    let v = v.as_ref().context("no deletes were written")?;
                    seen.push(std::str::from_utf8(v)?.parse()?);
                }
            }
            Change::Full { .. } => bail!("unexpected re-list during catch-up"),
        }
        if !cut {
            cut = true;
            assert!(seen.len() < N, "the first response must not hold the whole catch-up");
            before_cut = proxy.accepted();
            proxy.reset_all();
        }
    }
    let expected: Vec<usize> = (1..=N).collect();
    assert_eq!(seen.len(), N, "every revision exactly once");
    assert_eq!(seen, expected);
    assert!(proxy.accepted() > before_cut, "the stream must have been cut and resumed on a new connection");
    s.stop().await
}

#[tokio::test]
async fn prefix_delete_is_one_revision_with_many_events() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    for i in 0..50 {
        c.put(&format!("m/{i:02}"), "v").await?;
    }
    let mut s = start(config(vec![etcd.endpoint()]), &["m/"], 64)?;
    s.until("m/", "50 keys", |m| m.len() == 50).await?;
    let (rev, deleted) = c.delete_prefix("m/").await?;
    assert_eq!(deleted, 50);
    let u = s.next(WAIT).await?;
    match &u.change {
        Change::Delta(d) => {
            assert_eq!(d.len(), 50, "one update for the whole revision");
            assert!(d.iter().all(|(_, v)| v.is_none()));
        }
        other => bail!("expected a delta, got {other:?}"),
    }
    assert_eq!(u.version, rev as u64);
    assert!(s.state["m/"].is_empty());
    s.stop().await
}

/// Values just under etcd's request limit (1.5 MiB), four of them: a prefix whose Range is over
/// 4 MiB (tonic's default decode limit) and a catch-up over 4 MiB after a break.
#[tokio::test]
async fn large_values_and_ranges_over_4mib() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let proxy = proxy_to(etcd.client_port).await?;
    let c = etcd.client().await?;
    let big = |i: u8| Bytes::from(vec![b'a' + i; 1_400_000]);
    for i in 0..4 {
        c.put(&format!("big/{i}"), big(i)).await?;
    }
    let mut s = start(config(vec![proxy.url()]), &["big/"], 64)?;
    let first = s.next(WAIT).await?;
    let (entries, _) = full(&first).context("Full first")?;
    assert_eq!(entries.len(), 4);
    assert!(entries.values().map(Bytes::len).sum::<usize>() > 4 * 1024 * 1024);
    tokio::time::sleep(Duration::from_millis(300)).await;
    block(&proxy);
    for i in 0..4 {
        c.put(&format!("big/{i}"), big(i + 10)).await?;
    }
    proxy.set_mode(ProxyMode::Pass);
    let before = s.log.len();
    s.until("big/", "the four new values", |m| (0..4).all(|i| m.get(&format!("big/{i}")) == Some(&big(i + 10))))
        .await?;
    // The catch-up is one response of ~5.6 MiB, which etcd splits into fragments (over its request
    // limit + 512 KiB); they are put back together into one delta.
    let deltas: Vec<usize> = s.log[before..]
        .iter()
        .filter_map(|u| match &u.change {
            Change::Delta(d) => Some(d.len()),
            Change::Full { .. } => None,
        })
        .collect();
    assert_eq!(deltas, vec![4], "one reassembled delta");
    s.stop().await
}

#[tokio::test]
async fn value_over_max_value_bytes_is_left_out_and_reported() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("l/small", "ok").await?;
    c.put("l/huge", vec![b'x'; 2000]).await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.max_value_bytes = 1000;
    let mut s = start(cfg, &["l/"], 64)?;
    s.until("l/", "l/small only", |m| m.len() == 1 && m.contains_key("l/small")).await?;
    let e = s.wait_error("l/huge").await?;
    assert!(e.contains("2000 bytes") && e.contains("max_value_bytes"), "{e}");
    s.stop().await
}

fn password_file(dir: &std::path::Path, password: &str) -> Result<PathBuf> {
    let p = dir.join("password");
    std::fs::write(&p, format!("{password}\n"))?;
    Ok(p)
}

/// Tokens live 2 s; a watch running far longer keeps delivering, and after the connection breaks
/// the source authenticates again (the old token is long expired) and resumes.
#[tokio::test]
async fn auth_with_short_token_ttl_over_a_long_watch() -> Result<()> {
    let mut etcd = EtcdServer::start_with(EtcdOptions { auth_token_ttl: Some(2), ..Default::default() }).await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["a/"]).await?;
    let proxy = proxy_to(etcd.client_port).await?;
    let c = etcd.client().await?;
    c.put("a/k", "1").await?;
    let mut cfg = config(vec![proxy.url()]);
    cfg.username = Some("reader".into());
    cfg.password_file = Some(password_file(etcd.scratch_dir(), "readerpw")?);
    let mut s = start(cfg, &["a/"], 64)?;
    s.until_value("a/", "a/k", "1").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The test client's token has expired too: a fresh one.
    let c = etcd.client().await?;
    c.put("a/k", "2").await?;
    s.until_value("a/", "a/k", "2").await?;
    proxy.reset_all();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = etcd.client().await?;
    c.put("a/k", "3").await?;
    s.until_value("a/", "a/k", "3").await?;
    assert!(proxy.accepted() >= 2);
    s.stop().await
}

/// Poll mode with an interval longer than the token TTL: each round finds its token expired,
/// authenticates again in place and retries the Range, on the same connection.
#[tokio::test]
async fn poll_mode_reauthenticates_in_place_when_the_token_expired() -> Result<()> {
    let mut etcd = EtcdServer::start_with(EtcdOptions { auth_token_ttl: Some(1), ..Default::default() }).await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["a/"]).await?;
    let proxy = proxy_to(etcd.client_port).await?;
    etcd.client().await?.put("a/k", "1").await?;
    let mut cfg = config(vec![proxy.url()]);
    cfg.mode = Mode::Poll { interval: Duration::from_millis(1800) };
    cfg.username = Some("reader".into());
    cfg.password_file = Some(password_file(etcd.scratch_dir(), "readerpw")?);
    let mut s = start(cfg, &["a/"], 64)?;
    s.until_value("a/", "a/k", "1").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    etcd.client().await?.put("a/k", "2").await?;
    s.until_value("a/", "a/k", "2").await?;
    assert_eq!(proxy.accepted(), 1, "re-authentication does not reconnect");
    assert_eq!(s.stats.errors_status.load(Ordering::Relaxed), 0, "an expired token is not an error to report");
    s.stop().await
}

#[tokio::test]
async fn wrong_password_is_reported_clearly() -> Result<()> {
    let mut etcd = EtcdServer::start().await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["a/"]).await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.username = Some("reader".into());
    cfg.password_file = Some(password_file(etcd.scratch_dir(), "wrong")?);
    let mut s = start(cfg, &["a/"], 64)?;
    let e = s.wait_error("authentication failed").await?;
    assert!(e.contains("password_file"), "the message says what to check: {e}");
    s.quiet(Duration::from_millis(500)).await?;
    s.stop().await
}

/// The user may read `allowed/` only: `secret/` is reported as permission denied (and not retried
/// before the backoff maximum), while `allowed/` works normally.
#[tokio::test]
async fn permission_denied_is_reported_and_other_prefixes_go_on() -> Result<()> {
    let mut etcd = EtcdServer::start().await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["allowed/"]).await?;
    let c = etcd.client().await?;
    c.put("allowed/k", "1").await?;
    c.put("secret/k", "s").await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.username = Some("reader".into());
    cfg.password_file = Some(password_file(etcd.scratch_dir(), "readerpw")?);
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(30), None);
    let mut s = start(cfg, &["allowed/", "secret/"], 64)?;
    s.until_value("allowed/", "allowed/k", "1").await?;
    let e = s.wait_error("permission denied").await?;
    assert!(e.contains("secret/") && e.contains("grant"), "names the prefix and the fix: {e}");
    let errors = s.stats.errors_status.load(Ordering::Relaxed);
    c.put("allowed/k", "2").await?;
    s.until_value("allowed/", "allowed/k", "2").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.stats.errors_status.load(Ordering::Relaxed), errors, "permission denied is not hammered");
    assert!(!s.state.contains_key("secret/"));
    s.stop().await
}

/// Permission on `secret/` is granted while the source waits (at the backoff maximum) to try it
/// again; by then its token has expired: the Range re-authenticates, and the watch create, refused on
/// the old stream for its expired token, is retried on a new stream with the fresh one.
#[tokio::test]
async fn permission_granted_later_is_picked_up_with_a_fresh_token() -> Result<()> {
    let mut etcd = EtcdServer::start_with(EtcdOptions { auth_token_ttl: Some(1), ..Default::default() }).await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["allowed/"]).await?;
    let c = etcd.client().await?;
    c.put("secret/k", "s").await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.username = Some("reader".into());
    cfg.password_file = Some(password_file(etcd.scratch_dir(), "readerpw")?);
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(3), None);
    let mut s = start(cfg, &["allowed/", "secret/"], 64)?;
    s.next(WAIT).await?;
    s.wait_error("permission denied").await?;
    etcd.etcdctl(&["role", "grant-permission", "user-role", "--prefix=true", "read", "secret/"]).await?;
    s.until_value("secret/", "secret/k", "s").await?;
    let c = etcd.client().await?;
    c.put("secret/k", "t").await?;
    s.until_value("secret/", "secret/k", "t").await?;
    c.put("allowed/k", "a").await?;
    s.until_value("allowed/", "allowed/k", "a").await?;
    assert_eq!(s.stats.reconnects.load(Ordering::Relaxed), 1, "one new stream, for the fresh token");
    s.stop().await
}

#[tokio::test]
async fn tls_with_custom_ca() -> Result<()> {
    let etcd = EtcdServer::start_with(EtcdOptions { tls: true, ..Default::default() }).await?;
    let certs = etcd.certs().context("certs")?;
    let c = etcd.client().await?;
    c.put("t/k", "1").await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.tls = Some(TlsFiles { ca_file: Some(certs.ca.clone()), ..Default::default() });
    let mut s = start(cfg, &["t/"], 64)?;
    s.until_value("t/", "t/k", "1").await?;
    c.put("t/k", "2").await?;
    s.until_value("t/", "t/k", "2").await?;
    s.stop().await?;

    // Without the CA, the server is not trusted: a clear connect error, no data.
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.tls = Some(TlsFiles::default());
    let mut s = start(cfg, &["t/"], 64)?;
    let e = s.wait_error("cannot connect").await?;
    assert!(e.contains("CA"), "{e}");
    s.quiet(Duration::from_millis(300)).await?;
    s.stop().await
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() -> Result<()> {
    let etcd = EtcdServer::start_with(EtcdOptions { client_cert_auth: true, ..Default::default() }).await?;
    let certs = etcd.certs().context("certs")?;
    let c = etcd.client().await?;
    c.put("t/k", "1").await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.tls = Some(TlsFiles {
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(certs.client_cert.clone()),
        key_file: Some(certs.client_key.clone()),
        server_name: Some("localhost".into()),
    });
    let mut s = start(cfg, &["t/"], 64)?;
    s.until_value("t/", "t/k", "1").await?;
    s.stop().await?;

    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.tls = Some(TlsFiles { ca_file: Some(certs.ca.clone()), ..Default::default() });
    let mut s = start(cfg, &["t/"], 64)?;
    s.wait_error("etcd at").await?;
    s.quiet(Duration::from_millis(500)).await?;
    s.stop().await
}

/// With `--client-cert-auth` and auth enabled, the client certificate's CN is the user: a source
/// with a certificate for `reader` and no password reads what `reader` may read, and nothing else.
#[tokio::test]
async fn client_certificate_common_name_is_the_user() -> Result<()> {
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        client_cert_auth: true,
        client_cn: Some("reader".into()),
        ..Default::default()
    })
    .await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["allowed/"]).await?;
    let c = etcd.client().await?;
    c.put("allowed/k", "1").await?;
    c.put("secret/k", "s").await?;
    let certs = etcd.certs().context("certs")?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.tls = Some(TlsFiles {
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(certs.client_cert.clone()),
        key_file: Some(certs.client_key.clone()),
        server_name: None,
    });
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(30), None);
    let mut s = start(cfg, &["allowed/", "secret/"], 64)?;
    s.until_value("allowed/", "allowed/k", "1").await?;
    let e = s.wait_error("permission denied").await?;
    assert!(e.contains("secret/"), "{e}");
    assert!(!s.state.contains_key("secret/"));
    s.stop().await
}

#[tokio::test]
async fn three_prefixes_share_one_connection_and_one_stream() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let proxy = proxy_to(etcd.client_port).await?;
    let c = etcd.client().await?;
    let mut s = start(config(vec![proxy.url()]), &["p1/", "p2/", "p3/"], 64)?;
    for _ in 0..3 {
        s.next(WAIT).await?;
    }
    for p in ["p1/", "p2/", "p3/"] {
        c.put(&format!("{p}k"), p).await?;
    }
    for p in ["p1/", "p2/", "p3/"] {
        s.until_value(p, &format!("{p}k"), p).await?;
    }
    assert_eq!(proxy.accepted(), 1, "one TCP connection for the whole source");
    assert_eq!(proxy.live(), 1);
    s.stop().await
}

#[tokio::test]
async fn poll_mode_reports_changes_only() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("q/k", "1").await?;
    let mut cfg = config(vec![etcd.endpoint()]);
    cfg.mode = Mode::Poll { interval: Duration::from_millis(200) };
    let mut s = start(cfg, &["q/"], 64)?;
    s.until_value("q/", "q/k", "1").await?;
    // Writes elsewhere move the revision but not this prefix's content: no update.
    c.put("elsewhere", "x").await?;
    s.quiet(Duration::from_millis(800)).await?;
    c.put("q/k", "2").await?;
    s.until_value("q/", "q/k", "2").await?;
    c.delete("q/k").await?;
    s.until("q/", "q/k deleted", |m| m.is_empty()).await?;
    assert!(s.log.iter().all(|u| full(u).is_some()), "poll mode delivers whole snapshots");
    s.stop().await
}

/// The first endpoint refuses connections: both modes move on to the next one.
#[tokio::test]
async fn dead_first_endpoint_fails_over_in_both_modes() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("d/k", "1").await?;
    let dead = format!("http://127.0.0.1:{}", kvsync_tests::etcd_server::free_port()?);
    for mode in [Mode::Watch, Mode::Poll { interval: Duration::from_millis(100) }] {
        let mut cfg = config(vec![dead.clone(), etcd.endpoint()]);
        cfg.mode = mode;
        let mut s = start(cfg, &["d/"], 64)?;
        s.until_value("d/", "d/k", "1").await?;
        let e = s.last_error().context("the dead endpoint is reported")?;
        assert!(e.contains(&dead) && e.contains("cannot connect"), "{e}");
        s.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn config_errors_are_clear() {
    let mut cfg = config(vec![]);
    let e = EtcdSource::new(cfg.clone()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("endpoints"), "{e}");
    cfg.endpoints = vec!["ftp://x".into()];
    let e = EtcdSource::new(cfg.clone()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("http:// or https://"), "{e}");
    cfg.endpoints = vec!["http://127.0.0.1:2379".into()];
    cfg.username = Some("u".into());
    let e = EtcdSource::new(cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("password_file"), "{e}");
}

/// Which member (by proxy) the source is connected to now.
fn connected(proxies: &[FaultProxy]) -> Option<usize> {
    proxies.iter().position(|p| p.live() > 0)
}

/// A three-member cluster, the source given all three (through proxies, to see where it is connected):
/// kill the member it talks to, then the leader; it fails over and misses nothing. Then stop two
/// members so the one it talks to has no leader: with `hasleader` the stream ends instead of stalling.
#[tokio::test]
async fn cluster_failover_and_leader_loss() -> Result<()> {
    let mut cluster = EtcdCluster::start(3).await?;
    let mut proxies = Vec::new();
    for m in &cluster.members {
        proxies.push(proxy_to(m.client_port).await?);
    }
    let endpoints = proxies.iter().map(FaultProxy::url).collect();
    let mut s = start(config(endpoints), &["f/"], 256)?;
    s.next(WAIT).await?;
    cluster.client().await?.put("f/k", "0").await?;
    s.until_value("f/", "f/k", "0").await?;

    // 1. Kill the member the source is connected to.
    let first = connected(&proxies).context("the source holds a connection")?;
    cluster.members[first].kill().await;
    block(&proxies[first]);
    cluster.wait_for_leader(WAIT).await?;
    let c = cluster.client().await?;
    for i in 1..=20 {
        c.put("f/k", i.to_string()).await?;
    }
    s.until_value("f/", "f/k", "20").await?;
    proxies[first].set_mode(ProxyMode::Pass);
    cluster.start_member(first)?;
    cluster.wait_for_leader(WAIT).await?;

    // 2. Kill the leader.
    let leader = cluster.wait_for_leader(WAIT).await?;
    cluster.members[leader].kill().await;
    block(&proxies[leader]);
    let deadline = Instant::now() + WAIT;
    let c = loop {
        if let Ok(c) = cluster.client().await {
            if c.put("f/k", "21").await.is_ok() {
                break c;
            }
        }
        if Instant::now() > deadline {
            bail!("no new leader after killing the old one");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.put("f/after-leader", "yes").await?;
    s.until_value("f/", "f/after-leader", "yes").await?;
    s.until_value("f/", "f/k", "21").await?;
    proxies[leader].set_mode(ProxyMode::Pass);
    cluster.start_member(leader)?;
    cluster.wait_for_leader(WAIT).await?;
    // Let the restarted member catch up before taking quorum away.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. Stop the two members the source is not connected to: its member loses the leader.
    let at = connected(&proxies).context("the source holds a connection")?;
    let others: Vec<usize> = (0..3).filter(|&i| i != at).collect();
    for &i in &others {
        cluster.members[i].kill().await;
    }
    let e = s.wait_error("no leader").await?;
    assert!(e.contains("no leader"), "{e}");
    // Quorum back: the source reconnects and gets the writes made since.
    for &i in &others {
        cluster.start_member(i)?;
    }
    cluster.wait_for_leader(WAIT).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(c) = cluster.client().await {
            if c.put("f/after-quorum", "yes").await.is_ok() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("could not write after quorum came back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.until_value("f/", "f/after-quorum", "yes").await?;
    s.stop().await
}
