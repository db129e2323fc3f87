//! Control-socket connections: line framing, limits and buffering.
//!
//! A [`ControlConn`] turns the bytes an operator's client sends into
//! complete lines (at most [`MAX_COMMAND_LEN`] bytes; a longer line is
//! discarded and answered with one error) and queues the JSON answers the
//! master writes back. It never blocks: reads and writes go as far as the
//! socket allows. A client that does not read its answers is disconnected
//! once [`MAX_PENDING_OUTPUT`] bytes are waiting, so it cannot make the master
//! buffer without bound. What the commands mean is up to the caller.

use std::io::{self, Read, Write};

use handoff_proto::control::{CommandError, MAX_COMMAND_LEN};

/// Answer bytes a client may leave unread before it is disconnected.
pub const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Control clients served at once; more are refused with an error.
pub const MAX_CONTROL_CLIENTS: usize = 256;

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
    /// The client may send more.
    Open,
    /// The client closed its sending side (or the connection failed).
    Closed,
}

/// One control client's buffers. Generic over the stream so the framing is
/// unit-tested without sockets.
#[derive(Debug)]
pub struct ControlConn<S> {
    pub stream: S,
    input: Vec<u8>,
    /// Bytes of an over-long line discarded so far (0 when not discarding).
    discarding: usize,
    output: Vec<u8>,
    written: usize,
    /// Close once the output is flushed.
    pub closing: bool,
}

impl<S: Read + Write> ControlConn<S> {
    pub fn new(stream: S) -> ControlConn<S> {
        ControlConn {
            stream,
            input: Vec::with_capacity(256),
            discarding: 0,
            output: Vec::new(),
            written: 0,
            closing: false,
        }
    }

    /// Reads what the socket has, appending complete lines to `lines`.
    pub fn read_lines(&mut self, lines: &mut Vec<Line>) -> ReadStatus {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // A last line without its newline still counts.
                    if self.discarding > 0 || !self.input.is_empty() {
                        self.split_lines(b"\n", lines);
                    }
                    return ReadStatus::Closed;
                }
                Ok(n) => self.split_lines(&chunk[..n], lines),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadStatus::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadStatus::Closed,
            }
        }
    }

    fn split_lines(&mut self, mut bytes: &[u8], lines: &mut Vec<Line>) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.take(&bytes[..end]);
                    if self.discarding > 0 {
                        lines.push(Line::TooLong(CommandError::TooLong { len: self.discarding }));
                        self.discarding = 0;
                    } else {
                        lines.push(Line::Text(std::mem::take(&mut self.input)));
                    }
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.take(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Appends part of a line, switching to discarding past the limit.
    fn take(&mut self, part: &[u8]) {
        if self.discarding > 0 {
            self.discarding += part.len();
        } else if self.input.len() + part.len() > MAX_COMMAND_LEN {
            self.discarding = self.input.len() + part.len();
            self.input = Vec::new();
        } else {
            self.input.extend_from_slice(part);
        }
    }

    /// Queues one answer line. Returns false when the client has let too
    /// much output pile up and should be disconnected.
    pub fn queue(&mut self, answer: &str) -> bool {
        if self.output.len() - self.written + answer.len() + 1 > MAX_PENDING_OUTPUT {
            return false;
        }
        self.output.extend_from_slice(answer.as_bytes());
        self.output.push(b'\n');
        true
    }

    /// Writes as much queued output as the socket takes. `Err` means the
    /// client is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Nothing left to write.
    pub fn flushed(&self) -> bool {
        self.written == self.output.len()
    }
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
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
        ControlConn::new(Fake {
            reads: reads.iter().map(|r| r.to_vec()).collect(),
            eof,
            write_room: usize::MAX,
            written: Vec::new(),
        })
    }

    #[test]
    fn splits_lines_across_reads_and_takes_a_last_line_without_newline() {
        let mut c = conn(&[b"inf", b"o\nwork", b"ers\nping"], true);
        let mut lines = Vec::new();
        assert_eq!(c.read_lines(&mut lines), ReadStatus::Closed);
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
        assert_eq!(c.read_lines(&mut lines), ReadStatus::Open);
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
    }
}
