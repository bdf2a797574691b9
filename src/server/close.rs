//! Closing the public listener without resetting a connection a client already wrote on.
//!
//! `close(2)` on a listening socket resets every connection still in its accept queue. Those
//! are connections the kernel completed on its own, so the client (nginx, opening a new
//! upstream connection for nearly every request while we answer `Connection: close`) may
//! already have sent a request on one: a POST cut that way is a 502 the proxy must not
//! replay. So before closing, the listener (1) stops completing new handshakes, (2) waits for
//! the handshakes already under way, and (3) accepts everything queued, calling `accept(2)`
//! itself: tokio's `poll_accept` trusts readiness from the last reactor turn and would report
//! an empty queue while connections sit in it. A client that connects after (1) gets no
//! answer to its SYN, retransmits it (Linux: after 1 s), and is refused once the listener is
//! closed: a refused connect carried no request, so a proxy retries it on another instance.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// How long handshakes already answered with a SYN-ACK get to complete (their final ACK is
/// one round trip away: microseconds on loopback, well under this within a region).
const HANDSHAKE_SETTLE: Duration = Duration::from_millis(100);

/// Stops `listener` completing new handshakes, lets those under way finish, and returns every
/// connection queued on it; the caller serves them and then drops the listener.
pub(super) async fn take_queued(
    listener: &TcpListener,
) -> Vec<(tokio::net::TcpStream, SocketAddr)> {
    match refuse_new_handshakes(listener) {
        Ok(()) => tokio::time::sleep(HANDSHAKE_SETTLE).await,
        // Without the filter the queue is still drained; only a connection completed in the
        // instant between the last accept and the close can be reset.
        Err(error) => tracing::debug!(%error, "Cannot hold back new connections at shutdown."),
    }
    let mut queued = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                match stream {
                    Ok(stream) => queued.push((stream, peer)),
                    Err(error) => tracing::warn!(%peer, %error, "Dropping a queued connection."),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return queued,
            Err(error) => {
                // EMFILE and friends: what is left in the queue is reset at close; nothing
                // better can be done with no descriptor to take it.
                tracing::warn!(%error, "Accept failed while draining the listener.");
                return queued;
            }
        }
    }
}

/// Drops every SYN without ACK arriving on `listener` (a classic BPF socket filter: Linux runs
/// a listener's filter on each segment before the TCP state machine sees it), so no new
/// handshake completes; the ACKs that finish handshakes already under way still pass.
#[cfg(target_os = "linux")]
fn refuse_new_handshakes(listener: &TcpListener) -> io::Result<()> {
    use socket2::{SockFilter, SockRef};
    // Classic BPF opcodes (linux/filter.h); the program sees the segment from its TCP header.
    const LD_B_ABS: u16 = 0x30; // A = byte at offset k
    const AND_K: u16 = 0x54; // A &= k
    const JEQ_K: u16 = 0x15; // A == k ? jt : jf
    const RET_K: u16 = 0x06; // accept k bytes (0: drop)
    const TCP_FLAGS_OFFSET: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let program = [
        SockFilter::new(LD_B_ABS, 0, 0, TCP_FLAGS_OFFSET),
        SockFilter::new(AND_K, 0, 0, SYN | ACK),
        SockFilter::new(JEQ_K, 0, 1, SYN),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ];
    SockRef::from(listener).attach_filter(&program)
}

#[cfg(not(target_os = "linux"))]
fn refuse_new_handshakes(_listener: &TcpListener) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "socket filters are Linux-only",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn the_filter_holds_back_new_handshakes_but_not_queued_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        // Completed (by the kernel) and written on before the filter goes on.
        let mut early = TcpStream::connect(addr).unwrap();
        early.write_all(b"hello").unwrap();

        refuse_new_handshakes(&listener).unwrap();
        // A new connect neither completes nor is refused: its SYN is dropped.
        let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(
            late.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::TimedOut),
            "a handshake completed through the filter"
        );

        let queued = take_queued(&listener).await;
        assert_eq!(queued.len(), 1, "the early connection is still queued");
        let (stream, _) = queued.into_iter().next().unwrap();
        let mut stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Segments on the accepted connection (which inherits the filter) still pass.
        stream.write_all(b"bye").unwrap();
        let mut back = [0u8; 3];
        early.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"bye");
        drop(listener);
        // Once the listener is gone, the retransmitted SYN would be refused: nothing was sent.
        assert_eq!(
            TcpStream::connect(addr).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionRefused)
        );
    }
}
