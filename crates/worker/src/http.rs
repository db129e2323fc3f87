//! Minimal, correct HTTP/1.1 (`--protocol http`), so everyday tools (curl,
//! ab, wrk) can drive any mode.
//!
//! Each request gets `200 OK` with `Content-Length` and the body
//! `server get message: <METHOD> <PATH>`. Connections are kept alive by
//! default (HTTP/1.1) and closed after the response when the client says
//! `Connection: close` (or speaks HTTP/1.0 without `keep-alive`). A request
//! body announced by `Content-Length` is read and discarded. A malformed
//! head, or one longer than [`MAX_HEAD_LEN`], gets `400 Bad Request` and the
//! connection is closed; `Transfer-Encoding` bodies get `501`. Pipelined
//! requests are answered in order. Buffers are allocated once per
//! connection and reused for every request on it.

use std::io::{Read, Write};
use std::time::Instant;

use crate::conn::{classify, Outcome, Progress, Work};

/// The longest request head accepted.
pub const MAX_HEAD_LEN: usize = 8192;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading (and parsing) a request head.
    Head,
    /// Discarding this many more body bytes.
    Body(u64),
    /// Response ready; sent once the simulated delay is over.
    Delaying(Instant),
    /// Writing the response.
    Writing,
}

/// One HTTP connection.
#[derive(Debug)]
pub struct HttpConn {
    phase: Phase,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Close after the response being written.
    close_after: bool,
    requests: u64,
    bytes_in: usize,
    bytes_out: usize,
    /// A request finished since the last `take_activity`.
    activity: bool,
}

impl Default for HttpConn {
    fn default() -> Self {
        HttpConn::new()
    }
}

impl HttpConn {
    pub fn new() -> HttpConn {
        HttpConn {
            phase: Phase::Head,
            input: Vec::with_capacity(1024),
            output: Vec::with_capacity(256),
            written: 0,
            close_after: false,
            requests: 0,
            bytes_in: 0,
            bytes_out: 0,
            activity: false,
        }
    }

    /// True once per finished request since the last call.
    pub fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.activity)
    }

    fn served(&self) -> Outcome {
        Outcome::Served { bytes_in: self.bytes_in, bytes_out: self.bytes_out }
    }

    /// Advances as far as `stream` (and the clock) allow.
    pub fn drive<S: Read + Write>(&mut self, stream: &mut S, work: &Work) -> Progress {
        loop {
            match self.phase {
                Phase::Head => {
                    if self.parse_head() {
                        continue;
                    }
                    if self.input.len() >= MAX_HEAD_LEN {
                        self.respond_error(400, "Bad Request", "request head too long");
                        continue;
                    }
                    let start = self.input.len();
                    self.input.resize(MAX_HEAD_LEN, 0);
                    match stream.read(&mut self.input[start..]) {
                        Ok(0) => {
                            self.input.truncate(start);
                            // A client closing between requests is the normal
                            // end of a keep-alive connection.
                            return Progress::Done(if start == 0 && self.requests > 0 {
                                self.served()
                            } else {
                                Outcome::Failed
                            });
                        }
                        Ok(n) => {
                            self.input.truncate(start + n);
                            self.bytes_in += n;
                        }
                        Err(err) => {
                            self.input.truncate(start);
                            return classify(err);
                        }
                    }
                }
                Phase::Body(0) => self.phase = self.after_request(work),
                Phase::Body(remaining) => {
                    if !self.input.is_empty() {
                        let take = (remaining as usize).min(self.input.len());
                        self.input.drain(..take);
                        self.phase = Phase::Body(remaining - take as u64);
                        continue;
                    }
                    let mut sink = [0u8; 4096];
                    let want = (remaining as usize).min(sink.len());
                    match stream.read(&mut sink[..want]) {
                        Ok(0) => return Progress::Done(Outcome::Failed),
                        Ok(n) => {
                            self.bytes_in += n;
                            self.phase = Phase::Body(remaining - n as u64);
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
                Phase::Writing => match stream.write(&self.output[self.written..]) {
                    Ok(0) => return Progress::Done(Outcome::Failed),
                    Ok(n) => {
                        self.written += n;
                        self.bytes_out += n;
                        if self.written < self.output.len() {
                            continue;
                        }
                        self.requests += 1;
                        self.activity = true;
                        if self.close_after {
                            return Progress::Done(self.served());
                        }
                        self.output.clear();
                        self.written = 0;
                        self.phase = Phase::Head;
                    }
                    Err(err) => return classify(err),
                },
            }
        }
    }

    /// Parses a complete head from `input` if there is one, preparing the
    /// response. Returns false when more bytes are needed.
    fn parse_head(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(&self.input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return false,
            Err(err) => {
                let reason = err.to_string();
                self.respond_error(400, "Bad Request", &reason);
                return true;
            }
        };
        let (Some(method), Some(path), Some(version)) =
            (request.method, request.path, request.version)
        else {
            self.respond_error(400, "Bad Request", "incomplete request line");
            return true;
        };
        let mut keep_alive = version == 1;
        let mut body_len = 0u64;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("connection") {
                let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
                if value.split(',').any(|v| v.trim() == "close") {
                    keep_alive = false;
                } else if value.split(',').any(|v| v.trim() == "keep-alive") {
                    keep_alive = true;
                }
            } else if header.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok()) {
                    Some(len) => body_len = len,
                    None => {
                        self.respond_error(400, "Bad Request", "invalid Content-Length");
                        return true;
                    }
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                self.respond_error(501, "Not Implemented", "Transfer-Encoding is not supported");
                return true;
            }
        }
        self.output.clear();
        self.written = 0;
        let body_text_len = "server get message: ".len() + method.len() + 1 + path.len();
        let _ = write!(
            self.output,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\nserver get message: {} {}",
            body_text_len + 1,
            if keep_alive { "" } else { "Connection: close\r\n" },
            method,
            path
        );
        self.output.push(b'\n');
        self.close_after = !keep_alive;
        self.input.drain(..head_len);
        self.phase = Phase::Body(body_len);
        true
    }

    /// Simulated work, then the response.
    fn after_request(&mut self, work: &Work) -> Phase {
        work.burn();
        if work.delay.is_zero() {
            Phase::Writing
        } else {
            Phase::Delaying(Instant::now() + work.delay)
        }
    }

    fn respond_error(&mut self, code: u16, reason: &str, detail: &str) {
        self.output.clear();
        self.written = 0;
        let _ = write!(
            self.output,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{detail}\n",
            detail.len() + 1
        );
        self.close_after = true;
        self.input.clear();
        self.phase = Phase::Writing;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;

    use super::*;

    #[derive(Default)]
    struct Script {
        reads: VecDeque<Vec<u8>>,
        eof: bool,
        written: Vec<u8>,
    }

    impl Read for Script {
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

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(input: &[&[u8]], eof: bool) -> (Progress, String) {
        let mut script =
            Script { reads: input.iter().map(|b| b.to_vec()).collect(), eof, ..Default::default() };
        let mut conn = HttpConn::new();
        let progress = conn.drive(&mut script, &Work::default());
        (progress, String::from_utf8_lossy(&script.written).into_owned())
    }

    #[test]
    fn keep_alive_by_default_with_content_length() {
        let (progress, out) = run(&[b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n"], false);
        assert_eq!(progress, Progress::WaitIo, "kept open for the next request");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\r\nserver get message: GET /hi\n"
        );
    }

    #[test]
    fn connection_close_and_http_1_0_close_after_the_response() {
        let (progress, out) = run(&[b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"], false);
        assert!(matches!(progress, Progress::Done(Outcome::Served { .. })));
        assert!(out.contains("Connection: close\r\n"));
        let (progress, _) = run(&[b"GET / HTTP/1.0\r\n\r\n"], false);
        assert!(matches!(progress, Progress::Done(Outcome::Served { .. })));
        let (progress, _) = run(&[b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"], false);
        assert_eq!(progress, Progress::WaitIo);
    }

    #[test]
    fn pipelined_requests_split_reads_and_bodies() {
        let (progress, out) = run(
            &[
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",
                b"loGET /b HTTP/1.1\r\n",
                b"\r\n",
            ],
            true,
        );
        assert_eq!(out.matches("200 OK").count(), 2, "{out}");
        assert!(out.contains("POST /a") && out.contains("GET /b"));
        assert!(matches!(progress, Progress::Done(Outcome::Served { .. })), "client closed after");
    }

    #[test]
    fn malformed_oversized_and_chunked_heads_are_refused() {
        let (progress, out) = run(&[b"GET\x01 / HTTP/1.1\r\n\r\n"], false);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(matches!(progress, Progress::Done(_)));
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD_LEN]].concat();
        let (_, out) = run(&[&big], false);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        let (_, out) = run(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"], false);
        assert!(out.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{out}");
        let (_, out) = run(&[b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"], false);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn a_client_that_closes_without_a_request_is_a_failure() {
        let (progress, out) = run(&[], true);
        assert_eq!(progress, Progress::Done(Outcome::Failed));
        assert!(out.is_empty());
    }
}
