//! Minimal, correct HTTP/1.1 (`--protocol http`), so everyday tools (curl,
//! ab, wrk) can drive any mode.
//!
//! Each request gets `200 OK` with `Content-Length` and the body
//! `server get message: <METHOD> <PATH>`. Persistence follows RFC 9112
//! §9.3: an HTTP/1.1 connection is kept alive unless the request says
//! `Connection: close`; an HTTP/1.0 one is closed after the response unless
//! the request says `Connection: keep-alive`, and then the response says
//! `Connection: keep-alive` too (a 1.0 client such as `ab -k` waits for the
//! close otherwise). A response after which we close says `Connection:
//! close`. A request body announced by `Content-Length` is read and
//! discarded. A malformed head, or one longer than [`MAX_HEAD_LEN`], gets
//! `400 Bad Request` and the connection is closed; `Transfer-Encoding`
//! bodies get `501`. Pipelined requests are answered in order. Buffers are
//! allocated once per connection and reused for every request on it.
//!
//! A draining worker ([`HttpConn::drain`]: its master said `Shutdown`, or
//! is gone) finishes the request in progress, answers it with `Connection:
//! close` (added to the response if not a byte of it is sent yet) and
//! closes. A connection idle between requests is given [`DRAIN_IDLE_GRACE`]
//! first: a request that was on its way when the drain began (a client
//! sending back to back) is answered, with `Connection: close`, instead of
//! finding the connection closed; after the grace, once a last read shows
//! that nothing arrived, it is closed (a FIN, not a reset). One that has
//! not sent its first request yet still gets the read timeout to send it:
//! it was accepted, and every accepted client is answered.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::conn::{classify, discard_pending_input, Outcome, Progress, Work};

/// How long a draining worker keeps a connection that is idle between
/// requests open, answering (with `Connection: close`) a request that
/// arrives meanwhile. Well under the master's `--graceful-timeout` (30 s).
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// The longest request head accepted.
pub const MAX_HEAD_LEN: usize = 8192;
const MAX_HEADERS: usize = 64;
const CONNECTION_CLOSE: &[u8] = b"Connection: close\r\n";

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
    /// Where the response's `Connection` header line is in `output` (an
    /// empty range, before the blank line, when it has none), so that
    /// draining can make it `Connection: close` before it is sent.
    connection_header: (usize, usize),
    /// The worker is draining: no request after the one in progress.
    draining: bool,
    /// Draining while idle between requests: open until then for a
    /// request already on its way.
    idle_until: Option<Instant>,
    /// [`DRAIN_IDLE_GRACE`] (shorter in tests).
    idle_grace: Duration,
    /// The response being written refuses the request (4xx/5xx): the
    /// client may still be sending it.
    refused: bool,
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
            connection_header: (0, 0),
            draining: false,
            idle_until: None,
            idle_grace: DRAIN_IDLE_GRACE,
            refused: false,
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

    /// The worker is draining. The response in progress, if any, becomes
    /// the last (with `Connection: close` unless some of it is already
    /// sent); no further request is read. Returns true when the connection
    /// waits between requests (or for its first), so it must be driven now:
    /// an idle one is then closed at once.
    pub fn drain(&mut self) -> bool {
        if self.draining {
            return false;
        }
        self.draining = true;
        let unsent = match self.phase {
            Phase::Head => {
                self.idle_until = Some(Instant::now() + self.idle_grace);
                return true;
            }
            Phase::Body(_) | Phase::Delaying(_) => true,
            Phase::Writing => self.written == 0,
        };
        if !self.close_after && unsent {
            let (start, end) = self.connection_header;
            self.output.splice(start..end, CONNECTION_CLOSE.iter().copied());
        }
        self.close_after = true;
        false
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
                            // Draining, idle between requests, and no new
                            // one arrived: wait out the grace (a request on
                            // its way is answered), then done (the receive
                            // queue is empty, so the close is a FIN, not a
                            // reset).
                            if self.draining
                                && start == 0
                                && self.requests > 0
                                && err.kind() == std::io::ErrorKind::WouldBlock
                            {
                                return match self.idle_until {
                                    Some(until) if Instant::now() < until => {
                                        Progress::WaitUntil(until)
                                    }
                                    _ => Progress::Done(self.served()),
                                };
                            }
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
                            if self.draining || self.refused || !self.input.is_empty() {
                                // The client may have sent more (pipelined, or
                                // the rest of a refused request): unread, it
                                // would turn our close into a reset.
                                discard_pending_input(stream);
                            }
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
        let (mut close, mut keep_alive_asked) = (false, false);
        let mut body_len: Option<u64> = None;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("connection") {
                for option in header.value.split(|&b| b == b',') {
                    let option = option.trim_ascii();
                    close |= option.eq_ignore_ascii_case(b"close");
                    keep_alive_asked |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if header.name.eq_ignore_ascii_case("content-length") {
                // RFC 9112 §6.3: a Content-Length that is not 1*DIGIT, or
                // that differs from another one, is an unrecoverable
                // framing error (a smuggling vector if we guessed): 400
                // and close. Repeated identical values are accepted.
                match (content_length(header.value), body_len) {
                    (Some(len), None) => body_len = Some(len),
                    (Some(len), Some(earlier)) if len == earlier => {}
                    (Some(_), Some(_)) => {
                        self.respond_error(400, "Bad Request", "differing Content-Length values");
                        return true;
                    }
                    (None, _) => {
                        self.respond_error(400, "Bad Request", "invalid Content-Length");
                        return true;
                    }
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                self.respond_error(501, "Not Implemented", "Transfer-Encoding is not supported");
                return true;
            }
        }
        // RFC 9112 §9.3: `close` ends any connection; 1.1 persists by
        // default, 1.0 only when asked to (and we say we agree). A draining
        // worker takes no further request.
        let keep_alive = !close && (version == 1 || keep_alive_asked) && !self.draining;
        let connection: &[u8] = match (keep_alive, version) {
            (false, _) => CONNECTION_CLOSE,
            (true, 0) => b"Connection: keep-alive\r\n",
            (true, _) => b"",
        };
        self.output.clear();
        self.written = 0;
        let body_text_len = "server get message: ".len() + method.len() + 1 + path.len();
        let _ = write!(
            self.output,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            body_text_len + 1,
        );
        let start = self.output.len();
        self.output.extend_from_slice(connection);
        self.connection_header = (start, self.output.len());
        let _ = write!(self.output, "\r\nserver get message: {method} {path}");
        self.output.push(b'\n');
        self.close_after = !keep_alive;
        self.input.drain(..head_len);
        self.phase = Phase::Body(body_len.unwrap_or(0));
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
        self.refused = true;
        self.input.clear();
        self.phase = Phase::Writing;
    }
}

/// A `Content-Length` field value: 1*DIGIT, or a list of identical such
/// values (RFC 9110 §8.6 lets a recipient take `5, 5` as 5); `None` for
/// anything else — a sign, spaces inside, an empty element, differing
/// elements, or more than a u64 holds.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for element in value.split(|&b| b == b',') {
        let digits = element.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
        match length {
            Some(earlier) if earlier != n => return None,
            _ => length = Some(n),
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Script {
        reads: VecDeque<Vec<u8>>,
        eof: bool,
        written: Vec<u8>,
        /// Accept at most this many bytes in all, then would block.
        write_limit: Option<usize>,
        /// Accept at most this many bytes per write (a short write).
        max_write: Option<usize>,
        /// Every other write would block first (then accepts).
        block_every_other_write: bool,
        writes: usize,
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
            let room = self.write_limit.map_or(buf.len(), |limit| limit - self.written.len());
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.writes += 1;
            if self.block_every_other_write && self.writes % 2 == 1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = room.min(buf.len()).min(self.max_write.unwrap_or(usize::MAX));
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
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
        let (progress, out) = run(&[b"GET / HTTP/1.0\r\n\r\n"], false);
        assert!(matches!(progress, Progress::Done(Outcome::Served { .. })));
        assert!(out.contains("Connection: close\r\n"), "{out}");
        let (progress, out) = run(&[b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"], false);
        assert_eq!(progress, Progress::WaitIo);
        assert!(out.contains("\r\nConnection: keep-alive\r\n"), "{out}");
    }

    /// RFC 9112 §9.3, as `ab -k` (HTTP/1.0) and everyday 1.1 clients send it.
    #[test]
    fn persistence_follows_rfc_9112_for_1_0_and_1_1() {
        let cases: [(&[u8], bool, &str); 8] = [
            // ab -k: kept, and the response says so (ab waits for the close
            // otherwise).
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: x\r\nUser-Agent: ApacheBench/2.3\r\n\r\n",
                true,
                "Connection: keep-alive",
            ),
            (b"GET / HTTP/1.0\r\nconnection: KEEP-ALIVE \r\n\r\n", true, "Connection: keep-alive"),
            (b"GET / HTTP/1.0\r\n\r\n", false, "Connection: close"),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, "Connection: close"),
            (b"GET / HTTP/1.1\r\n\r\n", true, ""),
            (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true, ""),
            (b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n", false, "Connection: close"),
            // Two Connection fields are one list: close wins, in any order.
            (
                b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
                false,
                "Connection: close",
            ),
        ];
        for (request, kept, header) in cases {
            let (progress, out) = run(&[request], false);
            let shown = String::from_utf8_lossy(request);
            assert_eq!(progress == Progress::WaitIo, kept, "{shown}: {progress:?}");
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{shown}: {out}");
            let connection: Vec<&str> =
                out.lines().filter(|l| l.to_ascii_lowercase().starts_with("connection:")).collect();
            let expected: Vec<&str> = Some(header).filter(|h| !h.is_empty()).into_iter().collect();
            assert_eq!(connection, expected, "{shown}: {out}");
        }
    }

    /// Drains a connection whose response is held back by the socket
    /// (`write_limit`), then lets the socket take it all: it must be
    /// served and closed.
    fn drain_then_serve(conn: &mut HttpConn, socket: &mut Script) {
        assert!(!conn.drain(), "not idle: the response is pending");
        socket.write_limit = None;
        assert!(matches!(
            conn.drive(socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
    }

    fn script(reads: &[&[u8]]) -> Script {
        Script { reads: reads.iter().map(|b| b.to_vec()).collect(), ..Default::default() }
    }

    #[test]
    fn draining_closes_an_idle_keep_alive_connection_after_the_grace() {
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        let mut conn = HttpConn::new();
        conn.idle_grace = Duration::from_millis(30);
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(conn.drain(), "idle: must be driven now");
        assert!(!conn.drain(), "once");
        // Nothing arrived: it waits out the grace, then closes.
        let Progress::WaitUntil(until) = conn.drive(&mut socket, &Work::default()) else {
            panic!("an idle connection is kept for the grace");
        };
        assert!(until <= Instant::now() + Duration::from_millis(30));
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        assert!(matches!(
            conn.drive(&mut socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
        let out = String::from_utf8_lossy(&socket.written).into_owned();
        assert_eq!(out.matches("200 OK").count(), 1);
        assert!(!out.contains("Connection:"), "the one response went out before draining: {out}");
    }

    #[test]
    fn draining_answers_a_request_that_arrives_during_the_grace_with_connection_close() {
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(conn.drain());
        assert!(matches!(conn.drive(&mut socket, &Work::default()), Progress::WaitUntil(_)));
        // The client's next request was on its way: it is answered, last.
        socket.reads.push_back(b"GET /b HTTP/1.1\r\n\r\n".to_vec());
        assert!(matches!(
            conn.drive(&mut socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
        let out = String::from_utf8_lossy(&socket.written).into_owned();
        assert!(out.ends_with("Connection: close\r\n\r\nserver get message: GET /b\n"), "{out}");
    }

    #[test]
    fn draining_answers_a_request_that_already_arrived_with_connection_close() {
        // Idle when draining starts, but a request is already in the socket.
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        socket.reads.push_back(b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n".to_vec());
        assert!(conn.drain());
        assert!(matches!(
            conn.drive(&mut socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
        let out = String::from_utf8_lossy(&socket.written).into_owned();
        assert_eq!(out.matches("200 OK").count(), 2, "/c is not answered: {out}");
        assert!(out.ends_with("Connection: close\r\n\r\nserver get message: GET /b\n"), "{out}");
    }

    #[test]
    fn draining_during_a_request_makes_its_response_the_last_with_connection_close() {
        // HTTP/1.1 (no Connection header) and HTTP/1.0 keep-alive (whose
        // `Connection: keep-alive` becomes `close`), delayed responses.
        for request in [
            &b"GET /slow HTTP/1.1\r\n\r\n"[..],
            b"GET /slow HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let mut socket = script(&[request]);
            let work = Work { busy: Duration::ZERO, delay: Duration::from_millis(20) };
            let mut conn = HttpConn::new();
            let Progress::WaitUntil(until) = conn.drive(&mut socket, &work) else {
                panic!("delay")
            };
            assert!(!conn.drain(), "a request in progress goes on by itself");
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            assert!(matches!(
                conn.drive(&mut socket, &work),
                Progress::Done(Outcome::Served { .. })
            ));
            let out = String::from_utf8_lossy(&socket.written).into_owned();
            assert_eq!(out.matches("Connection:").count(), 1, "{out}");
            assert!(out.contains("Content-Length: 30\r\nConnection: close\r\n\r\nserver get message: GET /slow\n"), "{out}");
        }
    }

    #[test]
    fn draining_mid_response_closes_after_it() {
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        socket.write_limit = Some(10);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo, "blocked writing");
        drain_then_serve(&mut conn, &mut socket);
        let out = String::from_utf8_lossy(&socket.written).into_owned();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("GET /a\n"),
            "unchanged: {out}"
        );
    }

    #[test]
    fn draining_still_waits_for_a_first_request() {
        let mut socket = script(&[]);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(conn.drain());
        assert_eq!(
            conn.drive(&mut socket, &Work::default()),
            Progress::WaitIo,
            "accepted: answered"
        );
        socket.reads.push_back(b"GET /first HTTP/1.1\r\n\r\n".to_vec());
        assert!(matches!(
            conn.drive(&mut socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
        assert!(String::from_utf8_lossy(&socket.written).contains("Connection: close\r\n"));
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
    fn content_length_is_digits_and_only_identical_repeats_are_accepted() {
        assert_eq!(content_length(b"25"), Some(25));
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"25, 25"), Some(25));
        for bad in [
            &b"+25"[..],
            b"-1",
            b" ",
            b"",
            b"2 5",
            b"25, 0",
            b"25,",
            b"0x19",
            b"1e3",
            b"99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The smuggling of the hardening round: two differing Content-Length
    /// fields (the last used to win, and the request hidden in the body was
    /// answered), or a signed one. 400, close, and nothing after it.
    #[test]
    fn differing_or_signed_content_lengths_are_refused_and_nothing_behind_them_is_answered() {
        let smuggle: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 25\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        let (progress, out) = run(&[smuggle], false);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert!(!out.contains("smuggled"), "{out}");
        assert!(matches!(progress, Progress::Done(_)));
        let signed: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n";
        let (_, out) = run(&[signed], false);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(!out.contains("smuggled"), "{out}");
        // Identical repeats are one length: the body is read, the next
        // request answered.
        let same: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let (_, out) = run(&[same], false);
        assert!(out.contains("server get message: POST /a"), "{out}");
        assert!(out.contains("server get message: GET /b"), "{out}");
    }

    #[test]
    fn a_client_that_closes_without_a_request_is_a_failure() {
        let (progress, out) = run(&[], true);
        assert_eq!(progress, Progress::Done(Outcome::Failed));
        assert!(out.is_empty());
    }

    const RESPONSE_A: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\r\nserver get message: POST /a\n";
    const RESPONSE_B: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\nserver get message: GET /b\n";

    /// Drives `conn` until it is done or waits for input, as the worker's
    /// loop would on each readiness event.
    fn drive_to_rest(conn: &mut HttpConn, socket: &mut Script) -> Progress {
        for _ in 0..10_000 {
            match conn.drive(socket, &Work::default()) {
                Progress::WaitIo if socket.reads.is_empty() && !socket.eof => {
                    return Progress::WaitIo
                }
                Progress::WaitIo => continue,
                other => return other,
            }
        }
        panic!("no progress");
    }

    #[test]
    fn short_and_blocked_writes_give_exactly_the_responses_and_the_byte_counts() {
        let request_a: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let request_b: &[u8] = b"GET /b HTTP/1.1\r\n\r\n";
        let mut socket = script(&[request_a, request_b]);
        socket.eof = true;
        socket.max_write = Some(7);
        socket.block_every_other_write = true;
        let mut conn = HttpConn::new();
        let progress = drive_to_rest(&mut conn, &mut socket);
        let out = String::from_utf8_lossy(&socket.written);
        assert_eq!(out, format!("{RESPONSE_A}{RESPONSE_B}"), "byte for byte, nothing stray");
        let (bytes_in, bytes_out) = (request_a.len() + request_b.len(), out.len());
        assert_eq!(progress, Progress::Done(Outcome::Served { bytes_in, bytes_out }));
    }

    #[test]
    fn activity_is_reported_once_per_finished_request() {
        let mut socket = script(&[b"GET /b HTTP/1.1\r\n\r\n"]);
        let mut conn = HttpConn::new();
        assert!(!conn.take_activity(), "nothing finished yet");
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(conn.take_activity(), "one request answered: a fresh deadline");
        assert!(!conn.take_activity(), "reported once");
        socket.reads.push_back(b"GET /b HTTP/1.1\r\n\r\n".to_vec());
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(conn.take_activity());
        assert_eq!(String::from_utf8_lossy(&socket.written), format!("{RESPONSE_B}{RESPONSE_B}"));
    }

    #[test]
    fn a_delay_holds_the_response_until_its_time() {
        let mut socket = script(&[b"GET /b HTTP/1.1\r\n\r\n"]);
        let mut conn = HttpConn::new();
        let work = Work { busy: Duration::ZERO, delay: Duration::from_millis(30) };
        let until = match conn.drive(&mut socket, &work) {
            Progress::WaitUntil(until) => until,
            other => panic!("expected a wait, got {other:?}"),
        };
        assert!(socket.written.is_empty(), "nothing before the delay");
        assert_eq!(conn.drive(&mut socket, &work), Progress::WaitUntil(until), "not yet");
        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        assert_eq!(conn.drive(&mut socket, &work), Progress::WaitIo);
        assert_eq!(String::from_utf8_lossy(&socket.written), RESPONSE_B);
    }

    const RESPONSE_A_CLOSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\nConnection: close\r\n\r\nserver get message: GET /a\n";

    #[test]
    fn draining_before_the_first_byte_of_a_response_makes_it_say_close() {
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        socket.write_limit = Some(0);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo, "nothing written");
        drain_then_serve(&mut conn, &mut socket);
        assert_eq!(String::from_utf8_lossy(&socket.written), RESPONSE_A_CLOSE);
    }

    #[test]
    fn draining_a_response_already_saying_close_leaves_it_byte_for_byte() {
        let mut socket = script(&[b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"]);
        socket.write_limit = Some(10);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        drain_then_serve(&mut conn, &mut socket);
        assert_eq!(String::from_utf8_lossy(&socket.written), RESPONSE_A_CLOSE);
    }

    #[test]
    fn a_body_read_in_pieces_is_counted_in_full() {
        let head: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 10000\r\nConnection: close\r\n\r\n";
        let body = vec![b'x'; 10_000];
        let mut socket = script(&[head, &body[..3000], &body[3000..]]);
        let mut conn = HttpConn::new();
        match drive_to_rest(&mut conn, &mut socket) {
            Progress::Done(Outcome::Served { bytes_in, .. }) => {
                assert_eq!(bytes_in, head.len() + body.len())
            }
            other => panic!("expected served, got {other:?}"),
        }
    }

    #[test]
    fn unread_input_is_discarded_before_the_close_only_when_it_must_be() {
        // Draining: whatever the client sent meanwhile is read away, so the
        // close is a FIN, not a reset.
        let mut socket = script(&[b"GET /a HTTP/1.1\r\n\r\n"]);
        socket.write_limit = Some(0);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        socket.reads.push_back(b"GET /b HTTP/1.1\r\n\r\n".to_vec());
        assert!(!conn.drain());
        socket.write_limit = None;
        assert!(matches!(conn.drive(&mut socket, &Work::default()), Progress::Done(_)));
        assert!(socket.reads.is_empty(), "read away before the close");
        // A client that asked to close and sent nothing more: no extra read.
        let mut socket = script(&[b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"]);
        socket.write_limit = Some(0);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        socket.reads.push_back(b"late".to_vec());
        socket.write_limit = None;
        assert!(matches!(conn.drive(&mut socket, &Work::default()), Progress::Done(_)));
        assert_eq!(socket.reads.len(), 1, "nothing read past the request");
    }

    #[test]
    fn draining_an_http_1_0_response_adds_no_header_it_did_not_have() {
        let mut plain = script(&[b"GET /a HTTP/1.0\r\n\r\n"]);
        let mut conn = HttpConn::new();
        assert!(matches!(conn.drive(&mut plain, &Work::default()), Progress::Done(_)));
        let mut socket = script(&[b"GET /a HTTP/1.0\r\n\r\n"]);
        socket.write_limit = Some(0);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        assert!(!conn.drain());
        socket.write_limit = None;
        assert!(matches!(conn.drive(&mut socket, &Work::default()), Progress::Done(_)));
        assert_eq!(socket.written, plain.written, "the same response, drained or not");
    }

    #[test]
    fn a_refused_request_reads_away_what_follows_before_the_close() {
        let mut socket = script(&[b"GET\x01 / HTTP/1.1\r\n\r\n"]);
        socket.write_limit = Some(0);
        let mut conn = HttpConn::new();
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        socket.reads.push_back(b"more from the client".to_vec());
        socket.write_limit = None;
        assert!(matches!(conn.drive(&mut socket, &Work::default()), Progress::Done(_)));
        assert!(String::from_utf8_lossy(&socket.written).starts_with("HTTP/1.1 400 "));
        assert!(socket.reads.is_empty(), "read away, so the close is not a reset");
    }
}
