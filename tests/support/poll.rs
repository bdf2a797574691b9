//! Waiting without sleeping for a guess: poll a condition until it holds, with a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `f` every 25 ms until it returns true; panics with `what` once `timeout` has passed.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
