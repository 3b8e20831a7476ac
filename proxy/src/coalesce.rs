//! Writes of an HTTP/2 client connection, gathered.
//!
//! hyper's HTTP/2 server runs each stream as a task. When a stream's answer
//! is ready it wakes the connection's task, which writes what is queued and
//! flushes: one write system call (and, over TLS, one record) per answer,
//! although other streams' answers are often ready a moment later. HAProxy
//! writes once per pass of its event loop instead: at 10 connections x 10
//! streams (bench/proxy.sh's h2 row) it makes about 0.2 writes per request;
//! Dockhand made 0.9 when it wrote on every flush.
//!
//! [`Coalesce`] keeps what is written in a buffer and holds a flush back
//! for a few turns of the runtime's queue while other streams keep adding
//! their answers. The first turn yields with [`tokio::task::yield_now`];
//! the next stream that answers wakes the connection task, which adds that
//! answer. While each turn added something (more streams are answering
//! right now), the task goes to the back of the run queue again, behind
//! the stream tasks already woken, up to [`TURNS`] turns in all; then it
//! writes everything at once. One turn (the flush after the first answer)
//! made 0.52 writes per request; four make 0.21.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes above this are written without waiting for a flush.
const HIGH_WATER: usize = 64 * 1024;

/// Turns of the run queue a flush waits at most for more answers. Each
/// costs one poll of the connection's task; four take most of what there is
/// to gather at 100 concurrent streams, and bound the added latency.
const TURNS: u8 = 4;

/// Where a held-back flush is.
enum Wait {
    /// No flush is held back.
    Idle,
    /// The first turn: a yield to the runtime.
    Yielding(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// A later turn: the task woke itself and waits behind the tasks queued
    /// before it.
    Requeued,
}

pub(crate) struct Coalesce<I> {
    io: I,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    wait: Wait,
    /// The buffer's length when the current turn began.
    mark: usize,
    /// Turns taken by the flush held back.
    turns: u8,
}

impl<I> Coalesce<I> {
    pub(crate) fn new(io: I) -> Coalesce<I> {
        Coalesce {
            io,
            buf: Vec::new(),
            sent: 0,
            wait: Wait::Idle,
            mark: 0,
            turns: 0,
        }
    }
}

impl<I: AsyncWrite + Unpin> Coalesce<I> {
    /// Writes the whole buffer to `io`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Holds a flush back while other streams are adding their answers.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.wait {
                Wait::Idle => {
                    self.mark = self.buf.len();
                    self.turns = 1;
                    self.wait = Wait::Yielding(Box::pin(tokio::task::yield_now()));
                    continue;
                }
                Wait::Yielding(y) => ready!(y.as_mut().poll(cx)),
                Wait::Requeued => {}
            }
            // A turn has ended; whatever was added meanwhile is in `buf`.
            if self.buf.len() > self.mark && self.turns < TURNS {
                self.mark = self.buf.len();
                self.turns += 1;
                self.wait = Wait::Requeued;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.wait = Wait::Idle;
            return Poll::Ready(());
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        let mut n = 0;
        for d in data {
            this.buf.extend_from_slice(d);
            n += d.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.len() > this.sent {
            ready!(this.poll_gather(cx));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Counts the writes that reach the inner stream.
    #[derive(Default)]
    struct Counting {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_between_flushes_reach_the_stream_as_one() {
        let mut c = Coalesce::new(Counting::default());
        c.write_all(b"one ").await.unwrap();
        c.write_all(b"two ").await.unwrap();
        c.write_all(b"three").await.unwrap();
        assert_eq!(c.io.writes, 0, "nothing is written before a flush");
        c.flush().await.unwrap();
        assert_eq!(c.io.writes, 1);
        assert_eq!(c.io.bytes, b"one two three");
        // A flush with nothing buffered does not yield or write.
        c.flush().await.unwrap();
        assert_eq!(c.io.writes, 1);
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_without_a_flush() {
        let mut c = Coalesce::new(Counting::default());
        let chunk = vec![7u8; HIGH_WATER];
        c.write_all(&chunk).await.unwrap();
        c.write_all(b"x").await.unwrap();
        assert_eq!(
            c.io.writes, 1,
            "the full buffer went out before more was taken"
        );
        c.shutdown().await.unwrap();
        assert_eq!(c.io.bytes.len(), HIGH_WATER + 1);
    }

    /// What hyper's HTTP/2 connection task does: on every poll, take the
    /// answers the streams have queued, then flush.
    async fn connection(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<u8>,
        expect: usize,
    ) -> Counting {
        let mut c = Coalesce::new(Counting::default());
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(b)) = rx.poll_recv(cx) {
                let _ = Pin::new(&mut c).poll_write(cx, &[b]);
            }
            ready!(Pin::new(&mut c).poll_flush(cx)).unwrap();
            if c.io.bytes.len() == expect {
                Poll::Ready(())
            } else {
                // Flushed early; wait for the rest.
                Poll::Pending
            }
        })
        .await;
        c.io
    }

    /// A stream that answers, then lets the next one answer a turn later.
    fn answer(tx: tokio::sync::mpsc::UnboundedSender<u8>, n: u8, last: u8) {
        tokio::spawn(async move {
            tx.send(n).unwrap();
            if n < last {
                answer(tx, n + 1, last);
            }
        });
    }

    #[tokio::test]
    async fn answers_that_follow_each_other_go_out_in_few_writes() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(0).unwrap();
        answer(tx, 1, 7);
        let io = tokio::spawn(async move { connection(&mut rx, 8).await })
            .await
            .unwrap();
        assert_eq!(io.bytes, [0, 1, 2, 3, 4, 5, 6, 7]);
        // One answer a turn: the first write takes answers 0 to 4 (the
        // yield, then three turns that each added one), the second the
        // rest. Writing at the end of the first turn made four writes.
        assert_eq!(io.writes, 2, "eight answers, one a turn");
    }
}
