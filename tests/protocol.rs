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

/// A master preempted between its hand-off and its close (the worker it
/// woke runs first) still holds its copy when the worker is done. The
/// worker sends the FIN itself, so the client reads EOF right after its
/// reply anyway. A stand-in master plays that master: it keeps its copy of
/// the connection throughout.
#[test]
fn a_worker_ends_the_connection_even_if_the_masters_copy_outlives_its_own() {
    use handoff_fdpass::Received;
    use handoff_proto::{codec, Dispatch, MasterToWorker, Reporting, WorkerToMaster};
    use std::io::Write;
    use std::os::fd::AsFd;

    let scratch = Scratch::new();
    let (_worker, chan) = worker_at_a_stand_in_master(&scratch);
    chan.set_read_timeout(WAIT).expect("channel timeout");
    let (mut buf, mut fds) = (vec![0u8; 4096], Vec::new());
    let Ok(Received::Packet(len)) = chan.recv(&mut buf, &mut fds) else {
        panic!("no Hello from the worker");
    };
    assert!(matches!(codec::decode(&buf[..len]), Ok(WorkerToMaster::Hello(_))));
    let welcome = MasterToWorker::Welcome {
        worker_id: 1,
        reporting: Reporting::Counters,
        max_fds_per_packet: 1,
    };
    chan.send(&codec::encode_to_vec(&welcome).expect("encode"), &[]).expect("Welcome");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let mut client = connect(listener.local_addr().expect("address"));
    let (masters_copy, _) = listener.accept().expect("accept");
    client.write_all(b"copy kept").expect("send");
    let accepted_at_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .expect("clock");
    let handoff =
        MasterToWorker::Connection(Dispatch { conn_id: 1, accepted_at_ns, redispatches: 0 });
    chan.send(&codec::encode_to_vec(&handoff).expect("encode"), &[masters_copy.as_fd()])
        .expect("hand-off");

    client.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut reply = Vec::new();
    let read = client.read_to_end(&mut reply);
    assert!(read.is_ok(), "no EOF while the master's copy is open: {read:?}, read {reply:?}");
    assert_eq!(reply, expected_reply(b"copy kept"));
    drop(masters_copy);
}

/// `--salvage exact`: the master keeps its copy of each connection until
/// the worker reports it finished, so the worker sends the FIN itself
/// (`shutdown`) after replying. A client sees EOF right after its reply even
/// while the master holds its copy — here, while the master is stopped.
#[test]
fn with_salvage_exact_the_worker_ends_the_connection_even_while_the_master_holds_a_copy() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--salvage", "exact"]);
    master.wait_for_log("worker registered", 1);
    let mut stream = connect(master.addr);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the worker to hold the client", || {
        count(&control.ask("info"), "in_flight") == 1
    });
    master.signal(nix::sys::signal::Signal::SIGSTOP);
    stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let reply = send_and_read(&mut stream, b"master stopped");
    master.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        reply.expect("reply and EOF while the master is stopped"),
        expected_reply(b"master stopped")
    );
}
