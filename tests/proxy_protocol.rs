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
    let served = |peer: &str| log.lines().any(|l| l.contains(" served ") && l.contains(peer));
    assert!(served("peer=203.0.113.7:40001"), "v1 client as the peer:\n{log}");
    assert!(served("peer=198.51.100.9:40002"), "v2 client as the peer:\n{log}");
    // The one without a header is named by its socket: this test's address.
    assert!(
        log.lines()
            .any(|l| l.contains("finished without a reply") && l.contains("peer=127.0.0.1:")),
        "the real peer of a connection without a header:
{log}"
    );
}

/// A balancer's health check: a PROXY v2 `LOCAL` header, then a reset
/// (HAProxy's checks close so). It used to count as a client reset; it is
/// a health check, counted apart. A `LOCAL` connection that closes cleanly
/// has sent the article's empty request (answered, as without a header),
/// and one that sends a request is served like any other.
#[test]
fn a_local_header_health_check_is_counted_apart_not_as_a_reset() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--proxy-protocol"]);
    master.wait_for_log("worker registered", 1);
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    for reset in [true, false] {
        let mut check = connect(master.addr);
        check.write_all(local).expect("send LOCAL");
        std::thread::sleep(Duration::from_millis(50));
        if reset {
            let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            nix::sys::socket::setsockopt(&check, nix::sys::socket::sockopt::Linger, &linger)
                .expect("SO_LINGER");
        }
        drop(check);
    }
    // A LOCAL connection with a request is served.
    let mut probe = connect(master.addr);
    probe.write_all(&[local.as_slice(), b"health"].concat()).expect("send");
    probe.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reply = Vec::new();
    probe.read_to_end(&mut reply).expect("reply");
    assert_eq!(reply, expected_reply(b"health"));
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "all three finished", || count(&control.ask("info"), "completed") == 3);
    let info = control.ask("info");
    assert_eq!(
        (count(&info, "health_checks"), count(&info, "resets"), count(&info, "failed")),
        (1, 0, 0),
        "{info}"
    );
    assert_eq!(count(&info, "served"), 2, "{info}");
    let metrics = control.ask("metrics")["metrics"].as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("handoff_connections_completed_total{outcome=\"health_check\"} 1"),
        "{metrics}"
    );
}
