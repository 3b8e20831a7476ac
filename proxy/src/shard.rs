//! The proxy's worker threads: each one a single-threaded tokio runtime
//! that accepts on its own descriptor of every listener and serves the
//! connections it accepted (or was handed, see [`Loads`]).
//!
//! Why not the agent's multi-threaded runtime: its scheduler keeps a
//! bounded queue per worker (256 tasks) and spills the rest to a shared
//! one. With a thousand busy keep-alive connections, a task woken while its
//! worker's queue is full waits in the shared queue while newer wakeups
//! jump ahead, so some requests wait several rounds: at 1,000 connections
//! the proxy's p99 was about 1.5x HAProxy's (bench/proxy.sh). A
//! single-threaded runtime runs what is ready in the order it became
//! ready, as an event loop like HAProxy's or nginx's does; measured on the
//! same rig, p99 fell to HAProxy's or below. It also has no "run the woken
//! task next" slot, which made each HTTP/2 answer a write of its own.
//!
//! A connection and everything it spawns (HTTP/2 streams, upstream
//! connections it opens) stay on the thread serving it; fast-path
//! upstream connections are pooled per thread ([`current`]), so an idle
//! one is reused by the thread whose event loop watches it.
//!
//! Every thread watches every listener (a duplicate descriptor, so
//! socket-activated listeners work too): a new connection wakes each
//! thread and the first to call `accept` gets it.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The proxy thread running this code (0 off the proxy's threads).
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Proxy thread `index`'s runtime, single-threaded, built before the
/// thread starts so that every thread's handle is known up front.
pub(crate) fn runtime(index: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start proxy thread {index}: {e}"))
}

/// A proxy thread. Dropping it stops the thread at once (every task left
/// on it is dropped).
pub(crate) struct Shard {
    _stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Shard {
    /// Starts proxy thread `index` on `runtime` (from [`runtime`]): it runs
    /// `work` and then whatever is still spawned on it, until the `Shard`
    /// is dropped.
    pub(crate) fn spawn<F, Fut>(
        index: usize,
        runtime: tokio::runtime::Runtime,
        work: F,
    ) -> Result<Shard, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("dh-proxy-{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(index));
                runtime.block_on(async move {
                    tokio::pin!(stop_rx);
                    tokio::select! {
                        () = work() => {}
                        _ = &mut stop_rx => return,
                    }
                    let _ = done_tx.send(());
                    let _ = stop_rx.await;
                });
                // Tasks still there are dropped with the runtime.
            })
            .map_err(|e| format!("cannot start proxy thread {index}: {e}"))?;
        Ok(Shard {
            _stop: stop_tx,
            done: done_rx,
        })
    }

    /// Waits until the thread's `work` has ended (what it spawned may
    /// still run).
    pub(crate) async fn worked(&mut self) {
        let _ = (&mut self.done).await;
    }
}

/// Open connections per proxy thread, to even them out: a thread that
/// accepted a connection hands it to the least loaded one when it has
/// clearly more than that one. All threads wake for each new connection
/// and the first to call `accept` gets it, which under a burst of connects
/// (a client pool opening at once) can leave one thread with most of them.
pub(crate) struct Loads {
    open: Box<[AtomicUsize]>,
    none: Notify,
    /// Connections handed to another thread so far.
    moved: AtomicU64,
}

impl Loads {
    pub(crate) fn new(threads: usize) -> Loads {
        Loads {
            open: (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            none: Notify::new(),
            moved: AtomicU64::new(0),
        }
    }

    /// Open connections per thread.
    pub(crate) fn counts(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// The thread that should serve a connection `me` accepted: `me`
    /// unless another has clearly fewer (`me` more than 1.5 times as many,
    /// plus 2). Handing over costs two `epoll_ctl` calls and a wakeup of
    /// the other thread; with short connections (`Connection: close`)
    /// counts swing all the time, and a tighter rule moved a third of them
    /// for nothing.
    pub(crate) fn pick(&self, me: usize) -> usize {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, fewest) = self.least();
        if mine > fewest + fewest / 2 + 2 {
            self.moved.fetch_add(1, Ordering::Relaxed);
            least
        } else {
            me
        }
    }

    /// The thread with the fewest open connections, and their count.
    fn least(&self) -> (usize, usize) {
        self.open
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or_default()
    }

    /// Counts a connection on thread `i` until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, i: usize) -> LoadGuard {
        self.open[i].fetch_add(1, Ordering::Relaxed);
        LoadGuard(Arc::clone(self), i)
    }

    /// Waits until no thread has an open connection.
    pub(crate) async fn none_open(&self) {
        while self.open.iter().any(|n| n.load(Ordering::Acquire) > 0) {
            self.none.notified().await;
        }
    }
}

/// One connection counted on a thread.
pub(crate) struct LoadGuard(Arc<Loads>, usize);

impl LoadGuard {
    /// The thread the connection is counted on.
    pub(crate) fn thread(&self) -> usize {
        self.1
    }

    /// Asked by a keep-alive connection between two requests: when its
    /// thread has more open connections than the least loaded one (by 2,
    /// plus 1/16 of that one's), the connection is counted there instead
    /// and that thread is returned; the caller moves it.
    ///
    /// [`Loads::pick`] places a new connection loosely, since short
    /// connections come and go too fast to be worth a move. A keep-alive
    /// connection stays, and a thread left with more of them answers each
    /// of them more slowly: with 50 clients and 2 threads, the split after
    /// a burst of connects was 31/19, and the p99 of the whole run was
    /// the busier thread's.
    pub(crate) fn rebalance(&mut self) -> Option<usize> {
        let loads = &self.0;
        let mine = loads.open[self.1].load(Ordering::Relaxed);
        let (least, fewest) = loads.least();
        if mine <= fewest + 1 + fewest / 16 {
            return None;
        }
        loads.open[least].fetch_add(1, Ordering::Relaxed);
        // Never the last one: this connection was counted here.
        loads.open[self.1].fetch_sub(1, Ordering::Relaxed);
        loads.moved.fetch_add(1, Ordering::Relaxed);
        self.1 = least;
        Some(least)
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if self.0.open[self.1].fetch_sub(1, Ordering::AcqRel) == 1 {
            // A permit is stored if nobody waits: no wakeup is lost.
            self.0.none.notify_one();
        }
    }
}

/// A client's TCP connection that can leave one proxy thread's event loop
/// and join another's, also under TLS (which only reads and writes it).
pub(crate) enum Socket {
    /// Watched by the event loop of the thread serving it.
    Watched(tokio::net::TcpStream),
    /// On its way to another thread: no event loop watches it.
    Moving(std::net::TcpStream),
    /// Lost on the way (its descriptor could not change event loops).
    Lost,
}

impl Socket {
    /// Leaves this thread's event loop.
    pub(crate) fn detach(&mut self) -> std::io::Result<()> {
        if let Socket::Watched(s) = std::mem::replace(self, Socket::Lost) {
            *self = Socket::Moving(s.into_std()?);
        }
        Ok(())
    }

    /// Joins the event loop of the thread running this.
    pub(crate) fn attach(&mut self) -> std::io::Result<()> {
        if let Socket::Moving(s) = std::mem::replace(self, Socket::Lost) {
            *self = Socket::Watched(tokio::net::TcpStream::from_std(s)?);
        }
        Ok(())
    }

    fn watched(self: Pin<&mut Self>) -> std::io::Result<Pin<&mut tokio::net::TcpStream>> {
        match self.get_mut() {
            Socket::Watched(s) => Ok(Pin::new(s)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection is between two proxy threads",
            )),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.watched()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.watched()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.watched()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.watched()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.watched()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_moves_only_clear_imbalance() {
        let loads = Arc::new(Loads::new(2));
        let mut held = Vec::new();
        for _ in 0..15 {
            held.push(loads.enter(0));
        }
        for _ in 0..10 {
            held.push(loads.enter(1));
        }
        // 15 against 10: stays.
        assert_eq!(loads.pick(0), 0);
        assert_eq!(loads.pick(1), 1);
        for _ in 0..3 {
            held.push(loads.enter(0));
        }
        // 18 against 10: the accepting thread hands over.
        assert_eq!(loads.pick(0), 1);
        assert_eq!(loads.pick(1), 1);
        // 2 against 0: no move for a couple of connections.
        let small = Arc::new(Loads::new(2));
        let _one = small.enter(0);
        let _two = small.enter(0);
        assert_eq!(small.pick(0), 0);
    }

    #[test]
    fn rebalance_evens_out_kept_connections() {
        let loads = Arc::new(Loads::new(2));
        // The split a burst of 50 connects left behind.
        let mut busy: Vec<LoadGuard> = (0..31).map(|_| loads.enter(0)).collect();
        let _quiet: Vec<LoadGuard> = (0..19).map(|_| loads.enter(1)).collect();
        let mut moved = 0;
        for guard in &mut busy {
            if let Some(to) = guard.rebalance() {
                assert_eq!((to, guard.thread()), (1, 1));
                moved += 1;
            }
        }
        assert_eq!(moved, 5, "31/19 becomes 26/24");
        assert_eq!(loads.counts(), [26, 24]);
        assert_eq!(loads.moved(), 5);
        // The lighter thread never gives one away.
        assert!(busy
            .iter_mut()
            .all(|g| g.thread() == 1 || g.rebalance().is_none()));
        // A moved connection is counted off its new thread when it ends.
        drop(busy);
        assert_eq!(loads.counts(), [0, 19]);
    }

    #[tokio::test]
    async fn none_open_waits_for_the_last_connection() {
        let loads = Arc::new(Loads::new(2));
        let a = loads.enter(0);
        let b = loads.enter(1);
        let mut waiter = {
            let loads = Arc::clone(&loads);
            tokio::spawn(async move { loads.none_open().await })
        };
        drop(a);
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), &mut waiter);
        assert!(early.await.is_err(), "one connection is still open");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("none_open ended")
            .unwrap();
    }
}
