//! The `http` action: one request to a plain-http URL (a reload endpoint), with a timeout per attempt
//! and jittered retries. Success is a 2xx answer, received whole; anything else is retried.
//!
//! `timeout` bounds the connection and the answer's head (status line and headers). Once the head has
//! arrived the body may take as long as it keeps arriving, with at most `timeout` between two chunks:
//! a slow endpoint that is still sending is not cut off, a silent one is. The log says which it was.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

/// The first wait between attempts; it doubles (with jitter) up to `RETRY_MAX`.
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sends `method url`, retrying up to `retries` times; returns the final status on success.
pub async fn call(url: &str, method: &str, timeout: Duration, retries: u32) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let mut backoff = kvsync_watch::Backoff::new(RETRY_INITIAL, RETRY_MAX, Some(retries));
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match once(&uri, method, timeout).await {
            Ok(status) if (200..300).contains(&status) => return Ok(status),
            Ok(status) => format!("answered {status}"),
            Err(e) => e,
        };
        match backoff.next_delay() {
            Some(d) => {
                warn!(url, attempt, "http action: {err}; retrying in {}ms", d.as_millis());
                tokio::time::sleep(d).await;
            }
            None => return Err(format!("{method} {url}: {err} (after {attempt} attempt{})", plural(attempt))),
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One attempt over a fresh HTTP/1.1 connection: the head within `timeout`, then the body with at
/// most `timeout` between two chunks.
async fn once(uri: &http::Uri, method: &str, timeout: Duration) -> Result<u16, String> {
    let no_answer = || format!("no answer within {}", crate::config::units::format_duration(timeout));
    // Whatever happens below, the connection is closed when this attempt ends.
    let mut driver = Driver(None);
    let (status, mut body) = match tokio::time::timeout(timeout, head(uri, method, &mut driver)).await {
        Ok(r) => r?,
        Err(_) => return Err(no_answer()),
    };
    // Read (and drop) the body so the server sees a complete exchange; only its size is kept.
    let mut received = 0usize;
    let result = loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Ok(None) => break Ok(status),
            Ok(Some(Ok(frame))) => received += frame.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => {
                break Err(format!("answered {status}, then the body broke off after {received} bytes: {e}"))
            }
            Err(_) => {
                break Err(format!(
                    "answered {status}, then the body stopped arriving part-way: {received} bytes received, then \
                     nothing for {}",
                    crate::config::units::format_duration(timeout)
                ))
            }
        }
    };
    drop(driver);
    result
}

/// Connects, sends the request and waits for the answer's head; returns the status and the body still
/// to read. The task that drives the connection is left in `driver`.
async fn head(uri: &http::Uri, method: &str, driver: &mut Driver) -> Result<(u16, hyper::body::Incoming), String> {
    let host = uri.host().ok_or_else(|| "the URL has no host".to_string())?;
    let port = uri.port_u16().unwrap_or(80);
    // IPv6 literals come bracketed in URLs; connect wants them bare.
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((connect_host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {host}:{port} failed: {e}"))?;
    // The connection task drives the socket until the attempt ends.
    driver.0 = Some(tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("http action connection: {e}");
        }
    }));
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_else(|| host.to_string());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, concat!("kvsync/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body()))
}

/// The task driving an attempt's connection; stopped (closing the socket) when dropped.
struct Driver(Option<tokio::task::JoinHandle<()>>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_server_times_out_and_the_error_says_so() {
        // Accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let url = format!("http://127.0.0.1:{port}/reload");
        let err = call(&url, "POST", Duration::from_millis(200), 0).await.unwrap_err();
        assert_eq!(err, format!("POST {url}: no answer within 200ms (after 1 attempt)"));
        hold.abort();
    }

    /// Serves one answer on every connection: `head`, then each chunk after a pause of `pause`; when
    /// `then_hang`, the connection is then held open without another byte.
    async fn slow_server(head: &'static str, chunks: Vec<&'static str>, pause: Duration, then_hang: bool) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let chunks = chunks.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    for c in chunks {
                        tokio::time::sleep(pause).await;
                        let _ = s.write_all(c.as_bytes()).await;
                    }
                    if then_hang {
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_body_that_keeps_arriving_is_received_past_the_timeout() {
        // Eight chunks 200 ms apart: 1.6 s in all, longer than the timeout, never 1 s without a byte.
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunks = vec!["2\r\nok\r\n"; 8].into_iter().chain(["0\r\n\r\n"]).collect();
        let port = slow_server(head, chunks, Duration::from_millis(200), false).await;
        let status = call(&format!("http://127.0.0.1:{port}/"), "POST", Duration::from_secs(1), 0).await;
        assert_eq!(status, Ok(200));
    }

    #[tokio::test]
    async fn a_body_that_stops_part_way_is_reported_with_the_bytes_received() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let port = slow_server(head, vec!["0123456789"], Duration::ZERO, true).await;
        let url = format!("http://127.0.0.1:{port}/");
        let err = call(&url, "POST", Duration::from_millis(300), 0).await.unwrap_err();
        assert_eq!(
            err,
            format!(
                "POST {url}: answered 200, then the body stopped arriving part-way: 10 bytes received, then \
                 nothing for 300ms (after 1 attempt)"
            )
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_named() {
        // Bind then drop: the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = call(&format!("http://127.0.0.1:{port}/"), "GET", Duration::from_secs(1), 0).await.unwrap_err();
        assert!(err.contains(&format!("cannot connect to 127.0.0.1:{port}")), "{err}");
        let err = call("http://", "GET", Duration::from_secs(1), 0).await.unwrap_err();
        assert!(err.starts_with("`http://` is not a URL"), "{err}");
    }
}
