//! etcd: a real etcd (3.4, single member on loopback, started by the test support), kvsync in watch
//! mode (one Watch stream) and in poll mode (a Range every second).
//!
//! Two references see the same writes in the same run:
//! - a bare Watch client inside the benchmark (kvsync-etcd-grpc, one stream, no processing): the
//!   physical floor, what any watcher on this machine must pay;
//! - `etcdctl watch --prefix` as a separate process: a real peer client, timed from the put's
//!   acknowledgement to the output line that carries the value.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvsync_etcd_grpc::pb::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
use kvsync_etcd_grpc::{prefix_range, Client};
use kvsync_tests::etcd_server::{EtcdServer, TestClient};
use tokio_stream::wrappers::ReceiverStream;

use super::{json_output, out_dir, wait_for, write_config, Counts};
use crate::dest;
use crate::kvsync_proc::Kvsync;
use crate::measure::{seq_in, value, Recorder};
use crate::procstat;
use crate::report::{BurstRow, IdleRow, LatencyRow, Reference, Report, ScaleRow};
use crate::Args;

/// Bound on every wait of a scenario (a start, a render, the last change).
const T: Duration = Duration::from_secs(120);
/// Bound on one call to etcd made by the benchmark's own clients.
const CALL: Duration = Duration::from_secs(10);

pub async fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let c = Counts::of(args);
    if args.wants("latency") {
        for mode in ["watch", "poll"] {
            eprintln!("etcd: latency ({mode}) ...");
            report.latency.push(latency(&c, mode).await?);
        }
    }
    if args.wants("burst") {
        eprintln!("etcd: burst ...");
        report.burst.push(burst(&c).await?);
    }
    if args.wants("scale") {
        eprintln!("etcd: scale (loading {} keys) ...", c.scale_keys);
        report.scale.extend(scale(&c).await?);
    }
    if args.wants("idle") {
        for mode in ["watch", "poll"] {
            eprintln!("etcd: idle ({mode}) ...");
            report.idle.push(idle(&c, mode).await?);
        }
    }
    Ok(())
}

fn source(endpoint: &str, mode: &str) -> String {
    match mode {
        "poll" => format!("  - {{ name: e, type: etcd, endpoints: [{endpoint}], mode: poll, interval: 1s }}\n"),
        _ => format!("  - {{ name: e, type: etcd, endpoints: [{endpoint}] }}\n"),
    }
}

/// Opens a bare Watch stream on `prefix` and records the sequence number of every value it carries.
/// Returns once the server has confirmed the watcher (so no later write can be missed); the task
/// runs until aborted.
async fn bare_watch(client: &Client, prefix: &str, rec: Arc<Recorder>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (key, range_end) = prefix_range(prefix.as_bytes());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest { key: key.into(), range_end: range_end.into(), ..WatchCreateRequest::default() };
    // Queued before the stream opens: etcd sends its response headers only with its first message,
    // and the call does not return before the headers.
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
    let mut stream = tokio::time::timeout(CALL, client.watch(ReceiverStream::new(rx))).await??;
    let first = tokio::time::timeout(CALL, stream.message()).await??;
    anyhow::ensure!(first.is_some_and(|r| r.created), "the bare watcher was not created");
    Ok(tokio::spawn(async move {
        // Holding the sender keeps our half of the stream open (a closed half ends the watch).
        let _tx = tx;
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events {
                if let Some(s) = ev.kv.as_ref().and_then(|kv| seq_in(&kv.value)) {
                    rec.saw(s);
                }
            }
        }
    }))
}

/// `etcdctl watch --prefix` as a separate process; killed on drop.
struct EtcdctlWatch {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl EtcdctlWatch {
    /// etcdctl prints each event as three lines (`PUT`, the key, the value); a line carrying a
    /// sequence number is the moment this client has the value.
    fn start(endpoint: &str, prefix: &str, rec: Arc<Recorder>) -> anyhow::Result<EtcdctlWatch> {
        let mut cmd = Command::new("etcdctl");
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCDCTL") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["watch", "--prefix", prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("etcdctl has no stdout"))?;
        // A thread of its own: reading a pipe blocks, and the line is timed the moment it arrives.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                if let Some(s) = seq_in(&line) {
                    rec.saw(s);
                }
            }
        });
        Ok(EtcdctlWatch { child, reader: Some(reader) })
    }
}

impl Drop for EtcdctlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipe is closed now, so the reader has reached its end.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Puts `value(seq)` until `ready` holds, one attempt per 100 ms, bounded: how the benchmark learns
/// that a watcher it cannot ask (etcdctl prints nothing when its watch is created) is in place.
async fn warm_up(client: &TestClient, key: &str, seq: u64, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        anyhow::ensure!(start.elapsed() < T, "the references did not see the warm-up write within {T:?}");
        client.put(key, value(seq, 1024)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn latency(c: &Counts, mode: &str) -> anyhow::Result<LatencyRow> {
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    client.put("bench/k", value(0, 1024)).await?;
    let dir = tempfile::tempdir()?;
    let out = out_dir(dir.path())?.join("app.json");
    let cfg = write_config(dir.path(), &source(&etcd.endpoint(), mode), &json_output("e", "bench/", &out))?;
    let (_kvsync, _) = tokio::task::block_in_place(|| Kvsync::start_rendered(&cfg, dir.path(), T))?;

    let subject = Arc::new(Recorder::default());
    let bare = Arc::new(Recorder::default());
    let ctl = Arc::new(Recorder::default());
    let _w = dest::watch(&out, Arc::clone(&subject), false)?;
    let watcher = bare_watch(&client.client, "bench/", Arc::clone(&bare)).await?;
    let _ctl = EtcdctlWatch::start(&etcd.endpoint(), "bench/", Arc::clone(&ctl))?;
    // Rewriting value 0 makes an event for the references and no change for kvsync (same bytes).
    warm_up(&client, "bench/k", 0, || bare.has_seen(0) && ctl.has_seen(0)).await?;

    let (n, period) = if mode == "poll" {
        // Poll mode sees one change per interval at best: one change per 1.3 s, off the interval's beat.
        (c.poll_changes as u64, Duration::from_millis(1300))
    } else {
        (c.latency_changes as u64, Duration::from_micros(1_000_000 / c.latency_rate_per_s.max(1)))
    };
    let start = tokio::time::Instant::now();
    for seq in 1..=n {
        client.put("bench/k", value(seq, 1024)).await?;
        let at = Instant::now();
        for r in [&subject, &bare, &ctl] {
            r.ack(seq, at);
        }
        // Steady pacing without drift, and without blocking the runtime the bare watcher runs on.
        tokio::time::sleep_until(start + period * seq as u32).await;
    }
    tokio::task::block_in_place(|| {
        wait_for("the last change on disk and at both references", T, || {
            subject.has_seen(n) && bare.has_seen(n) && ctl.has_seen(n)
        })
    })?;
    watcher.abort();
    Ok(LatencyRow {
        mode: format!("etcd {mode}{}", if mode == "poll" { " (1 s)" } else { "" }),
        references: vec![
            Reference { name: "bare Watch client (in process)".into(), samples: bare.latencies() },
            Reference { name: "etcdctl watch --prefix (process)".into(), samples: ctl.latencies() },
        ],
        subject: subject.latencies(),
        changes: n as usize,
        versions: subject.observed(),
        target: (mode == "watch").then_some((0.5, 1.5)),
    })
}

async fn burst(c: &Counts) -> anyhow::Result<BurstRow> {
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    for key in super::burst::keys(c) {
        client.put(&key, "init").await?;
    }
    let dir = tempfile::tempdir()?;
    let out = out_dir(dir.path())?.join("app.json");
    let cfg = write_config(dir.path(), &source(&etcd.endpoint(), "watch"), &json_output("e", "bench/", &out))?;
    let handle = tokio::runtime::Handle::current();
    // One client, one put after the other: as fast as etcd acknowledges them.
    tokio::task::block_in_place(|| {
        let (k, _) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
        super::burst::measure("etcd", c, &k, &out, |key, v| {
            handle.block_on(client.put(key, v))?;
            Ok(Instant::now())
        })
    })
}

/// Loads the keys once (8 writers in parallel, to keep the load short), then runs kvsync against
/// them with a `json` and then a `files` output.
async fn scale(c: &Counts) -> anyhow::Result<Vec<ScaleRow>> {
    let etcd = EtcdServer::start().await?;
    let writers = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let cl = etcd.client().await?;
        let keys = c.scale_keys;
        tasks.spawn(async move {
            for i in (w..keys).step_by(writers) {
                let (key, size) = super::scale::key(i);
                cl.put(&format!("bench/{key}"), vec![b'v'; size]).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let mut rows = Vec::new();
    for format in super::scale::FORMATS {
        eprintln!("etcd: scale ({format}) ...");
        let dir = tempfile::tempdir()?;
        let (cfg, dest) = super::scale::config(dir.path(), &source(&etcd.endpoint(), "watch"), "e", format)?;
        let client = etcd.client().await?;
        let handle = tokio::runtime::Handle::current();
        rows.push(tokio::task::block_in_place(|| {
            let (k, synced) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
            super::scale::measure("etcd", format, c.scale_keys, &k, synced, &dest, |key, v| {
                handle.block_on(client.put(&format!("bench/{key}"), v))?;
                Ok(Instant::now())
            })
        })?);
        super::scale::keep(dir);
    }
    Ok(rows)
}

/// Every gRPC message etcd has received so far (unary calls and stream messages alike), from its own
/// Prometheus counters (`grpc_server_msg_received_total`) on the client port.
fn etcd_messages_received(port: u16) -> anyhow::Result<f64> {
    Ok(super::etcd_metrics::metric_sum(&super::etcd_metrics::fetch(port)?, "grpc_server_msg_received_total"))
}

async fn idle(c: &Counts, mode: &str) -> anyhow::Result<IdleRow> {
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    for p in super::IDLE_PREFIXES {
        client.put(&format!("{p}/k"), "v").await?;
    }
    let dir = tempfile::tempdir()?;
    let out = out_dir(dir.path())?;
    let outputs = super::idle_outputs("e", &out);
    let cfg = write_config(dir.path(), &source(&etcd.endpoint(), mode), &outputs)?;
    let (k, _) = tokio::task::block_in_place(|| Kvsync::start_rendered(&cfg, dir.path(), T))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The benchmark's own client is idle during the window: every message counted is kvsync's.
    let cpu0 = procstat::cpu(k.pid());
    let msg0 = etcd_messages_received(etcd.client_port)?;
    tokio::time::sleep(Duration::from_secs(c.idle_seconds)).await;
    let messages = etcd_messages_received(etcd.client_port)? - msg0;
    Ok(IdleRow {
        backend: "etcd".into(),
        mode: if mode == "poll" { "poll (1 s)".into() } else { "watch (one stream)".into() },
        seconds: c.idle_seconds,
        rss: procstat::rss(k.pid()),
        cpu: procstat::cpu(k.pid()).saturating_sub(cpu0),
        connections: procstat::tcp_connections(k.pid(), etcd.client_port),
        requests_per_min: Some(messages * 60.0 / c.idle_seconds as f64),
        requests_counted_by: "etcd grpc_server_msg_received_total".into(),
        // One HTTP/2 connection per etcd cluster, whatever the mode.
        target_connections: Some(1),
        target_requests_per_min: None,
    })
}
