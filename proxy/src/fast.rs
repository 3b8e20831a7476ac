//! The fast path: one task per client connection reads a request, sends it
//! on a pooled connection to a task, and passes the answer back, all as
//! bytes in buffers the connection keeps (h1.rs does the parsing). No
//! channel between a client and a task connection, no header map, no timer
//! per request: one lazily re-armed deadline per connection.
//!
//! A request the fast path does not take (h1.rs says which) hands the
//! connection, with the bytes already read, to hyper's server
//! (server.rs, forward.rs) for the rest of its life. Behaviour is the same
//! either way: routes, health, in-flight counts for draining, retries of
//! requests that are safe to send again, passive ejection, the shutdown
//! linger and `Connection: close`.

use crate::backend::{Backend, Upstream, UPSTREAM_BUF};
use crate::forward::ClientInfo;
use crate::h1::{self, BodyEnd, Chunked, Forward, Limits, Local, Prep};
use crate::shard::LoadGuard;
use crate::upstream::{self, Deadline, Sent};
use crate::Inner;
use bytes::{Buf, BytesMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// What a prior-knowledge HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection: plain TCP, or TLS over it.
pub(crate) trait Client: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Client for T {}

/// The largest read of a response body: large bodies move in few system
/// calls; the buffer shrinks back when its connection returns to the pool.
const MAX_READ: usize = 64 * 1024;

/// Client read buffer: grows to the head limit only for large heads.
const CLIENT_BUF: usize = 4 * 1024;

/// The rewritten request and the answer's head start this small (a
/// thousand idle keep-alive clients cost little) and grow when needed.
const HEAD_BUF: usize = 1024;

/// On shutdown, how long an idle keep-alive connection may take to send
/// one more request (answered with `Connection: close`).
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves one client connection until it closes; on shutdown, in-flight
/// work gets the grace period.
///
/// The connection is given back between two keep-alive requests, with
/// nothing of the next one read, when [`LoadGuard::rebalance`] counted it
/// on another proxy thread: the caller moves it there, and serves it again
/// with `fresh` false (prior-knowledge HTTP/2 is only looked for before a
/// connection's first request).
pub(crate) async fn serve<S: Client>(
    inner: Arc<Inner>,
    stream: S,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
    load: &mut LoadGuard,
    fresh: bool,
) -> Option<S> {
    let grace = inner.settings.shutdown_grace;
    let outer = watch.clone();
    // Pinned where it is made: `tokio::pin!` on a future already in a
    // local would keep a second copy of it in this one's state.
    let mut conn = std::pin::pin!(run(inner, stream, client, closing, watch, load, fresh));
    tokio::select! {
        idle = conn.as_mut() => idle,
        release = outer.signaled() => {
            // Shutting down: one given back now is closed.
            let _ = tokio::time::timeout(grace, conn).await;
            drop(release);
            None
        }
    }
}

async fn run<S: Client>(
    inner: Arc<Inner>,
    mut stream: S,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
    load: &mut LoadGuard,
    fresh: bool,
) -> Option<S> {
    let limits = Limits::of(&inner.settings);
    // Prior-knowledge HTTP/2 is looked for before the first request only.
    let mut h2c = fresh && inner.settings.h2c && !client.tls;
    let idle = inner.settings.idle_timeout;
    let mut cbuf = BytesMut::with_capacity(CLIENT_BUF);
    let mut request = Vec::with_capacity(HEAD_BUF);
    let mut answer = Vec::with_capacity(HEAD_BUF);
    let mut deadline = Deadline::new(Instant::now() + idle);
    let signaled = watch.clone().signaled();
    tokio::pin!(signaled);
    let mut release = None;
    // Where the end of the head in `cbuf` is looked for next (`None`: it
    // has arrived), so that a head sent a byte at a time is scanned once,
    // not parsed again on every read.
    let mut head_scan: Option<usize> = Some(0);
    loop {
        // The idle wait is for a request's first byte; from there the
        // whole head has the idle timeout, however it trickles in (as
        // hyper's header_read_timeout on the other path).
        let mut head_timed = false;
        let prep = loop {
            if h2c && !cbuf.is_empty() {
                if cbuf.starts_with(H2_PREFACE) {
                    Box::pin(crate::http2::serve(inner, stream, &cbuf, client, watch)).await;
                    return None;
                }
                if !H2_PREFACE.starts_with(&cbuf) {
                    h2c = false;
                }
            }
            // (Until the preface is whole or ruled out, nothing is parsed.)
            let preface_pending = h2c && cbuf.len() < H2_PREFACE.len();
            // Parsed as soon as the head's end is in, and on its first
            // bytes (so that what is not HTTP at all is answered at once)
            // and past the head limit (the 431).
            let first = head_scan == Some(0);
            let parse = head_arrived(&cbuf, &mut head_scan)
                || first
                || cbuf.len() >= limits.max_header_bytes;
            if !(cbuf.is_empty() || preface_pending) && parse {
                let table = inner.table();
                match h1::prepare(&cbuf, &limits, &client, &table, &mut request) {
                    Prep::Partial => {}
                    done => break done,
                }
            }
            if cbuf.capacity() - cbuf.len() < 1024 {
                cbuf.reserve(CLIENT_BUF);
            }
            if cbuf.is_empty() {
                let wait = if release.is_some() {
                    CLOSE_LINGER
                } else {
                    idle
                };
                deadline.set(Instant::now() + wait);
            } else if !head_timed {
                head_timed = true;
                deadline.set(Instant::now() + idle);
            }
            tokio::select! {
                biased;
                r = stream.read_buf(&mut cbuf) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                () = deadline.passed() => return None,
                r = &mut signaled, if release.is_none() => release = Some(r),
            }
        };
        match prep {
            Prep::Partial => unreachable!("read again above"),
            Prep::Fallback => {
                let io = Rewind::new(cbuf, stream);
                Box::pin(crate::server::serve_hyper(
                    inner, io, client, closing, watch,
                ))
                .await;
                return None;
            }
            Prep::Local {
                consumed,
                close,
                answer: local,
            } => {
                let started = Instant::now();
                let close = close || closing.load(Ordering::Acquire);
                answer.clear();
                let draining = inner.draining.load(Ordering::Acquire);
                let (status, body, route) = match local {
                    Local::HostHealth => {
                        let (status, reason, body) = if draining {
                            (503, "Service Unavailable", "draining\n")
                        } else {
                            (200, "OK", "ok\n")
                        };
                        h1::text(&mut answer, status, reason, body, close);
                        (status, body.len(), None)
                    }
                    Local::Redirect { location, route } => {
                        h1::redirect(&mut answer, &location, close);
                        (308, 0, Some(route))
                    }
                    Local::NoRoute { host, path } => {
                        let body =
                            format!("dockhand: no route for host {host:?} and path {path:?}\n");
                        h1::text(&mut answer, 404, "Not Found", &body, close);
                        (404, body.len(), None)
                    }
                };
                let sent = stream.write_all(&answer).await.is_ok() && stream.flush().await.is_ok();
                let head = &cbuf[..consumed];
                let local = LocalAnswer {
                    client: &client,
                    started,
                    status,
                    bytes: body as u64,
                    route: route.as_deref(),
                };
                local.record(inner.log(), head);
                cbuf.advance(consumed);
                head_scan = Some(0);
                if !sent || close {
                    return None;
                }
            }
            Prep::Forward(f) => {
                let started = Instant::now();
                f.route
                    .requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let close = f.close || closing.load(Ordering::Acquire);
                let ctx = Exchange {
                    inner: &inner,
                    f: &f,
                    request: &request,
                    close,
                };
                let done = ctx.run(&mut stream, &mut answer, &mut deadline).await;
                let record = crate::stats::Record {
                    started,
                    client: client.peer,
                    tls: client.tls,
                    version: "HTTP/1.1",
                    method: "",
                    host: "",
                    target: "",
                    status: done.status,
                    bytes: done.bytes,
                    route: Some(&f.route),
                    task: done.backend.as_deref().map(|b| b.task.as_str()),
                };
                match inner.log() {
                    None => crate::stats::record(None, &record),
                    Some(log) => {
                        let (method, target, host) = h1::request_line(&cbuf[..f.consumed]);
                        let record = crate::stats::Record {
                            method,
                            target,
                            host,
                            ..record
                        };
                        crate::stats::record(Some(log), &record);
                    }
                }
                cbuf.advance(f.consumed);
                head_scan = Some(0);
                if !done.keep {
                    return None;
                }
            }
        }
        let between = cbuf.is_empty() && release.is_none() && !closing.load(Ordering::Acquire);
        if between && load.rebalance().is_some() {
            return Some(stream);
        }
    }
}

/// Whether the end of a request head (an empty line, CRLF or bare LF) is
/// in `buf`, looking from `*scan` on and remembering how far it looked.
/// Once it is, true until `*scan` is reset for the next request (the body
/// after the head may still be arriving).
fn head_arrived(buf: &[u8], scan: &mut Option<usize>) -> bool {
    let Some(from) = *scan else {
        return true;
    };
    let mut i = from.min(buf.len());
    while let Some(n) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + n;
        let before = &buf[..at];
        if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
            *scan = None;
            return true;
        }
        i = at + 1;
    }
    // The next look starts before the last 2 bytes: an end may straddle.
    *scan = Some(buf.len().saturating_sub(2));
    false
}

/// An answer the proxy gave itself (health, redirect, no route).
struct LocalAnswer<'a> {
    client: &'a ClientInfo,
    started: Instant,
    status: u16,
    bytes: u64,
    /// The route, for a redirect.
    route: Option<&'a crate::route::Route>,
}

impl LocalAnswer<'_> {
    /// Counts it on its route, and logs it (`head`: the request's bytes).
    fn record(&self, log: Option<&crate::stats::Log>, head: &[u8]) {
        let (method, target, host) = match log {
            Some(_) => h1::request_line(head),
            None => ("", "", ""),
        };
        crate::stats::record(
            log,
            &crate::stats::Record {
                started: self.started,
                client: self.client.peer,
                tls: self.client.tls,
                version: "HTTP/1.1",
                method,
                host,
                target,
                status: self.status,
                bytes: self.bytes,
                route: self.route,
                task: None,
            },
        );
    }
}

/// How one request went.
struct Outcome {
    /// The client connection stays open.
    keep: bool,
    status: u16,
    /// Body bytes sent to the client.
    bytes: u64,
    backend: Option<Arc<Backend>>,
}

/// How passing a body on failed.
enum RelayError {
    /// The client went away: nothing more to tell it. `rest`: what the
    /// task has still to send of the body.
    Client { rest: Rest },
    /// The task closed early or framed the body wrongly.
    Task,
}

/// The part of an answer's body not read yet when its client left.
enum Rest {
    /// A `Content-Length` body's bytes still to come (0: all read).
    Length(u64),
    /// A chunked body, where its framing stopped.
    Chunked(Chunked),
    /// Up to the task's close: the connection cannot be reused.
    Unknown,
}

/// One request and its answer.
struct Exchange<'a> {
    inner: &'a Inner,
    f: &'a Forward,
    /// The rewritten request, whole.
    request: &'a [u8],
    /// The client's connection closes after this answer.
    close: bool,
}

impl Exchange<'_> {
    /// Forwards the request and says how it went.
    async fn run<S: Client>(
        &self,
        client: &mut S,
        answer: &mut Vec<u8>,
        deadline: &mut Deadline,
    ) -> Outcome {
        let Exchange { inner, f, .. } = *self;
        let close = self.close;
        let request = upstream::Request {
            route: &f.route,
            algorithm: f.algorithm,
            idempotent: f.idempotent,
            bytes: self.request,
            parse: |buf: &[u8]| {
                answer.clear();
                let head = h1::response(buf, f.head, close, answer)?;
                Ok(head.map(|h| (h, ())))
            },
        };
        let sent = upstream::forward(inner, request, deadline).await;
        let (backend, mut up, head, in_flight) = match sent {
            Sent::Answered {
                backend,
                up,
                head,
                in_flight,
                ..
            } => (backend, up, head, in_flight),
            Sent::Failed {
                status,
                reason,
                body,
            } => return self.text(client, answer, status, reason, &body).await,
        };
        let close = close || head.body == BodyEnd::Close;
        let stall = Stall {
            deadline,
            read: inner.settings.response_timeout,
            write: inner.settings.idle_timeout,
        };
        let relayed = relay(client, &mut up, head.body, answer, stall).await;
        drop(in_flight);
        let (keep, bytes) = match relayed {
            Ok(n) => {
                if head.reusable {
                    backend.checkin_raw(up);
                }
                (!close, n)
            }
            Err(RelayError::Client { rest }) if head.reusable => {
                // The rest of the answer is read and dropped, so the
                // connection can serve the next request: closing it would
                // make the next one open a new connection, and a thousand
                // clients leaving at once (a load balancer's pool, a
                // benchmark's end) would reopen a thousand at once, more
                // than many tasks' listen backlogs (128 for Rust's std)
                // take, and those wait for SYN retransmits (1 s and more).
                if drain(&mut up, rest).await {
                    backend.checkin_raw(up);
                }
                (false, 0)
            }
            Err(RelayError::Client { .. } | RelayError::Task) => (false, 0),
        };
        Outcome {
            keep,
            status: head.status,
            bytes,
            backend: Some(backend),
        }
    }

    /// Answers the client from the proxy itself.
    async fn text<S: Client>(
        &self,
        client: &mut S,
        answer: &mut Vec<u8>,
        status: u16,
        reason: &str,
        body: &str,
    ) -> Outcome {
        answer.clear();
        h1::text(answer, status, reason, body, self.close);
        let sent = client.write_all(answer).await.is_ok() && client.flush().await.is_ok();
        Outcome {
            keep: sent && !self.close,
            status,
            bytes: body.len() as u64,
            backend: None,
        }
    }
}

/// Reads more from the task, up to `want` bytes when the buffer can grow
/// to take them in one read (at most [`MAX_READ`]); end of stream is the
/// task's failure here.
async fn fill(up: &mut Upstream, want: u64) -> Result<(), RelayError> {
    let room = (want as usize).clamp(UPSTREAM_BUF, MAX_READ);
    if up.buf.capacity() - up.buf.len() < room {
        up.buf.reserve(room);
    }
    match up.stream.read_buf(&mut up.buf).await {
        Ok(0) | Err(_) => Err(RelayError::Task),
        Ok(_) => Ok(()),
    }
}

/// How long a relay waits for the task's next bytes (the response
/// timeout), and for the client to take the last ones (the idle timeout):
/// past that, the answer is given up, the task's fault or the client's,
/// instead of holding both connections for ever. One deadline, the
/// connection's, set as the relay goes.
struct Stall<'d> {
    deadline: &'d mut Deadline,
    read: std::time::Duration,
    write: std::time::Duration,
}

impl Stall<'_> {
    async fn fill(&mut self, up: &mut Upstream, want: u64) -> Result<(), RelayError> {
        self.deadline.set(Instant::now() + self.read);
        tokio::select! {
            biased;
            r = fill(up, want) => r,
            () = self.deadline.passed() => Err(RelayError::Task),
        }
    }

    async fn write(
        &mut self,
        write: impl std::future::Future<Output = std::io::Result<()>>,
    ) -> std::io::Result<()> {
        self.deadline.set(Instant::now() + self.write);
        tokio::select! {
            biased;
            r = write => r,
            () = self.deadline.passed() => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Writes the response head in `answer` and the body after it, as the task
/// sends it. The head and the body bytes already read go in one write.
async fn relay<S: Client>(
    client: &mut S,
    up: &mut Upstream,
    body: BodyEnd,
    answer: &[u8],
    mut stall: Stall<'_>,
) -> Result<u64, RelayError> {
    let sent = relay_body(client, up, body, answer, &mut stall).await?;
    // TLS keeps what it could not send yet: push it out now.
    stall
        .write(client.flush())
        .await
        .map_err(|_| RelayError::Client {
            rest: Rest::Length(0),
        })?;
    Ok(sent)
}

/// The body part of [`relay`]: returns the body bytes passed on.
async fn relay_body<S: Client>(
    client: &mut S,
    up: &mut Upstream,
    body: BodyEnd,
    answer: &[u8],
    stall: &mut Stall<'_>,
) -> Result<u64, RelayError> {
    // If the client is gone: what the task has still to send, once the
    // bytes just taken from the buffer are counted.
    let gone = |r: std::io::Result<()>, rest: Rest| r.map_err(|_| RelayError::Client { rest });
    match body {
        BodyEnd::None => {
            gone(stall.write(client.write_all(answer)).await, Rest::Length(0)).map(|()| 0)
        }
        BodyEnd::Length(length) => {
            let mut left = length;
            let take = left.min(up.buf.len() as u64) as usize;
            let written = stall
                .write(write_two(client, answer, &up.buf[..take]))
                .await;
            up.buf.advance(take);
            left -= take as u64;
            gone(written, Rest::Length(left))?;
            while left > 0 {
                stall.fill(up, left).await?;
                let take = left.min(up.buf.len() as u64) as usize;
                let written = stall.write(client.write_all(&up.buf[..take])).await;
                up.buf.advance(take);
                left -= take as u64;
                gone(written, Rest::Length(left))?;
            }
            Ok(length)
        }
        BodyEnd::Chunked => {
            let mut framing = Chunked::new();
            let take = framing.feed(&up.buf).map_err(|_| RelayError::Task)?;
            let mut sent = take as u64;
            let written = stall
                .write(write_two(client, answer, &up.buf[..take]))
                .await;
            up.buf.advance(take);
            gone(written, Rest::Chunked(framing))?;
            while !framing.done() {
                stall.fill(up, framing.left()).await?;
                let take = framing.feed(&up.buf).map_err(|_| RelayError::Task)?;
                let written = stall.write(client.write_all(&up.buf[..take])).await;
                up.buf.advance(take);
                gone(written, Rest::Chunked(framing))?;
                sent += take as u64;
            }
            Ok(sent)
        }
        BodyEnd::Close => {
            let mut sent = up.buf.len() as u64;
            gone(
                stall.write(write_two(client, answer, &up.buf)).await,
                Rest::Unknown,
            )?;
            up.buf.clear();
            loop {
                match stall.fill(up, MAX_READ as u64).await {
                    Ok(()) => {}
                    // The end of the body (the task closed), or a task
                    // silent past the response timeout: the client's
                    // connection closes either way.
                    Err(_) => return Ok(sent),
                }
                sent += up.buf.len() as u64;
                gone(stall.write(client.write_all(&up.buf)).await, Rest::Unknown)?;
                up.buf.clear();
            }
        }
    }
}

/// The most of an answer's body read and dropped, after its client went
/// away, to keep the task connection; a longer rest closes it.
const DRAIN_MAX: u64 = 64 * 1024;

/// How long the rest of such a body may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops the rest of a body the client no longer wants; true
/// when it all came, within [`DRAIN_MAX`] bytes and [`DRAIN_TIME`], and the
/// connection can be reused.
async fn drain(up: &mut Upstream, rest: Rest) -> bool {
    let read = async {
        match rest {
            Rest::Length(mut left) => {
                if left > DRAIN_MAX {
                    return None;
                }
                while left > 0 {
                    if up.buf.is_empty() {
                        fill(up, left).await.ok()?;
                    }
                    let take = left.min(up.buf.len() as u64) as usize;
                    up.buf.advance(take);
                    left -= take as u64;
                }
            }
            Rest::Chunked(mut framing) => {
                let mut budget = DRAIN_MAX;
                while !framing.done() {
                    if up.buf.is_empty() {
                        fill(up, framing.left().min(budget)).await.ok()?;
                    }
                    // The framing takes every byte up to the body's end.
                    let take = framing.feed(&up.buf).ok()?;
                    budget = budget.checked_sub(take as u64)?;
                    up.buf.advance(take);
                }
            }
            Rest::Unknown => return None,
        }
        Some(())
    };
    matches!(tokio::time::timeout(DRAIN_TIME, read).await, Ok(Some(())))
}

/// Writes `a` then `b`, gathered into as few system calls as the socket
/// takes (no copy of the body behind the head).
async fn write_two<S: Client>(stream: &mut S, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() && !b.is_empty() {
        let n = stream
            .write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    stream.write_all(a).await?;
    stream.write_all(b).await
}

/// A client connection handed to hyper with the bytes the fast path had
/// already read put back in front.
pub(crate) struct Rewind<S> {
    pre: BytesMut,
    inner: S,
}

impl<S: Client> Rewind<S> {
    pub(crate) fn new(pre: BytesMut, inner: S) -> Rewind<S> {
        Rewind { pre, inner }
    }
}

impl<S: Client> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = buf.remaining().min(this.pre.len());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: Client> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A task connection whose task sends `bytes` and keeps the connection.
    async fn upstream_sending(bytes: Vec<u8>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&bytes).await.unwrap();
            // Held open: the drain must stop at the body's end, not at EOF.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        Upstream {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::with_capacity(UPSTREAM_BUF),
            idle_since: std::time::Instant::now(),
        }
    }

    fn chunks(n: usize) -> Vec<u8> {
        let chunk = [b"400\r\n".as_slice(), &[b'x'; 1024], b"\r\n"].concat();
        let mut body = chunk.repeat(n);
        body.extend_from_slice(b"0\r\n\r\n");
        body
    }

    #[test]
    fn the_end_of_a_head_is_found_once_whatever_the_pieces() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..=head.len() {
            let mut scan = Some(0);
            let first = head_arrived(&head[..split], &mut scan);
            assert_eq!(first, split == head.len(), "at {split}");
            assert!(head_arrived(head, &mut scan), "at {split}");
        }
        let mut scan = Some(0);
        assert!(head_arrived(b"GET / HTTP/1.1\nHost: x\n\n", &mut scan));
        let mut scan = Some(0);
        assert!(!head_arrived(b"GET / HTTP/1.1\r\nHost: x\r\n", &mut scan));
        assert_eq!(scan, Some(b"GET / HTTP/1.1\r\nHost: x\r\n".len() - 2));
    }

    #[tokio::test]
    async fn the_rest_of_a_chunked_answer_is_drained_up_to_its_end_only() {
        let mut up = upstream_sending(chunks(40)).await;
        assert!(drain(&mut up, Rest::Chunked(Chunked::new())).await);
        assert!(up.buf.is_empty(), "nothing after the body was read");
    }

    #[tokio::test]
    async fn a_chunked_rest_longer_than_the_drain_limit_closes_the_connection() {
        let mut up = upstream_sending(chunks(80)).await;
        assert!(!drain(&mut up, Rest::Chunked(Chunked::new())).await);
    }

    #[tokio::test]
    async fn a_length_rest_beyond_the_limit_is_not_read_at_all() {
        let mut up = upstream_sending(vec![b'x'; 1024]).await;
        assert!(!drain(&mut up, Rest::Length(DRAIN_MAX + 1)).await);
        assert!(up.buf.is_empty());
        assert!(!drain(&mut up, Rest::Unknown).await);
    }
}
