//! PROXY protocol v1 and v2 (`--proxy-protocol`): the header a load
//! balancer (HAProxy `send-proxy`/`send-proxy-v2`, nginx, AWS NLB) puts
//! before the client's bytes to say who the client is.
//!
//! [`parse`] is a strict, allocation-free parser of the start of a
//! connection's input. [`ProxyHeader`] reads the header from a socket as
//! bytes arrive (it may come in pieces) and keeps what it read past the
//! header; [`Prefixed`] hands those bytes to the protocol first, so the
//! protocol sees exactly the bytes it would have seen without the header.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::conn::classify;
use crate::conn::Progress;

/// The longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// The v2 header's 12-byte signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v2 address block (addresses and TLVs) accepted.
pub const V2_MAX_BODY: usize = 1024;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Enough for the longest accepted header.
const BUF_LEN: usize = 16 + V2_MAX_BODY;

/// What the start of a connection's input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Not enough bytes yet to decide.
    Incomplete,
    /// Not a valid header: close the connection.
    Invalid(&'static str),
    /// A header of `len` bytes; `source` is the client it names, `None`
    /// for `UNKNOWN`, `LOCAL` and families without an IP address (then the
    /// connection's own peer stands).
    Header { len: usize, source: Option<SocketAddr> },
    /// A v2 `LOCAL` header of `len` bytes: the balancer's own connection
    /// (a health check), not a client's; the real peer stands.
    Local { len: usize },
}

/// Parses a PROXY header (v1 or v2) at the start of `input`.
pub fn parse(input: &[u8]) -> Parse {
    let n = input.len();
    if n == 0 {
        return Parse::Incomplete;
    }
    if input[..n.min(12)] == V2_SIGNATURE[..n.min(12)] {
        return parse_v2(input);
    }
    if input[..n.min(6)] == V1_PREFIX[..n.min(6)] {
        return parse_v1(input);
    }
    Parse::Invalid("no PROXY header")
}

fn parse_v1(input: &[u8]) -> Parse {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if input.len() >= V1_MAX_LEN {
            Parse::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            Parse::Incomplete
        };
    };
    if window[cr] != b'\r' {
        return Parse::Invalid("PROXY v1 line not ended by CRLF");
    }
    match window.get(cr + 1) {
        None if input.len() > cr + 1 => {
            return Parse::Invalid("PROXY v1 line longer than 107 bytes")
        }
        None => return Parse::Incomplete,
        Some(b'\n') => {}
        Some(_) => return Parse::Invalid("PROXY v1 line not ended by CRLF"),
    }
    let len = cr + 2;
    let Ok(line) = std::str::from_utf8(&input[V1_PREFIX.len()..cr]) else {
        return Parse::Invalid("PROXY v1 line not ASCII");
    };
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // The rest of the line is to be ignored.
        Some("UNKNOWN") => return Parse::Header { len, source: None },
        Some("TCP4") => v1_addresses(&mut fields, |s| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)),
        Some("TCP6") => v1_addresses(&mut fields, |s| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)),
        _ => return Parse::Invalid("PROXY v1 protocol not TCP4, TCP6 or UNKNOWN"),
    };
    match source {
        Some(source) => Parse::Header { len, source: Some(source) },
        None => Parse::Invalid("PROXY v1 addresses or ports malformed"),
    }
}

/// `SRC DST SPORT DPORT` and nothing more; the source as an address.
fn v1_addresses<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
    ip: impl Fn(&str) -> Option<IpAddr>,
) -> Option<SocketAddr> {
    let src = ip(fields.next()?)?;
    ip(fields.next()?)?;
    let sport = port(fields.next()?)?;
    port(fields.next()?)?;
    if fields.next().is_some() {
        return None;
    }
    Some(SocketAddr::new(src, sport))
}

/// A decimal port: digits only, no leading zero (the specification's form).
fn port(text: &str) -> Option<u16> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(input: &[u8]) -> Parse {
    if input.len() < 16 {
        return Parse::Incomplete;
    }
    let (version, command) = (input[12] >> 4, input[12] & 0x0f);
    if version != 2 {
        return Parse::Invalid("PROXY v2 version not 2");
    }
    let body = usize::from(u16::from_be_bytes([input[14], input[15]]));
    if body > V2_MAX_BODY {
        return Parse::Invalid("PROXY v2 header longer than allowed");
    }
    let len = 16 + body;
    let Some(addresses) = input.get(16..len) else {
        return Parse::Incomplete;
    };
    match command {
        // LOCAL: the balancer's own connection (a health check); the real
        // peer stands.
        0x0 => Parse::Local { len },
        0x1 => match input[13] {
            // UNSPEC.
            0x00 => Parse::Header { len, source: None },
            // TCP over IPv4: src, dst, sport, dport.
            0x11 => match addresses.get(..12) {
                Some(a) => {
                    let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                    let port = u16::from_be_bytes([a[8], a[9]]);
                    Parse::Header { len, source: Some(SocketAddr::new(IpAddr::V4(ip), port)) }
                }
                None => Parse::Invalid("PROXY v2 IPv4 address block too short"),
            },
            // TCP over IPv6.
            0x21 => match addresses.get(..36) {
                Some(a) => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[..16]);
                    let port = u16::from_be_bytes([a[32], a[33]]);
                    let ip = IpAddr::V6(Ipv6Addr::from(octets));
                    Parse::Header { len, source: Some(SocketAddr::new(ip, port)) }
                }
                None => Parse::Invalid("PROXY v2 IPv6 address block too short"),
            },
            _ => Parse::Invalid("PROXY v2 family or transport not TCP"),
        },
        _ => Parse::Invalid("PROXY v2 command not LOCAL or PROXY"),
    }
}

/// Reading a connection's PROXY header, and the bytes read past it.
#[derive(Debug)]
pub struct ProxyHeader {
    buf: [u8; BUF_LEN],
    /// Bytes read into `buf`.
    filled: usize,
    /// Start of the bytes not yet handed to the protocol (after the header).
    pos: usize,
    done: bool,
    /// It was a v2 `LOCAL` header: a balancer's health check.
    local: bool,
    /// The last read returned less than it had room for: the socket held
    /// nothing more then, so [`Prefixed`] need not ask it again.
    drained: bool,
    /// The client the header names (not in a `LOCAL` or `UNKNOWN` one).
    source: Option<SocketAddr>,
}

/// Where reading the header stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProgress {
    /// Read; the client it names, if any.
    Done(Option<SocketAddr>),
    /// Not valid: close without a reply.
    Invalid(&'static str),
    /// Wait for more bytes, or the connection ended (reset, error, EOF).
    Io(Progress),
}

impl ProxyHeader {
    pub fn new() -> ProxyHeader {
        ProxyHeader {
            buf: [0; BUF_LEN],
            filled: 0,
            pos: 0,
            done: false,
            local: false,
            drained: false,
            source: None,
        }
    }

    /// The client the header named, once read: the connection's real peer.
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// True once the header was read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The header was a v2 `LOCAL` one (a balancer's health check).
    pub fn local(&self) -> bool {
        self.local
    }

    /// Reads until the header is complete (or proven invalid) or the
    /// socket would block.
    pub fn read<S: Read>(&mut self, stream: &mut S) -> HeaderProgress {
        loop {
            let room = self.buf.len() - self.filled;
            match stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return HeaderProgress::Invalid("closed before a PROXY header"),
                Ok(n) => {
                    self.filled += n;
                    self.drained = n < room;
                }
                Err(err) => return HeaderProgress::Io(classify(err)),
            }
            match parse(&self.buf[..self.filled]) {
                Parse::Incomplete if self.filled < self.buf.len() => {}
                Parse::Incomplete => return HeaderProgress::Invalid("PROXY header too long"),
                Parse::Invalid(why) => return HeaderProgress::Invalid(why),
                Parse::Header { len, source } => {
                    self.pos = len;
                    self.done = true;
                    self.source = source;
                    return HeaderProgress::Done(source);
                }
                Parse::Local { len } => {
                    self.pos = len;
                    self.done = true;
                    self.local = true;
                    return HeaderProgress::Done(None);
                }
            }
        }
    }
}

/// The socket as the protocol sees it once the header is read: first what
/// was read past the header, then the socket.
pub struct Prefixed<'a, S> {
    pub header: &'a mut ProxyHeader,
    pub stream: &'a mut S,
}

impl<S: Read> Read for Prefixed<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let h = &mut *self.header;
        if h.pos == h.filled {
            return self.stream.read(buf);
        }
        let n = (h.filled - h.pos).min(buf.len());
        buf[..n].copy_from_slice(&h.buf[h.pos..h.pos + n]);
        h.pos += n;
        // The header's last read took all there was (a short read): that
        // is what one read of the bare socket would have returned, and
        // asking again would only meet EAGAIN.
        if n == buf.len() || h.drained {
            return Ok(n);
        }
        // The header's buffer was full: more may wait in the socket.
        match self.stream.read(&mut buf[n..]) {
            Ok(more) => Ok(n + more),
            Err(_) => Ok(n),
        }
    }
}

impl<S: Write> Write for Prefixed<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::conn::Outcome;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn v2_tcp4() -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&6001u16.to_be_bytes());
        v2(1, 0x11, &body)
    }

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("test address"))
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\r\nhello";
        assert_eq!(
            parse(line),
            Parse::Header { len: line.len() - 5, source: addr("203.0.113.7:40000") }
        );
        let line = b"PROXY TCP6 2001:db8::7 ::1 65535 80\r\n";
        assert_eq!(
            parse(line),
            Parse::Header { len: line.len(), source: addr("[2001:db8::7]:65535") }
        );
        let line = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(line), Parse::Header { len: line.len(), source: None });
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nx";
        assert_eq!(parse(line), Parse::Header { len: line.len() - 1, source: None });
    }

    #[test]
    fn v1_malformed_lines_are_invalid() {
        for line in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001 7\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 6001\r\n",
            b"PROXY TCP6 203.0.113.7 ::1 40000 6001\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 040000 6001\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +4000 6001\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 6001\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 4000 6001\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 4000 6001\r\n",
        ] {
            assert!(matches!(parse(line), Parse::Invalid(_)), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn v1_without_crlf_waits_then_fails_past_107_bytes() {
        let partial = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001";
        assert_eq!(parse(partial), Parse::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\r"), Parse::Incomplete);
        assert!(matches!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\n"),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\rx"),
            Parse::Invalid(_)
        ));
        // The longest legal line is 107 bytes; one byte more is refused
        // whether or not its CRLF has come.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(105, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(long.len(), V1_MAX_LEN);
        assert_eq!(parse(&long), Parse::Header { len: 107, source: None });
        let mut longer = b"PROXY UNKNOWN ".to_vec();
        longer.resize(106, b'x');
        assert_eq!(parse(&longer), Parse::Incomplete);
        longer.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&longer), Parse::Invalid(_)));
        assert!(matches!(parse(&[b'x'; 200]), Parse::Invalid(_)));
        let mut no_crlf = b"PROXY UNKNOWN ".to_vec();
        no_crlf.resize(300, b'x');
        assert!(matches!(parse(&no_crlf), Parse::Invalid(_)));
    }

    #[test]
    fn v2_proxy_local_and_tcp6() {
        let mut bytes = v2_tcp4();
        let len = bytes.len();
        bytes.extend_from_slice(b"hello");
        assert_eq!(parse(&bytes), Parse::Header { len, source: addr("203.0.113.7:40000") });
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local), Parse::Local { len: 16 });
        // PROXY with family UNSPEC (the sender knows no address): the
        // peer stands too.
        let unspec = v2(1, 0x00, &[]);
        assert_eq!(parse(&unspec), Parse::Header { len: 16, source: None });
        let mut body = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).octets().to_vec();
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&80u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a TLV (NOOP), skipped
        let tcp6 = v2(1, 0x21, &body);
        assert_eq!(
            parse(&tcp6),
            Parse::Header { len: tcp6.len(), source: addr("[2001:db8::7]:443") }
        );
    }

    #[test]
    fn v2_bad_fields_are_invalid() {
        let mut bad_version = v2_tcp4();
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Parse::Invalid(_)));
        let mut bad_command = v2_tcp4();
        bad_command[12] = 0x22;
        assert!(matches!(parse(&bad_command), Parse::Invalid(_)));
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3])), Parse::Invalid(_)), "short block");
        assert!(matches!(parse(&v2(1, 0x12, &[0; 12])), Parse::Invalid(_)), "UDP");
        let mut too_long = v2(1, 0x11, &[]);
        too_long[14..16].copy_from_slice(&((V2_MAX_BODY + 1) as u16).to_be_bytes());
        assert!(matches!(parse(&too_long), Parse::Invalid(_)));
        let mut bad_signature = v2_tcp4();
        bad_signature[5] = b'X';
        assert!(matches!(parse(&bad_signature), Parse::Invalid(_)));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\r\n".to_vec();
        for header in [v1, v2_tcp4()] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Parse::Incomplete, "cut at {cut}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_at_its_first_byte() {
        assert!(matches!(parse(b"G"), Parse::Invalid(_)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parse::Invalid(_)));
        assert!(matches!(parse(b"hello"), Parse::Invalid(_)));
        assert!(matches!(parse(b"\r\n\r\nX"), Parse::Invalid(_)));
    }

    /// A socket whose reads return scripted chunks, then would block; it
    /// counts the reads.
    #[derive(Default)]
    struct Chunks(VecDeque<Vec<u8>>, Vec<u8>, usize);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.2 += 1;
            let Some(mut chunk) = self.0.pop_front() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    impl Write for Chunks {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_header_split_across_reads_then_what_was_read_past_it_comes_first_without_a_read() {
        for header in [b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\r\n".to_vec(), v2_tcp4()] {
            let mut socket = Chunks::default();
            let mut reader = ProxyHeader::new();
            let (first, rest) = header.split_at(7);
            socket.0.push_back(first.to_vec());
            assert_eq!(reader.read(&mut socket), HeaderProgress::Io(Progress::WaitIo));
            let mut tail = rest.to_vec();
            tail.extend_from_slice(b"hel");
            socket.0.push_back(tail);
            socket.0.push_back(b"lo".to_vec());
            assert_eq!(reader.read(&mut socket), HeaderProgress::Done(addr("203.0.113.7:40000")));
            assert!(reader.done());
            // The protocol gets the bytes read past the header first, with
            // no read of the socket: the header's last read was short, so
            // nothing more was there then. What came later, the next read.
            let mut buf = [0u8; 64];
            let reads = socket.2;
            let n = Prefixed { header: &mut reader, stream: &mut socket }.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"hel");
            assert_eq!(socket.2, reads, "no read of the socket for bytes already read");
            let n = Prefixed { header: &mut reader, stream: &mut socket }.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"lo");
            let again = Prefixed { header: &mut reader, stream: &mut socket }.read(&mut buf);
            assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        }
    }

    #[test]
    fn a_header_that_filled_its_buffer_is_followed_by_a_read_of_the_socket() {
        // A v2 header whose address block fills the whole buffer but for
        // 3 bytes: the first read fills it, so the rest may still wait.
        let body_len = BUF_LEN - 16 - 3;
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&6001u16.to_be_bytes());
        body.resize(body_len, 0); // TLVs of padding
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"hello");
        let mut socket = Chunks::default();
        socket.0.push_back(bytes);
        let mut reader = ProxyHeader::new();
        assert_eq!(reader.read(&mut socket), HeaderProgress::Done(addr("203.0.113.7:40000")));
        let mut buf = [0u8; 64];
        let n = Prefixed { header: &mut reader, stream: &mut socket }.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello", "3 bytes from the buffer, 2 from the socket");
    }

    #[test]
    fn eof_or_garbage_before_the_header_is_invalid_and_errors_end_it() {
        let mut socket = Chunks::default();
        socket.0.push_back(b"hello".to_vec());
        assert!(matches!(ProxyHeader::new().read(&mut socket), HeaderProgress::Invalid(_)));
        struct Eof;
        impl Read for Eof {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        assert!(matches!(ProxyHeader::new().read(&mut Eof), HeaderProgress::Invalid(_)));
        struct Reset;
        impl Read for Reset {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        assert_eq!(
            ProxyHeader::new().read(&mut Reset),
            HeaderProgress::Io(Progress::Done(Outcome::Reset))
        );
    }

    #[test]
    fn the_article_reply_is_the_same_with_and_without_the_header() {
        use crate::conn::Work;
        use crate::protocol::{Conn, Protocol};
        let dispatch = handoff_proto::Dispatch { conn_id: 1, accepted_at_ns: 0, redispatches: 0 };
        let mut conn = Conn::new(dispatch, 0, Protocol::Article, true);
        let mut socket = Chunks::default();
        socket.0.push_back(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6001\r".to_vec());
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::WaitIo);
        socket.0.push_back(b"\nhi there".to_vec());
        assert!(matches!(
            conn.drive(&mut socket, &Work::default()),
            Progress::Done(Outcome::Served { .. })
        ));
        assert_eq!(socket.1, b"server get message: hi there");
        assert_eq!(conn.proxied_source(), Some("203.0.113.7:40000".parse().unwrap()));
        let mut conn = Conn::new(conn.dispatch, 0, Protocol::Article, true);
        let mut socket = Chunks::default();
        socket.0.push_back(b"hi there".to_vec());
        assert_eq!(conn.drive(&mut socket, &Work::default()), Progress::Done(Outcome::Failed));
        assert!(socket.1.is_empty(), "no reply without a header");
    }

    #[test]
    fn the_http_response_is_the_same_with_and_without_the_header() {
        use crate::conn::Work;
        use crate::protocol::{Conn, Protocol};
        let request = b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let respond = |proxy: bool| {
            let dispatch =
                handoff_proto::Dispatch { conn_id: 1, accepted_at_ns: 0, redispatches: 0 };
            let mut conn = Conn::new(dispatch, 0, Protocol::Http, proxy);
            let mut socket = Chunks::default();
            let mut input = if proxy { v2_tcp4() } else { Vec::new() };
            input.extend_from_slice(request);
            socket.0.push_back(input);
            let progress = conn.drive(&mut socket, &Work::default());
            (progress, socket.1, conn.proxied_source())
        };
        let (plain, with_header) = (respond(false), respond(true));
        assert!(matches!(plain.0, Progress::Done(Outcome::Served { .. })), "{plain:?}");
        assert_eq!(plain.0, with_header.0);
        assert_eq!(plain.1, with_header.1);
        assert_eq!(plain.2, None);
        assert_eq!(with_header.2, Some("203.0.113.7:40000".parse().unwrap()));
    }
}
