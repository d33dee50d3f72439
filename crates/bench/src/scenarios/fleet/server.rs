//! The two servers of the fleet scenario, seen from outside: a real etcd (a child process started by
//! the test support) and the Consul KV test server in a process of its own (`kvsync-bench-consul`).
//! Each can be written to, measured (CPU, RSS, connections, requests or watchers) and stopped and
//! started again on its port with its data.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use kvsync_tests::etcd_server::{EtcdServer, TestClient};
use tokio::runtime::Handle;

use crate::guard;
use crate::procstat;
use crate::scenarios::etcd_metrics::{fetch as etcd_metrics, metric_sum};

/// What a server has counted so far (cumulative counters, gauges as they are now).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// etcd: gRPC messages received (unary calls and stream messages); Consul: HTTP requests.
    pub requests: f64,
    /// etcd: `etcd_debugging_mvcc_watcher_total` and `etcd_debugging_mvcc_watch_stream_total`.
    pub watchers: Option<f64>,
    pub watch_streams: Option<f64>,
}

pub enum Server {
    Etcd { etcd: Box<EtcdServer>, client: TestClient, handle: Handle },
    Consul(ConsulProcess),
}

impl Server {
    pub fn start_etcd(handle: &Handle) -> anyhow::Result<Server> {
        let etcd = Box::new(handle.block_on(EtcdServer::start())?);
        guard::remove_on_interrupt(etcd.scratch_dir());
        let client = handle.block_on(etcd.client())?;
        Ok(Server::Etcd { etcd, client, handle: handle.clone() })
    }

    pub fn start_consul() -> anyhow::Result<Server> {
        Ok(Server::Consul(ConsulProcess::start()?))
    }

    /// The `sources:` entry of a sidecar's config, named `s`.
    pub fn source(&self, mode: &str, poll_interval: &str, consul_wait: &str) -> String {
        match (self, mode) {
            (Server::Etcd { etcd, .. }, "poll") => format!(
                "  - {{ name: s, type: etcd, endpoints: [{}], mode: poll, interval: {poll_interval} }}\n",
                etcd.endpoint()
            ),
            (Server::Etcd { etcd, .. }, _) => {
                format!("  - {{ name: s, type: etcd, endpoints: [{}] }}\n", etcd.endpoint())
            }
            (Server::Consul(c), "poll") => format!(
                "  - {{ name: s, type: consul, address: http://{}, mode: poll, interval: {poll_interval} }}\n",
                c.addr
            ),
            (Server::Consul(c), _) => {
                format!("  - {{ name: s, type: consul, address: http://{}, wait: {consul_wait} }}\n", c.addr)
            }
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Server::Etcd { etcd, .. } => etcd.client_port,
            Server::Consul(c) => c.addr.port(),
        }
    }

    /// The server's process id (None while etcd is stopped).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Etcd { .. } => {
                procstat::children(std::process::id()).into_iter().find(|(_, comm)| comm == "etcd").map(|(p, _)| p)
            }
            Server::Consul(c) => Some(c.child.id()),
        }
    }

    /// Whether the server counts the benchmark's own writes as requests (etcd: they are gRPC calls;
    /// the Consul test server takes them on its stdin).
    pub fn puts_are_requests(&self) -> bool {
        matches!(self, Server::Etcd { .. })
    }

    /// Writes `key` (the value: ASCII without line breaks); returns when the server acknowledged it.
    pub fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<Instant> {
        match self {
            Server::Etcd { client, handle, .. } => {
                handle.block_on(client.put(key, value.to_vec()))?;
            }
            Server::Consul(c) => c.put(key, value)?,
        }
        Ok(Instant::now())
    }

    pub fn counters(&mut self) -> anyhow::Result<Counters> {
        match self {
            Server::Etcd { etcd, .. } => {
                let m = etcd_metrics(etcd.client_port)?;
                Ok(Counters {
                    requests: metric_sum(&m, "grpc_server_msg_received_total"),
                    watchers: Some(metric_sum(&m, "etcd_debugging_mvcc_watcher_total")),
                    watch_streams: Some(metric_sum(&m, "etcd_debugging_mvcc_watch_stream_total")),
                })
            }
            Server::Consul(c) => {
                let requests = c.stats()?;
                Ok(Counters { requests: requests as f64, watchers: None, watch_streams: None })
            }
        }
    }

    /// Stops the server: etcd is killed (SIGKILL), the Consul test server closes its listener and
    /// every connection. Clients see their connections end and new ones refused.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Server::Etcd { etcd, handle, .. } => {
                handle.block_on(etcd.kill());
                Ok(())
            }
            Server::Consul(c) => c.command("stop", "stopped"),
        }
    }

    /// Starts it again on the same port with the same data; returns once it answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        match self {
            Server::Etcd { etcd, handle, .. } => handle.block_on(etcd.restart()),
            Server::Consul(c) => c.command("start", "started"),
        }
    }
}

/// `kvsync-bench-consul` (see consul_process.rs), killed on drop; it also exits when its stdin closes.
pub struct ConsulProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
}

impl ConsulProcess {
    fn start() -> anyhow::Result<ConsulProcess> {
        let bin = std::env::current_exe()?.parent().map(|d| d.join("kvsync-bench-consul")).unwrap_or_default();
        anyhow::ensure!(
            bin.exists(),
            "{} does not exist; build it with `cargo build --release -p kvsync-bench`",
            bin.display()
        );
        let mut child =
            Command::new(&bin).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        let mut p = ConsulProcess { child, stdin, stdout, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let first = p.line()?;
        p.addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("the Consul test server said {first:?} instead of its address"))?;
        Ok(p)
    }

    /// One line of its answers (blocking; it answers every command at once, or has died).
    fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut s)? > 0, "the Consul test server exited");
        Ok(s.trim_end().to_string())
    }

    /// Sends one command line and reads its answer.
    fn send(&mut self, line: &[u8]) -> anyhow::Result<String> {
        self.stdin.write_all(line)?;
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        self.line()
    }

    fn command(&mut self, cmd: &str, expect: &str) -> anyhow::Result<()> {
        let answer = self.send(cmd.as_bytes())?;
        anyhow::ensure!(answer == expect, "the Consul test server answered {cmd:?} with {answer:?}");
        Ok(())
    }

    fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(!value.contains(&b'\n') && !key.contains([' ', '\n']), "put {key}: unsendable key or value");
        let mut line = format!("put {key} ").into_bytes();
        line.extend_from_slice(value);
        let answer = self.send(&line)?;
        anyhow::ensure!(answer == "ok", "the Consul test server answered a put of {key} with {answer:?}");
        Ok(())
    }

    /// Requests the server counted since it first started.
    fn stats(&mut self) -> anyhow::Result<u64> {
        let answer = self.send(b"stats")?;
        let f: Vec<u64> = answer.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        anyhow::ensure!(f.len() == 3, "the Consul test server answered `stats` with {answer:?}");
        Ok(f[0])
    }
}

impl Drop for ConsulProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
