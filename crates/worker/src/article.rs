//! One client connection under the article's protocol.
//!
//! Read the first chunk the client sends (one read of up to 2048 bytes),
//! reply `server get message: ` followed by exactly those bytes, close. The
//! bytes are never interpreted, so any content is fine; a client that closes
//! without sending gets the bare prefix, as the Python original does.
//!
//! [`ArticleConn::drive`] advances the state machine as far as the socket
//! allows and is generic over `Read + Write`, so it is unit-tested without
//! sockets. Simulated work ([`Work`]) runs between reading the request and
//! writing the reply: busy CPU in place, and a delay as a timer, so other
//! connections are served meanwhile.

use std::io::{Read, Write};
use std::time::Instant;

use handoff_proto::{MAX_REPLY_LEN, REPLY_PREFIX, REQUEST_CHUNK_LEN};

use crate::conn::{classify, discard_pending_input, Outcome, Progress, Work};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reading,
    /// Request read; replying once the simulated delay is over.
    Delaying(Instant),
    Writing,
}

/// Replies up to this long (requests up to 44 bytes, `hello` among them)
/// are kept in the connection itself; longer ones on the heap.
const INLINE_REPLY_LEN: usize = 64;

/// The reply, built once the request is read: the prefix and the request.
#[derive(Debug)]
enum Reply {
    Inline { bytes: [u8; INLINE_REPLY_LEN], len: u8 },
    Heap(Box<[u8]>),
}

impl Reply {
    fn new(request: &[u8]) -> Reply {
        let len = REPLY_PREFIX.len() + request.len();
        debug_assert!(len <= MAX_REPLY_LEN);
        match u8::try_from(len) {
            Ok(short) if len <= INLINE_REPLY_LEN => {
                let mut bytes = [0u8; INLINE_REPLY_LEN];
                bytes[..REPLY_PREFIX.len()].copy_from_slice(REPLY_PREFIX);
                bytes[REPLY_PREFIX.len()..len].copy_from_slice(request);
                Reply::Inline { bytes, len: short }
            }
            _ => Reply::Heap([REPLY_PREFIX, request].concat().into_boxed_slice()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Reply::Inline { bytes, len } => &bytes[..usize::from(*len)],
            Reply::Heap(bytes) => bytes,
        }
    }
}

/// The article's protocol on one connection. While it waits for its
/// request it holds no buffer (the request is read into the stack), so an
/// idle connection costs the worker about a hundred bytes of its own: the
/// nginx way with idle keep-alive connections.
#[derive(Debug)]
pub struct ArticleConn {
    phase: Phase,
    /// `None` until the request is read.
    reply: Option<Reply>,
    written: usize,
    /// The request filled the whole chunk, so more bytes may be waiting.
    maybe_more_input: bool,
}

impl ArticleConn {
    pub fn new() -> ArticleConn {
        ArticleConn { phase: Phase::Reading, reply: None, written: 0, maybe_more_input: false }
    }

    /// Makes as much progress as `stream` (and the clock) allow.
    pub fn drive<S: Read + Write>(&mut self, stream: &mut S, work: &Work) -> Progress {
        loop {
            match self.phase {
                Phase::Reading => {
                    let mut chunk = [0u8; REQUEST_CHUNK_LEN];
                    match stream.read(&mut chunk) {
                        Ok(n) => {
                            self.reply = Some(Reply::new(&chunk[..n.min(REQUEST_CHUNK_LEN)]));
                            self.maybe_more_input = n == REQUEST_CHUNK_LEN;
                            work.burn();
                            self.phase = if work.delay.is_zero() {
                                Phase::Writing
                            } else {
                                Phase::Delaying(Instant::now() + work.delay)
                            };
                        }
                        Err(err) => return classify(err),
                    }
                }
                Phase::Delaying(until) => {
                    if Instant::now() < until {
                        return Progress::WaitUntil(until);
                    }
                    self.phase = Phase::Writing;
                }
                Phase::Writing => {
                    let reply = self.reply.as_ref().map_or(&[][..], Reply::as_bytes);
                    match stream.write(&reply[self.written.min(reply.len())..]) {
                        Ok(0) => return Progress::Done(Outcome::Failed),
                        Ok(n) => {
                            self.written += n;
                            if self.written >= reply.len() {
                                if self.maybe_more_input {
                                    discard_pending_input(stream);
                                }
                                return Progress::Done(Outcome::Served {
                                    bytes_in: reply.len().saturating_sub(REPLY_PREFIX.len()),
                                    bytes_out: reply.len(),
                                });
                            }
                        }
                        Err(err) => return classify(err),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use std::io;
    use std::time::Duration;

    use super::*;

    /// A scripted socket: each read/write takes the next scripted result.
    #[derive(Default)]
    struct Script {
        reads: VecDeque<io::Result<Vec<u8>>>,
        write_limits: VecDeque<io::Result<usize>>,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                None => Err(io::ErrorKind::WouldBlock.into()),
                Some(Err(err)) => Err(err),
                Some(Ok(bytes)) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    Ok(n)
                }
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.write_limits.pop_front() {
                None => {
                    self.written.extend_from_slice(buf);
                    Ok(buf.len())
                }
                Some(Err(err)) => Err(err),
                Some(Ok(limit)) => {
                    let n = limit.min(buf.len());
                    self.written.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn() -> ArticleConn {
        ArticleConn::new()
    }

    const NO_WORK: Work = Work { busy: Duration::ZERO, delay: Duration::ZERO };

    fn check(request: &[u8]) {
        let mut script = Script::default();
        script.reads.push_back(Ok(request.to_vec()));
        let outcome = conn().drive(&mut script, &NO_WORK);
        let mut expected = REPLY_PREFIX.to_vec();
        expected.extend_from_slice(request);
        assert_eq!(script.written, expected);
        assert_eq!(
            outcome,
            Progress::Done(Outcome::Served { bytes_in: request.len(), bytes_out: expected.len() })
        );
    }

    #[test]
    fn replies_with_the_prefix_and_the_exact_bytes() {
        check(b"hello");
        check("你好".as_bytes());
        check(&[0, 255, 13, 10, 128, 0xc3]);
        check(&[]);
        // Past the inline reply (44 bytes of request): on the heap.
        check(&[b'x'; INLINE_REPLY_LEN - REPLY_PREFIX.len()]);
        check(&[b'y'; INLINE_REPLY_LEN - REPLY_PREFIX.len() + 1]);
        check(&[b'z'; REQUEST_CHUNK_LEN]);
    }

    #[test]
    fn an_idle_connection_holds_no_request_buffer() {
        // The request chunk (2 KiB) is read into the stack, not kept per
        // connection: a worker holding 40,000 idle connections would
        // otherwise spend 80 MiB on them.
        assert!(
            std::mem::size_of::<ArticleConn>() <= 128,
            "{}",
            std::mem::size_of::<ArticleConn>()
        );
        assert!(
            std::mem::size_of::<crate::protocol::Conn>() <= 256,
            "{}",
            std::mem::size_of::<crate::protocol::Conn>()
        );
    }

    #[test]
    fn waits_for_readiness_then_finishes_a_partial_write() {
        let mut script = Script::default();
        let mut conn = conn();
        assert_eq!(conn.drive(&mut script, &NO_WORK), Progress::WaitIo, "nothing to read yet");
        script.reads.push_back(Ok(b"abc".to_vec()));
        script.write_limits.push_back(Ok(5));
        script.write_limits.push_back(Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(conn.drive(&mut script, &NO_WORK), Progress::WaitIo, "socket buffer full");
        assert_eq!(
            conn.drive(&mut script, &NO_WORK),
            Progress::Done(Outcome::Served { bytes_in: 3, bytes_out: REPLY_PREFIX.len() + 3 })
        );
        assert_eq!(script.written, b"server get message: abc");
    }

    #[test]
    fn a_reset_is_counted_as_reset_and_other_errors_as_failed() {
        let mut script = Script::default();
        script.reads.push_back(Err(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(conn().drive(&mut script, &NO_WORK), Progress::Done(Outcome::Reset));
        let mut script = Script::default();
        script.reads.push_back(Ok(b"x".to_vec()));
        script.write_limits.push_back(Err(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(conn().drive(&mut script, &NO_WORK), Progress::Done(Outcome::Reset));
        let mut script = Script::default();
        script.reads.push_back(Err(io::Error::other("boom")));
        assert_eq!(conn().drive(&mut script, &NO_WORK), Progress::Done(Outcome::Failed));
    }

    #[test]
    fn a_delay_waits_on_the_clock_not_the_socket_and_busy_work_burns_cpu() {
        let mut script = Script::default();
        script.reads.push_back(Ok(b"slow".to_vec()));
        let mut conn = conn();
        let work = Work { busy: Duration::from_millis(2), delay: Duration::from_millis(30) };
        let started = Instant::now();
        let Progress::WaitUntil(until) = conn.drive(&mut script, &work) else {
            panic!("expected a timer")
        };
        assert!(started.elapsed() >= Duration::from_millis(2), "busy work ran");
        assert!(until >= started + Duration::from_millis(30));
        assert!(script.written.is_empty(), "no reply before the delay");
        assert_eq!(conn.drive(&mut script, &work), Progress::WaitUntil(until), "too early");
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        assert!(matches!(conn.drive(&mut script, &work), Progress::Done(Outcome::Served { .. })));
        assert_eq!(script.written, b"server get message: slow");
    }

    #[test]
    fn reads_at_most_one_chunk_and_discards_the_rest_after_replying() {
        let mut script = Script::default();
        script.reads.push_back(Ok(vec![b'a'; 4000]));
        script.reads.push_back(Ok(vec![b'b'; 1952]));
        let outcome = conn().drive(&mut script, &NO_WORK);
        assert_eq!(
            outcome,
            Progress::Done(Outcome::Served {
                bytes_in: REQUEST_CHUNK_LEN,
                bytes_out: REPLY_PREFIX.len() + REQUEST_CHUNK_LEN
            })
        );
        assert_eq!(script.written.len(), REPLY_PREFIX.len() + REQUEST_CHUNK_LEN);
        assert!(script.reads.is_empty(), "the leftover input was drained before close");
    }
}
