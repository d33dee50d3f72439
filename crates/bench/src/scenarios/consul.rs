//! Consul: the Consul KV test server (it follows specs/consul-kv.md), kvsync in watch and poll mode.
//! The reference is a bare blocking-query client inside the benchmark on the same server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use kvsync_tests::consul_server::ConsulServer;

use super::{json_output, out_dir, pace, wait_for, write_config, Counts};
use crate::dest;
use crate::kvsync_proc::Kvsync;
use crate::measure::{seq_in, value, Recorder};
use crate::procstat;
use crate::report::{BurstRow, IdleRow, LatencyRow, Reference, Report, ScaleRow};
use crate::Args;

const T: Duration = Duration::from_secs(120);

pub async fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let c = Counts::of(args);
    if args.wants("latency") {
        eprintln!("consul: latency (watch) ...");
        report.latency.push(latency(&c, "watch").await?);
        eprintln!("consul: latency (poll 1s) ...");
        report.latency.push(latency(&c, "poll").await?);
    }
    if args.wants("burst") {
        eprintln!("consul: burst ...");
        report.burst.push(burst(&c).await?);
    }
    if args.wants("scale") {
        eprintln!("consul: scale ...");
        report.scale.extend(scale(&c).await?);
    }
    if args.wants("idle") {
        for mode in ["watch", "poll"] {
            eprintln!("consul: idle ({mode}) ...");
            report.idle.push(idle(&c, mode).await?);
        }
    }
    Ok(())
}

fn source(url: &str, mode: &str) -> String {
    match mode {
        "poll" => format!("  - {{ name: c, type: consul, address: {url}, mode: poll, interval: 1s }}\n"),
        _ => format!("  - {{ name: c, type: consul, address: {url}, wait: 60s }}\n"),
    }
}

/// A bare blocking-query loop on `prefix`: records every sequence number it sees.
async fn bare_watcher(addr: std::net::SocketAddr, prefix: String, rec: Arc<Recorder>) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut index = 0u64;
    loop {
        let req = hyper::Request::get(format!("/v1/kv/{prefix}?recurse&index={index}&wait=60s"))
            .header("host", addr.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let new_index: u64 = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let body = resp.into_body().collect().await?.to_bytes();
        if new_index != index {
            if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(&body) {
                for it in items {
                    if let Some(v) = it["Value"].as_str() {
                        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(v) {
                            if let Some(s) = seq_in(&raw) {
                                rec.saw(s);
                            }
                        }
                    }
                }
            }
        }
        index = if new_index < index { 0 } else { new_index.max(1) };
    }
}

async fn latency(c: &Counts, mode: &str) -> anyhow::Result<LatencyRow> {
    let server = ConsulServer::start().await?;
    server.put("bench/k", value(0, 1024));
    let dir = tempfile::tempdir()?;
    let out = out_dir(dir.path())?.join("app.json");
    let cfg = write_config(dir.path(), &source(&server.url(), mode), &json_output("c", "bench/", &out))?;
    let (_kvsync, _) = tokio::task::block_in_place(|| Kvsync::start_rendered(&cfg, dir.path(), T))?;
    let subject = Arc::new(Recorder::default());
    let baseline = Arc::new(Recorder::default());
    let _w = dest::watch(&out, Arc::clone(&subject), false)?;
    let watcher = tokio::spawn(bare_watcher(server.addr(), "bench/".into(), Arc::clone(&baseline)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (n, rate) =
        if mode == "poll" { (c.poll_changes as u64, 1) } else { (c.latency_changes as u64, c.latency_rate_per_s) };
    let start = Instant::now();
    for seq in 1..=n {
        server.put("bench/k", value(seq, 1024));
        let at = Instant::now();
        subject.ack(seq, at);
        baseline.ack(seq, at);
        // Poll mode sees one change per interval at best: pace one change per 1.3 s, off the interval's beat.
        if mode == "poll" {
            tokio::time::sleep_until((start + Duration::from_millis(1300 * seq)).into()).await;
        } else {
            tokio::task::block_in_place(|| pace(start, seq, rate));
        }
    }
    tokio::task::block_in_place(|| wait_for("the last change on disk", T, || subject.has_seen(n)))?;
    watcher.abort();
    Ok(LatencyRow {
        mode: format!("consul {mode}{}", if mode == "poll" { " (1 s)" } else { "" }),
        references: vec![Reference { name: "bare blocking-query client".into(), samples: baseline.latencies() }],
        subject: subject.latencies(),
        changes: n as usize,
        versions: subject.observed(),
        target: (mode == "watch").then_some((2.0, 10.0)),
    })
}

async fn burst(c: &Counts) -> anyhow::Result<BurstRow> {
    let server = ConsulServer::start().await?;
    for key in super::burst::keys(c) {
        server.put(&key, "init");
    }
    let dir = tempfile::tempdir()?;
    let out = out_dir(dir.path())?.join("app.json");
    let cfg = write_config(dir.path(), &source(&server.url(), "watch"), &json_output("c", "bench/", &out))?;
    tokio::task::block_in_place(|| {
        let (k, _) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
        super::burst::measure("consul", c, &k, &out, |key, v| {
            server.put(key, v);
            Ok(Instant::now())
        })
    })
}

async fn scale(c: &Counts) -> anyhow::Result<Vec<ScaleRow>> {
    let server = ConsulServer::start().await?;
    for i in 0..c.scale_keys {
        let (key, size) = super::scale::key(i);
        server.put(&format!("bench/{key}"), vec![b'v'; size]);
    }
    let mut rows = Vec::new();
    for format in super::scale::FORMATS {
        eprintln!("consul: scale ({format}) ...");
        let dir = tempfile::tempdir()?;
        let (cfg, dest) = super::scale::config(dir.path(), &source(&server.url(), "watch"), "c", format)?;
        let mut row = tokio::task::block_in_place(|| {
            let (k, synced) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
            super::scale::measure("consul", format, c.scale_keys, &k, synced, &dest, |key, v| {
                server.put(&format!("bench/{key}"), v);
                Ok(Instant::now())
            })
        })?;
        // kvsync has stopped: the backend alone, with the machine to itself.
        row.backend_floor = Some(listing_floor(&server).await?);
        rows.push(row);
        super::scale::keep(dir);
    }
    Ok(rows)
}

/// What any Consul watcher of the prefix pays per change at this size: from a write to a waiting
/// blocking query's answer (the whole listing, since Consul sends every key under the prefix)
/// received whole, without decoding it.
async fn listing_floor(server: &ConsulServer) -> anyhow::Result<Duration> {
    let stream = tokio::net::TcpStream::connect(server.addr()).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let get = |index: u64| {
        hyper::Request::get(format!("/v1/kv/bench/?recurse&index={index}&wait=60s"))
            .header("host", server.addr().to_string())
            .body(Empty::<bytes::Bytes>::new())
    };
    let first = send.send_request(get(0)?).await?;
    let index: u64 =
        first.headers().get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    first.into_body().collect().await?;
    send.ready().await?;
    let waiting = send.send_request(get(index)?);
    let (answer, at) = tokio::join!(waiting, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.put(&format!("bench/{}", super::scale::CHANGED_KEY), value(0, 200));
        Instant::now()
    });
    answer?.into_body().collect().await?;
    Ok(at.elapsed())
}

async fn idle(c: &Counts, mode: &str) -> anyhow::Result<IdleRow> {
    let server = ConsulServer::start().await?;
    for p in super::IDLE_PREFIXES {
        server.put(&format!("{p}/k"), "v");
    }
    let dir = tempfile::tempdir()?;
    let o = out_dir(dir.path())?;
    let outputs = super::idle_outputs("c", &o);
    let cfg = write_config(dir.path(), &source(&server.url(), mode), &outputs)?;
    let (k, _) = tokio::task::block_in_place(|| Kvsync::start_rendered(&cfg, dir.path(), T))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = procstat::cpu(k.pid());
    let req0 = server.total_requests();
    tokio::time::sleep(Duration::from_secs(c.idle_seconds)).await;
    let requests = server.total_requests() - req0;
    Ok(IdleRow {
        backend: "consul".into(),
        mode: if mode == "poll" { "poll (1 s)".into() } else { "watch (wait 60s)".into() },
        seconds: c.idle_seconds,
        rss: procstat::rss(k.pid()),
        cpu: procstat::cpu(k.pid()).saturating_sub(cpu0),
        connections: procstat::tcp_connections(k.pid(), server.addr().port()),
        requests_per_min: Some(requests as f64 * 60.0 / c.idle_seconds as f64),
        requests_counted_by: "test server's counter".into(),
        target_connections: None,
        // One blocking query per prefix per `wait` (60 s). A window shorter than `wait` can still hold
        // one return per prefix, so the allowance is 3 per started wait period, as a rate over the
        // window. Poll mode has no request target.
        target_requests_per_min: (mode == "watch")
            .then(|| 3.0 * (c.idle_seconds as f64 / 60.0).ceil().max(1.0) * 60.0 / c.idle_seconds as f64),
    })
}
