use std::io::{Read, Write};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

/// The `accepted` and `lost` counts of the master's `shutdown complete`
/// line.
fn shutdown_counts(master: &Master) -> (u64, u64) {
    let log = master.log();
    let done = log.lines().find(|l| l.contains("shutdown complete")).expect("shutdown complete");
    let number = |key| field(done, key).and_then(|n| n.parse().ok()).expect(key);
    (number("accepted"), number("lost"))
}

#[test]
fn with_no_workers_a_client_is_held_until_a_worker_joins_and_later_workers_share_the_work() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let mut early = connect(master.addr);
    early.write_all(b"early").expect("send");
    early.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut byte = [0u8; 1];
    let err = again_after_eintr(|| early.read(&mut byte))
        .expect_err("no worker yet: no reply, and no close either");
    assert!(
        matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "{err:?}"
    );

    let first_log = scratch.path().join("worker-1.log");
    let _first = Worker::start(&master.run_dir, first_log.clone(), "info,handoff_worker=debug");
    early.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reply = Vec::new();
    early.read_to_end(&mut reply).expect("reply once a worker joined");
    assert_eq!(reply, expected_reply(b"early"));

    let second_log = scratch.path().join("worker-2.log");
    let _second = Worker::start(&master.run_dir, second_log.clone(), "info,handoff_worker=debug");
    master.wait_for_log("worker registered", 2);
    for i in 0..20 {
        let payload = format!("shared {i}");
        assert_eq!(
            request(master.addr, payload.as_bytes()).expect("request"),
            expected_reply(payload.as_bytes())
        );
    }
    wait_for_log(&first_log, "served", 2);
    wait_for_log(&second_log, "served", 1);
    assert!(master.log().contains("origin=\"external\""));
}

/// SIGTERM with clients queued and no worker to ever take them: they are
/// closed (not left hanging), counted lost, and the master exits 1 (a
/// stop that lost clients is not a clean one).
#[test]
fn sigterm_with_no_worker_closes_the_queued_clients_and_counts_them_lost() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0"]);
    let mut clients: Vec<_> = (0..3).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "three clients queued", || count(&control.ask("info"), "queued") == 3);
    drop(control);
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "clients were lost; log:\n{}", master.log());
    for client in &mut clients {
        client.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut reply = Vec::new();
        // Closed without a reply (EOF, or a reset if the kernel had data).
        if let Ok(n) = client.read_to_end(&mut reply) {
            assert_eq!(n, 0, "no reply without a worker");
        }
    }
    assert_eq!(shutdown_counts(&master), (3, 3), "accepted, lost");
}

#[test]
fn sigterm_while_clients_are_mid_request_answers_every_one_and_exits_clean() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let worker_pids = master.worker_pids();
    // Twenty clients connected, none has sent its request yet.
    let mut clients: Vec<_> = (0..20).map(|_| connect(master.addr)).collect();
    master.signal(Signal::SIGTERM);
    master.wait_for_log("shutting down", 1);
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("late {i}");
        let reply = send_and_read(client, payload.as_bytes()).expect("reply after SIGTERM");
        assert_eq!(reply, expected_reply(payload.as_bytes()));
    }
    let status = master.wait_exit(WAIT);
    assert!(status.success(), "master exited {status}; log:\n{}", master.log());
    let log = master.log();
    assert_eq!(log.matches("worker exited").count(), 2, "{log}");
    assert_eq!(log.matches("status=exit status: 0").count(), 2, "workers exit 0:\n{log}");
    for pid in worker_pids {
        assert!(!process_alive(pid), "worker {pid} still running");
    }
    let left: Vec<_> = std::fs::read_dir(&master.run_dir).expect("run dir").flatten().collect();
    assert!(left.is_empty(), "run dir not clean: {left:?}");
    // New clients are refused now that the master is gone.
    assert!(std::net::TcpStream::connect(master.addr).is_err());
}

/// Clients whose handshake completed but that the master had not taken
/// (its queue was full) are taken from the backlog before the listener
/// closes: closed and counted like the queued ones, not reset uncounted.
#[test]
fn sigterm_takes_the_backlog_before_closing_the_listener() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0", "--queue-limit", "2"]);
    let clients: Vec<_> = (0..5).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the queue to fill", || count(&control.ask("info"), "queued") == 2);
    master.wait_for_log("queue full", 1);
    assert_eq!(count(&control.ask("info"), "accepted"), 2, "three wait in the backlog");
    drop(control);
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "clients were lost; log:\n{}", master.log());
    drop(clients);
    assert_eq!(shutdown_counts(&master), (5, 5), "accepted, lost");
}

/// A missing worker binary stops the start (EX_UNAVAILABLE, saying which)
/// only when the master is to spawn workers: with `--workers 0` workers
/// join on their own, and the master starts and serves.
#[test]
fn a_missing_worker_binary_stops_the_start_only_when_workers_are_to_be_spawned() {
    let scratch = Scratch::new();
    let missing = scratch.path().join("no-such-worker");
    let missing = missing.to_str().expect("utf-8 path");
    let output = std::process::Command::new(bin("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--worker-bin", missing, "--run-dir"])
        .arg(scratch.run_dir())
        .output()
        .expect("run handoff-master");
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("worker binary {missing} not found")), "{stderr}");

    let master = Master::start(&scratch, &["--workers", "0", "--worker-bin", missing]);
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    master.wait_for_log("worker registered", 1);
    assert_eq!(request(master.addr, b"joined").expect("reply"), expected_reply(b"joined"));
}

/// A stopping master waits for a worker that joined on its own as for
/// the ones it spawned: it exits once that worker finished what it holds
/// and left, not as soon as no child of its own is alive.
#[test]
fn a_stopping_master_waits_for_a_worker_that_joined_on_its_own() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0"]);
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    master.wait_for_log("worker registered", 1);
    let mut client = connect(master.addr);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the client handed over", || count(&control.ask("info"), "dispatched") == 1);
    master.signal(Signal::SIGTERM);
    master.wait_for_log("shutting down", 1);
    // Still there, draining, while the worker holds the client.
    assert_eq!(control.ask("info")["state"], "draining");
    drop(control);
    assert_eq!(send_and_read(&mut client, b"late").expect("reply"), expected_reply(b"late"));
    assert!(master.wait_exit(WAIT).success(), "{}", master.log());
    let log = master.log();
    let left = log.find("worker left").expect("the worker left");
    let complete = log.find("shutdown complete").expect("shutdown complete");
    assert!(left < complete, "{log}");
}

/// Without --worker-bin the master looks for handoff-worker beside itself,
/// then on PATH; finding none is an error only when it is to spawn workers.
#[test]
fn a_master_alone_starts_with_workers_0_and_refuses_to_spawn_none_found() {
    let scratch = Scratch::new();
    let alone = scratch.path().join("alone");
    copy_binary("handoff-master", &alone);
    let start = |workers: &str| {
        std::process::Command::new(alone.join("handoff-master"))
            .args(["--listen", "127.0.0.1:0", "--workers", workers, "--run-dir"])
            .arg(scratch.run_dir())
            .env("PATH", &alone)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the lone master")
    };
    let output = start("1").wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("handoff-worker not found beside"), "{stderr}");

    let mut child = start("0");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("ready line");
    let started = line.starts_with("listening on ");
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    assert!(started, "{line:?} {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_second_master_on_the_same_run_dir_gets_a_clear_error() {
    let scratch = Scratch::new();
    let first = Master::start(&scratch, &["--workers", "0"]);
    let output = std::process::Command::new(bin("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "0", "--run-dir"])
        .arg(&first.run_dir)
        .output()
        .expect("run second master");
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("another handoff-master (pid {})", first.pid)),
        "stderr: {stderr}"
    );
}

#[test]
fn a_killed_masters_stale_sockets_are_cleaned_up_by_the_next() {
    let scratch = Scratch::new();
    let mut first = Master::start(&scratch, &["--workers", "0"]);
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT);
    assert!(first.run_dir.join("workers.sock").exists(), "a SIGKILLed master leaves its socket");
    let second = Master::start(&scratch, &["--workers", "1"]);
    assert_eq!(request(second.addr, b"again").expect("request"), expected_reply(b"again"));
    assert!(second.log().contains("removed a stale socket"));
}

#[test]
fn a_worker_with_no_master_says_so() {
    let scratch = Scratch::new();
    let output = std::process::Command::new(bin("handoff-worker"))
        .arg("--run-dir")
        .arg(scratch.run_dir())
        .output()
        .expect("run worker");
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no handoff-master is listening"), "stderr: {stderr}");
}

#[test]
fn a_worker_told_to_stop_serves_what_it_holds_and_the_master_keeps_the_rest_for_others() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let mut leaving = Worker::start(&master.run_dir, scratch.path().join("w1.log"), "info");
    master.wait_for_log("worker registered", 1);
    // This client is handed to the worker, which waits for its request.
    let mut held = connect(master.addr);
    held.write_all(b"").expect("connected");
    let pid = leaving.child.as_ref().expect("running").id();
    wait_until(WAIT, "the worker to hold the connection", || {
        let local = held.local_addr().expect("local addr");
        server_socket_inode(master.addr, local)
            .and_then(|inode| fd_holding_socket(pid, inode))
            .is_some()
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).expect("kill");
    master.wait_for_log("worker is leaving", 1);
    // A client arriving now waits in the master for another worker.
    let mut later = connect(master.addr);
    later.write_all(b"later").expect("send");
    let reply = send_and_read(&mut held, b"held").expect("held reply");
    assert_eq!(reply, expected_reply(b"held"));
    let status = leaving.wait_exit(WAIT);
    assert!(status.success(), "leaving worker exited {status}");
    let _next = Worker::start(&master.run_dir, scratch.path().join("w2.log"), "info");
    let mut reply = Vec::new();
    later.read_to_end(&mut reply).expect("later reply");
    assert_eq!(reply, expected_reply(b"later"));
    assert!(!master.log().contains("without reporting"), "{}", master.log());
}
