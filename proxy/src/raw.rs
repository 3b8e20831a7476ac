//! HTTP/2 clients on the fast path's task connections.
//!
//! An HTTP/2 stream arrives from http2/ as a parsed request. A
//! bodyless one (most: GET, HEAD) is written to a pooled raw HTTP/1.1
//! connection as bytes, its answer's head parsed with httparse, and its
//! body read by the stream's own task as hyper polls it ([`RawBody`]): no
//! task per task connection, no channel between the two, as for HTTP/1.1
//! clients on the fast path (fast.rs). Requests with a body, upgrades,
//! `TE: trailers` (gRPC wants the trailers this skips) and routes to
//! HTTP/2 tasks take hyper's client (forward.rs). Retries follow the same
//! rules as everywhere: a request is sent again only if it cannot have
//! reached a task, or is idempotent.

use crate::backend::{Backend, InFlight, Upstream, UPSTREAM_BUF};
use crate::forward::text;
use crate::h1::{BodyEnd, Chunked};
use crate::route::{Algorithm, Route};
use crate::upstream::{self, Deadline, Sent};
use crate::{BoxError, Inner, ProxyBody};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Response, StatusCode};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// The largest read of a body.
const MAX_READ: usize = 64 * 1024;

/// The request as HTTP/1.1 bytes: request line, `headers` (already
/// rewritten for the task: hop-by-hop dropped, `Host` and `X-Forwarded-*`
/// set) and the blank line.
pub(crate) fn request_bytes(parts: &hyper::http::request::Parts) -> Vec<u8> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// What [`forward`] needs of the request.
pub(crate) struct Raw<'a> {
    pub route: &'a Arc<Route>,
    pub algorithm: Algorithm,
    pub request: Vec<u8>,
    pub idempotent: bool,
    pub head: bool,
}

/// Forwards a bodyless request on a raw task connection. Never fails:
/// every problem is an answer. Sets `seen` to the backend that answered.
pub(crate) async fn forward(
    inner: &Inner,
    r: Raw<'_>,
    seen: &mut Option<Arc<Backend>>,
) -> Response<ProxyBody> {
    let timeout = Instant::now() + inner.settings.response_timeout;
    let mut deadline = Deadline::new(timeout);
    let request = upstream::Request {
        route: r.route,
        algorithm: r.algorithm,
        idempotent: r.idempotent,
        bytes: &r.request,
        parse: |buf: &[u8]| crate::h1::response_parts(buf, r.head),
    };
    let sent = upstream::forward(inner, request, &mut deadline).await;
    match sent {
        Sent::Answered {
            backend,
            up,
            head,
            kept: headers,
            in_flight,
        } => {
            *seen = Some(Arc::clone(&backend));
            let mut resp = Response::new(
                RawBody {
                    up: Some(up),
                    end: head.body,
                    chunked: Chunked::new(),
                    reusable: head.reusable,
                    backend,
                    in_flight: Some(in_flight),
                    pause: inner.settings.response_timeout,
                    paused: None,
                }
                .boxed(),
            );
            *resp.status_mut() =
                StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
            *resp.headers_mut() = headers;
            resp
        }
        Sent::Failed { status, body, .. } => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
        ),
    }
}

/// An answer's body, read from the task connection as it is polled; the
/// connection returns to the pool at its end, and the request counts as
/// in flight until then.
struct RawBody {
    up: Option<Upstream>,
    end: BodyEnd,
    chunked: Chunked,
    reusable: bool,
    backend: Arc<Backend>,
    in_flight: Option<InFlight>,
    /// The longest the task may pause mid-body (the response timeout),
    /// and the timer of the pause under way, made when the body first
    /// waits on the task (an answer that arrives whole makes none).
    pause: std::time::Duration,
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug)]
struct TaskFailed(&'static str);

impl std::fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for TaskFailed {}

impl RawBody {
    /// The body is whole: the connection goes back to the pool.
    fn done(&mut self) {
        if let Some(up) = self.up.take() {
            if self.reusable && self.end != BodyEnd::Close {
                self.backend.checkin_raw(up);
            }
        }
        self.in_flight = None;
    }

    /// Reads more into the buffer: `Ready(Ok(false))` at end of stream.
    fn fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<Result<bool, BoxError>> {
        let Some(up) = self.up.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let room = (want as usize).clamp(UPSTREAM_BUF, MAX_READ);
        if up.buf.capacity() - up.buf.len() < room {
            up.buf.reserve(room);
        }
        loop {
            match up.stream.try_read_buf(&mut up.buf) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => return Poll::Ready(Ok(true)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match up.stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    }
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            let buffered = self.up.as_ref().map_or(0, |u| u.buf.len());
            let want = match self.end {
                BodyEnd::None | BodyEnd::Length(0) => {
                    self.done();
                    return Poll::Ready(None);
                }
                BodyEnd::Length(left) => {
                    if buffered > 0 {
                        let take = left.min(buffered as u64);
                        self.end = BodyEnd::Length(left - take);
                        let up = self.up.as_mut().expect("buffered bytes have a connection");
                        let data = up.buf.split_to(take as usize).freeze();
                        if left == take {
                            self.done();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    left
                }
                BodyEnd::Chunked => {
                    if self.chunked.done() {
                        self.done();
                        return Poll::Ready(None);
                    }
                    if buffered > 0 {
                        let up = self.up.as_mut().expect("buffered bytes have a connection");
                        let data = self.chunked.left().min(buffered as u64) as usize;
                        if data > 0 {
                            let _ = self.chunked.feed(&up.buf[..data]);
                            return Poll::Ready(Some(Ok(up.buf.split_to(data).freeze())));
                        }
                        // Framing (sizes, CRLFs, trailers): consumed a byte
                        // at a time, never passed on.
                        if let Err(why) = self.chunked.feed(&up.buf[..1]) {
                            self.up = None;
                            return Poll::Ready(Some(Err(Box::new(TaskFailed(why)))));
                        }
                        up.buf.advance(1);
                        continue;
                    }
                    self.chunked.left()
                }
                BodyEnd::Close => {
                    if buffered > 0 {
                        let up = self.up.as_mut().expect("buffered bytes have a connection");
                        return Poll::Ready(Some(Ok(up.buf.split().freeze())));
                    }
                    MAX_READ as u64
                }
            };
            match self.fill(cx, want) {
                Poll::Pending => {
                    let pause = self.pause;
                    let timer = self
                        .paused
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                    if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                        self.up = None;
                        return Poll::Ready(Some(Err(Box::new(TaskFailed(
                            "the task paused mid-body longer than the response timeout",
                        )))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(true)) => {
                    // Bytes came: the next pause is timed from now.
                    if let Some(timer) = self.paused.as_mut() {
                        timer.as_mut().reset(Instant::now() + self.pause);
                    }
                }
                Poll::Ready(Ok(false)) if self.end == BodyEnd::Close => {
                    self.done();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(false)) => {
                    self.up = None;
                    return Poll::Ready(Some(Err(Box::new(TaskFailed(
                        "the task closed the connection mid-body",
                    )))));
                }
                Poll::Ready(Err(e)) => {
                    self.up = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .next(cx)
            .map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.end, BodyEnd::None | BodyEnd::Length(0)) || self.chunked.done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.end {
            BodyEnd::None => SizeHint::with_exact(0),
            BodyEnd::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
