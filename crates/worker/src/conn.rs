//! The connection core: what every protocol's state machine shares, and
//! nothing protocol-specific. The protocol modules ([`crate::article`],
//! [`crate::http`]) depend on this module, never the other way round; a
//! connection with its protocol chosen is [`crate::protocol::Conn`].
//!
//! A state machine's `drive` advances as far as the socket (and the clock)
//! allow and says what it waits for next ([`Progress`]) or how the
//! connection ended ([`Outcome`]); simulated work ([`Work`]) runs between
//! reading a request and writing its reply.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// What `drive` left a connection waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The socket: drive again when it is readable or writable.
    WaitIo,
    /// A simulated delay: drive again at (or after) this time.
    WaitUntil(Instant),
    /// Finished: close it.
    Done(Outcome),
}

/// Simulated work per request, so benchmarks can put the bottleneck on
/// either side (`--work-us`, `--delay-ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// CPU burnt in place (busy loop) before each reply.
    pub busy: Duration,
    /// Wait before each reply, without blocking the worker (like the
    /// article's commented-out `time.sleep(1)`, but non-blocking).
    pub delay: Duration,
}

impl Work {
    /// Burns `busy` of CPU time on this thread.
    pub fn burn(&self) {
        if self.busy.is_zero() {
            return;
        }
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < self.busy {
            for _ in 0..64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The reply was written in full.
    Served { bytes_in: usize, bytes_out: usize },
    /// The client reset the connection first.
    Reset,
    /// Another I/O error.
    Failed,
    /// A balancer's health check (PROXY v2 `LOCAL`) that ended without a
    /// request: neither a client served nor one lost.
    HealthCheck,
}

/// `WaitIo` to wait for readiness, else the outcome. (EINTR cannot happen on
/// a non-blocking socket; if it does, readiness is still there and edge
/// polling would not report it again, so it counts as a failure.)
pub fn classify(err: io::Error) -> Progress {
    match err.kind() {
        io::ErrorKind::WouldBlock => Progress::WaitIo,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Progress::Done(Outcome::Reset),
        _ => Progress::Done(Outcome::Failed),
    }
}

/// Unread bytes left in the receive queue at close make the kernel send RST
/// instead of FIN, which can cost the client the reply it has not read yet.
/// Before closing, a protocol that may have left input unread discards at
/// most this much of what already arrived.
pub const DISCARD_LIMIT: usize = 64 * 1024;

/// Reads and drops what the client already sent, up to [`DISCARD_LIMIT`],
/// until the socket would block or ends.
pub fn discard_pending_input<S: Read>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < DISCARD_LIMIT {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sent more than anyone should discard (1 MiB), read
    /// in whatever sizes asked for: how much was read.
    struct Flood {
        read: usize,
    }

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min((1 << 20) - self.read);
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn discarding_pending_input_stops_at_64_kib() {
        let mut flood = Flood { read: 0 };
        discard_pending_input(&mut flood);
        assert_eq!(flood.read, 64 * 1024);
    }

    #[test]
    fn would_block_waits_resets_are_resets_and_the_rest_failures() {
        assert_eq!(classify(io::ErrorKind::WouldBlock.into()), Progress::WaitIo);
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert_eq!(classify(kind.into()), Progress::Done(Outcome::Reset));
        }
        assert_eq!(classify(io::Error::other("boom")), Progress::Done(Outcome::Failed));
    }
}
