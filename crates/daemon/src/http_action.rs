//! The `http` action: one request to a plain-http URL (a reload endpoint), with a timeout per attempt
//! and jittered retries. Success is a 2xx answer; anything else, or no answer in time, is retried.

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
        let err = match tokio::time::timeout(timeout, once(&uri, method)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => return Ok(status),
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}", crate::config::units::format_duration(timeout)),
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

/// One attempt over a fresh HTTP/1.1 connection.
async fn once(uri: &http::Uri, method: &str) -> Result<u16, String> {
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
    // The connection task drives the socket; it ends when the request is done and `sender` dropped.
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("http action connection: {e}");
        }
    });
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
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        // Read (and drop) the body so the server sees a complete exchange.
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
    .await;
    drop(sender);
    driver.abort();
    result
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
