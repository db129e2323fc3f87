use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

fn send_all(clients: &mut [TcpStream], tag: &str) {
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("{tag} {i}").as_bytes()).expect("send");
    }
}

fn expect_all_answered(clients: &mut [TcpStream], tag: &str) {
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("{tag} {i}");
        let mut reply = Vec::new();
        std::io::Read::read_to_end(client, &mut reply).expect("reply");
        assert_eq!(reply, expected_reply(payload.as_bytes()), "client {i}");
    }
}

#[test]
fn a_stalled_workers_full_channel_keeps_connections_in_the_master_until_it_drains() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let worker = Pid::from_raw(master.worker_pids()[0] as i32);
    let baseline = socket_fds(master.pid);
    stop_process(worker);
    // More connections than the channel holds (a few hundred small packets).
    let mut clients: Vec<_> = (0..800).map(|_| connect(master.addr)).collect();
    send_all(&mut clients, "stalled");
    // Evidence the channel filled: the master itself holds the overflow.
    wait_until(WAIT, "the master to hold the overflow", || {
        socket_fds(master.pid) >= baseline + 100
    });
    kill(worker, Signal::SIGCONT).expect("SIGCONT worker");
    expect_all_answered(&mut clients, "stalled");
    wait_until(WAIT, "the master to let go of every fd", || socket_fds(master.pid) == baseline);
}

#[test]
fn a_full_queue_stops_accepting_and_the_kernel_backlog_holds_the_rest() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--queue-limit", "5"]);
    let baseline = socket_fds(master.pid);
    let mut clients: Vec<_> = (0..30).map(|_| connect(master.addr)).collect();
    send_all(&mut clients, "queued");
    master.wait_for_log("queue full", 1);
    // Five held by the master, the rest still in the kernel's accept queue.
    // The master logs "queue full" right after its fifth accept and then
    // stops, so the count is final here.
    assert_eq!(socket_fds(master.pid), baseline + 5, "the master holds exactly the queue");
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    expect_all_answered(&mut clients, "queued");
    // (Queue state changes are logged at most once a second.)
    master.wait_for_log("accepting again", 1);
}

/// A master with one worker under `--salvage exact`, stopped (SIGSTOP)
/// while `CLIENTS` clients it handed over are answered one at a time:
/// each completion is a report of its own, more than the channel holds.
fn stall_the_master_while_clients_finish(scratch: &Scratch) -> (Master, Control) {
    let master = Master::start(scratch, &["--workers", "1", "--salvage", "exact"]);
    master.wait_for_log("worker registered", 1);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "every client handed over", || {
        count(&control.ask("info"), "dispatched") == CLIENTS as u64
    });
    master.signal(Signal::SIGSTOP);
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("report {i}");
        let reply = send_and_read(client, payload.as_bytes()).expect("reply");
        assert_eq!(reply, expected_reply(payload.as_bytes()), "client {i}");
    }
    (master, control)
}

const CLIENTS: usize = 800;

/// The other direction: a stalled master. With `--salvage exact` the worker
/// reports each finished connection; while the master is stopped its
/// channel fills, and what did not fit is kept and sent once there is room
/// again: the master learns of every completion and lets go of every fd.
#[test]
fn a_stalled_masters_full_channel_keeps_the_workers_reports_until_it_drains() {
    let scratch = Scratch::new();
    let (master, mut control) = stall_the_master_while_clients_finish(&scratch);
    let baseline = socket_fds(master.pid) - CLIENTS;
    master.signal(Signal::SIGCONT);
    wait_until(WAIT, "every completion reported", || {
        let info = control.ask("info");
        count(&info, "completed") == CLIENTS as u64 && count(&info, "in_flight") == 0
    });
    wait_until(WAIT, "the master to let go of every fd", || socket_fds(master.pid) == baseline);
}

/// The same, but the worker dies (kill -9) with reports it could not send:
/// the master judges those connections from their byte counts (request
/// read, full reply written): served, not lost, and not handed out again.
#[test]
fn connections_a_dead_worker_answered_but_never_reported_count_as_served() {
    let scratch = Scratch::new();
    let (master, mut control) = stall_the_master_while_clients_finish(&scratch);
    let worker = Pid::from_raw(master.worker_pids()[0] as i32);
    kill(worker, Signal::SIGKILL).expect("kill -9 the worker");
    master.signal(Signal::SIGCONT);
    wait_until(WAIT, "every connection accounted for", || {
        let info = control.ask("info");
        count(&info, "served") == CLIENTS as u64 && count(&info, "in_flight") == 0
    });
    let info = control.ask("info");
    assert!(count(&info, "served_by_dead_workers") > 0, "some reports never went: {info}");
    let counts = ["lost", "redispatched", "failed"].map(|key| count(&info, key));
    assert_eq!(counts, [0, 0, 0], "{info}");
}

/// Inodes of the machine's `SOCK_SEQPACKET` Unix sockets (`/proc/net/unix`,
/// type 0005): a worker's channel to its master is one.
fn seqpacket_inodes() -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(4) == Some(&"0005")).then(|| fields.get(6).map(|s| s.to_string()))?
        })
        .collect()
}

/// The fd numbers of the worker's sockets that are not its signal pipe
/// (its channel, a `SOCK_SEQPACKET` socket, and its TCP connections), and
/// the fds its epoll instances watch (`/proc/PID/fdinfo`: one `tfd:` line
/// per watched fd).
fn sockets_and_epoll_watches(pid: u32) -> (Vec<i32>, Vec<i32>) {
    let (mut sockets, mut watched) = (Vec::new(), Vec::new());
    let seqpacket = seqpacket_inodes();
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let is_tcp = |inode: &str| tcp.lines().any(|l| l.split_whitespace().nth(9) == Some(inode));
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let link = std::fs::read_link(entry.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        if let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
            if seqpacket.iter().any(|i| i == inode) || is_tcp(inode) {
                sockets.push(fd);
            }
        } else if link == "anon_inode:[eventpoll]" {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            watched.extend(info.lines().filter_map(|line| {
                line.strip_prefix("tfd:")?.split_whitespace().next()?.parse::<i32>().ok()
            }));
        }
    }
    (sockets, watched)
}

/// The system call `pid` sleeps in and its first argument, from
/// /proc/PID/syscall (`None` while it runs).
fn blocked_in(pid: u32) -> Option<(i64, i64)> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = line.split_whitespace();
    let number = fields.next()?.parse().ok()?;
    let arg = i64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    Some((number, arg))
}

/// Whether worker `pid`'s channel (its only such socket while idle) is in
/// its epoll.
fn channel_in_epoll(pid: u32) -> bool {
    let (sockets, watched) = sockets_and_epoll_watches(pid);
    assert_eq!(sockets.len(), 1, "an idle worker holds its channel only: {sockets:?}");
    watched.contains(&sockets[0])
}

/// How a worker waits for its master. Idle, it keeps its channel out of
/// epoll (so the master's `sendmsg` runs no epoll callback) and sleeps in
/// `recvmsg` on it. Holding a connection whose request
/// has not come, it puts the channel back in epoll (one `epoll_wait` for
/// both). A backlog (64 hand-offs queued while it was stopped) is read
/// without epoll; every queued client is answered, the idle worker does not
/// spin, and the next client still wakes it.
#[test]
fn an_idle_worker_sleeps_on_its_channel_outside_epoll_and_a_busy_one_drains_it() {
    let scratch = Scratch::new();
    let master = Master::start_with_env(&scratch, &["--workers", "1"], "info,handoff_worker=debug");
    master.wait_for_log("worker registered", 1);
    let pid = master.worker_pids()[0];
    master.wait_for_log("channel out of epoll: waiting on it in recvmsg or poll", 1);
    assert!(!channel_in_epoll(pid), "idle: the channel is not in the worker's epoll");
    let channel = sockets_and_epoll_watches(pid).0[0];
    wait_until(WAIT, "the idle worker to sleep in recvmsg on its channel", || {
        blocked_in(pid) == Some((nix::libc::SYS_recvmsg, channel as i64))
    });
    // A connection without its request: the worker holds it, and watches
    // the channel and the connection with one epoll_wait.
    let mut silent = connect(master.addr);
    master.wait_for_log("channel back in epoll", 1);
    let (sockets, watched) = sockets_and_epoll_watches(pid);
    assert_eq!(sockets.len(), 2, "the channel and the held connection: {sockets:?}");
    assert!(sockets.iter().all(|fd| watched.contains(fd)), "{sockets:?} in {watched:?}");
    silent.write_all(b"late").expect("send the late request");
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut silent, &mut reply).expect("reply");
    assert_eq!(reply, expected_reply(b"late"));
    master.wait_for_log("channel out of epoll: waiting on it in recvmsg or poll", 2);
    wait_until(WAIT, "the worker to close the late connection", || !channel_in_epoll(pid));

    let baseline = socket_fds(master.pid);
    stop_process(Pid::from_raw(pid as i32));
    let mut clients: Vec<_> = (0..64).map(|_| connect(master.addr)).collect();
    send_all(&mut clients, "backlog");
    // All 64 accepted and handed off (`--salvage queued` lets go of each
    // copy once it is in the channel): they wait in the channel.
    wait_until(WAIT, "the master to hand every client off", || socket_fds(master.pid) == baseline);
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).expect("SIGCONT worker");
    expect_all_answered(&mut clients, "backlog");
    drop(clients);
    wait_until(WAIT, "the worker to be idle again", || {
        sockets_and_epoll_watches(pid).0.len() == 1 && !channel_in_epoll(pid)
    });
    // Idle: a worker spinning on a readable channel would burn a core.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    assert!(spent <= 10, "the idle worker used {spent} ticks of CPU in 1 s");
    // Still out of epoll: a new client wakes it through poll(2).
    let reply = request(master.addr, b"after the backlog").expect("request after the backlog");
    assert_eq!(reply, expected_reply(b"after the backlog"));
}

/// A worker that holds nothing sleeps in a blocking `recvmsg` on its
/// channel, and its timers and signals still reach it: the receive timeout
/// wakes it for its stats reports (every 200 ms here; without it the report
/// would wait for the next hand-off), and a stop signal ends the wait
/// (`EINTR`), so it leaves at once instead of when the next packet comes.
#[test]
fn a_worker_asleep_in_recvmsg_reports_on_time_and_hears_a_stop_signal() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let log = scratch.path().join("w.log");
    let mut worker =
        Worker::start_with_args(&master.run_dir, log, "info", &["--report-interval", "0.2"]);
    master.wait_for_log("worker registered", 1);
    let pid = worker.child.as_ref().expect("started").id();
    let channel = sockets_and_epoll_watches(pid).0[0];
    wait_until(WAIT, "the idle worker to sleep in recvmsg on its channel", || {
        blocked_in(pid) == Some((nix::libc::SYS_recvmsg, channel as i64))
    });
    let mut control = Control::connect(&master.run_dir);
    let mut oldest = 0.0f64;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(100));
        let rows = control.ask("workers")["workers"].as_array().expect("rows").clone();
        let age = rows[0]["last_report_age_secs"].as_f64().expect("a report came");
        oldest = oldest.max(age);
    }
    assert!(oldest < 0.6, "reports every 0.2 s, but one was {oldest:.2} s old");
    wait_until(WAIT, "the worker to sleep in recvmsg again", || {
        blocked_in(pid) == Some((nix::libc::SYS_recvmsg, channel as i64))
    });
    let asked = std::time::Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM worker");
    let status = worker.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", worker.log());
    // Woken by the signal, not by its 1 s bound on a blocked wait.
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(900), "left {took:?} after SIGTERM: {}", worker.log());
    let log = worker.log();
    assert!(log.contains("stop signal"), "{log}");
    assert!(!log.contains("bad packet"), "the interrupted wait is not a bad packet: {log}");
}

/// The scheduling class of `pid` (/proc/PID/stat, field 41): 0 is
/// SCHED_OTHER, 3 SCHED_BATCH.
fn scheduling_policy(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at 3.
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    after_name.split_whitespace().nth(41 - 3).expect("field 41").parse().expect("policy")
}

/// Spawned workers keep the scheduling class they were started with, and
/// `--worker-scheduling batch` puts them in SCHED_BATCH (a worker a
/// hand-off wakes does not preempt the master); the master itself stays
/// SCHED_OTHER.
#[test]
fn workers_run_in_sched_batch_when_told_to() {
    for (flag, expected) in [(None, 0), (Some("batch"), 3)] {
        let scratch = Scratch::new();
        let mut extra = vec!["--workers", "2"];
        if let Some(value) = flag {
            extra.extend(["--worker-scheduling", value]);
        }
        let master = Master::start(&scratch, &extra);
        master.wait_for_log("worker registered", 2);
        for pid in master.worker_pids() {
            assert_eq!(scheduling_policy(pid), expected, "worker {pid} with {flag:?}");
        }
        assert_eq!(scheduling_policy(master.pid), 0, "the master");
        assert_eq!(request(master.addr, b"batch").expect("request"), expected_reply(b"batch"));
    }
}
