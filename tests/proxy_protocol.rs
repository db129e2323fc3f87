use std::io::{Read, Write};
use std::time::Duration;

use crate::support::*;

/// A v2 PROXY header for a TCP4 client, built by hand.
fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0, 12]);
    bytes.extend_from_slice(&client);
    bytes.extend_from_slice(&[127, 0, 0, 1]);
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes.extend_from_slice(&6001u16.to_be_bytes());
    bytes
}

#[test]
fn headers_are_stripped_their_client_is_the_peer_and_a_missing_one_is_refused() {
    let scratch = Scratch::new();
    let master = Master::start_with_env(
        &scratch,
        &["--workers", "1", "--proxy-protocol"],
        "info,handoff_worker=debug",
    );

    // v1, header and request in one write.
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 6001\r\n".to_vec();
    v1.extend_from_slice(b"hello");
    assert_eq!(request(master.addr, &v1).expect("v1 request"), expected_reply(b"hello"));

    // v2, header in two pieces, then the request on its own.
    let header = v2_header([198, 51, 100, 9], 40002);
    let mut stream = connect(master.addr);
    stream.write_all(&header[..10]).expect("first piece");
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(&header[10..]).expect("second piece");
    std::thread::sleep(Duration::from_millis(50));
    let reply = send_and_read(&mut stream, "你好".as_bytes()).expect("v2 request");
    assert_eq!(reply, expected_reply("你好".as_bytes()));

    // No header: closed without a reply, counted as failed.
    let mut stream = connect(master.addr);
    stream.write_all(b"hello").expect("send");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(reply.is_empty(), "no reply without a header: {reply:?}");

    let mut control = Control::connect(&master.run_dir);
    wait_until(Duration::from_secs(5), "the failed connection counted", || {
        let info = control.ask("info");
        count(&info, "served") == 2 && count(&info, "failed") == 1
    });
    master.wait_for_log("no valid PROXY header", 1);
    let log = master.log();
    assert!(log.contains("peer=203.0.113.7:40001"), "v1 client as the peer:\n{log}");
    assert!(log.contains("peer=198.51.100.9:40002"), "v2 client as the peer:\n{log}");
}
