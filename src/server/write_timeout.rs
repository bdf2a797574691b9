//! [`WriteTimeout`]: a client connection whose writes must make progress.
//!
//! hyper has no write timeout. A client that stops reading a response fills its socket
//! buffer, hyper's write stays pending, and the connection, its task and whatever feeds the
//! response (an upstream connection streaming a large body) are held for as long as the client
//! likes. This wrapper fails a write that has been pending for `server.write_timeout`, which
//! ends the connection and drops the response body with it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// `inner` with writes bounded by `timeout` without progress.
    pub(super) struct WriteTimeout<S> {
        #[pin]
        inner: S,
        timeout: Duration,
        // Boxed and reused: allocated at the first stalled write only (most connections never
        // fill their socket buffer), re-armed with `reset` after that.
        stall: Option<Pin<Box<Sleep>>>,
        // Whether `stall` is counting the current stall (cleared by any progress).
        armed: bool,
    }
}

impl<S> WriteTimeout<S> {
    pub(super) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            armed: false,
        }
    }
}

/// After a write was `Pending`: starts the stall clock if it is not running, and turns the
/// `Pending` into an error once it has run out. Polling the sleep registers the task's waker,
/// so the connection is polled again when the time is up even if the socket never wakes it.
fn stalled<T>(
    stall: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut bool,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    let deadline = Instant::now() + timeout;
    let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if !*armed {
        sleep.as_mut().reset(deadline);
        *armed = true;
    }
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for server.write_timeout",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Pending => stalled(this.stall, this.armed, *this.timeout, cx),
            ready => {
                *this.armed = false;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Pending => stalled(this.stall, this.armed, *this.timeout, cx),
            ready => {
                *this.armed = false;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_flush(cx) {
            Poll::Pending => stalled(this.stall, this.armed, *this.timeout, cx),
            ready => {
                *this.armed = false;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_without_progress_fails_after_the_timeout() {
        // A pipe whose reader never reads: writes stall once its 64-byte buffer is full.
        let (client, _server) = tokio::io::duplex(64);
        let mut io = WriteTimeout::new(client, Duration::from_millis(200));
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(5), io.write_all(&[0u8; 1024]))
            .await
            .expect("the stalled write must end")
            .expect_err("the stalled write must fail");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn slow_progress_is_not_a_stall() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = WriteTimeout::new(client, Duration::from_millis(300));
        // The reader takes 64 bytes every 50 ms: each wait is shorter than the timeout, the
        // whole write (16 waits, 800 ms) much longer.
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += server.read(&mut buf).await.expect("read");
            }
        });
        io.write_all(&[0u8; 1024])
            .await
            .expect("progress resets the clock");
        reader.await.expect("reader");
    }
}
