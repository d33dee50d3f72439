//! How the test server puts a body on the wire.
//!
//! Consul's HTTP server is Go's `net/http`: a handler's answer goes out with a `Content-Length` when
//! it fits the response buffer (2 KiB) and chunked (`Transfer-Encoding: chunked`, no length) when it
//! does not, which is every large listing. [`Framing::Consul`] does the same; a test can force either
//! framing, pace a body (small chunks with pauses, as over a slow link or from a loaded server), or
//! stop one part-way with the connection left open and silent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::http::{Body, BoxError};

/// Go's `bufferBeforeChunkingSize`: a body up to this size is sent with a `Content-Length`.
pub const GO_RESPONSE_BUFFER: usize = 2048;

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// As Consul (Go's `net/http`): `Content-Length` up to [`GO_RESPONSE_BUFFER`] bytes, chunked above.
    #[default]
    Consul,
    /// Always a `Content-Length`.
    ContentLength,
    /// Always chunked, without a `Content-Length`.
    Chunked,
}

impl Framing {
    pub(crate) fn chunked(self, len: usize) -> bool {
        match self {
            Framing::Consul => len > GO_RESPONSE_BUFFER,
            Framing::ContentLength => false,
            Framing::Chunked => true,
        }
    }
}

/// A body sent in pieces of `chunk` bytes, with `pause` before each piece after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub chunk: usize,
    pub pause: Duration,
}

/// What the server does with the body of an answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Plan {
    pub framing: Framing,
    /// None: the whole body at once.
    pub pace: Option<Pace>,
    /// Stop after this many bytes of the body and send nothing more, the connection left open.
    pub stop_after: Option<usize>,
}

/// Re-frames a finished answer by `plan`. The body is already complete in memory (every answer of
/// the server is), so this only decides how it goes on the wire.
pub(crate) async fn frame(response: Response<Body>, plan: Plan) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let data = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let chunked = plan.framing.chunked(data.len());
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    if !chunked {
        // Set explicitly: a body paced or stopped part-way still announces its full length.
        parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    let (chunk, pause) = match plan.pace {
        Some(p) => (p.chunk.max(1), p.pause),
        None => (data.len().max(1), Duration::ZERO),
    };
    let body = Pieces {
        exact: !chunked,
        total: data.len() as u64,
        data,
        chunk,
        pause,
        sleep: None,
        sent: 0,
        stop_after: plan.stop_after,
    };
    Response::from_parts(parts, body.boxed())
}

/// A body handed out `chunk` bytes at a time, `pause` apart; it may stop for good after `stop_after`.
struct Pieces {
    data: Bytes,
    /// Whether the size is announced (Content-Length); when it is not, hyper sends chunked.
    exact: bool,
    total: u64,
    chunk: usize,
    pause: Duration,
    /// The pause before the next piece, while it runs.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes handed out so far.
    sent: usize,
    stop_after: Option<usize>,
}

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let limit = match self.stop_after {
            // Stopped: nothing more, ever (the connection stays open until the client drops it).
            Some(stop) if self.sent >= stop => return Poll::Pending,
            Some(stop) => stop - self.sent,
            None => usize::MAX,
        };
        if self.sent > 0 && !self.pause.is_zero() {
            let pause = self.pause;
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let n = self.chunk.min(limit).min(self.data.len());
        let piece = self.data.split_to(n);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.total - self.sent as u64)
        } else {
            SizeHint::default()
        }
    }
}
