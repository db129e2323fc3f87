//! Reply checking, incremental and allocation-free per request.
//!
//! Every reply is checked as its bytes arrive: for the article's protocol it
//! must be exactly `server get message: ` + the payload, then EOF; for the
//! HTTP variant a `2xx` status line, a complete header and, when the header
//! has `Content-Length`, exactly that many body bytes before EOF.

/// What a correct reply looks like.
#[derive(Debug, Clone)]
pub enum Expect {
    /// These exact bytes, then EOF.
    Exact(Box<[u8]>),
    /// An HTTP/1.x response with a 2xx status, read to EOF.
    Http,
}

/// The verdict on a reply that ended (EOF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reply was complete and correct.
    Ok,
    /// EOF came before the reply was complete.
    Short,
    /// The reply had a wrong byte, a wrong status, or too many bytes.
    Wrong,
}

/// HTTP header bytes kept per connection; a longer header is a wrong reply.
pub const MAX_HTTP_HEADER: usize = 8192;

/// Per-connection checking state; reused across requests with [`Checker::reset`].
#[derive(Debug)]
pub struct Checker {
    /// Reply bytes seen so far.
    seen: u64,
    /// HTTP only: header bytes (up to the blank line).
    header: Box<[u8]>,
    header_len: usize,
    /// HTTP only: `Some(body bytes seen)` once the header is complete.
    body_seen: Option<u64>,
    content_length: Option<u64>,
    wrong: bool,
}

impl Checker {
    /// A checker for `expect`; HTTP checkers own a header buffer, allocated here once.
    pub fn new(expect: &Expect) -> Checker {
        let header = match expect {
            Expect::Exact(_) => Box::default(),
            Expect::Http => vec![0u8; MAX_HTTP_HEADER].into_boxed_slice(),
        };
        Checker {
            seen: 0,
            header,
            header_len: 0,
            body_seen: None,
            content_length: None,
            wrong: false,
        }
    }

    /// Forgets the previous reply.
    pub fn reset(&mut self) {
        self.seen = 0;
        self.header_len = 0;
        self.body_seen = None;
        self.content_length = None;
        self.wrong = false;
    }

    /// Feeds the next reply bytes. Returns false as soon as the reply is
    /// known to be wrong (the caller may stop reading).
    pub fn feed(&mut self, expect: &Expect, bytes: &[u8]) -> bool {
        if self.wrong {
            return false;
        }
        match expect {
            Expect::Exact(want) => {
                let start = usize::try_from(self.seen).unwrap_or(usize::MAX);
                let end = start.saturating_add(bytes.len());
                if end > want.len() || want[start..end] != *bytes {
                    self.wrong = true;
                }
            }
            Expect::Http => self.feed_http(bytes),
        }
        self.seen += bytes.len() as u64;
        !self.wrong
    }

    fn feed_http(&mut self, mut bytes: &[u8]) {
        if self.body_seen.is_none() {
            // Copy header bytes until the blank line; the rest is body.
            let room = MAX_HTTP_HEADER - self.header_len;
            let take = bytes.len().min(room);
            let old = self.header_len;
            self.header[old..old + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            // The terminator may straddle the previous chunk: search from 3 back.
            let from = old.saturating_sub(3);
            match find(&self.header[from..self.header_len], b"\r\n\r\n") {
                Some(pos) => {
                    let end = from + pos + 4;
                    match parse_http_header(&self.header[..end]) {
                        Some(content_length) => self.content_length = content_length,
                        None => {
                            self.wrong = true;
                            return;
                        }
                    }
                    self.body_seen = Some(0);
                    // Bytes of this chunk past the header are body.
                    let consumed = end - old;
                    bytes = &bytes[consumed..];
                }
                None => {
                    if self.header_len == MAX_HTTP_HEADER {
                        self.wrong = true;
                    }
                    return;
                }
            }
        }
        if let Some(body) = &mut self.body_seen {
            *body += bytes.len() as u64;
            if self.content_length.is_some_and(|cl| *body > cl) {
                self.wrong = true;
            }
        }
    }

    /// The verdict at EOF.
    pub fn finish(&self, expect: &Expect) -> Verdict {
        if self.wrong {
            return Verdict::Wrong;
        }
        match expect {
            Expect::Exact(want) if self.seen == want.len() as u64 => Verdict::Ok,
            Expect::Exact(_) => Verdict::Short,
            Expect::Http => match (self.body_seen, self.content_length) {
                (None, _) => Verdict::Short,
                (Some(body), Some(cl)) if body < cl => Verdict::Short,
                _ => Verdict::Ok,
            },
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the status line (`HTTP/1.x 2xx`) and returns the Content-Length,
/// if any; `None` means the header is unacceptable.
fn parse_http_header(header: &[u8]) -> Option<Option<u64>> {
    let text = std::str::from_utf8(header).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    let mut parts = status.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return None;
    }
    if code.len() != 3 || !code.starts_with('2') || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut content_length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = Some(value.trim().parse::<u64>().ok()?);
            }
        }
    }
    Some(content_length)
}

/// The reply the article's servers send for `payload`.
pub fn article_reply(payload: &[u8]) -> Box<[u8]> {
    let mut reply = b"server get message: ".to_vec();
    reply.extend_from_slice(payload);
    reply.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expect: &Expect, chunks: &[&[u8]]) -> Verdict {
        let mut checker = Checker::new(expect);
        for chunk in chunks {
            if !checker.feed(expect, chunk) {
                break;
            }
        }
        checker.finish(expect)
    }

    #[test]
    fn exact_reply_in_any_chunking_is_ok() {
        let expect = Expect::Exact(article_reply(b"hello"));
        assert_eq!(run(&expect, &[b"server get message: hello"]), Verdict::Ok);
        assert_eq!(run(&expect, &[b"server ", b"get message: h", b"ello"]), Verdict::Ok);
    }

    #[test]
    fn truncated_reply_is_short_and_nothing_is_short() {
        let expect = Expect::Exact(article_reply(b"hello"));
        assert_eq!(run(&expect, &[b"server get message: hel"]), Verdict::Short);
        assert_eq!(run(&expect, &[]), Verdict::Short);
    }

    #[test]
    fn wrong_byte_or_extra_bytes_are_wrong() {
        let expect = Expect::Exact(article_reply(b"hello"));
        assert_eq!(run(&expect, &[b"server get message: hellO"]), Verdict::Wrong);
        assert_eq!(run(&expect, &[b"server get message: hello", b"!"]), Verdict::Wrong);
        assert_eq!(run(&expect, &[b"HTTP/1.1 400 Bad Request\r\n"]), Verdict::Wrong);
    }

    #[test]
    fn reset_allows_reuse() {
        let expect = Expect::Exact(article_reply(b"x"));
        let mut checker = Checker::new(&expect);
        assert!(!checker.feed(&expect, b"nope"));
        assert_eq!(checker.finish(&expect), Verdict::Wrong);
        checker.reset();
        assert!(checker.feed(&expect, b"server get message: x"));
        assert_eq!(checker.finish(&expect), Verdict::Ok);
    }

    #[test]
    fn http_with_content_length() {
        let e = Expect::Http;
        let full: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        assert_eq!(run(&e, &[full]), Verdict::Ok);
        // Every split point, including inside the blank line.
        for cut in 0..full.len() {
            assert_eq!(run(&e, &[&full[..cut], &full[cut..]]), Verdict::Ok, "cut at {cut}");
        }
        assert_eq!(run(&e, &[&full[..full.len() - 1]]), Verdict::Short);
        assert_eq!(run(&e, &[full, b"x"]), Verdict::Wrong);
    }

    #[test]
    fn http_status_and_header_checks() {
        let e = Expect::Http;
        assert_eq!(run(&e, &[b"HTTP/1.0 204 No Content\r\n\r\n"]), Verdict::Ok);
        assert_eq!(run(&e, &[b"HTTP/1.1 200 OK\r\n\r\nbody to eof"]), Verdict::Ok);
        assert_eq!(run(&e, &[b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[b"server get message: "]), Verdict::Short);
        assert_eq!(run(&e, &[b"garbage\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[&[b'a'; MAX_HTTP_HEADER + 1]]), Verdict::Wrong);
    }

    #[test]
    fn http_header_longer_than_the_buffer_across_chunks_is_wrong() {
        let e = Expect::Http;
        let a = vec![b'a'; MAX_HTTP_HEADER - 1000];
        let b = vec![b'b'; 2000];
        assert_eq!(run(&e, &[&a, &b]), Verdict::Wrong);
        assert_eq!(run(&e, &[&a, &b[..999]]), Verdict::Short);
        // A header that fills the buffer exactly, blank line included, is fine.
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.resize(MAX_HTTP_HEADER - 4, b'y');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(run(&e, &[&head[..100], &head[100..]]), Verdict::Ok);
        assert_eq!(run(&e, &[&head, b"body"]), Verdict::Ok);
    }

    #[test]
    fn http_body_is_counted_across_chunks() {
        let e = Expect::Http;
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(run(&e, &[head, b"01234", b"56789"]), Verdict::Ok);
        assert_eq!(run(&e, &[head, b"01234", b"5678"]), Verdict::Short);
        assert_eq!(run(&e, &[head, b"01234", b"56789", b"!"]), Verdict::Wrong);
        assert_eq!(run(&e, &[&[head, b"0123456789"].concat()]), Verdict::Ok);
        assert_eq!(run(&e, &[&[head, b"01234567890"].concat()]), Verdict::Wrong);
        // Header case and spacing do not matter; only 1.0 and 1.1 with 2xx do.
        assert_eq!(
            run(&e, &[b"HTTP/1.1 201 Created\r\ncontent-length:  2 \r\n\r\nok"]),
            Verdict::Ok
        );
        assert_eq!(run(&e, &[b"HTTP/2.0 200 OK\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[b"HTTP/1.1 2000 OK\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[b"HTTP/1.1 20x OK\r\n\r\n"]), Verdict::Wrong);
        assert_eq!(run(&e, &[b"HTTP/1.1 302 Found\r\n\r\n"]), Verdict::Wrong);
    }
}
