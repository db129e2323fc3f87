//! Control-socket connections: line framing, limits, buffering, and the
//! bookkeeping that bounds what the control socket can cost the master.
//!
//! A [`ControlConn`] turns the bytes an operator's client sends into
//! complete lines (at most [`MAX_COMMAND_LEN`] bytes; a longer line is
//! discarded and answered with one error) and queues the JSON answers the
//! master writes back. It never blocks, and it bounds both the work and the
//! memory one client can cause: it takes at most [`LINES_PER_TURN`] lines
//! per call (reading [`READ_CHUNK`] bytes at a time, only when no complete
//! line is left), so a client that floods the socket is served a slice per
//! loop turn and the loop comes back to it ([`ReadStatus::More`]); a client
//! that leaves more than [`MAX_PENDING_OUTPUT`] bytes of answers unread —
//! it does not read, or sends faster than it reads — is disconnected at
//! once, before anything more of its input is read.
//!
//! [`ControlState`] holds the master's timers for the control socket: the
//! clients to come back to at the end of the turn, the idle timeout, the
//! accept retry after EMFILE/ENFILE (the listener is edge-triggered: no new
//! event comes for a client left in its backlog), and a spare fd released to
//! let one operator in when the master is out of fds. What the commands mean
//! is up to the caller (`server::control`).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use handoff_proto::control::{CommandError, MAX_COMMAND_LEN};

/// Answer bytes a client may leave unread before it is disconnected.
pub const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Control clients served at once. When all slots are taken, a new client
/// takes the slot of the one idle the longest, so an operator always gets
/// in.
pub const MAX_CONTROL_CLIENTS: usize = 256;

/// Lines taken from one client per readiness event (or per revisit at the
/// end of a loop turn).
pub const LINES_PER_TURN: usize = 16;

/// Bytes read from a client at a time; also the most unsplit input held.
pub const READ_CHUNK: usize = 4096;

/// How soon accepting is retried after it failed (EMFILE, ENFILE, ...).
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One line the client sent, or why it could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without its `\n`).
    Text(Vec<u8>),
    /// A line longer than the limit, discarded.
    TooLong(CommandError),
}

/// What a read left us with.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Everything the client sent so far was taken (the socket said
    /// `EAGAIN`): the next readiness event brings more.
    Open,
    /// The per-turn line limit was reached before the socket was drained:
    /// call again (no readiness event will come for what is left).
    More,
    /// The client closed its sending side (or the connection failed).
    Closed,
}

/// One control client's buffers. Generic over the stream so the framing is
/// unit-tested without sockets.
#[derive(Debug)]
pub struct ControlConn<S> {
    pub stream: S,
    /// Bytes read and not split into lines yet: `rx[rx_start..rx_end]`.
    rx: Box<[u8; READ_CHUNK]>,
    rx_start: usize,
    rx_end: usize,
    /// The line being assembled (at most `MAX_COMMAND_LEN` bytes).
    input: Vec<u8>,
    /// Bytes of an over-long line discarded so far (0 when not discarding).
    discarding: usize,
    /// The client closed its sending side.
    eof: bool,
    output: Vec<u8>,
    written: usize,
    /// Close once the output is flushed.
    pub closing: bool,
    /// Last time the client sent a complete line or took answer bytes.
    pub last_active: Instant,
    /// Listed in [`ControlState::revisit`].
    pub revisit: bool,
}

impl<S: Read + Write> ControlConn<S> {
    pub fn new(stream: S, now: Instant) -> ControlConn<S> {
        ControlConn {
            stream,
            rx: Box::new([0; READ_CHUNK]),
            rx_start: 0,
            rx_end: 0,
            input: Vec::new(),
            discarding: 0,
            eof: false,
            output: Vec::new(),
            written: 0,
            closing: false,
            last_active: now,
            revisit: false,
        }
    }

    /// Appends at most `max` complete lines to `lines`, reading from the
    /// socket only when no complete line is buffered.
    pub fn read_lines(&mut self, lines: &mut Vec<Line>, max: usize) -> ReadStatus {
        let start = lines.len();
        loop {
            while lines.len() - start < max && self.rx_start < self.rx_end {
                let bytes = &self.rx[self.rx_start..self.rx_end];
                let used = match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        take(&mut self.input, &mut self.discarding, &bytes[..end]);
                        lines.push(self.end_line());
                        end + 1
                    }
                    None => {
                        take(&mut self.input, &mut self.discarding, bytes);
                        bytes.len()
                    }
                };
                self.rx_start += used;
            }
            if lines.len() - start >= max {
                return ReadStatus::More;
            }
            if self.eof {
                // A last line without its newline still counts.
                if self.discarding > 0 || !self.input.is_empty() {
                    lines.push(self.end_line());
                }
                return ReadStatus::Closed;
            }
            match self.stream.read(&mut self.rx[..]) {
                Ok(0) => self.eof = true,
                Ok(n) => (self.rx_start, self.rx_end) = (0, n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadStatus::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadStatus::Closed,
            }
        }
    }

    fn end_line(&mut self) -> Line {
        if self.discarding > 0 {
            let len = std::mem::take(&mut self.discarding);
            Line::TooLong(CommandError::TooLong { len })
        } else {
            Line::Text(std::mem::take(&mut self.input))
        }
    }

    /// Queues one answer line. Returns false when the client has let too
    /// much output pile up and should be disconnected.
    pub fn queue(&mut self, answer: &str) -> bool {
        let pending = self.output.len() - self.written;
        let add = answer.len() + 1;
        if pending + add > MAX_PENDING_OUTPUT {
            return false;
        }
        if self.output.len() + add > self.output.capacity() {
            // Drop what was written before growing; grow by doubling but
            // never past the cap, so a client costs at most about the cap.
            self.output.drain(..self.written);
            self.written = 0;
            let needed = self.output.len() + add;
            if needed > self.output.capacity() {
                let target = (self.output.capacity() * 2).clamp(needed, MAX_PENDING_OUTPUT);
                self.output.reserve_exact(target - self.output.len());
            }
        }
        self.output.extend_from_slice(answer.as_bytes());
        self.output.push(b'\n');
        true
    }

    /// Writes as much queued output as the socket takes and says how many
    /// bytes went. `Err` means the client is gone.
    pub fn flush(&mut self) -> io::Result<usize> {
        let before = self.written;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let wrote = self.written - before;
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
            if self.output.capacity() > 64 * 1024 {
                // A burst of big answers: give the memory back.
                self.output = Vec::new();
            }
        }
        Ok(wrote)
    }

    /// Nothing left to write.
    pub fn flushed(&self) -> bool {
        self.written == self.output.len()
    }
}

/// Appends part of a line, switching to discarding past the limit.
fn take(input: &mut Vec<u8>, discarding: &mut usize, part: &[u8]) {
    if *discarding > 0 {
        *discarding += part.len();
    } else if input.len() + part.len() > MAX_COMMAND_LEN {
        *discarding = input.len() + part.len();
        *input = Vec::new();
    } else {
        input.extend_from_slice(part);
    }
}

/// The master's timers and spare resources for the control socket.
#[derive(Debug)]
pub struct ControlState {
    /// Close a client idle this long (`--control-idle-timeout`, 60 s).
    pub idle_timeout: Duration,
    /// When the idle sweep next has something to look at (the oldest
    /// client's last activity plus the timeout).
    pub next_idle_check: Option<Instant>,
    /// Clients that stopped at the line limit: served again at the end of
    /// this loop turn.
    pub revisit: Vec<usize>,
    /// Accepting failed (out of fds): try again then.
    pub accept_retry_at: Option<Instant>,
    pub last_accept_warning: Option<Instant>,
    /// An fd held in reserve (`/dev/null`): closed to accept one control
    /// client when the master is out of fds, reopened when fds are free.
    pub spare_fd: Option<OwnedFd>,
    /// Reused for the lines of one event.
    pub lines: Vec<Line>,
}

impl ControlState {
    pub fn new(idle_timeout: Duration) -> ControlState {
        ControlState {
            idle_timeout,
            next_idle_check: None,
            revisit: Vec::new(),
            accept_retry_at: None,
            last_accept_warning: None,
            spare_fd: open_spare(),
            lines: Vec::with_capacity(LINES_PER_TURN),
        }
    }

    /// When the loop must wake up for the control socket: now if a client
    /// waits for its next slice, else the next accept retry or idle check.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if !self.revisit.is_empty() {
            return Some(now);
        }
        [self.accept_retry_at, self.next_idle_check].into_iter().flatten().min()
    }

    /// Reopens the spare fd if it was used and an fd is free again.
    pub fn refill_spare(&mut self) {
        if self.spare_fd.is_none() {
            self.spare_fd = open_spare();
        }
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Errors of `accept` that mean the process or system is out of a
/// resource (the connection stays in the backlog; retry later).
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// Errno values, from nix (the workspace does not depend on libc here).
mod libc_errno {
    use nix::errno::Errno;
    pub const EMFILE: i32 = Errno::EMFILE as i32;
    pub const ENFILE: i32 = Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = Errno::ENOMEM as i32;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Reads come from a script (then WouldBlock, or EOF if `eof`); writes
    /// take at most `write_room` bytes in all.
    struct Fake {
        reads: VecDeque<Vec<u8>>,
        eof: bool,
        write_room: usize,
        written: Vec<u8>,
        /// Errors the next calls return first, in order.
        read_errors: VecDeque<io::ErrorKind>,
        write_errors: VecDeque<io::ErrorKind>,
        /// The next write returns Ok(0).
        write_zero: bool,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(kind) = self.read_errors.pop_front() {
                return Err(kind.into());
            }
            match self.reads.pop_front() {
                Some(mut bytes) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.reads.push_front(bytes.split_off(n));
                    }
                    Ok(n)
                }
                None if self.eof => Ok(0),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(kind) = self.write_errors.pop_front() {
                return Err(kind.into());
            }
            // As a socket does: writing nothing writes nothing.
            if buf.is_empty() || std::mem::take(&mut self.write_zero) {
                return Ok(0);
            }
            let n = buf.len().min(self.write_room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.write_room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(reads: &[&[u8]], eof: bool) -> ControlConn<Fake> {
        ControlConn::new(
            Fake {
                reads: reads.iter().map(|r| r.to_vec()).collect(),
                eof,
                write_room: usize::MAX,
                written: Vec::new(),
                read_errors: VecDeque::new(),
                write_errors: VecDeque::new(),
                write_zero: false,
            },
            Instant::now(),
        )
    }

    #[test]
    fn splits_lines_across_reads_and_takes_a_last_line_without_newline() {
        let mut c = conn(&[b"inf", b"o\nwork", b"ers\nping"], true);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, 100), ReadStatus::Closed);
        assert_eq!(
            lines,
            vec![
                Line::Text(b"info".to_vec()),
                Line::Text(b"workers".to_vec()),
                Line::Text(b"ping".to_vec())
            ]
        );
    }

    #[test]
    fn an_oversized_line_is_one_error_and_the_next_line_works() {
        let big = vec![b'x'; 1 << 20];
        let mut c = conn(&[&big, b"\ninfo\n"], false);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, 100), ReadStatus::Open);
        assert_eq!(
            lines,
            vec![
                Line::TooLong(CommandError::TooLong { len: 1 << 20 }),
                Line::Text(b"info".to_vec())
            ]
        );
        assert!(c.input.capacity() <= MAX_COMMAND_LEN * 2, "input never grew past the limit");
    }

    #[test]
    fn output_is_bounded_and_partial_writes_resume() {
        let mut c = conn(&[], false);
        c.stream.write_room = 3;
        assert!(c.queue("hello"));
        c.flush().expect("flush");
        assert!(!c.flushed());
        c.stream.write_room = 100;
        c.flush().expect("flush");
        assert!(c.flushed());
        assert_eq!(c.stream.written, b"hello\n");

        c.stream.write_room = 0;
        let chunk = "y".repeat(1000);
        let mut queued = 0;
        while c.queue(&chunk) {
            queued += 1;
            assert!(queued < 10_000);
        }
        assert!(queued * 1001 <= MAX_PENDING_OUTPUT);
        assert!(c.output.capacity() <= MAX_PENDING_OUTPUT, "never grew past the cap");
    }

    #[test]
    fn a_flood_is_taken_a_slice_at_a_time_and_not_read_ahead() {
        let flood = vec![b'\n'; 3 * READ_CHUNK];
        let mut c = conn(&[&flood, b"ping\n"], false);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, LINES_PER_TURN), ReadStatus::More);
        assert_eq!(lines.len(), LINES_PER_TURN);
        // One chunk read, the rest still in the socket.
        assert_eq!(c.stream.reads.iter().map(Vec::len).sum::<usize>(), 2 * READ_CHUNK + 5);
        let mut turns = 1;
        loop {
            lines.clear();
            match c.read_lines(&mut lines, LINES_PER_TURN) {
                ReadStatus::More => turns += 1,
                ReadStatus::Open => break,
                ReadStatus::Closed => panic!("not closed"),
            }
            assert!(lines.len() <= LINES_PER_TURN);
        }
        assert_eq!(turns, 3 * READ_CHUNK / LINES_PER_TURN);
        assert_eq!(lines, vec![Line::Text(b"ping".to_vec())]);
    }

    #[test]
    fn a_partial_last_line_at_eof_is_taken_after_a_full_slice() {
        let mut c = conn(&[b"a\nb\nc"], true);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, 2), ReadStatus::More);
        assert_eq!(c.read_lines(&mut lines, 2), ReadStatus::Closed);
        assert_eq!(c.read_lines(&mut lines, 2), ReadStatus::Closed);
        let texts: Vec<_> = lines
            .iter()
            .map(|l| match l {
                Line::Text(t) => t.clone(),
                Line::TooLong(_) => panic!("{l:?}"),
            })
            .collect();
        assert_eq!(texts, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn an_interrupted_read_is_retried_and_another_error_closes() {
        let mut c = conn(&[b"ping\n"], false);
        c.stream.read_errors.push_back(io::ErrorKind::Interrupted);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, 10), ReadStatus::Open);
        assert_eq!(lines, vec![Line::Text(b"ping".to_vec())]);
        let mut c = conn(&[b"ping\n"], false);
        c.stream.read_errors.push_back(io::ErrorKind::ConnectionReset);
        assert_eq!(c.read_lines(&mut Vec::new(), 10), ReadStatus::Closed);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_text_and_one_more_byte_is_too_long() {
        let exact = vec![b'a'; MAX_COMMAND_LEN];
        let mut over = exact.clone();
        over.push(b'a');
        let mut c = conn(&[&exact, b"\n", &over[..10], &over[10..], b"\n"], false);
        let mut lines = Vec::new();
        c.read_lines(&mut lines, 10);
        assert_eq!(
            lines,
            vec![
                Line::Text(exact),
                Line::TooLong(CommandError::TooLong { len: MAX_COMMAND_LEN + 1 })
            ]
        );
    }

    #[test]
    fn the_output_cap_is_inclusive_and_growth_keeps_unwritten_bytes() {
        let mut c = conn(&[], false);
        c.stream.write_room = 0;
        // Exactly the cap (the answer plus its newline) fits; a byte more
        // does not.
        assert!(c.queue(&"z".repeat(MAX_PENDING_OUTPUT - 1)));
        assert!(!c.queue(""), "one more byte is over the cap");
        let mut c = conn(&[], false);
        c.stream.write_room = 2;
        assert!(c.queue("abc"));
        assert_eq!(c.flush().expect("flush"), 2, "flush says how much went");
        // Growing drops what was written and keeps the rest, in order.
        let big = "b".repeat(10_000);
        assert!(c.queue(&big));
        c.stream.write_room = usize::MAX;
        assert_eq!(c.flush().expect("flush"), 2 + 10_001);
        assert_eq!(c.stream.written, format!("abc\n{big}\n").into_bytes());
        assert!(c.flushed());
    }

    #[test]
    fn flush_retries_an_interrupted_write_fails_on_a_zero_write_and_frees_big_buffers() {
        let mut c = conn(&[], false);
        c.stream.write_errors.push_back(io::ErrorKind::Interrupted);
        assert!(c.queue("ok"));
        assert_eq!(c.flush().expect("interrupted, then written"), 3);
        let mut c = conn(&[], false);
        c.stream.write_zero = true;
        assert!(c.queue("ok"));
        assert_eq!(c.flush().expect_err("gone").kind(), io::ErrorKind::WriteZero);
        let mut c = conn(&[], false);
        c.stream.write_errors.push_back(io::ErrorKind::BrokenPipe);
        assert!(c.queue("ok"));
        assert_eq!(c.flush().expect_err("gone").kind(), io::ErrorKind::BrokenPipe);
        // A big answer's buffer is given back once written; a small one kept.
        let mut c = conn(&[], false);
        assert!(c.queue(&"m".repeat(100 * 1024)));
        c.flush().expect("flush");
        assert_eq!(c.output.capacity(), 0);
        assert!(c.queue("small"));
        c.flush().expect("flush");
        assert!(c.output.capacity() > 0, "a small buffer is kept for the next answer");
    }

    #[test]
    fn a_line_over_the_limit_in_a_single_read_is_too_long() {
        let mut line = vec![b'w'; MAX_COMMAND_LEN + 500];
        line.extend_from_slice(b"\nok\n");
        let mut c = conn(&[&line], false);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines, 10), ReadStatus::Open);
        assert_eq!(
            lines,
            vec![
                Line::TooLong(CommandError::TooLong { len: MAX_COMMAND_LEN + 500 }),
                Line::Text(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn an_oversized_last_line_without_newline_is_still_answered_at_eof() {
        let big = vec![b'q'; MAX_COMMAND_LEN + 5];
        let mut c = conn(&[b"ok\n", &big], true);
        let mut lines = vec![Line::Text(b"from before".to_vec())];
        assert_eq!(c.read_lines(&mut lines, 1), ReadStatus::More, "one line per call");
        assert_eq!(c.read_lines(&mut lines, 1), ReadStatus::Closed);
        assert_eq!(
            lines,
            vec![
                Line::Text(b"from before".to_vec()),
                Line::Text(b"ok".to_vec()),
                Line::TooLong(CommandError::TooLong { len: MAX_COMMAND_LEN + 5 })
            ]
        );
        assert_eq!(c.read_lines(&mut lines, 1), ReadStatus::Closed);
        assert_eq!(lines.len(), 3, "nothing more once closed");
    }

    #[test]
    fn the_output_buffer_doubles_up_to_the_cap_and_only_a_big_one_is_given_back() {
        let mut c = conn(&[], false);
        c.stream.write_room = 0;
        assert!(c.queue(&"a".repeat(99)));
        assert_eq!(c.output.capacity(), 100, "first: just what is needed");
        assert!(c.queue("b"));
        assert_eq!(c.output.capacity(), 200, "then doubled");
        assert!(c.queue(&"c".repeat(249)));
        assert_eq!(c.output.capacity(), 400, "doubled, as that is enough");
        assert!(c.queue(&"d".repeat(999)));
        assert_eq!(c.output.capacity(), 1352, "what is needed, when doubling is not enough");
        // Written bytes are dropped before growing: room is found in place.
        c.stream.write_room = 1000;
        assert_eq!(c.flush().expect("flush"), 1000);
        assert!(c.queue(&"e".repeat(500)));
        assert_eq!(c.output.capacity(), 1352, "no growth: the written bytes made room");
        c.stream.write_room = usize::MAX;
        c.flush().expect("flush");
        let mut expected = "a".repeat(99) + "\nb\n" + &"c".repeat(249) + "\n";
        expected += &("d".repeat(999) + "\n" + &"e".repeat(500) + "\n");
        assert_eq!(c.stream.written, expected.into_bytes());
        // Near the cap, doubling stops at the cap.
        let mut c = conn(&[], false);
        c.stream.write_room = 0;
        assert!(c.queue(&"f".repeat(700 * 1024)));
        assert!(c.queue("g"));
        assert_eq!(c.output.capacity(), MAX_PENDING_OUTPUT);
        // Growing is needed only when the unwritten bytes and the answer do
        // not fit, exactly.
        let mut c = conn(&[], false);
        c.stream.write_room = 10;
        assert!(c.queue(&"k".repeat(99)));
        assert_eq!(c.flush().expect("flush"), 10);
        assert!(c.queue(&"l".repeat(9)));
        assert_eq!(c.output.capacity(), 100, "90 unwritten + 10 fit in 100");
        // A flush says what it wrote this time.
        c.stream.write_room = 30;
        assert_eq!(c.flush().expect("flush"), 30);
        c.stream.write_room = usize::MAX;
        assert_eq!(c.flush().expect("flush"), 70);
        assert!(c.flushed());
        assert_eq!(c.flush().expect("nothing to write"), 0);
        // The cap counts what is still unwritten, not what went.
        let mut c = conn(&[], false);
        c.stream.write_room = 10;
        assert!(c.queue(&"i".repeat(99)));
        assert_eq!(c.flush().expect("flush"), 10);
        assert!(c.queue(&"j".repeat(MAX_PENDING_OUTPUT - 90 - 1)), "90 unwritten + this = the cap");
        assert!(!c.queue(""), "full");
        // A buffer of exactly 64 KiB is kept once flushed; a 10 KiB one too.
        for len in [64 * 1024, 10 * 1024] {
            let mut c = conn(&[], false);
            assert!(c.queue(&"h".repeat(len - 1)));
            assert_eq!(c.output.capacity(), len);
            assert_eq!(c.flush().expect("flush"), len);
            assert_eq!(c.output.capacity(), len, "kept");
            assert!(c.flushed());
        }
    }

    #[test]
    fn the_control_deadline_and_the_spare_fd() {
        let now = Instant::now();
        let mut state = ControlState::new(Duration::from_secs(60));
        assert_eq!(state.deadline(now), None);
        state.next_idle_check = Some(now + Duration::from_secs(5));
        state.accept_retry_at = Some(now + Duration::from_secs(1));
        assert_eq!(state.deadline(now), Some(now + Duration::from_secs(1)), "the earlier one");
        state.revisit.push(3);
        assert_eq!(state.deadline(now), Some(now), "a client waits for its next slice");
        assert!(state.spare_fd.is_some());
        state.spare_fd = None;
        state.refill_spare();
        assert!(state.spare_fd.is_some(), "reopened");
        assert!(out_of_resources(&io::Error::from_raw_os_error(libc_errno::EMFILE)));
        assert!(out_of_resources(&io::Error::from_raw_os_error(libc_errno::ENFILE)));
        assert!(out_of_resources(&io::Error::from_raw_os_error(libc_errno::ENOBUFS)));
        assert!(out_of_resources(&io::Error::from_raw_os_error(libc_errno::ENOMEM)));
        assert!(!out_of_resources(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    }
}
