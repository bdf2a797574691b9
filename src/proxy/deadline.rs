//! [`DeadlineBody`]: an upstream response body that must end by a deadline
//! (`upstreams.NAME.body_timeout`).
//!
//! A streamed body is relayed frame by frame while the client reads it; the upstream request's
//! `timeout` no longer applies once the head (and any buffered prefix) is in. Without a bound,
//! an origin that trickles bytes keeps the upstream connection, the client connection and the
//! task serving them alive for as long as it likes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// The deadline of a streamed response body passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upstream response body did not end within body_timeout")]
pub(crate) struct BodyDeadlineExceeded;

pin_project! {
    /// `inner` until `deadline`; then an error, so the client sees an aborted body (a reset
    /// stream, or a connection closed before the declared length / the last chunk), never a
    /// short body that looks complete. Dropping it drops `inner`, which closes the upstream
    /// connection mid-body.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        expired: bool,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner`, cut off `timeout` from now.
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(timeout),
            expired: false,
        }
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        // The body first: a frame that is ready is relayed even at the deadline.
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.poll(cx).is_ready() {
            *this.expired = true;
            return Poll::Ready(Some(Err(BodyDeadlineExceeded.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_fails() {
        // A body that never ends: the channel's sender is kept and never sends.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = http_body_util::StreamBody::new(stream);
        let body = DeadlineBody::new(body, Duration::from_millis(200));
        tokio::pin!(body);
        let started = tokio::time::Instant::now();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the deadline must end the body")
            .expect("an error frame");
        assert!(
            frame.is_err(),
            "the deadline must end the body with an error"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(body.frame().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn a_body_that_ends_in_time_is_untouched() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let body = DeadlineBody::new(body, Duration::from_secs(5));
        let bytes = body.collect().await.expect("complete").to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
