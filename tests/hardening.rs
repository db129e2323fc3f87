//! Issue #10's scenarios owned by the hand-off side: running out of fds
//! (master and workers), closed stderr, stray signals, exit codes and error
//! messages, queue-full logging, HTTP salvage. Real processes, bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// A worker started by hand whose open-file limit (soft and hard, so it
/// cannot raise it) is `limit`.
fn limited_worker(
    run_dir: &Path,
    log_path: std::path::PathBuf,
    limit: u32,
    args: &[&str],
) -> Worker {
    let log = std::fs::File::create(&log_path).expect("worker log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(bin("handoff-worker"))
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn limited worker");
    Worker { child: Some(child), log_path }
}

/// A process's open-file limits (soft, hard), from /proc.
fn fd_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files");
    let mut words = line["Max open files".len()..].split_whitespace();
    (words.next().expect("soft").to_owned(), words.next().expect("hard").to_owned())
}

// nginx's worker_rlimit_nofile, always: a worker started under a low soft
// limit (the common 1024, here 64) raises it to the hard limit, so it can
// hold one fd per connection.
#[test]
fn a_worker_raises_its_soft_fd_limit_to_the_hard_limit() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let log = std::fs::File::create(scratch.path().join("w.log")).expect("worker log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 64 && exec \"$0\" \"$@\"")
        .arg(bin("handoff-worker"))
        .arg("--run-dir")
        .arg(&master.run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn worker");
    master.wait_for_log("worker registered", 1);
    let (soft, hard) = fd_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(hard, "64", "the hard limit stays above the soft one");
    assert_eq!(soft, hard, "the worker's soft limit was raised to its hard limit");
}

/// Sends `payload` on every client, then checks every reply.
fn answer_all(clients: &mut [TcpStream], what: &str, log: impl Fn() -> String) {
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("{what} {i}").as_bytes()).expect("send");
    }
    answer_all_sent(clients, what, log);
}

/// Checks each client's reply to the `"{what} {i}"` it already sent.
fn answer_all_sent(clients: &mut [TcpStream], what: &str, log: impl Fn() -> String) {
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("{what} {i}");
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(&expected_reply(payload.as_bytes())),
            "client {i} got no full reply; master log:\n{}",
            log()
        );
    }
}

/// Once `master`'s one worker has registered: stops it (SIGSTOP), then
/// connects `n` clients, client `i` sending `"{what} {i}"`. The worker's
/// pid and the clients.
fn clients_for_a_stopped_worker(master: &Master, n: usize, what: &str) -> (Pid, Vec<TcpStream>) {
    master.wait_for_log("worker registered", 1);
    let worker = Pid::from_raw(master.worker_pids()[0] as i32);
    stop_process(worker);
    let mut clients: Vec<_> = (0..n).map(|_| connect(master.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("{what} {i}").as_bytes()).expect("send");
    }
    (worker, clients)
}

/// A master at an fd limit of 40 with no worker, started with `extra`,
/// and the 60 clients that connected to it: it holds those it accepted
/// until its fds ran out (logged), the rest wait in its backlog.
fn master_out_of_fds(scratch: &Scratch, extra: &[&str]) -> (Master, Vec<TcpStream>) {
    let mut args = vec!["--workers", "0"];
    args.extend_from_slice(extra);
    let master = Master::start_with_fd_limit(scratch, &args, 40);
    let clients: Vec<_> = (0..60).map(|_| connect(master.addr)).collect();
    master.wait_for_log("out of resources: pausing accept", 1);
    (master, clients)
}

/// The master spends (almost) no CPU time for half a second: what waits
/// is retried on a timer, not in a spin.
fn assert_idle_for_half_a_second(master: &Master, what: &str) {
    let before = cpu_ticks(master.pid);
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_ticks(master.pid) - before;
    assert!(spent < 15, "the master spins while {what}: {spent} ticks in 0.5 s");
}

// Item 4, the workers' socket: at EMFILE a registering worker is not left
// waiting for an edge that never comes, and the spare fds make room for it.
#[test]
fn a_worker_registers_while_the_master_is_out_of_fds_and_the_held_clients_are_served() {
    let scratch = Scratch::new();
    let (master, mut clients) = master_out_of_fds(&scratch, &[]);
    let started = Instant::now();
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    master.wait_for_log("worker registered", 1);
    let registered = started.elapsed();
    answer_all(&mut clients, "held", || master.log());
    eprintln!(
        "master at 40 fds holding clients: a worker registered {registered:?} after it \
         started; {} held clients answered in {:?}",
        clients.len(),
        started.elapsed()
    );
}

/// At its fd limit the master cannot accept an agent check: the check
/// waits (retried on a timer, not in a spin) and is answered once fds are
/// free again.
#[test]
fn an_agent_check_at_the_masters_fd_limit_waits_without_spinning_and_is_answered() {
    let scratch = Scratch::new();
    let (master, mut clients) = master_out_of_fds(&scratch, &["--agent-check", "127.0.0.1:0"]);
    let agent = agent_addr(&master.run_dir);
    // The control socket's spare fd lets a check in at once...
    // (No worker yet: it says so.)
    assert_eq!(ask_agent(agent), "down #no handoff worker can take connections");
    // ...but not while an operator who stays connected holds it: then the
    // check waits, on a timer.
    let mut operator = Control::connect(&master.run_dir);
    assert_eq!(operator.ask("ping")["ok"], "pong", "the spare fd lets one operator in");
    let mut check = TcpStream::connect(agent).expect("connect to the agent");
    master.wait_for_log("out of fds: agent checks wait", 1);
    assert_idle_for_half_a_second(&master, "an agent check waits");
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    answer_all(&mut clients, "held", || master.log());
    check.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut answer = String::new();
    check.read_to_string(&mut answer).expect("the waiting check is answered");
    // Up; its weight is below 100 % if the check was taken while held
    // clients still queued in the master (the weight falls as it fills).
    // Or still down, if fds freed (for the worker's registration) a moment
    // before the worker was registered: an answer either way.
    let weight = answer.strip_prefix("ready up ").and_then(|rest| rest.strip_suffix("%\n"));
    assert!(
        weight.is_some_and(|w| w.parse::<u8>().is_ok())
            || answer == "down #no handoff worker can take connections\n",
        "{answer:?}"
    );
}

/// At its fd limit the master lets one operator in on its control socket's
/// spare fd; the next control client waits in the backlog, retried on a
/// timer (not in a spin, and not only when another control client
/// leaves: the first stays), and is answered once the master's fds are
/// free again.
#[test]
fn a_second_control_client_at_the_masters_fd_limit_waits_without_spinning_and_is_answered() {
    let scratch = Scratch::new();
    let (master, mut clients) = master_out_of_fds(&scratch, &[]);
    let mut operator = Control::connect(&master.run_dir);
    assert_eq!(operator.ask("ping")["ok"], "pong", "the spare fd lets one operator in");
    let mut second = Control::connect(&master.run_dir);
    second.send_raw(b"ping\n");
    master.wait_for_log("accepting a control client failed", 1);
    assert_idle_for_half_a_second(&master, "a control client waits");
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    answer_all(&mut clients, "held", || master.log());
    assert_eq!(second.read_answer()["ok"], "pong", "the waiting client is answered");
    assert_eq!(operator.ask("ping")["ok"], "pong", "the first stays connected and served");
}

// Item 4, spawning: at EMFILE a spawn still works (spare fds) and is no
// death; a spawn that fails is counted as such, not as a crash loop.
#[test]
fn a_spawn_at_the_fd_limit_works_and_is_no_death() {
    let scratch = Scratch::new();
    let master = Master::start_with_fd_limit(&scratch, &["--workers", "1", "--max-conns", "1"], 40);
    master.wait_for_log("worker registered", 1);
    let mut clients: Vec<_> = (0..60).map(|_| connect(master.addr)).collect();
    master.wait_for_log("out of resources: pausing accept", 1);
    let started = Instant::now();
    master.signal(Signal::SIGTTIN);
    master.wait_for_log("worker registered", 2);
    eprintln!("master at 40 fds: SIGTTIN -> a second worker registered in {:?}", started.elapsed());
    answer_all(&mut clients, "spawned", || master.log());
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(count(&info, "worker_deaths"), 0, "{info}");
    assert_eq!(info["crash_loop"], false, "{info}");
}

#[test]
fn spawns_that_fail_are_retried_and_are_neither_deaths_nor_a_crash_loop() {
    let scratch = Scratch::new();
    let bin_copy = copy_binary("handoff-worker", scratch.path());
    let worker_bin = bin_copy.to_str().expect("utf-8 path");
    let master = Master::start(&scratch, &["--workers", "1", "--worker-bin", worker_bin]);
    master.wait_for_log("worker registered", 1);
    std::fs::remove_file(&bin_copy).expect("remove the worker binary");
    master.signal(Signal::SIGTTIN);
    master.wait_for_log("cannot spawn a worker", 3);
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(count(&info, "worker_deaths"), 0, "{info}");
    assert_eq!(info["crash_loop"], false, "{info}");
    assert_eq!(count(&info, "workers"), 1, "{info}");
    eprintln!("worker binary removed, SIGTTIN: 3 failed spawns, 0 deaths, no crash loop");
    // Retried with a growing delay, not in a spin.
    let spawn_failures = master.log().matches("cannot spawn a worker").count();
    assert!(spawn_failures < 10, "{spawn_failures} attempts:\n{}", master.log());
    assert_eq!(request(master.addr, b"still").expect("served"), expected_reply(b"still"));
}

/// Requests completed by `clients` threads hammering `addr` for `window`.
fn hammer_for(addr: SocketAddr, clients: usize, window: Duration) -> u64 {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut done = 0u64;
                while started.elapsed() < window {
                    let payload = format!("hammer {c}");
                    match request(addr, payload.as_bytes()) {
                        Ok(reply) if reply == expected_reply(payload.as_bytes()) => done += 1,
                        other => panic!("client {c}: {other:?}"),
                    }
                }
                done
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client")).sum()
}

// Item 5: at its fd limit the master resumes accepting as soon as a
// hand-off releases an fd, instead of pausing a fixed 100 ms.
#[test]
fn at_its_fd_limit_the_master_resumes_accepting_as_soon_as_an_fd_is_released() {
    const CLIENTS: usize = 40;
    let window = Duration::from_millis(1500);
    let args = ["--workers", "1", "--max-conns", "4"];
    let unlimited = {
        let scratch = Scratch::new();
        let master = Master::start(&scratch, &args);
        master.wait_for_log("worker registered", 1);
        hammer_for(master.addr, CLIENTS, window)
    };
    let scratch = Scratch::new();
    let master = Master::start_with_fd_limit(&scratch, &args, 40);
    master.wait_for_log("worker registered", 1);
    let limited = hammer_for(master.addr, CLIENTS, window);
    let info = Control::connect(&master.run_dir).ask("info");
    assert!(count(&info, "accept_paused_for_resources") > 0, "the limit was not reached: {info}");
    assert_eq!(count(&info, "lost"), 0, "{info}");
    eprintln!("{CLIENTS} clients, master at 40 fds: {limited} requests in {window:?}, {unlimited} without the limit; {info}");
    assert!(
        limited * 3 >= unlimited,
        "at its fd limit the master served {limited} requests, {unlimited} without it"
    );
}

/// Workers capped at `limit` fds, `idle` clients more than they can hold:
/// the workers say they are out of fds instead of losing connections (or,
/// with `--salvage exact`, passing them back and forth), the master holds
/// the rest, and every client is answered once it sends.
fn workers_out_of_fds(extra: &[&str]) {
    const IDLE: usize = 80;
    let scratch = Scratch::new();
    let mut args = vec!["--workers", "0", "--agent-check", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let master = Master::start(&scratch, &args);
    let workers: Vec<Worker> = (0..2)
        .map(|i| {
            let log = scratch.path().join(format!("w{i}.log"));
            limited_worker(&master.run_dir, log, 40, &["--read-timeout", "30"])
        })
        .collect();
    master.wait_for_log("worker registered", 2);
    let mut clients: Vec<_> = (0..IDLE).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    // What the workers cannot take waits in the master or in their queues.
    master.wait_for_log("worker is out of fds", 2);
    wait_until(WAIT, "every client to be accepted", || {
        let info = control.ask("info");
        count(&info, "accepted") == IDLE as u64
            && count(&info, "queued") + count(&info, "in_flight") == IDLE as u64
    });
    // A load balancer hears that no worker can take more.
    let agent = agent_addr(&master.run_dir);
    assert_eq!(ask_agent(agent), "down #no handoff worker can take connections");
    // No livelock: nothing moves while the clients stay idle.
    let before = (cpu_ticks(master.pid), count(&control.ask("info"), "redispatched"));
    std::thread::sleep(Duration::from_millis(500));
    let after = (cpu_ticks(master.pid), count(&control.ask("info"), "redispatched"));
    assert!(after.0 - before.0 < 15, "the master spins: {before:?} -> {after:?}");
    assert_eq!(after.1, before.1, "connections keep being handed back and forth");

    answer_all(&mut clients, "idle", || master.log());
    wait_until(WAIT, "every connection to be accounted for", || {
        let info = control.ask("info");
        count(&info, "completed") == IDLE as u64
    });
    let info = control.ask("info");
    assert_eq!(count(&info, "lost"), 0, "{info}");
    assert_eq!(count(&info, "failed"), 0, "{info}");
    assert_eq!(count(&info, "served"), IDLE as u64, "{info}");
    wait_for_agent(agent, "ready up 100%");
    assert!(count(&info, "redispatched") <= IDLE as u64, "counts connections: {info}");
    assert_eq!(count(&info, "dispatched"), IDLE as u64, "counts connections: {info}");
    for worker in &workers {
        assert!(worker.log().contains("close to the open-file limit"), "{}", worker.log());
        assert!(worker.log().contains("room for connections again"), "{}", worker.log());
    }
    eprintln!("workers at 40 fds, {IDLE} idle clients ({extra:?}): {info}");
}

// Item 6, `--salvage queued` (the default): a worker must not receive fds
// it has no room for, since nobody else holds them.
#[test]
fn workers_out_of_fds_are_offered_nothing_until_they_have_room_and_lose_nothing() {
    workers_out_of_fds(&[]);
}

// Item 6, `--salvage exact`: no livelock of NotReceived hand-offs; each
// connection is re-dispatched a bounded number of times.
#[test]
fn with_salvage_exact_workers_out_of_fds_do_not_livelock_with_the_master() {
    workers_out_of_fds(&["--salvage", "exact"]);
}

// Item 10: `handoff-master … 2>&1 | tee log`, then tee exits.
#[test]
fn a_closed_stderr_takes_down_neither_the_master_nor_its_workers() {
    closed_stderr(&[]);
}

// The same with JSON log lines (issue #11): the JSON layer writes through
// the same never-failing writer.
#[test]
fn a_closed_stderr_with_json_logs_takes_nobody_down_either() {
    closed_stderr(&["--log-format", "json"]);
}

fn closed_stderr(extra: &[&str]) {
    let scratch = Scratch::new();
    let run_dir = scratch.run_dir();
    let mut child = Command::new(bin("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "2", "--run-dir"])
        .arg(&run_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn master");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    let addr: SocketAddr = line.trim().trim_start_matches("listening on ").parse().expect("addr");
    // Read stderr until both workers registered, then close it, as tee
    // does when Ctrl-C reaches it.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut registered = 0;
    let deadline = Instant::now() + WAIT;
    while registered < 2 {
        assert!(Instant::now() < deadline, "workers did not register");
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("log line") == 0 {
            panic!("stderr closed early");
        }
        registered += usize::from(line.contains("worker registered"));
    }
    drop(stderr);
    // Everything that logs now gets EPIPE: a rolling restart (master and
    // workers log), requests, then a graceful stop.
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("SIGHUP");
    let mut control = Control::connect(&run_dir);
    wait_until(WAIT, "the rolling restart to finish", || {
        let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
        control.ask("info")["workers"] == 2
            && rows.iter().all(|row| row["id"].as_u64().is_some_and(|id| id > 2))
    });
    for i in 0..20 {
        let payload = format!("no stderr {i}");
        assert_eq!(
            request(addr, payload.as_bytes()).expect("served"),
            expected_reply(payload.as_bytes())
        );
    }
    let info = control.ask("info");
    assert_eq!(count(&info, "worker_deaths"), 0, "{info}");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "master did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "master exit status {status}");
}

// Item 11: signals an operator might send do not kill the master.
#[test]
fn stray_signals_are_logged_not_fatal() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let worker = master.worker_pids()[0];
    // (SIGUSR2 upgrades the master now: tests/upgrade.rs.)
    for signal in [Signal::SIGUSR1, Signal::SIGALRM, Signal::SIGPIPE, Signal::SIGPWR] {
        master.signal(signal);
    }
    // A real-time signal, by number (SIGRTMIN+1).
    let status = Command::new("kill")
        .arg(format!("-{}", nix::libc::SIGRTMIN() + 1))
        .arg(master.pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    kill(Pid::from_raw(worker as i32), Signal::SIGUSR2).expect("signal the worker");
    master.wait_for_log("SIGUSR1: not used", 1);
    master.wait_for_log("signal=SIGRTMIN+1", 1);
    master.wait_for_log("signal not used by a worker; ignored", 1);
    assert_eq!(request(master.addr, b"alive").expect("served"), expected_reply(b"alive"));
    assert!(process_alive(worker), "{}", master.log());
    assert!(!master.log().contains("worker is leaving"), "{}", master.log());
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(count(&info, "worker_deaths"), 0, "the worker lived too: {info}");
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit(WAIT).code(), Some(0));
    let left: Vec<_> = std::fs::read_dir(&master.run_dir).expect("run dir").flatten().collect();
    assert!(left.is_empty(), "stale files: {left:?}");
}

// Smaller: the queue filling and draining once per connection logs at most
// one state change a second.
#[test]
fn a_queue_that_fills_once_per_connection_logs_at_most_once_a_second() {
    let scratch = Scratch::new();
    let master =
        Master::start(&scratch, &["--workers", "1", "--policy", "pull", "--queue-limit", "2"]);
    master.wait_for_log("worker registered", 1);
    let started = Instant::now();
    let served = hammer_for(master.addr, 20, Duration::from_millis(1500));
    let elapsed = started.elapsed().as_secs() + 2;
    let log = master.log();
    let lines = log.matches("queue full").count() + log.matches("queue has room").count();
    assert!(served > 20, "{served}");
    assert!(lines > 0, "the queue never filled:\n{log}");
    assert!(
        lines as u64 <= elapsed,
        "{lines} queue lines for {served} requests in {elapsed} s:\n{log}"
    );
}

// Smaller: `scale 2 3` says what `scale` wants.
#[test]
fn scale_with_two_numbers_says_it_needs_one() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let answer = Control::connect(&master.run_dir).ask("scale 2 3");
    let error = answer["error"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(error.contains("`scale` needs one number"), "{error}");
}

// Smaller: a failure to start is one line, names the address and the way
// out, and has its own exit status; a bad flag has another.
#[test]
fn address_in_use_is_one_clear_line_and_exit_statuses_tell_failures_apart() {
    let scratch = Scratch::new();
    let first = Master::start(&scratch, &["--workers", "0"]);
    let other = Scratch::new();
    let output = Command::new(bin("handoff-master"))
        .args(["--listen", &first.addr.to_string(), "--workers", "0", "--run-dir"])
        .arg(other.run_dir())
        .output()
        .expect("second master");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "printed once: {stderr}");
    assert!(stderr.contains(&first.addr.to_string()), "{stderr}");
    assert!(stderr.contains("already in use") && stderr.contains("--listen"), "{stderr}");
    assert!(stderr.contains("PORT="), "{stderr}");

    let output = Command::new(bin("handoff-master")).arg("--no-such-flag").output().expect("run");
    assert_eq!(output.status.code(), Some(64), "EX_USAGE");
    let output = Command::new(bin("handoff-master")).arg("--version").output().expect("run");
    assert_eq!(output.status.code(), Some(0));
}

// Smaller: with HTTP, `--salvage exact` never counts a connection as
// served from byte counts that assume the article's protocol.
#[test]
fn with_http_a_dead_workers_pipelined_connection_is_never_counted_served() {
    let scratch = Scratch::new();
    let master = Master::start(
        &scratch,
        &["--workers", "1", "--protocol", "http", "--salvage", "exact", "--delay-ms", "20"],
    );
    master.wait_for_log("worker registered", 1);
    let worker = master.worker_pids()[0];
    let mut client = connect(master.addr);
    // 40 pipelined requests (720 bytes), answered one per 20 ms: after ten
    // responses more bytes went out than any article reply to 720 bytes.
    let requests = "GET / HTTP/1.1\r\n\r\n".repeat(40);
    client.write_all(requests.as_bytes()).expect("send");
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let mut responses = 0;
    while responses < 12 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("response line");
        responses += usize::from(line.starts_with("HTTP/1.1 200"));
    }
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).expect("kill the worker");
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the dead worker's connection to be accounted for", || {
        count(&control.ask("info"), "lost") == 1
    });
    let info = control.ask("info");
    assert_eq!(count(&info, "served_by_dead_workers"), 0, "{info}");
    assert_eq!(count(&info, "served"), 0, "{info}");
}

// Item 6, the bound: a connection that keeps coming back unreceived (a
// worker reporting `NotReceived`, `--salvage exact`) is handed out a
// bounded number of times, then closed and counted failed.
#[test]
fn a_connection_that_never_reaches_a_worker_is_handed_out_a_bounded_number_of_times() {
    use handoff_fdpass::{Channel, Received, SharedCounters};
    use handoff_proto::{
        codec, Completion, Finished, MasterToWorker, Outcome, WorkerToMaster, PROTOCOL_VERSION,
    };
    use std::os::fd::AsFd;

    let scratch = Scratch::new();
    let master = Master::start(
        &scratch,
        &["--workers", "0", "--salvage", "exact", STAND_IN_TIMEOUT[0], STAND_IN_TIMEOUT[1]],
    );
    // A worker that never manages to take a connection.
    let chan = Channel::connect(&master.run_dir.join("workers.sock")).expect("connect");
    let counters = SharedCounters::create().expect("counters");
    let hello = hello_frame(PROTOCOL_VERSION);
    chan.send(&hello, &[chan.as_fd(), counters.fd()]).expect("hello");
    chan.set_read_timeout(Duration::from_millis(500)).expect("timeout");
    let (mut buf, mut fds) = (vec![0u8; 65536], Vec::new());
    let mut client = connect(master.addr);
    let mut handed = Vec::new();
    loop {
        fds.clear();
        let len = match again_after_eintr(|| chan.recv(&mut buf, &mut fds)) {
            Ok(Received::Packet(len)) => len,
            Ok(Received::Closed) => panic!("master closed the channel"),
            Err(_) => break, // nothing more for half a second
        };
        if let Ok(MasterToWorker::Connection(dispatch)) = codec::decode(&buf[..len]) {
            handed.push(dispatch.redispatches);
            fds.clear(); // "not received"
            let report = WorkerToMaster::Finished(Finished {
                conns: vec![Completion {
                    conn_id: dispatch.conn_id,
                    outcome: Outcome::NotReceived,
                    bytes_in: 0,
                    bytes_out: 0,
                }],
            });
            chan.send(&codec::encode_to_vec(&report).expect("encode"), &[]).expect("report");
        }
        assert!(handed.len() <= 10, "handed out {} times and counting", handed.len());
    }
    assert_eq!(handed, [0, 1, 2, 3], "first hand-off and three more");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without a reply");
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(
        (count(&info, "dispatched"), count(&info, "redispatched"), count(&info, "failed")),
        (1, 1, 1),
        "{info}"
    );
}

// The spare fds never cost a master with a low limit its clients: a
// reserve it cannot fill is not kept (it would hold the last fds).
#[test]
fn a_master_whose_limit_is_too_low_for_the_spare_fds_still_serves() {
    let scratch = Scratch::new();
    let master = Master::start_with_fd_limit(&scratch, &["--workers", "1"], 20);
    master.wait_for_log("worker registered", 1);
    for i in 0..20 {
        let payload = format!("tight {i}");
        assert_eq!(
            request(master.addr, payload.as_bytes()).expect("served"),
            expected_reply(payload.as_bytes()),
            "{}",
            master.log()
        );
    }
}

/// A user may have at most its RLIMIT_NOFILE of fds in flight in Unix
/// sockets (sendmsg fails with ETOOMANYREFS beyond; root is exempt). A
/// master running as nobody at 64 fds, whose worker is stopped, reaches
/// that: it keeps the connections and retries, drops no worker, and every
/// client is answered once the worker runs again.
#[test]
fn as_nobody_too_many_fds_in_flight_are_kept_and_retried_not_lost() {
    let Some(scratch) = Scratch::for_nobody("as_nobody_too_many_fds_in_flight_…") else { return };
    let master = Master::start_with_fd_limit(&scratch, &["--workers", "1", "--user", "nobody"], 64);
    let (worker, mut clients) = clients_for_a_stopped_worker(&master, 150, "in flight");
    // More than 64 connections wait: the channel holds 64, the master the
    // rest (until its own fds run out, then the backlog).
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the master to hold what is not in flight", || {
        count(&control.ask("info"), "queued") > 0
    });
    assert_idle_for_half_a_second(&master, "it retries sending fds in flight");
    kill(worker, Signal::SIGCONT).expect("SIGCONT worker");
    answer_all_sent(&mut clients, "in flight", || master.log());
    let info = control.ask("info");
    assert_eq!((count(&info, "lost"), count(&info, "workers")), (0, 1), "{info}");
    assert!(!master.log().contains("hand-off failed"), "{}", master.log());
}

/// A silent worker the master cannot kill — a root worker that joined a
/// master running as nobody — is handed no more connections once the
/// master gives up on it: the other worker serves every client.
#[test]
fn as_nobody_a_silent_worker_it_cannot_kill_is_handed_no_more_connections() {
    let Some(scratch) = Scratch::for_nobody("as_nobody_a_silent_worker_…") else { return };
    let args = ["--workers", "1", "--user", "nobody", "--timeout", "1"];
    let master = Master::start(&scratch, &args);
    master.wait_for_log("worker registered", 1);
    let joined = Worker::start(&master.run_dir, scratch.path().join("root.log"), "info");
    master.wait_for_log("worker registered", 2);
    let pid = joined.child.as_ref().expect("running").id();
    stop_process(Pid::from_raw(pid as i32));
    master.wait_for_log("cannot kill the silent worker", 1);
    for i in 0..6 {
        let payload = format!("not to the silent one {i}");
        let reply = request(master.addr, payload.as_bytes())
            .map(|r| String::from_utf8_lossy(&r).into_owned());
        let expected = String::from_utf8_lossy(&expected_reply(payload.as_bytes())).into_owned();
        assert_eq!(reply.ok(), Some(expected), "request {i}");
    }
    let mut control = Control::connect(&master.run_dir);
    assert_eq!(count(&control.ask("info"), "worker_timeouts"), 1);
}

/// A worker dies with more connections queued to it than its master, at
/// its fd limit, has fds for. Reading the queue back used to stop at the
/// first packet whose fds did not fit (the kernel closed those
/// connections): 270 of 600 lost. Now the master reads only what fits,
/// keeps the dead worker's end of the channel open, and reads on as fds
/// free up: every client is answered (by the worker spawned in the dead
/// one's place).
#[test]
fn a_dead_workers_queue_larger_than_the_masters_fds_is_read_back_as_fds_free_up() {
    const CLIENTS: usize = 600;
    let scratch = Scratch::new();
    let master = Master::start_with_fd_limit(&scratch, &["--workers", "1"], 40);
    let (worker, mut clients) = clients_for_a_stopped_worker(&master, CLIENTS, "queued");
    master.wait_for_log("out of resources: pausing accept", 1);
    kill(worker, Signal::SIGKILL).expect("SIGKILL worker");
    master.wait_for_log("reading the rest back as fds free up", 1);
    let mut answered = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply);
        answered += u64::from(reply == expected_reply(format!("queued {i}").as_bytes()));
    }
    let info = Control::connect(&master.run_dir).ask("info");
    eprintln!("read back at the fd limit: {answered} of {CLIENTS} answered");
    assert_eq!(answered, CLIENTS as u64, "{info}");
    assert_eq!(count(&info, "lost"), 0, "{info}");
}

/// A worker that runs out of fds with connections still queued to it
/// (`--salvage queued`, the default) does not keep them: the master reads
/// them back from the worker's channel and hands them to a worker with
/// room at once. Here the tight worker (40 fds) is stopped while 60
/// clients are handed out in turn, so half of them queue up for it.
#[test]
fn connections_queued_to_a_worker_out_of_fds_are_taken_back_and_served_elsewhere() {
    const CLIENTS: usize = 60;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--policy", "rr"]);
    let args = ["--read-timeout", "30"];
    let tight = limited_worker(&master.run_dir, scratch.path().join("tight.log"), 40, &args);
    master.wait_for_log("worker registered", 1);
    let _roomy =
        Worker::start_with_args(&master.run_dir, scratch.path().join("roomy.log"), "info", &args);
    master.wait_for_log("worker registered", 2);
    let tight_pid = Pid::from_raw(tight.child.as_ref().expect("running").id() as i32);
    stop_process(tight_pid);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "every client handed out", || {
        count(&control.ask("info"), "dispatched") == CLIENTS as u64
    });
    kill(tight_pid, Signal::SIGCONT).expect("SIGCONT");
    master.wait_for_log("worker is out of fds", 1);
    wait_until(WAIT, "the tight worker's queue taken back", || {
        count(&control.ask("info"), "redispatched") > 0
    });
    let taken_back = count(&control.ask("info"), "redispatched");
    answer_all(&mut clients, "queued", || master.log());
    let info = control.ask("info");
    assert_eq!((count(&info, "lost"), count(&info, "failed")), (0, 0), "{info}");
    eprintln!("{CLIENTS} clients, tight worker stopped: {taken_back} taken back from its queue");
}

/// An upgrade refused at the fd limit (binding `upgrade.sock` fails with
/// EMFILE) says why in `upgrade_error`, which used to stay null.
#[test]
fn an_upgrade_refused_at_the_fd_limit_says_why_in_info() {
    let scratch = Scratch::new();
    let (master, _clients) = master_out_of_fds(&scratch, &[]);
    let mut operator = Control::connect(&master.run_dir);
    let answer = operator.ask("upgrade");
    assert!(answer["error"].is_string(), "{answer}");
    let info = operator.ask("info");
    let why = info["upgrade_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("upgrade.sock") || why.contains("open files"), "{info}");
    assert_eq!(info["upgrade"], "failed", "{info}");
}
