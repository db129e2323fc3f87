//! What the control socket may cost the master (issue #10, items 3, 4 and
//! 7): a client flooding it with lines is served a slice per loop turn and
//! cut off once its unread answers pass the cap, so the master neither
//! grows nor stalls; idle clients are closed and a full house still lets an
//! operator in; clients left in the listener's backlog when the master ran
//! out of fds are accepted once fds free up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A field of /proc/<pid>/status, in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in status"))
}

fn raw_control(run_dir: &Path) -> UnixStream {
    let stream = UnixStream::connect(run_dir.join("control.sock")).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_write_timeout(Some(WAIT)).expect("timeout");
    stream
}

/// Sends `command` and reads one answer line.
fn ask_line(reader: &mut BufReader<UnixStream>, command: &str) -> std::io::Result<String> {
    reader.get_mut().write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line)
}

/// Reads until EOF (or the read timeout): what came, and whether EOF did.
fn read_until_closed(stream: &mut UnixStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            // The test process was stopped and continued (signal(7)).
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn a_newline_flood_on_the_control_socket_neither_grows_the_master_nor_stalls_clients() {
    const FLOOD_FOR: Duration = Duration::from_secs(2);
    const MAX_GROWTH_KB: u64 = 8 * 1024;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let hwm_before = status_kb(master.pid, "VmHWM");

    // Prompt TCP clients and a prompt control client, timed, meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_worst_us = Arc::new(AtomicU64::new(0));
    let tcp_done = Arc::new(AtomicU64::new(0));
    let tcp = {
        let (stop, worst, done, addr) =
            (Arc::clone(&stop), Arc::clone(&tcp_worst_us), Arc::clone(&tcp_done), master.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = request(addr, b"prompt").expect("prompt request");
                assert_eq!(reply, expected_reply(b"prompt"));
                worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let ping_worst_us = Arc::new(AtomicU64::new(0));
    let pinger = {
        let (stop, worst, run_dir) =
            (Arc::clone(&stop), Arc::clone(&ping_worst_us), master.run_dir.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(raw_control(&run_dir));
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let line = ask_line(&mut reader, "ping").expect("ping during the flood");
                assert!(line.contains("pong"), "{line}");
                worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The flood: 1 MiB of newlines per write, never reading, reconnecting
    // whenever the master cuts us off, for FLOOD_FOR (stopping early if the
    // master grows past the bound: without the fix it reaches gigabytes).
    let flood = vec![b'\n'; 1 << 20];
    let started = Instant::now();
    let (mut cut_offs, mut sent, mut growth_kb) = (0u32, 0usize, 0u64);
    'flood: while started.elapsed() < FLOOD_FOR {
        let mut flooder = raw_control(&master.run_dir);
        flooder.set_write_timeout(Some(Duration::from_millis(500))).expect("timeout");
        loop {
            growth_kb = status_kb(master.pid, "VmHWM").saturating_sub(hwm_before);
            if growth_kb > MAX_GROWTH_KB || started.elapsed() >= FLOOD_FOR {
                break 'flood;
            }
            match flooder.write(&flood) {
                Ok(n) => sent += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    cut_offs += 1;
                    break;
                }
            }
        }
    }
    let growth_kb = growth_kb.max(status_kb(master.pid, "VmHWM").saturating_sub(hwm_before));
    stop.store(true, Ordering::Relaxed);
    tcp.join().expect("TCP clients were all answered");
    pinger.join().expect("pings were all answered");
    let (tcp_worst, ping_worst) = (
        Duration::from_micros(tcp_worst_us.load(Ordering::Relaxed)),
        Duration::from_micros(ping_worst_us.load(Ordering::Relaxed)),
    );
    println!(
        "control newline flood: {:.1} MiB sent in {:?}, cut off {cut_offs}x; master peak RSS \
         +{growth_kb} kB; {} prompt TCP requests, worst {tcp_worst:?}; worst ping {ping_worst:?}",
        sent as f64 / (1 << 20) as f64,
        started.elapsed(),
        tcp_done.load(Ordering::Relaxed)
    );
    assert!(growth_kb <= MAX_GROWTH_KB, "master peak RSS grew by {growth_kb} kB");
    assert!(cut_offs >= 1, "the flooder was never cut off");
    assert!(tcp_worst < Duration::from_millis(1000), "a TCP client waited {tcp_worst:?}");
    assert!(ping_worst < Duration::from_millis(1000), "a ping waited {ping_worst:?}");
    assert!(master.log().contains("does not read its answers"));
    let mut control = Control::connect(&master.run_dir);
    assert_eq!(control.ask("info")["lost"], 0);
}

#[test]
fn a_full_house_of_control_clients_still_lets_an_operator_in() {
    const MAX_CONTROL_CLIENTS: usize = 256;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--control-idle-timeout", "60"]);
    // Every slot taken by clients that then sit idle (each answered once,
    // so the master has accepted them all).
    let mut idle: Vec<_> = (0..MAX_CONTROL_CLIENTS)
        .map(|_| {
            let mut reader = BufReader::new(raw_control(&master.run_dir));
            let line = ask_line(&mut reader, "ping").expect("ping");
            assert!(line.contains("pong"), "{line}");
            reader
        })
        .collect();
    let (code, stdout, stderr) = ctl(&master.run_dir, &["info"]);
    assert_eq!(code, Some(0), "handoff-ctl locked out: {stderr}");
    assert!(stdout.contains(&master.pid.to_string()), "{stdout}");
    // The oldest idle client made room, and was told why.
    let mut first = idle.remove(0).into_inner();
    first.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let (said, closed) = read_until_closed(&mut first);
    let said = String::from_utf8_lossy(&said);
    assert!(closed && said.contains("every control slot"), "{said}");
    // The others are still served.
    let last = idle.last_mut().expect("clients");
    assert!(ask_line(last, "ping").expect("ping").contains("pong"));
}

#[test]
fn idle_control_clients_are_closed_after_the_idle_timeout_and_busy_ones_are_not() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--control-idle-timeout", "1"]);
    let opened = Instant::now();
    let cpu_at_open = cpu_ticks(master.pid);
    let mut idle: Vec<_> = (0..20).map(|_| raw_control(&master.run_dir)).collect();
    // Meanwhile a busy client asks every 300 ms for 2.5 s: never idle for 1 s.
    let busy = {
        let run_dir = master.run_dir.clone();
        std::thread::spawn(move || {
            let mut busy = BufReader::new(raw_control(&run_dir));
            while opened.elapsed() < Duration::from_millis(2500) {
                let line = ask_line(&mut busy, "ping").expect("busy client kept");
                assert!(line.contains("pong"), "busy client closed: {line}");
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut closed_after = Vec::new();
    for client in &mut idle {
        let (said, closed) = read_until_closed(client);
        assert!(closed, "an idle client was not closed");
        assert!(String::from_utf8_lossy(&said).contains("idle"), "told why");
        closed_after.push(opened.elapsed());
    }
    busy.join().expect("the busy client was served throughout");
    // The idle checks are timers, not a spin: while the busy client stays,
    // the next check is due a timeout after its last activity.
    let cpu = cpu_ticks(master.pid) - cpu_at_open;
    assert!(cpu < 30, "the master used {cpu} ticks of CPU in 2.5 s with control clients open");
    let first = closed_after.iter().min().expect("clients");
    let last = closed_after.iter().max().expect("clients");
    println!("idle control clients (timeout 1 s): closed after {first:?} .. {last:?}");
    assert!(*first >= Duration::from_millis(900), "closed too early: {first:?}");
    assert!(*last <= Duration::from_secs(3), "closed late: {last:?}");
}

#[test]
fn control_clients_left_in_the_backlog_at_emfile_are_served_once_fds_free_up() {
    const LIMIT: u32 = 32;
    const CLIENTS: usize = 40;
    let scratch = Scratch::new();
    let master = Master::start_with_fd_limit(&scratch, &["--workers", "0"], LIMIT);
    // More clients than the master has fds for, each asking for a ping.
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut stream = raw_control(&master.run_dir);
            stream.write_all(b"ping\n").expect("send ping");
            stream
        })
        .collect();
    master.wait_for_log("accepting a control client failed", 1);
    let mut first = BufReader::new(clients.remove(0));
    let mut line = String::new();
    first.read_line(&mut line).expect("the first client is answered");
    assert!(line.contains("pong"), "{line}");
    drop(first);
    // The last one waits in the backlog; everyone else leaves, freeing fds.
    let mut last = BufReader::new(clients.pop().expect("clients"));
    drop(clients);
    let freed_at = Instant::now();
    last.get_ref().set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut line = String::new();
    last.read_line(&mut line).expect("the waiting client is served once fds are free");
    let waited = freed_at.elapsed();
    assert!(line.contains("pong"), "{line}");
    let info = ask_line(&mut last, "info").expect("info");
    assert!(info.contains("\"accepted\""), "{info}");
    assert!(waited < Duration::from_secs(2), "answered {waited:?} after fds were freed");
    println!("control accept at EMFILE: answered {waited:?} after fds were freed");
}

/// A control client asking `workers` as fast as it can does not make the
/// workers work as fast: the master asks them for fresh stats at most
/// every 200 ms, and answers with the latest report meanwhile.
#[test]
fn a_flood_of_workers_commands_does_not_flood_the_workers() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let worker = master.worker_pids()[0];
    let mut reader = BufReader::new(raw_control(&master.run_dir));
    let before = cpu_ticks(worker);
    let started = Instant::now();
    let mut asked = 0u32;
    while started.elapsed() < Duration::from_secs(1) && asked < 20_000 {
        let answer = ask_line(&mut reader, "workers").expect("an answer");
        assert!(answer.contains("\"workers\""), "{answer}");
        asked += 1;
    }
    let spent = cpu_ticks(worker) - before;
    eprintln!(
        "{asked} `workers` commands in {:?}: the worker spent {spent} ticks",
        started.elapsed()
    );
    assert!(spent < 10, "{asked} commands cost the worker {spent} ticks (1/100 s)");
}

/// A client reading long answers slowly is not idle while they flow: each
/// write the master gets into its socket counts as activity. Here 90
/// `metrics` answers (about 500 kB, more than the socket holds) are read
/// 64 kB every 300 ms, over twice the idle timeout.
#[test]
fn a_slow_reader_of_long_answers_is_not_idle_while_they_flow() {
    const ANSWERS: usize = 90;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--control-idle-timeout", "1"]);
    let mut client = raw_control(&master.run_dir);
    client.write_all(&b"metrics\n".repeat(ANSWERS)).expect("ask");
    let started = Instant::now();
    let (mut answers, mut buf) = (0, vec![0u8; 64 * 1024]);
    while answers < ANSWERS {
        std::thread::sleep(Duration::from_millis(300));
        let n = again_after_eintr(|| client.read(&mut buf)).expect("read");
        assert!(n > 0, "closed after {:?} with {answers} answers read", started.elapsed());
        answers += buf[..n].iter().filter(|&&byte| byte == b'\n').count();
    }
    let took = started.elapsed();
    assert!(took > Duration::from_secs(2), "read within {took:?}: not slower than the timeout");
    assert!(!master.log().contains("idle"), "{}", master.log());
}

/// An operator at EMFILE, again and again: the master at 64 fds, two
/// workers holding 2 clients each (`--max-conns 2`), 120 idle clients
/// filling every other fd. The first `ping` used to answer and the next
/// ones hang for 40 s and more: the fd freed for the control client was
/// taken by a client accept before the spare was reopened. Every `ping`
/// and `info` must answer within a second, and so must agent checks.
#[test]
fn an_operator_is_answered_every_time_while_clients_hold_every_fd() {
    let scratch = Scratch::new();
    let args = ["--workers", "2", "--max-conns", "2", "--agent-check", "127.0.0.1:0"];
    let master = Master::start_with_fd_limit(&scratch, &args, 64);
    master.wait_for_log("worker registered", 2);
    let agent = agent_addr(&master.run_dir);
    let clients: Vec<_> = (0..120).map(|_| connect(master.addr)).collect();
    // Until the master is at its limit (accepts paused for lack of fds).
    wait_until(WAIT, "the master at its fd limit", || {
        count(&Control::connect(&master.run_dir).ask("info"), "accept_paused_for_resources") > 0
    });
    // One command on a fresh connection, as handoff-ctl does, within 1 s.
    let ask = |command: &str| -> Result<String, String> {
        let stream = UnixStream::connect(master.run_dir.join("control.sock"))
            .map_err(|err| format!("connect: {err}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
        (&stream).write_all(format!("{command}\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).map_err(|err| format!("read: {err}"))?;
        Ok(line)
    };
    for round in 0..8 {
        for command in ["ping", "info"] {
            let started = Instant::now();
            let answer = ask(command);
            let took = started.elapsed();
            assert!(
                answer.as_ref().is_ok_and(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .is_ok_and(|v| v.is_object() && v.get("error").is_none())
                }),
                "round {round} {command} after {took:?}: {answer:?}"
            );
        }
        let started = Instant::now();
        let reply = ask_agent(agent);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "round {round}: agent check took {took:?}");
        assert!(!reply.is_empty(), "round {round}: agent check unanswered");
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(clients);
}
