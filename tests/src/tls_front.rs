//! A TCP front for a TLS server that classifies every connection by its first bytes, so that a test
//! can see a plain-text attempt the TLS server itself would only see as a failed handshake.
//!
//! A connection whose first byte is 0x16 (a TLS handshake record) is relayed to the TLS server and
//! counted as TLS; anything else (`GET `, `PRI * HTTP/2.0`, ...) is counted as plain text, its first
//! bytes are kept, and it is closed. A connection that closes before sending a byte is counted apart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the front has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Connections that began with a TLS handshake record.
    pub tls: usize,
    /// The first bytes (up to 16) of each connection that did not.
    pub plain: Vec<Vec<u8>>,
    /// Connections closed before their first byte.
    pub empty: usize,
}

pub struct TlsFront {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl TlsFront {
    /// Listens on a free loopback port and relays TLS connections to `backend`.
    pub async fn start(backend: SocketAddr) -> std::io::Result<TlsFront> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (s, st) = (Arc::clone(&seen), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    // The test is done with the front.
                    _ = st.cancelled() => return,
                    // A client connects.
                    c = listener.accept() => c,
                };
                let Ok((tcp, _)) = conn else { continue };
                let (s, st) = (Arc::clone(&s), st.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = st.cancelled() => {}
                        _ = classify_and_relay(tcp, backend, s) => {}
                    }
                });
            }
        });
        Ok(TlsFront { addr, seen, stop })
    }

    /// What was seen so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// `scheme://127.0.0.1:port`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn classify_and_relay(mut tcp: TcpStream, backend: SocketAddr, seen: Arc<Mutex<Seen>>) {
    let mut first = [0u8; 16];
    // Peek, so that the relayed bytes are exactly the client's.
    let n: usize = tcp.peek(&mut first).await.unwrap_or_default();
    if n == 0 {
        seen.lock().unwrap().empty += 1;
        return;
    }
    if first[0] != 0x16 {
        // Wait briefly for the rest of a short plain-text start, for a more telling record.
        let mut buf = first[..n].to_vec();
        if buf.len() < 16 {
            let mut more = [0u8; 16];
            if let Ok(Ok(m)) = tokio::time::timeout(std::time::Duration::from_millis(50), tcp.read(&mut more)).await {
                buf = more[..m].to_vec();
            }
        }
        seen.lock().unwrap().plain.push(buf);
        return;
    }
    seen.lock().unwrap().tls += 1;
    let Ok(mut upstream) = TcpStream::connect(backend).await else { return };
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
}
