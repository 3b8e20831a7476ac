//! HTTP/2 from clients (RFC 9113): ALPN `h2` on TLS, prior-knowledge h2c
//! on the plain listeners.
//!
//! One task per connection does everything: it reads and parses frames,
//! decodes header blocks (hpack.rs), keeps both directions' flow control,
//! and polls each stream's request future and answer body itself, with a
//! waker per stream that queues the stream's id (so a wake-up polls the
//! one stream that can move, and a reset stream is dropped on the spot).
//! Frames go out through one buffer, written once per turn. No task per
//! stream, no channel between the connection and its streams.
//!
//! A stream's header block is decoded straight into the HTTP/1.1 head a
//! task would be sent (request.rs). The common stream (no body, no `TE:
//! trailers`) then goes the fast path's way: h1.rs rewrites the head as
//! bytes and raw.rs sends it on a pooled raw task connection, with no
//! `Request` built. Any other is a request for forward.rs, as HTTP/1.1
//! clients' are (routing, the health path, retries, access log, metrics):
//! one with a body or `TE: trailers` through hyper's client. The request body
//! arrives through an inbox ([`RequestBody`]) whose consumption opens the
//! stream's window again, so a slow task slows its client instead of
//! filling the proxy's memory; the connection's window is given back on
//! arrival up to a bound ([`BUFFERED_FREE`]), so it does not stop the
//! connection's other uploads too.
//!
//! The connection ends with GOAWAY when the host starts draining or shuts
//! down (in-flight streams finish first, within the grace period on
//! shutdown), after the idle timeout with no stream open, and on a
//! protocol error (with its code). A stream's malformed request is reset
//! (PROTOCOL_ERROR); headers over the limits are answered 431.

mod frame;
mod hpack;
mod request;

use crate::forward::{ClientBody, ClientInfo};
use crate::{Inner, ProxyBody};
use bytes::Bytes;
use frame::{Head, Reason};
use hyper::body::{Body, Frame};
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the proxy lets a client send on one stream before the stream's
/// body has been taken (its SETTINGS_INITIAL_WINDOW_SIZE), and on the
/// whole connection at once.
const STREAM_WINDOW: i64 = 1 << 20;
const CONN_WINDOW: i64 = 1 << 20;
/// Request body bytes waiting in streams' inboxes whose connection window
/// goes back to the client as soon as they arrive; beyond it, window comes
/// back only as tasks take bodies. So a task that stops reading holds its
/// stream's window, not the connection's: it takes three such streams to
/// stop the uploads of the others. One connection can make the proxy
/// buffer this plus [`CONN_WINDOW`].
const BUFFERED_FREE: i64 = 2 * STREAM_WINDOW;
/// The read buffer: the largest frame the proxy takes (the default
/// SETTINGS_MAX_FRAME_SIZE), its head, and room to read ahead.
const READ_BUF: usize = 2 * (frame::DEFAULT_FRAME + frame::HEAD);
/// Above this much unwritten output, bodies are not polled and frames not
/// read until the client has taken some.
const WRITE_HIGH: usize = 256 * 1024;
/// How long a closed connection waits for the client to close its side
/// (see the end of [`serve`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Turns of the connection's loop per poll before it lets other tasks run.
const ROUNDS: usize = 32;
/// Streams a client may reset per second (at least; twice its stream
/// limit if that is more). Each stream opened costs a request to a task,
/// and resetting it frees its place at once, so without a cap one
/// connection could send tasks requests as fast as it sends frames (the
/// "rapid reset" attack, CVE-2023-44487).
const RESETS_PER_SECOND: u32 = 200;

/// How long a client has to answer the PING sent with the first GOAWAY
/// before the second one says which streams will be served.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// That PING's payload.
const GOAWAY_PING: [u8; 8] = *b"dh-bye!!";

/// The `date` of an answer (IMF-fixdate), formatted once a second per
/// thread.
fn date() -> [u8; 29] {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; 29])> =
            const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let (at, text) = d.get();
        if at == secs {
            return text;
        }
        let mut out = [b' '; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        out[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        d.set((secs, out));
        out
    })
}

/// Serves an HTTP/2 connection until it ends. `pre` holds what was read
/// before it was known to be HTTP/2 (h2c: the preface, and maybe more).
pub(crate) async fn serve<I>(
    inner: Arc<Inner>,
    io: I,
    pre: &[u8],
    client: ClientInfo,
    watch: drain::Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = inner.settings.idle_timeout;
    let grace = inner.settings.shutdown_grace;
    let mut draining = inner.draining_tx.subscribe();
    // A connection opened while the host drains is served (the load
    // balancer in front is taking the host out) until it idles.
    draining.borrow_and_update();
    let mut conn = Conn::new(inner, io, pre, client);
    let signaled = watch.signaled();
    tokio::pin!(signaled);
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    let mut watching = true;
    // Held from shutdown until this connection is done: shutdown waits.
    let mut release = None;
    let mut grace_end = None;
    // Far enough to never come, for the timers not set.
    let never = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    loop {
        let ack_by = conn.announced.map(|at| at + ACK_WAIT);
        tokio::select! {
            () = std::future::poll_fn(|cx| conn.poll(cx)) => break,
            r = &mut signaled, if release.is_none() => {
                release = Some(r);
                grace_end = Some(Instant::now() + grace);
                conn.go_away();
            }
            () = tokio::time::sleep_until(grace_end.unwrap_or(never)), if grace_end.is_some() => return,
            () = tokio::time::sleep_until(ack_by.unwrap_or(never)), if ack_by.is_some() => {
                conn.final_goaway();
            }
            r = draining.changed(), if watching && !conn.going_away() => match r {
                // The proxy is gone: nothing more to wait for.
                Err(_) => watching = false,
                Ok(()) => {
                    if *draining.borrow_and_update() {
                        conn.go_away();
                    }
                }
            },
            () = &mut idle_check => {
                let now = Instant::now();
                if conn.write_stalled.is_some_and(|since| since + idle <= now) {
                    tracing::debug!(peer = %conn.client.peer, "HTTP/2 client stopped reading; connection closed");
                    return;
                }
                conn.cancel_stalled_streams(now - idle);
                if !conn.going_away() && conn.idle_since().is_some_and(|since| since + idle <= now) {
                    conn.go_away();
                }
                // Look again once the first of these could be due: the
                // idle timeout (or a stream's end an idle timeout ago, if
                // one is open), or a stall's end.
                let next = [
                    conn.idle_since().filter(|_| !conn.going_away()),
                    conn.write_stalled,
                    conn.first_stalled_stream(),
                ]
                .into_iter()
                .flatten()
                .map(|since| since + idle)
                .min()
                .unwrap_or(now + idle);
                idle_check.as_mut().reset(next.max(now + std::time::Duration::from_millis(10)));
            }
        }
    }
    if conn.shutting && !conn.read_closed {
        // Closing a socket with unread bytes resets the connection, and a
        // reset throws away what the kernel has not sent yet: the end of
        // the last answers, the GOAWAY. A client still sends frames
        // (WINDOW_UPDATE as it reads them), so the proxy, having sent its
        // FIN, reads and drops what comes until the client closes too.
        let now = Instant::now();
        let until = grace_end.map_or(now + LINGER, |end: Instant| end.min(now + LINGER));
        let _ = tokio::time::timeout_at(until, conn.read_to_end()).await;
    }
}

/// The ids of the streams whose wakers fired, and the connection's waker.
#[derive(Default)]
struct Ready {
    ids: Vec<u32>,
    conn: Option<Waker>,
}

/// A stream's waker: queues the stream and wakes the connection.
struct StreamWake {
    id: u32,
    ready: Arc<Mutex<Ready>>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut r = crate::sync::lock(&self.ready);
        r.ids.push(self.id);
        if let Some(w) = &r.conn {
            w.wake_by_ref();
        }
    }
}

type Answer =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send>>;

struct Stream {
    waker: Waker,
    /// Until the answer's head is there.
    answer: Option<Answer>,
    /// The answer's body, once its head is sent, until its end.
    body: Option<ProxyBody>,
    /// Body bytes waiting for flow-control window; `end` once the body is
    /// done with them.
    pending: Option<Bytes>,
    pending_end: bool,
    /// Since when `pending` has waited for the client's window.
    blocked_since: Option<Instant>,
    /// The request body's inbox, if it has a body.
    inbox: Option<Arc<Mutex<Inbox>>>,
    /// The client may still send on the stream (no END_STREAM yet).
    receiving: bool,
    /// What the client may still send on the stream.
    recv_window: i64,
    /// Taken from the inbox, not yet given back to the client.
    unreleased: i64,
    /// The request's `content-length`, and what came so far.
    expect: Option<u64>,
    received: u64,
    send_window: i64,
}

/// Request body bytes in the streams' inboxes, not yet taken.
#[derive(Default)]
struct Buffered(i64);

impl Buffered {
    /// Counts `kept` body bytes in and `taken` out (read, or dropped with
    /// their stream). Returns the connection window to give back for
    /// them: all but the bytes beyond [`BUFFERED_FREE`].
    fn change(&mut self, kept: i64, taken: i64) -> i64 {
        let held = |buffered: i64| (buffered - BUFFERED_FREE).max(0);
        let before = held(self.0);
        self.0 += kept - taken;
        kept + before - held(self.0)
    }
}

/// A stream's request body, between the connection and whoever reads it.
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    end: bool,
    trailers: Option<HeaderMap>,
    failed: Option<&'static str>,
    reader: Option<Waker>,
    /// Bytes taken by the reader (or dropped with it) since the connection
    /// last looked: window to give back.
    consumed: usize,
    /// The stream's waker, to tell the connection about `consumed`.
    stream: Option<Waker>,
}

impl Inbox {
    /// Drops what the reader has not taken; how many bytes that was.
    fn discard(&mut self) -> usize {
        self.chunks.drain(..).map(|c| c.len()).sum()
    }

    /// The body is whole (with `trailers`, if it has them).
    fn finish(&mut self, trailers: Option<HeaderMap>) {
        self.end = true;
        self.trailers = trailers;
        self.wake_reader();
    }

    /// The body will not be whole: its reader gets `why` as an error, and
    /// nothing more goes to the connection. Returns the window the body
    /// still held (left unread, or read and not yet given back).
    fn fail(&mut self, why: &'static str) -> usize {
        let held = self.discard() + std::mem::take(&mut self.consumed);
        self.failed = Some(why);
        self.stream = None;
        self.wake_reader();
        held
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// A request body from an HTTP/2 stream.
pub(crate) struct RequestBody {
    inbox: Option<Arc<Mutex<Inbox>>>,
}

/// A request body that failed: the client reset its stream, broke the
/// protocol, or sent other than its `content-length`.
#[derive(Debug)]
pub(crate) struct BodyError(&'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let Some(inbox) = &self.inbox else {
            return Poll::Ready(None);
        };
        let mut b = crate::sync::lock(inbox);
        if let Some(chunk) = b.chunks.pop_front() {
            b.consumed += chunk.len();
            if let Some(w) = &b.stream {
                w.wake_by_ref();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(why) = b.failed {
            return Poll::Ready(Some(Err(Box::new(BodyError(why)))));
        }
        if b.end {
            return Poll::Ready(b.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        b.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inbox.as_ref().is_none_or(|i| {
            let b = crate::sync::lock(i);
            b.end && b.chunks.is_empty() && b.trailers.is_none() && b.failed.is_none()
        })
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            let mut b = crate::sync::lock(&inbox);
            b.consumed += b.discard();
            if let Some(w) = &b.stream {
                w.wake_by_ref();
            }
        }
    }
}

/// A connection error: its code, and what the log says.
type ConnError = (Reason, &'static str);

/// A header block being received in HEADERS and CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

struct Conn<I> {
    inner: Arc<Inner>,
    client: ClientInfo,
    io: I,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    preface: bool,
    settings_seen: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    flush: bool,
    decoder: hpack::Decoder,
    streams: HashMap<u32, Stream>,
    ready: Arc<Mutex<Ready>>,
    /// The ids taken from `ready`, being polled.
    polling: Vec<u32>,
    /// Streams that stopped because the output buffer was full.
    write_blocked: Vec<u32>,
    last_id: u32,
    continuation: Option<Continuation>,
    send_window: i64,
    peer_initial: i64,
    peer_frame: usize,
    recv_window: i64,
    conn_unreleased: i64,
    buffered: Buffered,
    /// The first GOAWAY of a graceful end (every stream id) went out with
    /// a PING at this time: streams the client sent before it saw it are
    /// still served, until the PING's answer (or [`ACK_WAIT`]).
    announced: Option<Instant>,
    /// The client sent GOAWAY: it opens no more streams.
    peer_goaway: bool,
    /// A connection error, or the client's end: write what is left, close.
    closing: bool,
    read_closed: bool,
    shutting: bool,
    last_end: Instant,
    /// Where request heads are built.
    request: request::Scratch,
    /// Answers' header blocks are encoded here, in the order sent.
    encoder: hpack::Encoder,
    /// The last stream a final GOAWAY named: no new stream is taken, the
    /// connection ends when the open ones are done, and a later GOAWAY (a
    /// connection error) names no higher one.
    goaway_last: Option<u32>,
    /// Since when output has waited for the client to read, without any
    /// of it taken: after the idle timeout, the connection is closed.
    write_stalled: Option<Instant>,
    /// Streams the client reset in the second that began at `resets_since`.
    resets: u32,
    resets_since: Instant,
    scratch: Vec<u8>,
}

/// Readers of request bodies still open learn that the connection ended.
impl<I> Drop for Conn<I> {
    fn drop(&mut self) {
        for inbox in self.streams.values().filter_map(|s| s.inbox.as_ref()) {
            let mut b = crate::sync::lock(inbox);
            if b.end {
                b.stream = None;
            } else {
                b.fail("the client's connection ended");
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    fn new(inner: Arc<Inner>, io: I, pre: &[u8], client: ClientInfo) -> Conn<I> {
        let mut rbuf = vec![0; READ_BUF.max(pre.len())];
        rbuf[..pre.len()].copy_from_slice(pre);
        let s = &inner.settings;
        let mut wbuf = Vec::with_capacity(16 * 1024);
        frame::put_settings(
            &mut wbuf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, s.h2_max_streams),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::put_window_update(&mut wbuf, 0, (CONN_WINDOW - 65_535) as u32);
        Conn {
            client,
            io,
            rbuf,
            rstart: 0,
            rend: pre.len(),
            preface: false,
            settings_seen: false,
            wbuf,
            wpos: 0,
            flush: true,
            decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE),
            streams: HashMap::new(),
            ready: Arc::new(Mutex::new(Ready::default())),
            polling: Vec::new(),
            write_blocked: Vec::new(),
            last_id: 0,
            continuation: None,
            send_window: 65_535,
            peer_initial: 65_535,
            peer_frame: frame::DEFAULT_FRAME,
            recv_window: CONN_WINDOW,
            conn_unreleased: 0,
            buffered: Buffered::default(),
            announced: None,
            peer_goaway: false,
            closing: false,
            read_closed: false,
            shutting: false,
            last_end: Instant::now(),
            request: request::Scratch::default(),
            encoder: hpack::Encoder::default(),
            goaway_last: None,
            write_stalled: None,
            resets: 0,
            resets_since: Instant::now(),
            scratch: Vec::new(),
            inner,
        }
    }

    fn going_away(&self) -> bool {
        self.announced.is_some() || self.goaway_last.is_some() || self.closing
    }

    /// Since when no stream has been open; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        self.streams.is_empty().then_some(self.last_end)
    }

    /// Begins a graceful end (RFC 9113 §6.8): a GOAWAY that still takes
    /// every stream, and a PING; the client's answer to it shows it has
    /// seen the GOAWAY, so whatever it sent before is there, and the final
    /// GOAWAY ([`Conn::final_goaway`]) can name the last stream served
    /// without refusing a request that crossed it on the way.
    fn go_away(&mut self) {
        if self.announced.is_some() || self.goaway_last.is_some() {
            return;
        }
        self.announced = Some(Instant::now());
        frame::put_goaway(&mut self.wbuf, frame::MAX_WINDOW as u32, Reason::NoError);
        frame::put_head(&mut self.wbuf, 8, frame::PING, 0, 0);
        self.wbuf.extend_from_slice(&GOAWAY_PING);
    }

    /// The GOAWAY that names the last stream served: no other is taken.
    fn final_goaway(&mut self) {
        if self.goaway_last.is_some() {
            return;
        }
        self.announced = None;
        self.goaway_last = Some(self.last_id);
        frame::put_goaway(&mut self.wbuf, self.last_id, Reason::NoError);
    }

    /// A connection error: GOAWAY with its code, then the end.
    fn fail(&mut self, (reason, why): ConnError) {
        tracing::debug!(peer = %self.client.peer, ?reason, why, "HTTP/2 connection error");
        self.announced = None;
        let last = *self.goaway_last.get_or_insert(self.last_id);
        frame::put_goaway(&mut self.wbuf, last, reason);
        self.closing = true;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut r = crate::sync::lock(&self.ready);
            if !r.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                r.conn = Some(cx.waker().clone());
            }
        }
        for _ in 0..ROUNDS {
            let mut busy = false;
            if !self.read_closed && !self.closing && self.unwritten() < WRITE_HIGH {
                busy |= self.read(cx);
            }
            busy |= self.run_streams();
            match self.write(cx) {
                Ok(w) => busy |= w,
                Err(()) => return Poll::Ready(()),
            }
            if self.unwritten() < WRITE_HIGH && !self.write_blocked.is_empty() {
                let blocked = std::mem::take(&mut self.write_blocked);
                crate::sync::lock(&self.ready).ids.extend(blocked);
                busy = true;
            }
            if self.read_closed {
                // The client is gone: nothing it asked for can reach it.
                return Poll::Ready(());
            }
            let done = self.closing
                || ((self.goaway_last.is_some() || self.peer_goaway) && self.streams.is_empty());
            if done && self.unwritten() == 0 {
                self.shutting = true;
            }
            if self.shutting {
                return match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                };
            }
            if !busy {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and drops what the client sends until it closes.
    async fn read_to_end(&mut self) {
        use tokio::io::AsyncReadExt;
        while let Ok(1..) = self.io.read(&mut self.rbuf).await {}
    }

    fn unwritten(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes what is buffered. `Ok(true)` if it wrote anything, `Err` if
    /// the connection is broken.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut wrote = false;
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Err(()),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.flush = true;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(peer = %self.client.peer, cause = %e, "HTTP/2 write failed");
                    return Err(());
                }
                Poll::Pending => break,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            self.write_stalled = None;
        } else if wrote || self.write_stalled.is_none() {
            self.write_stalled = Some(Instant::now());
        }
        if self.flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Reads once and handles every whole frame read. Whether it read.
    fn read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            if self.rend == self.rbuf.len() {
                // Full of frames not taken yet (never for long: every
                // frame the proxy takes fits twice).
                return false;
            }
        }
        // Bytes handed over before the first read are handled first.
        if self.rend > self.rstart && !self.preface {
            self.frames();
            if self.closing {
                return true;
            }
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    self.read_closed = true;
                    return true;
                }
                self.rend += n;
                self.frames();
                true
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(peer = %self.client.peer, cause = %e, "HTTP/2 read failed");
                self.read_closed = true;
                true
            }
            Poll::Pending => false,
        }
    }

    /// Handles the whole frames in the read buffer.
    fn frames(&mut self) {
        let buf = std::mem::take(&mut self.rbuf);
        let r = self.frames_in(&buf);
        self.rbuf = buf;
        if let Err(e) = r {
            self.fail(e);
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
    }

    fn frames_in(&mut self, buf: &[u8]) -> Result<(), ConnError> {
        loop {
            let avail = &buf[self.rstart..self.rend];
            if !self.preface {
                if avail.len() < frame::PREFACE.len() {
                    if !frame::PREFACE.starts_with(avail) {
                        return Err((Reason::Protocol, "not the HTTP/2 preface"));
                    }
                    return Ok(());
                }
                if &avail[..frame::PREFACE.len()] != frame::PREFACE {
                    return Err((Reason::Protocol, "not the HTTP/2 preface"));
                }
                self.preface = true;
                self.rstart += frame::PREFACE.len();
                continue;
            }
            if avail.len() < frame::HEAD {
                return Ok(());
            }
            let head = Head::parse(avail);
            if head.len > frame::DEFAULT_FRAME {
                return Err((
                    Reason::FrameSize,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if avail.len() < frame::HEAD + head.len {
                return Ok(());
            }
            let payload = &avail[frame::HEAD..frame::HEAD + head.len];
            self.rstart += frame::HEAD + head.len;
            if self.closing {
                return Ok(());
            }
            self.frame(head, payload)?;
        }
    }

    fn frame(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if !self.settings_seen {
            if h.kind != frame::SETTINGS || h.flags & frame::ACK != 0 {
                return Err((Reason::Protocol, "the first frame is not SETTINGS"));
            }
            self.settings_seen = true;
        }
        if let Some(c) = &self.continuation {
            if h.kind != frame::CONTINUATION || h.stream != c.stream {
                return Err((Reason::Protocol, "a header block was interrupted"));
            }
        }
        match h.kind {
            frame::DATA => self.data(h, p),
            frame::HEADERS => self.headers(h, p),
            frame::CONTINUATION => {
                let Some(mut c) = self.continuation.take() else {
                    return Err((Reason::Protocol, "CONTINUATION without HEADERS"));
                };
                c.block.extend_from_slice(p);
                if c.block.len() > self.block_limit() {
                    return Err((Reason::Protocol, "header block too large"));
                }
                if h.flags & frame::END_HEADERS != 0 {
                    self.header_block(c.stream, c.end_stream, &c.block)
                } else {
                    self.continuation = Some(c);
                    Ok(())
                }
            }
            frame::PRIORITY => {
                if h.stream == 0 {
                    return Err((Reason::Protocol, "PRIORITY on stream 0"));
                }
                if p.len() != 5 && self.streams.contains_key(&h.stream) {
                    self.reset(h.stream, Reason::FrameSize);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if h.stream == 0 {
                    return Err((Reason::Protocol, "RST_STREAM on stream 0"));
                }
                if p.len() != 4 {
                    return Err((Reason::FrameSize, "RST_STREAM of the wrong size"));
                }
                if h.stream > self.last_id {
                    return Err((Reason::Protocol, "RST_STREAM on an idle stream"));
                }
                if self.streams.contains_key(&h.stream) {
                    self.client_reset()?;
                }
                self.remove(h.stream, "the client reset the stream");
                Ok(())
            }
            frame::SETTINGS => self.settings(h, p),
            frame::PUSH_PROMISE => Err((Reason::Protocol, "a client sent PUSH_PROMISE")),
            frame::PING => {
                if h.stream != 0 {
                    return Err((Reason::Protocol, "PING on a stream"));
                }
                if p.len() != 8 {
                    return Err((Reason::FrameSize, "PING of the wrong size"));
                }
                if h.flags & frame::ACK == 0 {
                    frame::put_head(&mut self.wbuf, 8, frame::PING, frame::ACK, 0);
                    self.wbuf.extend_from_slice(p);
                } else if p == GOAWAY_PING && self.announced.is_some() {
                    self.final_goaway();
                }
                Ok(())
            }
            frame::GOAWAY => {
                if h.stream != 0 {
                    return Err((Reason::Protocol, "GOAWAY on a stream"));
                }
                self.peer_goaway = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(h, p),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    /// The largest compressed header block taken.
    fn block_limit(&self) -> usize {
        2 * self.inner.settings.max_header_bytes + frame::DEFAULT_FRAME
    }

    /// Strips padding; `None` if the padding is longer than the frame.
    fn unpad(h: &Head, p: &[u8]) -> Option<(usize, usize)> {
        if h.flags & frame::PADDED == 0 {
            return Some((0, p.len()));
        }
        let pad = *p.first()? as usize;
        (pad < p.len()).then(|| (1, p.len() - pad))
    }

    fn data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err((Reason::Protocol, "DATA on stream 0"));
        }
        let len = p.len() as i64;
        self.recv_window -= len;
        if self.recv_window < 0 {
            return Err((Reason::FlowControl, "DATA beyond the connection's window"));
        }
        let Some((a, b)) = Self::unpad(&h, p) else {
            return Err((Reason::Protocol, "padding longer than the frame"));
        };
        let end = h.flags & frame::END_STREAM != 0;
        let kept = self.stream_data(h.stream, &p[a..b], len, end)?;
        // The rest (padding, data for no reader) comes back at once.
        self.conn_unreleased += len - kept + self.buffered.change(kept, 0);
        Ok(())
    }

    /// Hands a DATA frame's `data` (of a frame of `len` bytes) to its
    /// stream's request body; how many bytes that body now holds, which
    /// come back to the client's window as the body is read.
    fn stream_data(&mut self, id: u32, data: &[u8], len: i64, end: bool) -> Result<i64, ConnError> {
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err((Reason::Protocol, "DATA on an idle stream"));
            }
            // A stream reset or done already.
            return Ok(0);
        };
        if !s.receiving {
            self.reset(id, Reason::StreamClosed);
            return Ok(0);
        }
        let Some(inbox) = s.inbox.clone() else {
            // A body nobody reads (a request answered without it).
            s.receiving = !end;
            return Ok(0);
        };
        s.recv_window -= len;
        if s.recv_window < 0 {
            self.reset(id, Reason::FlowControl);
            return Ok(0);
        }
        s.received += data.len() as u64;
        // Padding is stream window the body never takes: given back with
        // what the body takes, or now when it adds up (frames of padding
        // only would otherwise use the window up for good).
        s.unreleased += len - data.len() as i64;
        if s.unreleased >= STREAM_WINDOW / 2 && !end {
            frame::put_window_update(&mut self.wbuf, id, s.unreleased as u32);
            s.recv_window += s.unreleased;
            s.unreleased = 0;
        }
        let over = s.expect.is_some_and(|n| s.received > n);
        let short = end && s.expect.is_some_and(|n| s.received != n);
        if over || short {
            self.reset(id, Reason::Protocol);
            return Ok(0);
        }
        s.receiving = !end;
        let mut b = crate::sync::lock(&inbox);
        if !data.is_empty() {
            b.chunks.push_back(Bytes::copy_from_slice(data));
        }
        if end {
            b.finish(None);
        } else {
            b.wake_reader();
        }
        Ok(data.len() as i64)
    }

    fn headers(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if h.stream == 0 || h.stream.is_multiple_of(2) {
            return Err((Reason::Protocol, "HEADERS on a stream a client cannot open"));
        }
        let Some((mut a, b)) = Self::unpad(&h, p) else {
            return Err((Reason::Protocol, "padding longer than the frame"));
        };
        if h.flags & frame::PRIORITY_FLAG != 0 {
            if b - a < 5 {
                return Err((Reason::FrameSize, "HEADERS too short for its priority"));
            }
            a += 5;
        }
        let end_stream = h.flags & frame::END_STREAM != 0;
        if h.flags & frame::END_HEADERS == 0 {
            self.continuation = Some(Continuation {
                stream: h.stream,
                end_stream,
                block: p[a..b].to_vec(),
            });
            return Ok(());
        }
        self.header_block(h.stream, end_stream, &p[a..b])
    }

    /// A whole header block: a new stream's request, or a request's
    /// trailers.
    fn header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let trailers = self.streams.contains_key(&id);
        if !trailers && id <= self.last_id {
            // A stream closed already, or reset by the proxy (whose late
            // frames are ignored): still decoded, so the table stays in
            // step.
            return self
                .decoder
                .decode(block, |_, _| {})
                .map_err(|_| (Reason::Compression, "undecodable header block"));
        }
        let (limit, max_headers) = (
            self.inner.settings.max_header_bytes,
            self.inner.settings.max_headers,
        );
        if trailers {
            let mut t = request::Trailers::new(limit);
            self.decoder
                .decode(block, |n, v| t.field(n, v))
                .map_err(|_| (Reason::Compression, "undecodable header block"))?;
            let Some(s) = self.streams.get_mut(&id).filter(|s| s.receiving) else {
                self.reset(id, Reason::StreamClosed);
                return Ok(());
            };
            s.receiving = false;
            let short = s.expect.is_some_and(|n| n != s.received);
            match s.inbox.clone() {
                Some(inbox) if end_stream && !t.bad && !short => {
                    crate::sync::lock(&inbox).finish(Some(t.map));
                }
                _ => self.reset(id, Reason::Protocol),
            }
            return Ok(());
        }
        let mut head = request::Builder::new(&mut self.request, limit, max_headers);
        self.decoder
            .decode(block, |n, v| head.field(n, v))
            .map_err(|_| (Reason::Compression, "undecodable header block"))?;
        let facts = head.finish(end_stream);
        self.last_id = id;
        if self.goaway_last.is_some() || self.peer_goaway {
            // Not served: the GOAWAY sent says so.
            return Ok(());
        }
        if self.streams.len() >= self.inner.settings.h2_max_streams as usize {
            frame::put_rst(&mut self.wbuf, id, Reason::RefusedStream);
            return Ok(());
        }
        let facts = match facts {
            Ok(f) => f,
            Err(request::Malformed::Protocol(why)) => {
                tracing::debug!(peer = %self.client.peer, stream = id, why, "malformed HTTP/2 request");
                frame::put_rst(&mut self.wbuf, id, Reason::Protocol);
                return Ok(());
            }
            Err(request::Malformed::TooLarge) => {
                let r = crate::forward::text(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!(
                        "dockhand: request headers exceed {limit} bytes or {max_headers} fields\n"
                    ),
                );
                let answer = Box::pin(std::future::ready(Ok(r)));
                // Its body, if any, is thrown away as it comes.
                self.open(id, answer, None, None).receiving = !end_stream;
                return Ok(());
            }
        };
        let answer: Answer = match self.fast(end_stream, &facts) {
            Some(answer) => answer,
            None => {
                let req = match request::from_head(&self.request.head, max_headers) {
                    Ok(r) => r,
                    Err(_) => {
                        frame::put_rst(&mut self.wbuf, id, Reason::Protocol);
                        return Ok(());
                    }
                };
                let inbox = (!end_stream).then(|| Arc::new(Mutex::new(Inbox::default())));
                let req = req.map(|()| {
                    ClientBody::H2(RequestBody {
                        inbox: inbox.clone(),
                    })
                });
                let answer = Box::pin(crate::server::observed(
                    Arc::clone(&self.inner),
                    self.client,
                    req,
                    false,
                ));
                self.open(id, answer, inbox, facts.expect);
                return Ok(());
            }
        };
        self.open(id, answer, None, None);
        Ok(())
    }

    /// The common stream (no body, no `te: trailers`) the way the fast
    /// path takes an HTTP/1.1 request: the head rewritten as bytes by
    /// h1.rs and sent on a raw task connection (raw.rs). `None` for what
    /// it does not take (routes to HTTP/2 tasks, the proxy's own answers,
    /// anything unusual), which goes through forward.rs.
    fn fast(&mut self, end_stream: bool, facts: &request::Facts) -> Option<Answer> {
        if !end_stream || facts.trailers {
            return None;
        }
        let limits = crate::h1::Limits::of(&self.inner.settings);
        let table = self.inner.table();
        let head = &self.request.head;
        let mut out = Vec::with_capacity(head.len() + 160);
        let crate::h1::Prep::Forward(f) =
            crate::h1::prepare(head, &limits, &self.client, &table, &mut out)
        else {
            return None;
        };
        let line = self.inner.log().is_some().then(|| {
            let (method, target, host) = crate::h1::request_line(head);
            crate::server::RequestLine {
                version: "HTTP/2",
                method: method.to_string(),
                host: host.to_string(),
                target: target.to_string(),
            }
        });
        Some(Box::pin(crate::server::observed_raw(
            Arc::clone(&self.inner),
            self.client,
            f,
            out,
            line,
        )))
    }

    /// A new stream, waiting for `answer`, queued to be polled.
    fn open(
        &mut self,
        id: u32,
        answer: Answer,
        inbox: Option<Arc<Mutex<Inbox>>>,
        expect: Option<u64>,
    ) -> &mut Stream {
        let waker = Waker::from(Arc::new(StreamWake {
            id,
            ready: Arc::clone(&self.ready),
        }));
        if let Some(i) = &inbox {
            crate::sync::lock(i).stream = Some(waker.clone());
        }
        crate::sync::lock(&self.ready).ids.push(id);
        self.streams.entry(id).or_insert(Stream {
            waker,
            answer: Some(answer),
            body: None,
            pending: None,
            pending_end: false,
            blocked_since: None,
            receiving: inbox.is_some(),
            inbox,
            recv_window: STREAM_WINDOW,
            unreleased: 0,
            expect,
            received: 0,
            send_window: self.peer_initial,
        })
    }

    fn settings(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err((Reason::Protocol, "SETTINGS on a stream"));
        }
        if h.flags & frame::ACK != 0 {
            if !p.is_empty() {
                return Err((Reason::FrameSize, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !p.len().is_multiple_of(6) {
            return Err((Reason::FrameSize, "SETTINGS of the wrong size"));
        }
        // The last INITIAL_WINDOW_SIZE of the frame is the one that counts:
        // applied once, not once per repetition.
        let mut initial = None;
        for s in p.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err((Reason::Protocol, "SETTINGS_ENABLE_PUSH above 1"));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err((
                            Reason::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    initial = Some(i64::from(value));
                }
                frame::SETTINGS_HEADER_TABLE_SIZE => self.encoder.set_limit(value),
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_FRAME as u32..=16_777_215).contains(&value) {
                        return Err((Reason::Protocol, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_frame = value as usize;
                }
                // MAX_CONCURRENT_STREAMS is about pushes, which the proxy
                // does not make; unknown settings are ignored.
                _ => {}
            }
        }
        if let Some(value) = initial {
            let delta = value - self.peer_initial;
            self.peer_initial = value;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > frame::MAX_WINDOW {
                    return Err((Reason::FlowControl, "a stream's window overflowed"));
                }
            }
            if delta > 0 {
                self.unblock_all();
            }
        }
        frame::put_head(&mut self.wbuf, 0, frame::SETTINGS, frame::ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err((Reason::FrameSize, "WINDOW_UPDATE of the wrong size"));
        }
        let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
        if h.stream == 0 {
            if inc == 0 {
                return Err((Reason::Protocol, "WINDOW_UPDATE of 0"));
            }
            let was = self.send_window;
            self.send_window += inc;
            if self.send_window > frame::MAX_WINDOW {
                return Err((Reason::FlowControl, "the connection's window overflowed"));
            }
            if was <= 0 {
                self.unblock_all();
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if h.stream > self.last_id {
                return Err((Reason::Protocol, "WINDOW_UPDATE on an idle stream"));
            }
            return Ok(());
        };
        if inc == 0 {
            self.reset(h.stream, Reason::Protocol);
            return Ok(());
        }
        s.send_window += inc;
        if s.send_window > frame::MAX_WINDOW {
            self.reset(h.stream, Reason::FlowControl);
            return Ok(());
        }
        if s.pending.is_some() && s.send_window > 0 && s.send_window <= inc {
            // Its window opened: it can send again.
            crate::sync::lock(&self.ready).ids.push(h.stream);
        }
        Ok(())
    }

    /// Counts a stream the client reset; too many in a second end the
    /// connection (ENHANCE_YOUR_CALM).
    /// Also counted: streams the proxy resets because the client broke a
    /// rule ([`Conn::reset`]), which free a place as fast ("MadeYouReset",
    /// CVE-2025-8671).
    fn client_reset(&mut self) -> Result<(), ConnError> {
        let now = Instant::now();
        if now.duration_since(self.resets_since) >= std::time::Duration::from_secs(1) {
            self.resets_since = now;
            self.resets = 0;
        }
        self.resets += 1;
        let cap = RESETS_PER_SECOND.max(2 * self.inner.settings.h2_max_streams);
        if self.resets > cap {
            return Err((
                Reason::EnhanceYourCalm,
                "too many streams reset by the client",
            ));
        }
        Ok(())
    }

    /// Every stream with bytes waiting for window, and window now, gets
    /// another look.
    fn unblock_all(&mut self) {
        if self.send_window <= 0 {
            return;
        }
        let mut r = crate::sync::lock(&self.ready);
        for (id, s) in &self.streams {
            if s.pending.is_some() && s.send_window > 0 {
                r.ids.push(*id);
            }
        }
    }

    /// Resets a stream (a stream error) and forgets it. An open stream's
    /// reset counts as the client's own ([`Conn::client_reset`]).
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        if self.streams.contains_key(&id) {
            if let Err(e) = self.client_reset() {
                self.fail(e);
            }
        }
        self.remove(id, "the stream was reset");
    }

    /// Resets a stream for a cause on this side (its task's answer failed,
    /// or stalled): not counted against the client, whose other streams a
    /// crashing task would otherwise take down with an ENHANCE_YOUR_CALM.
    fn reset_ours(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        self.remove(id, "the stream was reset");
    }

    /// Forgets a stream: its request future and body are dropped, and a
    /// reader of its request body learns that it failed.
    fn remove(&mut self, id: u32, why: &'static str) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if let Some(inbox) = &s.inbox {
            let taken = crate::sync::lock(inbox).fail(why) as i64;
            self.conn_unreleased += self.buffered.change(0, taken);
        }
        if self.streams.is_empty() {
            self.last_end = Instant::now();
        }
    }

    /// Polls the streams whose wakers fired. Whether there were any.
    fn run_streams(&mut self) -> bool {
        let mut ids = std::mem::take(&mut self.polling);
        std::mem::swap(&mut ids, &mut crate::sync::lock(&self.ready).ids);
        let any = !ids.is_empty();
        // A stream woken twice is polled once.
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            self.poll_stream(id);
        }
        ids.clear();
        self.polling = ids;
        if self.conn_unreleased >= CONN_WINDOW / 2 {
            frame::put_window_update(&mut self.wbuf, 0, self.conn_unreleased as u32);
            self.recv_window += self.conn_unreleased;
            self.conn_unreleased = 0;
        }
        any
    }

    fn poll_stream(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if let Some(inbox) = &s.inbox {
            let consumed = std::mem::take(&mut crate::sync::lock(inbox).consumed) as i64;
            self.conn_unreleased += self.buffered.change(0, consumed);
            if s.receiving {
                s.unreleased += consumed;
                if s.unreleased >= STREAM_WINDOW / 2 {
                    frame::put_window_update(&mut self.wbuf, id, s.unreleased as u32);
                    s.recv_window += s.unreleased;
                    s.unreleased = 0;
                }
            }
        }
        if let Some(answer) = s.answer.as_mut() {
            let mut cx = Context::from_waker(&s.waker);
            let Poll::Ready(Ok(resp)) = answer.as_mut().poll(&mut cx) else {
                return;
            };
            s.answer = None;
            self.send_head(id, resp);
        }
        self.pump(id);
    }

    /// Resets the streams whose answers have waited for the client's
    /// window since before `cutoff` (CANCEL): each holds a task's
    /// connection and an answer's bytes.
    fn cancel_stalled_streams(&mut self, cutoff: Instant) {
        let stalled: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.blocked_since.is_some_and(|t| t <= cutoff))
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            tracing::debug!(peer = %self.client.peer, stream = id, "HTTP/2 stream stalled on its window; reset");
            // (After the idle timeout: too slow to be a way to reset fast.)
            self.reset_ours(id, Reason::Cancel);
        }
    }

    /// Since when the longest-waiting stream has waited for window.
    fn first_stalled_stream(&self) -> Option<Instant> {
        self.streams.values().filter_map(|s| s.blocked_since).min()
    }

    /// Starts a header block in `scratch`. Every block started is sent:
    /// it changes the client's HPACK table.
    fn start_block(&mut self) {
        self.scratch.clear();
        self.encoder.start(&mut self.scratch);
    }

    /// Adds `fields` to the header block, but those HTTP/2 forbids.
    fn put_fields(&mut self, fields: &HeaderMap) {
        for (name, value) in fields {
            let name = name.as_str().as_bytes();
            if !request::connection_specific(name) {
                self.encoder
                    .field(&mut self.scratch, name, value.as_bytes());
            }
        }
    }

    /// Sends an answer's head; keeps its body to send.
    fn send_head(&mut self, id: u32, resp: Response<ProxyBody>) {
        let (parts, body) = resp.into_parts();
        self.start_block();
        self.encoder
            .status(&mut self.scratch, parts.status.as_u16());
        self.put_fields(&parts.headers);
        let end = body.is_end_stream();
        // As hyper's servers do: a `date`, and the length of a body whose
        // length is known (the proxy's own answers).
        if !parts.headers.contains_key(hyper::header::DATE) {
            self.encoder.field(&mut self.scratch, b"date", &date());
        }
        if !end && !parts.headers.contains_key(hyper::header::CONTENT_LENGTH) {
            if let Some(n) = body.size_hint().exact() {
                self.encoder.field(
                    &mut self.scratch,
                    b"content-length",
                    n.to_string().as_bytes(),
                );
            }
        }
        frame::put_headers(&mut self.wbuf, id, &self.scratch, end, self.peer_frame);
        if end {
            self.answer_done(id);
        } else if let Some(s) = self.streams.get_mut(&id) {
            s.body = Some(body);
        }
    }

    /// Sends what the stream's body has, as far as the windows and the
    /// output buffer allow.
    fn pump(&mut self, id: u32) {
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            if let Some(p) = s.pending.as_mut() {
                let n = (p.len() as i64)
                    .min(s.send_window)
                    .min(self.send_window)
                    .min(self.peer_frame as i64)
                    .max(0) as usize;
                if n == 0 && !p.is_empty() {
                    // Waiting for a WINDOW_UPDATE.
                    s.blocked_since.get_or_insert_with(Instant::now);
                    return;
                }
                s.blocked_since = None;
                let last = n == p.len();
                let end = last && s.pending_end;
                frame::put_head(
                    &mut self.wbuf,
                    n,
                    frame::DATA,
                    if end { frame::END_STREAM } else { 0 },
                    id,
                );
                self.wbuf.extend_from_slice(&p[..n]);
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                if last {
                    s.pending = None;
                    if end {
                        self.answer_done(id);
                        return;
                    }
                } else {
                    bytes::Buf::advance(p, n);
                    continue;
                }
            }
            if self.wbuf.len() - self.wpos >= WRITE_HIGH {
                self.write_blocked.push(id);
                return;
            }
            let Some(body) = s.body.as_mut() else {
                return;
            };
            let mut cx = Context::from_waker(&s.waker);
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    s.body = None;
                    s.pending = Some(Bytes::new());
                    s.pending_end = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(peer = %self.client.peer, stream = id, cause = %e, "an HTTP/2 answer's body failed");
                    self.reset_ours(id, Reason::Internal);
                    return;
                }
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        if end {
                            s.body = None;
                        }
                        s.pending = Some(data);
                        s.pending_end = end;
                    }
                    Err(f) => {
                        s.body = None;
                        if let Ok(trailers) = f.into_trailers() {
                            self.start_block();
                            self.put_fields(&trailers);
                            frame::put_headers(
                                &mut self.wbuf,
                                id,
                                &self.scratch,
                                true,
                                self.peer_frame,
                            );
                            self.answer_done(id);
                            return;
                        }
                    }
                },
            }
        }
    }

    /// The answer is sent whole. If the client is still sending its
    /// request, it is told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    fn answer_done(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if s.receiving {
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
        }
        self.remove(id, "the answer was sent before the request's end");
    }
}
