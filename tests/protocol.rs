use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn replies_are_exact_for_any_bytes() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let cases: [&[u8]; 5] =
        [b"hello", "你好".as_bytes(), &[0, 0xff, 0xfe, b'\r', b'\n', 0x80], &all_bytes, b""];
    for payload in cases {
        let reply = request(master.addr, payload).expect("request");
        assert_eq!(reply, expected_reply(payload), "payload {payload:?}");
    }
    assert_no_warnings(&master.log());
}

#[test]
fn a_long_request_is_answered_from_its_first_read_only() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    let payload: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = request(master.addr, &payload).expect("request");
    let echoed = reply.strip_prefix(PREFIX).expect("reply starts with the prefix");
    assert!(!echoed.is_empty() && echoed.len() <= 2048, "echoed {} bytes", echoed.len());
    assert_eq!(echoed, &payload[..echoed.len()], "echo is the start of the request");
}

#[test]
fn a_lone_client_reads_eof_right_after_its_reply() {
    // The article's Python servers fail this: their master keeps its copy of
    // the socket until the next accept, so the client sees no FIN.
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    // Warm up so the worker is registered.
    assert_eq!(request(master.addr, b"warm").expect("warm-up"), expected_reply(b"warm"));

    let mut stream = connect(master.addr);
    std::io::Write::write_all(&mut stream, b"alone").expect("send");
    let expected = expected_reply(b"alone");
    let mut reply = vec![0u8; expected.len()];
    stream.read_exact(&mut reply).expect("reply");
    let replied_at = Instant::now();
    assert_eq!(reply, expected);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF");
    let eof_after = replied_at.elapsed();
    assert!(rest.is_empty());
    assert!(eof_after < Duration::from_millis(100), "EOF came {eof_after:?} after the reply");
}
