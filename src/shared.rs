//! Two small pieces several concerns need: a mutex lock that survives a poisoned mutex, and an
//! error with its sources printed on one line.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also after a panic elsewhere poisoned it: every mutex of the gateway guards data
/// that is replaced or appended whole (a list, a map entry, a buffer), never left half-written.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error and its sources as one line, `a: b: c`, skipping a source whose text the previous
/// message already contains (hyper-util names only the stage, `client error (Connect)`, the
/// reason — `invalid peer certificate: UnknownIssuer` — is a source; lapin and `io::Error`
/// repeat their inner error's text).
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        for e in std::iter::successors(self.0.source(), |e| e.source()) {
            let text = e.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Stage(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_without_repeating_themselves() {
        let io = || std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            ErrorChain(&Stage(io())).to_string(),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            ErrorChain(&Repeats(io())).to_string(),
            "outer: invalid peer certificate: UnknownIssuer"
        );
    }
}
