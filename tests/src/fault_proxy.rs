//! A TCP proxy on 127.0.0.1 that passes bytes to a target, or makes trouble on request:
//!
//! - [`ProxyMode::Pass`]: forward in both directions.
//! - [`ProxyMode::Drop`]: accept new connections and close them at once (live ones keep working).
//! - [`ProxyMode::Stall`]: accept new connections and never forward anything; live connections stop
//!   forwarding too (bytes are held, as on a dead network path) until the mode changes.
//! - [`FaultProxy::reset_all`]: reset (RST, SO_LINGER 0) every live connection, both sides.
//!
//! The proxy runs until the [`FaultProxy`] is dropped; its connection tasks stop with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    Drop,
    Stall,
}

/// A running proxy. Dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    resets: watch::Sender<u64>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicUsize,
    live: AtomicUsize,
}

impl FaultProxy {
    /// Starts a proxy in `Pass` mode in front of `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let (resets, _) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            resets.clone(),
            Arc::clone(&counters),
            shutdown.clone(),
        ));
        Ok(FaultProxy { addr, mode, resets, counters, shutdown })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for an HTTP client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Resets every live connection (both the client's and the target's side).
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far (in any mode).
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live(&self) -> usize {
        self.counters.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    resets: watch::Sender<u64>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    // Owns every connection task: they stop when this loop returns.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The proxy handle was dropped.
            _ = shutdown.cancelled() => break,
            // A new client.
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                match *mode.borrow() {
                    ProxyMode::Drop => {
                        drop(client);
                        continue;
                    }
                    ProxyMode::Pass | ProxyMode::Stall => {}
                }
                connections.spawn(proxy_connection(client, target, mode.subscribe(), resets.subscribe(), Arc::clone(&counters)));
            }
            // Reap finished connection tasks.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a live connection for as long as it is held.
struct Live(Arc<Counters>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn proxy_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    mut resets: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    counters.live.fetch_add(1, Ordering::SeqCst);
    let _live = Live(counters);
    // A stalled connection is accepted but not even connected upstream until the stall ends.
    let mut upstream = tokio::select! {
        // The stall ended (or there was none): connect to the target.
        ok = wait_while_stalled(&mut mode) => {
            if !ok {
                return;
            }
            match TcpStream::connect(target).await {
                Ok(s) => s,
                Err(_) => {
                    let _ = client.set_zero_linger();
                    return;
                }
            }
        }
        // reset_all() while stalled.
        _ = resets.changed() => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let mut mode_up = mode.clone();
        tokio::select! {
            // One direction ended (EOF or error): the connection is over.
            _ = pump(&mut client_read, &mut upstream_write, &mut mode_up) => false,
            _ = pump(&mut upstream_read, &mut client_write, &mut mode) => false,
            // reset_all().
            _ = resets.changed() => true,
        }
    };
    if reset {
        // Reset both sides: SO_LINGER 0 makes the close an RST.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Waits until the mode is not `Stall`. False if the proxy is gone.
async fn wait_while_stalled(mode: &mut watch::Receiver<ProxyMode>) -> bool {
    loop {
        if *mode.borrow_and_update() != ProxyMode::Stall {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies bytes from `from` to `to`, holding them while the proxy is stalled.
async fn pump<R, W>(from: &mut R, to: &mut W, mode: &mut watch::Receiver<ProxyMode>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_while_stalled(mode).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before a stall are held too.
        if !wait_while_stalled(mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server for the proxy to stand in front of.
    async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut set = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                set.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn passes_bytes() {
        let (target, task) = echo().await;
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let got = tokio::time::timeout(BOUND, roundtrip(&mut s, b"hello")).await.unwrap().unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(proxy.accepted(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn drop_mode_closes_new_connections_only() {
        let (target, task) = echo().await;
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        tokio::time::timeout(BOUND, roundtrip(&mut live, b"a")).await.unwrap().unwrap();
        proxy.set_mode(ProxyMode::Drop);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(BOUND, async {
            let _ = fresh.write_all(b"x").await;
            fresh.read(&mut buf).await
        })
        .await
        .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "a new connection is closed: {n:?}");
        assert_eq!(tokio::time::timeout(BOUND, roundtrip(&mut live, b"b")).await.unwrap().unwrap(), b"b");
        task.abort();
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_released() {
        let (target, task) = echo().await;
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        tokio::time::timeout(BOUND, roundtrip(&mut live, b"a")).await.unwrap().unwrap();
        proxy.set_mode(ProxyMode::Stall);
        live.write_all(b"b").await.unwrap();
        let mut buf = [0u8; 1];
        let stalled = tokio::time::timeout(Duration::from_millis(300), live.read(&mut buf)).await;
        assert!(stalled.is_err(), "nothing comes back while stalled");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh.write_all(b"c").await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(300), fresh.read(&mut buf)).await;
        assert!(stalled.is_err(), "a new connection is accepted but not forwarded");
        proxy.set_mode(ProxyMode::Pass);
        tokio::time::timeout(BOUND, live.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"b", "held bytes are delivered after the stall");
        tokio::time::timeout(BOUND, fresh.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"c");
        task.abort();
    }

    #[tokio::test]
    async fn reset_all_resets_live_connections() {
        let (target, task) = echo().await;
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        tokio::time::timeout(BOUND, roundtrip(&mut live, b"a")).await.unwrap().unwrap();
        assert_eq!(proxy.live(), 1);
        proxy.reset_all();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(BOUND, live.read(&mut buf)).await.unwrap();
        match r {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("expected a reset, read {n} bytes"),
        }
        // The proxy keeps accepting.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(tokio::time::timeout(BOUND, roundtrip(&mut fresh, b"z")).await.unwrap().unwrap(), b"z");
        task.abort();
    }
}
