//! The request body towards an upstream, and the rule that keeps a proxied write from being
//! sent twice: a body may move on to the next target only while no target has read any of it.
//!
//! [`OutgoingBody`] holds the client's body in a shared slot. Each attempt gets a body that
//! takes the client's body out of the slot on its first read. An attempt that failed before
//! reading (the connect failed: nothing was sent) leaves it there for the next target; once
//! taken, the body is spent and [`OutgoingBody::attempt`] says so.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_http::timeout::{TimeoutBody, TimeoutError};

use crate::shared::lock;

/// Why the client's body could not be sent: found in the error of a failed exchange, so the
/// answer blames the client (413/408/400) rather than the upstream (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientBodyError {
    /// More than the limit.
    #[error("the request body is over the limit")]
    TooLarge,
    /// The client sent nothing for longer than the body read timeout.
    #[error("the client stopped sending the request body")]
    Timeout,
    /// The client's connection failed mid-body.
    #[error("the request body could not be read")]
    Read,
}

impl ClientBodyError {
    /// The client-body error somewhere in `error`'s source chain, if any.
    pub(crate) fn find(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        std::iter::successors(Some(error), |e| e.source())
            .find_map(|e| e.downcast_ref::<Self>())
            .copied()
    }
}

/// The body of one upstream request, possibly tried on several targets.
#[derive(Debug)]
pub(crate) struct OutgoingBody {
    /// `None` for a request without a body (every attempt sends an empty one).
    slot: Option<Arc<Slot>>,
    /// The client body's length hint and emptiness, taken before wrapping (the timeout
    /// wrapper hides them), so the upstream request is framed as the client's was.
    hint: SizeHint,
    empty: bool,
}

type Slot = Mutex<Option<Body>>;

impl OutgoingBody {
    /// No body: safe to send to any number of targets.
    pub(crate) fn empty() -> Self {
        Self {
            slot: None,
            hint: SizeHint::with_exact(0),
            empty: true,
        }
    }

    /// The client's body: sent to at most one target that reads it, cut off past `limit`
    /// bytes or after `idle` without data, with the cause kept as a [`ClientBodyError`].
    pub(crate) fn new(body: Body, limit: usize, idle: Duration) -> Self {
        let hint = http_body::Body::size_hint(&body);
        let empty = http_body::Body::is_end_stream(&body);
        let body = TimeoutBody::new(idle, Limited::new(body, limit)).map_err(|e| {
            let e: &(dyn std::error::Error + 'static) = &*e;
            let cause = if e.is::<TimeoutError>() {
                ClientBodyError::Timeout
            } else if e.is::<LengthLimitError>() {
                ClientBodyError::TooLarge
            } else {
                ClientBodyError::Read
            };
            axum::Error::new(cause)
        });
        Self {
            slot: Some(Arc::new(Mutex::new(Some(Body::new(body))))),
            hint,
            empty,
        }
    }

    /// The body for the next attempt, or `None` when an earlier target already read it.
    pub(crate) fn attempt(&self) -> Option<Body> {
        match &self.slot {
            None => Some(Body::empty()),
            Some(slot) if lock(slot).is_some() => Some(Body::new(Attempt {
                slot: slot.clone(),
                body: None,
                hint: self.hint,
                empty: self.empty,
            })),
            Some(_) => None,
        }
    }
}

/// One attempt's view of the body: takes it from the slot on the first read.
struct Attempt {
    slot: Arc<Slot>,
    body: Option<Body>,
    hint: SizeHint,
    empty: bool,
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.body.is_none() {
            this.body = lock(&this.slot).take();
        }
        match &mut this.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Another attempt took it: it cannot be sent again.
            None => Poll::Ready(Some(Err(axum::Error::new("request body already sent")))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }

    fn size_hint(&self) -> SizeHint {
        // Read once, before the first frame, to frame the request (Content-Length or chunked).
        match &self.body {
            None => self.hint,
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_unread_body_moves_on_and_a_read_one_is_spent() {
        let outgoing = OutgoingBody::new(Body::from("payload"), 100, Duration::from_secs(5));
        // A first attempt that never reads (its connect failed) leaves the body in place.
        let first = outgoing.attempt().unwrap();
        assert_eq!(http_body::Body::size_hint(&first).exact(), Some(7));
        drop(first);
        let second = outgoing.attempt().unwrap();
        assert!(!http_body::Body::is_end_stream(&second));
        assert_eq!(second.collect().await.unwrap().to_bytes(), "payload");
        assert!(
            outgoing.attempt().is_none(),
            "a read body must not be resent"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_fails_as_too_large() {
        let outgoing = OutgoingBody::new(Body::from("0123456789"), 4, Duration::from_secs(5));
        let err = outgoing.attempt().unwrap().collect().await.unwrap_err();
        assert_eq!(ClientBodyError::find(&err), Some(ClientBodyError::TooLarge));
    }

    #[tokio::test]
    async fn a_stalled_body_fails_as_a_timeout() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stalled = Body::from_stream(tokio_stream_of(rx));
        let outgoing = OutgoingBody::new(stalled, 4, Duration::from_millis(20));
        let err = outgoing.attempt().unwrap().collect().await.unwrap_err();
        assert_eq!(ClientBodyError::find(&err), Some(ClientBodyError::Timeout));
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn an_empty_body_can_be_sent_again() {
        let outgoing = OutgoingBody::empty();
        for _ in 0..2 {
            let body = outgoing.attempt().unwrap();
            assert!(http_body::Body::is_end_stream(&body));
            assert!(body.collect().await.unwrap().to_bytes().is_empty());
        }
    }
}
