use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// `clients` threads × `each` requests, every reply checked.
fn concurrent_load(addr: std::net::SocketAddr, clients: usize, each: usize) {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..each {
                    let payload = format!("mode test {c}/{i}");
                    let reply = request(addr, payload.as_bytes()).expect("request");
                    assert_eq!(reply, expected_reply(payload.as_bytes()));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every reply exact");
    }
}

/// Starts a master with `args`, runs concurrent load, and checks that the
/// counters add up and both workers served.
fn check_mode(args: &[&str]) {
    const CLIENTS: usize = 20;
    const EACH: usize = 25;
    let scratch = Scratch::new();
    let mut all = vec!["--workers", "2"];
    all.extend_from_slice(args);
    let master = Master::start(&scratch, &all);
    master.wait_for_log("worker registered", 2);
    if args.contains(&"shared") || args.contains(&"reuseport") {
        master.wait_for_log("accepting connections myself", 2);
    }
    concurrent_load(master.addr, CLIENTS, EACH);
    let total = (CLIENTS * EACH) as u64;
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "every completion reported", || {
        count(&control.ask("info"), "completed") == total
    });
    let info = control.ask("info");
    assert_eq!(count(&info, "accepted") + count(&info, "worker_accepted"), total, "{info}");
    let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(count(row, "served") > 0, "{args:?}: a worker got nothing: {rows:?}");
        assert_eq!(count(row, "in_flight"), 0, "{row}");
    }
    let sum = |key: &str| rows.iter().map(|row| count(row, key)).sum::<u64>();
    assert_eq!(sum("completed"), total, "the workers' rows add up: {rows:?}");
    assert_eq!(sum("served"), total, "{rows:?}");
    let bytes_in: usize =
        (0..CLIENTS).flat_map(|c| (0..EACH).map(move |i| format!("mode test {c}/{i}").len())).sum();
    assert_eq!(sum("bytes_in"), bytes_in as u64, "{rows:?}");
    assert_eq!(sum("bytes_out"), (bytes_in + 20 * CLIENTS * EACH) as u64, "{rows:?}");
    if !(args.contains(&"shared") || args.contains(&"reuseport")) {
        // dispatched = completed + in flight + lost, exactly, once load stops.
        assert_eq!(count(&info, "dispatched"), total, "{info}");
        assert_eq!(sum("dispatched"), total, "{rows:?}");
        assert_eq!((count(&info, "in_flight"), count(&info, "lost")), (0, 0), "{info}");
    }
    for key in ["resets", "failed", "timeouts", "redispatched", "accept_errors", "worker_deaths"] {
        assert_eq!(count(&info, key), 0, "{args:?}: {key}: {info}");
    }
    assert_no_warnings(&master.log());
}

#[test]
fn dispatch_round_robin_serves_exactly_on_every_worker() {
    check_mode(&["--mode", "dispatch", "--policy", "rr"]);
}

#[test]
fn dispatch_round_robin_with_salvage_exact_serves_exactly_on_every_worker() {
    check_mode(&["--policy", "rr", "--salvage", "exact"]);
}

#[test]
fn dispatch_least_loaded_serves_exactly_on_every_worker() {
    check_mode(&["--policy", "least"]);
}

#[test]
fn dispatch_pull_serves_exactly_on_every_worker() {
    check_mode(&["--policy", "pull"]);
}

#[test]
fn dispatch_batched_serves_exactly_on_every_worker() {
    check_mode(&["--batch", "8"]);
}

#[test]
fn shared_listener_workers_accept_themselves_exactly_on_every_worker() {
    check_mode(&["--mode", "shared"]);
}

#[test]
fn reuseport_workers_accept_themselves_exactly_on_every_worker() {
    check_mode(&["--mode", "reuseport"]);
}

#[test]
fn reuseport_with_the_least_program_serves_exactly_on_every_worker() {
    check_mode(&["--mode", "reuseport", "--policy", "least"]);
}

#[test]
fn reuseport_with_the_pull_program_serves_exactly_on_every_worker() {
    check_mode(&["--mode", "reuseport", "--policy", "pull", "--max-conns", "8"]);
}

#[test]
fn pull_never_gives_a_worker_more_than_its_capacity() {
    let scratch = Scratch::new();
    let master =
        Master::start(&scratch, &["--workers", "2", "--policy", "pull", "--delay-ms", "50"]);
    master.wait_for_log("worker registered", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let max_queued = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_in_flight, max_queued) =
            (Arc::clone(&stop), Arc::clone(&max_in_flight), Arc::clone(&max_queued));
        let run_dir = master.run_dir.clone();
        std::thread::spawn(move || {
            let mut control = Control::connect(&run_dir);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < WAIT {
                for row in control.ask("workers")["workers"].as_array().cloned().unwrap_or_default()
                {
                    assert_eq!(count(&row, "capacity"), 1, "{row}");
                    max_in_flight.fetch_max(count(&row, "in_flight"), Ordering::Relaxed);
                }
                max_queued.fetch_max(count(&control.ask("info"), "queued"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    concurrent_load(master.addr, 8, 3);
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!(max_in_flight.load(Ordering::Relaxed), 1, "a worker held more than its capacity");
    assert!(max_queued.load(Ordering::Relaxed) > 0, "the rest waited in the master");
}

#[test]
fn least_loaded_sends_work_away_from_a_slow_worker() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--policy", "least"]);
    let _slow = Worker::start_with_args(
        &master.run_dir,
        scratch.path().join("slow.log"),
        "info",
        &["--delay-ms", "200"],
    );
    master.wait_for_log("worker registered", 1);
    let _fast = Worker::start(&master.run_dir, scratch.path().join("fast.log"), "info");
    master.wait_for_log("worker registered", 2);
    concurrent_load(master.addr, 4, 10);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "all reported", || count(&control.ask("info"), "completed") == 40);
    let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
    let (slow, fast) = (count(&rows[0], "served"), count(&rows[1], "served"));
    // Round-robin would split them 20/20; least-loaded only sends work to
    // the slow worker when it holds nothing (a tie).
    assert!(
        fast >= slow * 2,
        "least-loaded should favour the fast worker: slow {slow}, fast {fast}"
    );
}

#[test]
fn a_delay_does_not_stall_the_workers_other_connections() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--delay-ms", "300"]);
    master.wait_for_log("worker registered", 1);
    let started = Instant::now();
    concurrent_load(master.addr, 10, 1);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "the delay happened: {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "10 delayed requests on one worker took {elapsed:?}"
    );
}

#[test]
fn a_burst_goes_out_in_batches() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--batch", "16"]);
    master.wait_for_log("worker registered", 1);
    master.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut clients: Vec<_> = (0..200).map(|_| connect(master.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("burst {i}").as_bytes()).expect("send");
    }
    master.signal(nix::sys::signal::Signal::SIGCONT);
    for (i, client) in clients.iter_mut().enumerate() {
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("reply");
        assert_eq!(reply, expected_reply(format!("burst {i}").as_bytes()));
    }
    let info = Control::connect(&master.run_dir).ask("info");
    let (dispatched, packets) = (count(&info, "dispatched"), count(&info, "handoff_packets"));
    assert_eq!(dispatched, 200);
    assert!(packets * 4 <= dispatched, "{packets} packets for {dispatched} connections");
}

#[test]
fn http_mode_keeps_alive_honours_close_and_rejects_malformed_heads() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--protocol", "http"]);
    master.wait_for_log("worker registered", 1);
    let mut stream = connect(master.addr);
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    for path in ["/one", "/two"] {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
        let body = read_http_response(&mut reader, 200);
        assert_eq!(body, format!("server get message: GET {path}\n"));
    }
    write!(stream, "GET /last HTTP/1.1\r\nConnection: close\r\n\r\n").expect("send");
    read_http_response(&mut reader, 200);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).expect("closed"), 0, "closed after Connection: close");

    let mut bad = connect(master.addr);
    bad.write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").expect("send");
    let mut reply = String::new();
    bad.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");

    // An everyday client, when the machine has one.
    let url = format!("http://{}/curl", master.addr);
    match std::process::Command::new("curl").args(["-sS", "--max-time", "5", &url]).output() {
        Ok(out) => {
            assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout), "server get message: GET /curl\n");
        }
        Err(err) => panic!("curl could not run ({err}): `make deps` installs it"),
    }
}

/// Reads one response with the given status; returns its body.
fn read_http_response(reader: &mut impl std::io::BufRead, status: u16) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with(&format!("HTTP/1.1 {status} ")), "{line}");
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("length");
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("text body")
}

#[test]
fn a_failure_and_self_accepted_timeouts_are_counted_by_outcome() {
    // HTTP: a client that connects and closes without a request is a
    // failure (no reply is possible), counted as `failed`, not `served`.
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--protocol", "http"]);
    master.wait_for_log("worker registered", 1);
    drop(connect(master.addr));
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the failure to be counted", || count(&control.ask("info"), "failed") == 1);
    let info = control.ask("info");
    assert_eq!((count(&info, "served"), count(&info, "completed")), (0, 1), "{info}");
    let row = control.ask("workers")["workers"][0].clone();
    assert_eq!(count(&row, "failed"), 1, "{row}");

    // Shared mode: a connection a worker accepted itself and timed out is
    // counted from the worker's stats as a timeout, once.
    let scratch = Scratch::new();
    let master =
        Master::start(&scratch, &["--workers", "1", "--mode", "shared", "--read-timeout", "0.3"]);
    master.wait_for_log("accepting connections myself", 1);
    let mut idle = connect(master.addr);
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).expect("closed by the read timeout");
    assert!(rest.is_empty());
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the timeout to be counted", || count(&control.ask("info"), "timeouts") == 1);
    std::thread::sleep(Duration::from_millis(300));
    let info = control.ask("info");
    assert_eq!(
        (count(&info, "timeouts"), count(&info, "worker_accepted"), count(&info, "served")),
        (1, 1, 0),
        "counted once, by outcome: {info}"
    );
}

/// In shared mode `info` asks the workers for fresh stats (their own
/// accepts are only known from those): what a worker accepted shows within
/// a few tens of milliseconds, not at its next periodic report (every
/// second). Two rounds 500 ms apart: a periodic report cannot fall into
/// both 400 ms windows.
#[test]
fn in_shared_mode_info_asks_the_workers_for_their_accepts() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--mode", "shared"]);
    master.wait_for_log("accepting connections myself", 1);
    let mut control = Control::connect(&master.run_dir);
    for round in 1..=2u64 {
        let started = Instant::now();
        assert_eq!(request(master.addr, b"fresh").expect("reply"), expected_reply(b"fresh"));
        let deadline = started + Duration::from_millis(400);
        loop {
            let accepted = count(&control.ask("info"), "worker_accepted");
            if accepted == round {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: info still says {accepted} accepted after 400 ms"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(
            (started + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
        );
    }
}

/// Stopping in shared mode, the master keeps its copy of the listener until
/// the workers have stopped accepting, then takes what waits in the queue
/// and hands it out: a client that connects after SIGTERM, while the
/// (stopped) worker has not yet read StopAccepting, is answered, not reset
/// when the worker closes its copy.
#[test]
fn stopping_in_shared_mode_the_master_takes_the_queue_after_the_workers_stop_accepting() {
    use nix::sys::signal::{kill, Signal};
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "1", "--mode", "shared"]);
    master.wait_for_log("accepting connections myself", 1);
    let worker = nix::unistd::Pid::from_raw(master.worker_pids()[0] as i32);
    stop_process(worker);
    master.signal(Signal::SIGTERM);
    master.wait_for_log("shutting down: no longer accepting", 1);
    let mut late = connect(master.addr);
    late.write_all(b"late").expect("send");
    kill(worker, Signal::SIGCONT).expect("SIGCONT worker");
    let mut reply = Vec::new();
    let read = again_after_eintr(|| late.read_to_end(&mut reply));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&expected_reply(b"late")),
        "{read:?}; master log:\n{}",
        master.log()
    );
    assert!(master.wait_exit(WAIT).success(), "{}", master.log());
}

/// A worker that leaves in shared mode (SIGINT) stops accepting at once,
/// while it finishes what it holds: a client that comes meanwhile waits in
/// the shared queue for the next worker. Its last report, sent as it exits,
/// carries what it accepted since the one before (here: every connection,
/// its periodic report being a minute away).
#[test]
fn a_worker_leaving_in_shared_mode_stops_accepting_and_reports_what_it_served_last() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--mode", "shared"]);
    let worker_log = scratch.path().join("first.log");
    let mut first = Worker::start_with_args(
        &master.run_dir,
        worker_log.clone(),
        "info",
        &["--report-interval", "60", "--read-timeout", "10"],
    );
    wait_for_log(&worker_log, "accepting connections myself", 1);
    for i in 0..3 {
        let payload = format!("early {i}");
        assert_eq!(
            request(master.addr, payload.as_bytes()).expect("reply"),
            expected_reply(payload.as_bytes())
        );
    }
    // Held by the worker (accepted, nothing sent yet), so it stays to finish it.
    let pid = first.child.as_ref().expect("running").id();
    let idle_sockets = socket_fds(pid);
    let mut held = connect(master.addr);
    wait_until(WAIT, "the held client accepted", || socket_fds(pid) > idle_sockets);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    // Told to finish (its answer to our Leaving), it stops accepting then.
    wait_for_log(&worker_log, "master asked us to finish and exit", 1);

    let mut late = connect(master.addr);
    late.write_all(b"late").expect("send");
    late.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut byte = [0u8; 1];
    let waited =
        again_after_eintr(|| late.read(&mut byte)).expect_err("no reply while no worker accepts");
    assert!(
        matches!(waited.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "{waited:?}"
    );

    assert_eq!(send_and_read(&mut held, b"held").expect("reply"), expected_reply(b"held"));
    assert!(first.wait_exit(WAIT).success());
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(count(&info, "worker_accepted"), 4, "3 requests and the held one: {info}");

    let _second = Worker::start(&master.run_dir, scratch.path().join("second.log"), "info");
    late.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reply = Vec::new();
    late.read_to_end(&mut reply).expect("served by the next worker");
    assert_eq!(reply, expected_reply(b"late"));
}
