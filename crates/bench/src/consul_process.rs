//! The Consul KV test server in a process of its own, for the fleet scenario: its CPU time and its
//! memory are then its own (not the benchmark's), and it can stop and start again on its port with
//! its data and indexes, as a restarted Consul agent does.
//!
//! It prints `listening ADDR` once, then reads commands on stdin, one a line, and answers each on
//! stdout with one line:
//!
//! | command | answer |
//! |---|---|
//! | `put KEY VALUE` (VALUE: the rest of the line) | `ok` once the write is in the store and blocking queries are woken |
//! | `stats` | `stats REQUESTS ACCEPTED LIVE`: requests and connections the server counted since it first started, and the connections open now |
//! | `stop` | `stopped` once the listener and every connection are closed (the data is kept) |
//! | `start` | `started` once it listens again on the same address with the same data and indexes |
//!
//! Writes through stdin are not HTTP requests, so every request the server counts is a client's.
//! The process exits when its stdin closes: when the benchmark ends, however it ends.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvsync_tests::consul_server::{ConsulServer, KvSnapshot};

/// Counters of the servers that were stopped, so that `stats` counts from the first start.
#[derive(Default)]
struct Earlier {
    requests: u64,
    accepted: u64,
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut server = Some(rt.block_on(ConsulServer::start())?);
    let addr = server.as_ref().map(|s| s.addr()).ok_or_else(|| anyhow::anyhow!("no server"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    let mut earlier = Earlier::default();
    let mut kept: Option<KvSnapshot> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "put" => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                let s = server.as_ref().ok_or_else(|| anyhow::anyhow!("put while stopped"))?;
                s.put(key, value.as_bytes().to_vec());
                writeln!(out, "ok")?;
            }
            "stats" => {
                let (requests, accepted, live) = match &server {
                    Some(s) => (s.total_requests(), s.accepted_connections() as u64, s.live_connections()),
                    None => (0, 0, 0),
                };
                writeln!(out, "stats {} {} {live}", earlier.requests + requests, earlier.accepted + accepted)?;
            }
            "stop" => {
                if let Some(s) = server.take() {
                    earlier.requests += s.total_requests();
                    earlier.accepted += s.accepted_connections() as u64;
                    kept = Some(s.snapshot());
                    drop(s);
                    // The connection tasks end on the runtime's threads: wait until the port is free.
                    rt.block_on(wait_closed(addr));
                }
                writeln!(out, "stopped")?;
            }
            "start" => {
                if server.is_none() {
                    server = Some(rt.block_on(bind_again(addr, kept.take().unwrap_or_default()))?);
                }
                writeln!(out, "started")?;
            }
            other => anyhow::bail!("unknown command {other:?} (expected put, stats, stop or start)"),
        }
        out.flush()?;
    }
    Ok(())
}

/// Waits (bounded) until nothing accepts connections on `addr` any more.
async fn wait_closed(addr: SocketAddr) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds `addr` again with `data`, retrying (bounded) while the old listener is still being closed.
async fn bind_again(addr: SocketAddr, data: KvSnapshot) -> anyhow::Result<ConsulServer> {
    let start = Instant::now();
    loop {
        match ConsulServer::start_on(addr, data.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                return Err(e.context(format!("binding {addr} again after the stop")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
