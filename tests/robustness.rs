use std::io::Read;
use std::os::fd::AsFd;

use handoff_fdpass::{Channel, Received, SharedCounters};
use handoff_proto::{codec, MasterToWorker, WorkerToMaster, PROTOCOL_VERSION};

use crate::support::*;

/// Waits until the master closes `chan` (it dropped us), returning what it
/// said first, if anything.
fn master_answer_then_close(chan: &Channel) -> Option<MasterToWorker> {
    chan.set_read_timeout(WAIT).expect("timeout");
    let mut buf = vec![0u8; 8192];
    let mut fds = Vec::new();
    let mut answer = None;
    loop {
        match again_after_eintr(|| chan.recv(&mut buf, &mut fds)) {
            Ok(Received::Packet(len)) => answer = codec::decode(&buf[..len]).ok(),
            Ok(Received::Closed) => return answer,
            Err(err) => panic!("master never closed the channel: {err}"),
        }
    }
}

/// A peer that connects to the workers' socket and never says Hello is
/// dropped after the Hello timeout (5 s), not kept forever.
#[test]
fn a_peer_that_never_says_hello_is_dropped_after_five_seconds() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let chan = Channel::connect(&master.run_dir.join("workers.sock")).expect("connect");
    let connected = std::time::Instant::now();
    assert_eq!(master_answer_then_close(&chan), None, "dropped without an answer");
    let after = connected.elapsed();
    assert!(after >= std::time::Duration::from_millis(4500), "dropped after {after:?}");
    master.wait_for_log("did not say Hello in time", 1);
}

/// A Hello with more fds than its channel end and counters is refused, and
/// says how many it sent.
#[test]
fn a_hello_with_extra_fds_is_refused() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let chan = Channel::connect(&master.run_dir.join("workers.sock")).expect("connect");
    let hello = hello_frame(PROTOCOL_VERSION);
    let counters = SharedCounters::create().expect("counters");
    let extra = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    chan.send(&hello, &[chan.as_fd(), counters.fd(), extra.as_fd()]).expect("hello");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Refused { reason }) => {
            assert_eq!(reason, "sent 3 fds with its Hello, at most 2")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn garbage_truncated_and_oversized_frames_drop_only_that_peer() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let socket = master.run_dir.join("workers.sock");
    let hello = hello_frame(PROTOCOL_VERSION);

    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8 | 0x80).collect();
    let truncated = hello[..hello.len() - 1].to_vec();
    let oversized = vec![0x01u8; 100_000];
    let mut trailing = hello.clone();
    trailing.extend_from_slice(b"junk");
    for (name, frame) in [
        ("garbage", garbage),
        ("truncated", truncated),
        ("oversized", oversized),
        ("trailing", trailing),
    ] {
        let chan = Channel::connect(&socket).expect("connect");
        chan.send(&frame, &[]).unwrap_or_else(|err| panic!("{name}: send: {err}"));
        assert_eq!(master_answer_then_close(&chan), None, "{name}");
        assert_eq!(
            request(master.addr, name.as_bytes()).expect("clients still served"),
            expected_reply(name.as_bytes())
        );
    }

    // A Hello without the worker's shared counters is refused, with why.
    let chan = Channel::connect(&socket).expect("connect");
    chan.send(&hello, &[]).expect("hello");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Refused { reason }) => {
            assert!(reason.contains("shared counters"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    // So is one whose "counters" are not a sealed memfd (mapping a file its
    // sender could truncate would let it crash the master with SIGBUS).
    let chan = Channel::connect(&socket).expect("connect");
    let plain = tempfile::tempfile().expect("temp file");
    plain.set_len(4096).expect("size");
    chan.send(&hello, &[chan.as_fd(), plain.as_fd()]).expect("hello");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Refused { reason }) => {
            assert!(reason.contains("shared counters are unusable"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    // A worker that sends an fd after its Hello (workers never do) is
    // dropped too.
    let chan = Channel::connect(&socket).expect("connect");
    let counters = SharedCounters::create().expect("counters");
    chan.send(&hello, &[chan.as_fd(), counters.fd()]).expect("hello");
    // A message it may send (`Freed`), but with an fd attached.
    let stray = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let freed = codec::encode_to_vec(&WorkerToMaster::Freed).expect("encode");
    chan.send(&freed, &[stray.as_fd()]).expect("send fd");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Welcome { .. }) => {}
        other => panic!("expected Welcome before being dropped, got {other:?}"),
    }
    master.wait_for_log("sent file descriptors outside its Hello", 1);

    // A wrong protocol version gets a reason before the close.
    let chan = Channel::connect(&socket).expect("connect");
    let old = hello_frame(PROTOCOL_VERSION + 1);
    chan.send(&old, &[]).expect("send");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Refused { reason }) => {
            assert!(reason.contains("protocol version"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    let log = master.log();
    assert!(log.matches("dropping worker channel").count() >= 8, "{log}");
    assert_eq!(request(master.addr, b"still").expect("request"), expected_reply(b"still"));
    assert!(master.child.is_some() && crate::support::process_alive(master.pid));
}

#[test]
fn a_worker_holds_each_received_fd_nonblocking_and_close_on_exec_and_the_master_lets_go_at_the_hand_off(
) {
    check_fd_ownership(&[], false);
}

#[test]
fn with_salvage_exact_the_master_keeps_its_copy_until_the_worker_is_done() {
    check_fd_ownership(&["--salvage", "exact"], true);
}

/// Silent clients are handed to the one worker, which must hold each fd
/// (non-blocking, close-on-exec) while it waits; the master holds a copy
/// too only if `master_holds`, and none once they are answered.
fn check_fd_ownership(extra: &[&str], master_holds: bool) {
    let scratch = Scratch::new();
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(extra);
    let master = Master::start(&scratch, &args);
    master.wait_for_log("worker registered", 1);
    let worker_pid = master.worker_pids()[0];
    // Connected but silent, so the worker must hold the fd while it waits.
    let mut clients: Vec<_> = (0..5).map(|_| connect(master.addr)).collect();
    let mut inodes = Vec::new();
    for client in &clients {
        let local = client.local_addr().expect("local addr");
        let mut found = None;
        wait_until(WAIT, "the worker to hold the connection", || {
            found = server_socket_inode(master.addr, local)
                .and_then(|inode| Some((inode, fd_holding_socket(worker_pid, inode)?)));
            found.is_some()
        });
        let (inode, fd) = found.expect("found");
        let flags = fd_flags(worker_pid, fd);
        assert_ne!(flags & libc_o_nonblock(), 0, "fd {fd} flags {flags:o}: not O_NONBLOCK");
        assert_ne!(flags & libc_o_cloexec(), 0, "fd {fd} flags {flags:o}: not close-on-exec");
        assert_eq!(
            fd_holding_socket(master.pid, inode).is_some(),
            master_holds,
            "does the master hold a copy while the worker serves it?"
        );
        inodes.push(inode);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("silent {i}");
        assert_eq!(
            send_and_read(client, payload.as_bytes()).expect("reply"),
            expected_reply(payload.as_bytes())
        );
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).expect("eof"), 0);
    }
    // Once the worker is done, nobody holds them.
    wait_until(WAIT, "the master to close its copies", || {
        inodes.iter().all(|&inode| fd_holding_socket(master.pid, inode).is_none())
    });
}

fn libc_o_nonblock() -> u32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits() as u32
}

fn libc_o_cloexec() -> u32 {
    nix::fcntl::OFlag::O_CLOEXEC.bits() as u32
}

/// A stand-in worker that connected to `master` and sent a proper Hello
/// (its channel end and shared counters); the counters must live as long.
/// Its pid is the test binary's: start `master` with [`STAND_IN_TIMEOUT`].
fn say_hello(master: &Master) -> (Channel, SharedCounters) {
    let chan = Channel::connect(&master.run_dir.join("workers.sock")).expect("connect");
    let counters = SharedCounters::create().expect("counters");
    chan.send(&hello_frame(PROTOCOL_VERSION), &[chan.as_fd(), counters.fd()]).expect("hello");
    (chan, counters)
}

/// A master with no worker of its own, and a stand-in that said Hello.
fn master_with_a_stand_in(scratch: &Scratch) -> (Master, Channel, SharedCounters) {
    let master =
        Master::start(scratch, &["--workers", "0", STAND_IN_TIMEOUT[0], STAND_IN_TIMEOUT[1]]);
    let (chan, counters) = say_hello(&master);
    (master, chan, counters)
}

/// A peer dropped (here for a malformed frame) while it holds a connection
/// keeps it: the master cannot tell whether it is still serving it, so it
/// hands nothing out twice, says so, and counts the connection lost.
#[test]
fn a_worker_dropped_while_holding_a_connection_keeps_it_and_it_is_counted_lost() {
    let scratch = Scratch::new();
    let (master, chan, _counters) = master_with_a_stand_in(&scratch);
    chan.set_read_timeout(WAIT).expect("timeout");
    let mut buf = vec![0u8; 8192];
    let mut fds = Vec::new();
    let mut receive = || {
        fds.clear();
        match again_after_eintr(|| chan.recv(&mut buf, &mut fds)) {
            Ok(Received::Packet(len)) => (codec::decode::<MasterToWorker>(&buf[..len]), fds.len()),
            other => panic!("expected a packet, got {other:?}"),
        }
    };
    assert!(matches!(receive(), (Ok(MasterToWorker::Welcome { .. }), 0)));
    let _client = connect(master.addr);
    assert!(matches!(receive(), (Ok(MasterToWorker::Connection(_)), 1)), "a connection");
    chan.send(b"\xff\xff not a frame", &[]).expect("send garbage");
    assert_eq!(master_answer_then_close(&chan), None);
    master.wait_for_log("dropped a worker that held connections; they stay with it", 1);
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!((count(&info, "lost"), count(&info, "in_flight")), (1, 0), "{info}");
}

/// Completions one by one (`Finished`) are for workers told to report
/// each connection (`--salvage exact`); a worker told to report counters
/// that sends one anyway is dropped, its report not counted.
#[test]
fn a_finished_report_from_a_worker_told_to_report_counters_is_refused() {
    use handoff_proto::{Completion, Finished, Outcome};
    let scratch = Scratch::new();
    let (master, chan, _counters) = master_with_a_stand_in(&scratch);
    let finished = codec::encode_to_vec(&WorkerToMaster::Finished(Finished {
        conns: vec![Completion {
            conn_id: 1,
            outcome: Outcome::Served,
            bytes_in: 5,
            bytes_out: 25,
        }],
    }))
    .expect("encode");
    master.wait_for_log("worker registered", 1);
    chan.send(&finished, &[]).expect("send the report");
    match master_answer_then_close(&chan) {
        Some(MasterToWorker::Welcome { .. }) => {}
        other => panic!("expected Welcome before being dropped, got {other:?}"),
    }
    master.wait_for_log("unexpected Finished", 1);
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!((count(&info, "served"), count(&info, "completed")), (0, 0), "{info}");
}
