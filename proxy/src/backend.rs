//! One backend: a task's published port on one route.
//!
//! A backend takes requests only while it is *routable*: healthy by its
//! active checks, past its grace period, and not draining. It counts its
//! in-flight requests (a request counts until its response body is done), so
//! a drain can wait for exactly those; it keeps idle keep-alive connections
//! in a small pool, dropped when it drains; and it can close the upgraded
//! (WebSocket) connections it carries when its deregistration delay is over.

use crate::health::{HealthCheck, Hysteresis, Transition};
use crate::sync::lock;
use crate::ProxyBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Idle connections kept per backend; more are closed when returned.
const MAX_IDLE: usize = 512;

/// Idle fast-path connections kept per backend. A client load of N
/// concurrent requests keeps N connections busy; those above the cap are
/// closed when returned, so the task accepts a new connection for each such
/// request. (Raising it from 512 did not change the c1000 p99 of
/// bench/proxy.sh; the runtime's queue interval did, see src/main.rs.)
const MAX_RAW_IDLE: usize = 2048;

/// How many idle fast-path connections of a pool (per proxy thread and
/// backend) may keep a read buffer grown for a large answer. The pool is a
/// stack, and these are the ones reused first, so a load of up to this many
/// concurrent large answers reads each in one call, without allocating. A
/// connection returned to a deeper pool gets a small buffer again: a burst
/// of a thousand 64 KiB answers no longer leaves 64 MiB behind (the
/// allocator keeps most of what is freed later, see [`Backend::trim_idle`]).
const KEEP_GROWN: usize = 256;

pub(crate) struct Backend {
    pub task: String,
    pub addr: SocketAddr,
    routable: AtomicBool,
    in_flight: AtomicUsize,
    upgraded: AtomicUsize,
    state: Mutex<CheckState>,
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
    /// The one HTTP/2 connection to a task that speaks it, shared by all
    /// requests (streams).
    h2: Mutex<Option<hyper::client::conn::http2::SendRequest<ProxyBody>>>,
    /// Idle connections of the fast path (fast.rs), most recent last: one
    /// pool per proxy thread, each used by the thread whose event loop
    /// watches its connections (shard.rs).
    raw_idle: Box<[Mutex<RawPool>]>,
    /// Notified whenever in-flight or upgraded counts drop.
    quiet: Notify,
    /// Someone may wait on `quiet` (a drain began): only then do finished
    /// requests notify, which takes a lock.
    watched: AtomicBool,
    close_upgraded: watch::Sender<bool>,
    pub(crate) checker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct CheckState {
    pub hysteresis: Hysteresis,
    pub draining: bool,
    pub grace_until: Instant,
    pub checks_done: u64,
    pub last_failure: Option<String>,
}

impl Backend {
    /// `threads`: the proxy's threads, each with its own idle pool.
    pub(crate) fn new(
        task: String,
        addr: SocketAddr,
        rise: u32,
        grace: Duration,
        threads: usize,
    ) -> Backend {
        Backend {
            task,
            addr,
            routable: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            state: Mutex::new(CheckState {
                hysteresis: Hysteresis::new(rise),
                draining: false,
                grace_until: Instant::now() + grace,
                checks_done: 0,
                last_failure: None,
            }),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            raw_idle: (0..threads.max(1))
                .map(|_| Mutex::new(RawPool::default()))
                .collect(),
            quiet: Notify::new(),
            watched: AtomicBool::new(false),
            close_upgraded: watch::channel(false).0,
            checker: Mutex::new(None),
        }
    }

    /// Whether new requests may go here: one atomic load on the hot path.
    pub fn routable(&self) -> bool {
        self.routable.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::SeqCst)
    }

    pub fn checks_done(&self) -> u64 {
        lock(&self.state).checks_done
    }

    fn refresh_routable(&self, s: &CheckState) {
        let r = s.hysteresis.healthy() && !s.draining && Instant::now() >= s.grace_until;
        self.routable.store(r, Ordering::Release);
    }

    /// Records an active check result; returns a transition to report.
    pub(crate) fn record(
        &self,
        result: &Result<(), String>,
        check: &HealthCheck,
    ) -> Option<Transition> {
        let mut s = lock(&self.state);
        s.checks_done += 1;
        if let Err(why) = result {
            s.last_failure = Some(why.clone());
        }
        let t = s.hysteresis.record(result.is_ok(), check);
        self.refresh_routable(&s);
        t
    }

    /// Time left in the grace period.
    pub(crate) fn grace_left(&self) -> Duration {
        lock(&self.state)
            .grace_until
            .saturating_duration_since(Instant::now())
    }

    /// Re-evaluates routability (the grace period may have ended).
    pub(crate) fn tick(&self) {
        let s = lock(&self.state);
        self.refresh_routable(&s);
    }

    /// Passive ejection after a refused or reset connection.
    pub(crate) fn eject(&self, why: &str, check: &HealthCheck) -> Option<Transition> {
        let mut s = lock(&self.state);
        s.last_failure = Some(why.to_string());
        let t = s.hysteresis.eject(check);
        self.refresh_routable(&s);
        drop(s);
        self.close_idle();
        t
    }

    /// Closes every idle pooled connection.
    pub(crate) fn close_idle(&self) {
        lock(&self.idle).clear();
        // Streams in flight keep the connection until they end.
        lock(&self.h2).take();
        for pool in &self.raw_idle {
            let mut pool = lock(pool);
            pool.idle.clear();
            pool.low = 0;
        }
    }

    /// Gives the read buffers grown for large answers back, on the
    /// fast-path connections that stayed idle since the last call (the
    /// health checker calls it every interval). Connections in use keep
    /// theirs (see [`KEEP_GROWN`]). The memory is free for the next burst;
    /// glibc's allocator returns little of it to the system, so this
    /// lowers the agent's RSS less than it frees.
    pub(crate) fn trim_idle(&self) {
        for pool in &self.raw_idle {
            let mut pool = lock(pool);
            let RawPool { idle, low } = &mut *pool;
            for up in &mut idle[..*low] {
                shrink(&mut up.buf);
            }
            *low = idle.len();
        }
    }

    pub fn last_failure(&self) -> Option<String> {
        lock(&self.state).last_failure.clone()
    }

    /// Takes the backend out of rotation and closes its idle connections.
    pub(crate) fn start_draining(&self) {
        let mut s = lock(&self.state);
        s.draining = true;
        self.refresh_routable(&s);
        drop(s);
        self.close_idle();
    }

    /// Waits until nothing is in flight and no upgraded connection remains,
    /// or `limit` passes; then closes what is still upgraded. Returns the
    /// requests still in flight at the end (0 when drained early).
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        // SeqCst with the count's decrement in `InFlight::drop`: either the
        // dropper sees the flag and notifies, or this sees the new count.
        self.watched.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.quiet.notified();
            if self.in_flight() == 0 && self.upgraded() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let _ = self.close_upgraded.send(true);
        self.in_flight()
    }

    pub(crate) fn stop_checker(&self) {
        if let Some(h) = lock(&self.checker).take() {
            h.abort();
        }
        self.close_idle();
    }

    /// A new connection to the task, without Nagle's delay.
    async fn connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<tokio::net::TcpStream, std::io::Error> {
        let stream =
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// An idle connection ready for a request, or a new one.
    pub(crate) async fn checkout(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, std::io::Error> {
        {
            let mut idle = lock(&self.idle);
            idle.retain(|s| !s.is_closed());
            if let Some(i) = idle.iter().position(|s| s.is_ready()) {
                return Ok(idle.swap_remove(i));
            }
        }
        let stream = self.connect(connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(cause = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }

    /// The task's HTTP/2 connection, made when there is none (or it
    /// closed). Several requests may race to make it; the last is kept.
    pub(crate) async fn checkout_h2(
        &self,
        connect_timeout: Duration,
    ) -> Result<hyper::client::conn::http2::SendRequest<ProxyBody>, std::io::Error> {
        if let Some(s) = lock(&self.h2).as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = self.connect(connect_timeout).await?;
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "backend HTTP/2 connection ended");
            }
        });
        if self.routable() {
            *lock(&self.h2) = Some(sender.clone());
        }
        Ok(sender)
    }

    /// Returns a connection to the pool unless the backend is draining.
    pub(crate) fn checkin(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() || !self.routable() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// A fast-path connection: an idle one (the most recent, so idle ones
    /// age out at the task's keep-alive timeout), or a new one. An idle
    /// connection is checked first (with `always`, for a request that
    /// cannot be sent twice; else once it sat in the pool for
    /// [`PROBE_AFTER`]): one the task closed, or sent anything on meanwhile
    /// (a 408 before closing it), is dropped, since those bytes would be
    /// read as the next client's answer. A connection reused sooner by a
    /// request that can be retried is not: the check is a `recv` whenever
    /// the last read filled its buffer, and doing it on every reuse cost a
    /// quarter of the 64 KiB keep-alive rows' throughput in
    /// bench/proxy.sh. (A connection that answered a HEAD is never pooled:
    /// a task sending a body anyway does it at once.) The flag says
    /// whether the connection was reused.
    pub(crate) async fn checkout_raw(
        &self,
        connect_timeout: Duration,
        always: bool,
    ) -> Result<(Upstream, bool), std::io::Error> {
        loop {
            let popped = {
                let mut pool = lock(self.raw_pool());
                let up = pool.idle.pop();
                pool.low = pool.low.min(pool.idle.len());
                up
            };
            let Some(up) = popped else {
                break;
            };
            if !always && up.idle_since.elapsed() < PROBE_AFTER {
                return Ok((up, true));
            }
            match up.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok((up, true)),
                _ => continue, // closed, or unexpected bytes: not usable
            }
        }
        let stream = self.connect(connect_timeout).await?;
        Ok((
            Upstream {
                stream,
                buf: bytes::BytesMut::with_capacity(UPSTREAM_BUF),
                idle_since: Instant::now(),
            },
            false,
        ))
    }

    /// Returns a fast-path connection to the pool unless the backend is
    /// draining or ejected.
    pub(crate) fn checkin_raw(&self, mut up: Upstream) {
        if !self.routable() || !up.buf.is_empty() {
            return;
        }
        let mut pool = lock(self.raw_pool());
        if pool.idle.len() >= MAX_RAW_IDLE {
            return;
        }
        if pool.idle.len() >= KEEP_GROWN {
            shrink(&mut up.buf);
        }
        up.idle_since = Instant::now();
        pool.idle.push(up);
    }

    /// The calling proxy thread's idle pool.
    fn raw_pool(&self) -> &Mutex<RawPool> {
        let i = crate::shard::current() % self.raw_idle.len();
        &self.raw_idle[i]
    }

    pub(crate) fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    pub(crate) fn begin_upgraded(self: &Arc<Self>) -> (Upgraded, watch::Receiver<bool>) {
        self.upgraded.fetch_add(1, Ordering::AcqRel);
        (Upgraded(Arc::clone(self)), self.close_upgraded.subscribe())
    }
}

/// Read buffer of a fast-path connection to a task: enough for a response head and a small body; a large body's reads grow
/// it (fast.rs) and it shrinks back when the connection returns idle.
pub(crate) const UPSTREAM_BUF: usize = 4 * 1024;

/// Gives an empty read buffer grown for a large answer its small size back.
fn shrink(buf: &mut bytes::BytesMut) {
    // `capacity()` would not tell a grown buffer: it counts from where
    // reading stopped, 0 once a whole answer was consumed. Reclaiming twice
    // the small size without allocating succeeds only if the buffer is
    // that large.
    if buf.try_reclaim(2 * UPSTREAM_BUF) {
        *buf = bytes::BytesMut::with_capacity(UPSTREAM_BUF);
    }
}

/// One proxy thread's idle fast-path connections to a backend.
#[derive(Default)]
struct RawPool {
    /// Most recently returned last, and reused first.
    idle: Vec<Upstream>,
    /// The fewest idle since the last [`Backend::trim_idle`]: the
    /// connections below this index have not left the pool since.
    low: usize,
}

/// A fast-path connection to a task, with what was read but not yet used.
pub(crate) struct Upstream {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
    /// When it last went back to the pool.
    pub idle_since: Instant,
}

/// How long a pooled connection sits idle before it is checked for a
/// close or stray bytes on reuse ([`Backend::checkout_raw`]).
const PROBE_AFTER: Duration = Duration::from_millis(250);

/// Counts one in-flight request until dropped.
pub(crate) struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.0.watched.load(Ordering::SeqCst) {
            self.0.quiet.notify_waiters();
        }
    }
}

/// Counts one upgraded connection until dropped.
pub(crate) struct Upgraded(Arc<Backend>);

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.0.upgraded.fetch_sub(1, Ordering::SeqCst);
        if self.0.watched.load(Ordering::SeqCst) {
            self.0.quiet.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    /// A routable backend at a listener's address, its pool for one thread.
    /// (The task accepts and holds every connection.)
    async fn backend() -> (Backend, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let b = Backend::new("t".into(), addr, 1, Duration::ZERO, 1);
        assert!(b.record(&Ok(()), &HealthCheck::default()).is_some());
        assert!(b.routable());
        (b, task)
    }

    /// A connection whose buffer read, and then passed on, a 64 KiB answer.
    async fn used_for_a_large_answer(b: &Backend) -> Upstream {
        let (mut up, _) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        up.buf.reserve(64 * 1024);
        up.buf.extend_from_slice(&[b'x'; 64 * 1024]);
        up.buf.advance(64 * 1024);
        up
    }

    /// Takes `n` pooled connections, most recent first: whether each one's
    /// buffer is still grown.
    async fn grown_in_pool_order(b: &Backend, n: usize) -> Vec<bool> {
        let mut grown = Vec::new();
        for _ in 0..n {
            let (mut up, reused) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
            assert!(reused);
            grown.push(up.buf.try_reclaim(2 * UPSTREAM_BUF));
            assert!(up.buf.capacity() >= UPSTREAM_BUF);
        }
        grown
    }

    #[tokio::test]
    async fn a_pooled_connection_the_task_sent_unasked_bytes_on_is_not_reused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Backend::new("t".into(), addr, 1, Duration::ZERO, 1);
        assert!(b.record(&Ok(()), &HealthCheck::default()).is_some());
        let (up, reused) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        assert!(!reused);
        let (mut task_side, _) = listener.accept().await.unwrap();
        b.checkin_raw(up);
        // While it is idle in the pool, the task sends what no request
        // asked for (here a 408 before an idle close).
        task_side
            .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(PROBE_AFTER + Duration::from_millis(50)).await;
        let (fresh, reused) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        assert!(!reused, "a new connection, not the one holding the 408");
        // A quiet pooled connection is reused, checked or not.
        let _second = listener.accept().await.unwrap();
        b.checkin_raw(fresh);
        tokio::time::sleep(PROBE_AFTER + Duration::from_millis(50)).await;
        let (again, reused) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        assert!(reused);
        b.checkin_raw(again);
        let (_, reused) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        assert!(reused);
    }

    #[tokio::test]
    async fn connections_returned_to_a_deep_pool_give_their_large_buffers_back() {
        let (b, _task) = backend().await;
        let mut ups = Vec::new();
        for _ in 0..KEEP_GROWN + 2 {
            ups.push(used_for_a_large_answer(&b).await);
        }
        for up in ups {
            b.checkin_raw(up);
        }
        let grown = grown_in_pool_order(&b, KEEP_GROWN + 2).await;
        // Most recent first: the two returned to a pool of KEEP_GROWN.
        assert_eq!(grown[..2], [false, false]);
        assert!(grown[2..].iter().all(|&g| g));
    }

    #[tokio::test]
    async fn connections_idle_for_a_whole_interval_give_their_large_buffers_back() {
        let (b, _task) = backend().await;
        let mut ups = Vec::new();
        for _ in 0..4 {
            ups.push(used_for_a_large_answer(&b).await);
        }
        for up in ups {
            b.checkin_raw(up);
        }
        // Nothing has stayed idle for a whole interval yet.
        b.trim_idle();
        // Two are taken and returned: the pool never went below two.
        let (x, _) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        let (y, _) = b.checkout_raw(Duration::from_secs(5), false).await.unwrap();
        b.checkin_raw(y);
        b.checkin_raw(x);
        b.trim_idle();
        let grown = grown_in_pool_order(&b, 4).await;
        // Most recent first: the two in use keep theirs, the two idle
        // through the interval are small again.
        assert_eq!(grown, [true, true, false, false]);
    }
}
