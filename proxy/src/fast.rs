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
use crate::health::describe_io;
use crate::Inner;
use bytes::{Buf, BytesMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

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

/// A deadline kept with one timer per connection: moving it later costs a
/// clock read, and the timer is re-armed only when it fires early.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    at: Instant,
}

impl Deadline {
    fn new(at: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
            at,
        }
    }

    fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.armed {
            self.sleep.as_mut().reset(at);
            self.armed = at;
        }
    }

    async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            self.armed = self.at;
            self.sleep.as_mut().reset(self.at);
        }
    }
}

/// Serves one client connection until it closes; on shutdown, in-flight
/// work gets the grace period.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    stream: TcpStream,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
) {
    let grace = inner.settings.shutdown_grace;
    let outer = watch.clone();
    let conn = run(inner, stream, client, closing, watch);
    tokio::pin!(conn);
    tokio::select! {
        () = conn.as_mut() => {}
        release = outer.signaled() => {
            let _ = tokio::time::timeout(grace, conn).await;
            drop(release);
        }
    }
}

async fn run(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
) {
    let limits = Limits {
        max_header_bytes: inner.settings.max_header_bytes,
        max_headers: inner.settings.max_headers,
    };
    let idle = inner.settings.idle_timeout;
    let mut cbuf = BytesMut::with_capacity(CLIENT_BUF);
    let mut request = Vec::with_capacity(HEAD_BUF);
    let mut answer = Vec::with_capacity(HEAD_BUF);
    let mut deadline = Deadline::new(Instant::now() + idle);
    let signaled = watch.clone().signaled();
    tokio::pin!(signaled);
    let mut release = None;
    loop {
        let prep = loop {
            if !cbuf.is_empty() {
                let table = inner.table();
                match h1::prepare(&cbuf, &limits, &client, &table, &mut request) {
                    Prep::Partial => {}
                    done => break done,
                }
            }
            if cbuf.capacity() - cbuf.len() < 1024 {
                cbuf.reserve(CLIENT_BUF);
            }
            let wait = if release.is_some() {
                CLOSE_LINGER
            } else {
                idle
            };
            deadline.set(Instant::now() + wait);
            tokio::select! {
                biased;
                r = stream.read_buf(&mut cbuf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = deadline.passed() => return,
                r = &mut signaled, if release.is_none() => release = Some(r),
            }
        };
        match prep {
            Prep::Partial => unreachable!("read again above"),
            Prep::Fallback => {
                let io = Rewind {
                    pre: cbuf,
                    inner: stream,
                };
                return crate::server::serve_hyper(inner, io, client, closing, watch).await;
            }
            Prep::Local {
                consumed,
                close,
                answer: local,
            } => {
                cbuf.advance(consumed);
                let close = close || closing.load(Ordering::Acquire);
                answer.clear();
                match local {
                    Local::HostHealth if inner.draining.load(Ordering::Acquire) => {
                        h1::text(&mut answer, 503, "Service Unavailable", "draining\n", close)
                    }
                    Local::HostHealth => h1::text(&mut answer, 200, "OK", "ok\n", close),
                    Local::NoRoute { host, path } => h1::text(
                        &mut answer,
                        404,
                        "Not Found",
                        &format!("dockhand: no route for host {host:?} and path {path:?}\n"),
                        close,
                    ),
                }
                if stream.write_all(&answer).await.is_err() || close {
                    return;
                }
            }
            Prep::Forward(f) => {
                cbuf.advance(f.consumed);
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
                if !ctx.run(&mut stream, &mut answer, &mut deadline).await {
                    return;
                }
            }
        }
    }
}

/// How an attempt to get a response head failed.
enum Failed {
    /// The task closed or reset the connection before a whole head.
    Closed(Option<std::io::Error>),
    /// What the task sent is not a response a proxy may pass on.
    Bad(&'static str),
    Timeout,
}

/// How passing a body on failed.
enum RelayError {
    /// The client went away: nothing more to tell it.
    Client,
    /// The task closed early or framed the body wrongly.
    Task,
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
    /// Forwards the request; returns whether the client connection stays
    /// open.
    async fn run(
        &self,
        client: &mut TcpStream,
        answer: &mut Vec<u8>,
        deadline: &mut Deadline,
    ) -> bool {
        let Exchange { inner, f, .. } = *self;
        let settings = &inner.settings;
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        let mut last_error = String::new();
        let mut attempts = 0;
        let mut stale_retry_left = true;
        while attempts < 3 {
            let Some(backend) = f.route.pick(f.algorithm, &tried).or_else(|| {
                // Only one backend: a retry may reuse it on a new connection.
                (!tried.is_empty())
                    .then(|| f.route.pick(f.algorithm, &[]))
                    .flatten()
            }) else {
                break;
            };
            let in_flight = backend.begin_request();
            let (mut up, reused) = match backend
                .checkout_raw(settings.connect_timeout, !f.idempotent)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: safe to try elsewhere.
                    let why = describe_io(&e);
                    inner.eject(&f.route, &backend, &why);
                    last_error = format!("connect to {}: {why}", backend.addr);
                    tried.push(backend);
                    attempts += 1;
                    continue;
                }
            };
            let head = match self.send(&mut up, answer, deadline).await {
                Ok(h) => h,
                Err(Failed::Timeout) => {
                    return self
                        .text(
                            client,
                            answer,
                            504,
                            "Gateway Timeout",
                            &format!(
                                "dockhand: {} did not answer within {}s\n",
                                f.route.service,
                                settings.response_timeout.as_secs()
                            ),
                        )
                        .await;
                }
                Err(Failed::Bad(why)) => {
                    last_error = format!("{}: {why}", backend.addr);
                    break;
                }
                Err(Failed::Closed(e)) => {
                    if reused
                        && stale_retry_left
                        && e.as_ref()
                            .is_none_or(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
                    {
                        // A pooled connection the task had closed (its
                        // keep-alive timeout): the others likely are too.
                        // Once per request, not counted as an attempt.
                        stale_retry_left = false;
                        backend.close_idle();
                        if f.idempotent {
                            continue;
                        }
                    }
                    last_error = match &e {
                        Some(e) => format!("{}: {}", backend.addr, describe_io(e)),
                        None => format!("{}: connection closed before an answer", backend.addr),
                    };
                    if let Some(e) = &e {
                        if !reused
                            && matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionRefused
                                    | std::io::ErrorKind::ConnectionReset
                            )
                        {
                            inner.eject(&f.route, &backend, &describe_io(e));
                        }
                    }
                    tried.push(backend);
                    attempts += 1;
                    if f.idempotent {
                        continue; // harmless to send again
                    }
                    // It may have reached the task: not retried.
                    break;
                }
            };
            let close = self.close || head.body == BodyEnd::Close;
            let relayed = relay(client, &mut up, head.body, answer).await;
            drop(in_flight);
            return match relayed {
                Ok(()) => {
                    if head.reusable {
                        backend.checkin_raw(up);
                    }
                    !close
                }
                Err(RelayError::Client | RelayError::Task) => false,
            };
        }
        if tried.is_empty() && last_error.is_empty() {
            let body = format!(
                "dockhand: no healthy backend for service {}\n",
                f.route.service
            );
            return self
                .text(client, answer, 503, "Service Unavailable", &body)
                .await;
        }
        let body = format!(
            "dockhand: backend of service {} failed: {last_error}\n",
            f.route.service
        );
        self.text(client, answer, 502, "Bad Gateway", &body).await
    }

    /// Sends the request and reads the final response head into `answer`
    /// (interim 1xx answers are passed to nobody: the fast path never
    /// sends `Expect`, and 103 hints are dropped).
    async fn send(
        &self,
        up: &mut Upstream,
        answer: &mut Vec<u8>,
        deadline: &mut Deadline,
    ) -> Result<h1::RespHead, Failed> {
        if let Err(e) = up.stream.write_all(self.request).await {
            return Err(match e.kind() {
                // The task had closed this connection: the request was not read.
                std::io::ErrorKind::BrokenPipe => Failed::Closed(None),
                _ => Failed::Closed(Some(e)),
            });
        }
        deadline.set(Instant::now() + self.inner.settings.response_timeout);
        loop {
            answer.clear();
            match h1::response(&up.buf, self.f.head, self.close, answer) {
                Ok(Some(h)) if h.status == 101 => return Err(Failed::Bad("unexpected 101")),
                Ok(Some(h)) if h.status < 200 => {
                    up.buf.advance(h.len);
                    continue;
                }
                Ok(Some(h)) => {
                    up.buf.advance(h.len);
                    return Ok(h);
                }
                Ok(None) => {}
                Err(why) => return Err(Failed::Bad(why)),
            }
            if up.buf.capacity() - up.buf.len() < 1024 {
                up.buf.reserve(UPSTREAM_BUF);
            }
            tokio::select! {
                biased;
                r = up.stream.read_buf(&mut up.buf) => match r {
                    Ok(0) if up.buf.is_empty() => return Err(Failed::Closed(None)),
                    Ok(0) => return Err(Failed::Bad("connection closed in the response head")),
                    Ok(_) => {}
                    Err(e) => return Err(Failed::Closed(Some(e))),
                },
                () = deadline.passed() => return Err(Failed::Timeout),
            }
        }
    }

    /// Answers the client from the proxy itself.
    async fn text(
        &self,
        client: &mut TcpStream,
        answer: &mut Vec<u8>,
        status: u16,
        reason: &str,
        body: &str,
    ) -> bool {
        answer.clear();
        h1::text(answer, status, reason, body, self.close);
        client.write_all(answer).await.is_ok() && !self.close
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

/// Writes the response head in `answer` and the body after it, as the task
/// sends it. The head and the body bytes already read go in one write.
async fn relay(
    client: &mut TcpStream,
    up: &mut Upstream,
    body: BodyEnd,
    answer: &[u8],
) -> Result<(), RelayError> {
    let to_client = |r: std::io::Result<()>| r.map_err(|_| RelayError::Client);
    match body {
        BodyEnd::None => to_client(client.write_all(answer).await),
        BodyEnd::Length(mut left) => {
            let take = left.min(up.buf.len() as u64) as usize;
            to_client(write_two(client, answer, &up.buf[..take]).await)?;
            up.buf.advance(take);
            left -= take as u64;
            while left > 0 {
                fill(up, left).await?;
                let take = left.min(up.buf.len() as u64) as usize;
                to_client(client.write_all(&up.buf[..take]).await)?;
                up.buf.advance(take);
                left -= take as u64;
            }
            Ok(())
        }
        BodyEnd::Chunked => {
            let mut framing = Chunked::new();
            let take = framing.feed(&up.buf).map_err(|_| RelayError::Task)?;
            to_client(write_two(client, answer, &up.buf[..take]).await)?;
            up.buf.advance(take);
            while !framing.done() {
                fill(up, framing.left()).await?;
                let take = framing.feed(&up.buf).map_err(|_| RelayError::Task)?;
                to_client(client.write_all(&up.buf[..take]).await)?;
                up.buf.advance(take);
            }
            Ok(())
        }
        BodyEnd::Close => {
            to_client(write_two(client, answer, &up.buf).await)?;
            up.buf.clear();
            loop {
                if fill(up, MAX_READ as u64).await.is_err() {
                    return Ok(()); // the end of the body
                }
                to_client(client.write_all(&up.buf).await)?;
                up.buf.clear();
            }
        }
    }
}

/// Writes `a` then `b`, gathered into as few system calls as the socket
/// takes (no copy of the body behind the head).
async fn write_two(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
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
pub(crate) struct Rewind {
    pre: BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
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

impl AsyncWrite for Rewind {
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
