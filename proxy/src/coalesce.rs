//! Writes of an HTTP/2 client connection, gathered.
//!
//! hyper's HTTP/2 server runs each stream as a task. When a stream's answer
//! is ready it wakes the connection's task, which writes what is queued and
//! flushes: one write system call (and, over TLS, one record) per answer,
//! although other streams' answers are often ready a moment later. HAProxy
//! writes once per pass of its event loop instead: at 10 connections x 10
//! streams (bench/proxy.sh's h2 row) it made 0.07 writes per request, and
//! Dockhand 0.9 before this, 0.47 with it.
//!
//! [`Coalesce`] keeps what is written in a buffer and, on the first flush,
//! yields with [`tokio::task::yield_now`], which wakes the task only after
//! the runtime next polls for I/O events: the streams whose task answers
//! arrived meanwhile run first and add their answers, and the next flush
//! writes them all at once.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes above this are written without waiting for a flush.
const HIGH_WATER: usize = 64 * 1024;

pub(crate) struct Coalesce<I> {
    io: I,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    /// The yield of a flush in progress.
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<I> Coalesce<I> {
    pub(crate) fn new(io: I) -> Coalesce<I> {
        Coalesce {
            io,
            buf: Vec::new(),
            sent: 0,
            yielding: None,
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
            let yielding = this
                .yielding
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(yielding.as_mut().poll(cx));
            this.yielding = None;
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
}
