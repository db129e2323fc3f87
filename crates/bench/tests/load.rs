//! The load generator as a process, against `handoff-bench serve` and
//! against tiny servers made here that answer right, wrong, short, with a
//! reset, slowly, in pieces, or never: its JSON summary must count exactly
//! what happened (completions, errors by kind, warm-up, abandoned).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, connect, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};

const BENCH: &str = env!("CARGO_BIN_EXE_handoff-bench");

/// No bench run or server start here may take longer.
const DEADLINE: Duration = Duration::from_secs(20);

/// `sh -c` script that runs `"$0" "$@"` with at most `fds` (< 10) open
/// files. Fds this test process inherited below 10 (a jobserver's pipes,
/// say) are closed first: at a limit this low they would take the slots the
/// program needs to start at all (fds at or above the limit take none).
fn with_fd_limit(fds: &str) -> String {
    format!("exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; ulimit -n {fds} && exec \"$0\" \"$@\"")
}

/// A finished `handoff-bench --json` run.
struct Run {
    json: Value,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn u64(&self, key: &str) -> u64 {
        self.json[key].as_u64().unwrap_or_else(|| panic!("{key} in {}", self.json))
    }

    fn f64(&self, key: &str) -> f64 {
        self.json[key].as_f64().unwrap_or_else(|| panic!("{key} in {}", self.json))
    }
}

/// Runs the load generator against `target` with `args`; it must succeed
/// within [`DEADLINE`].
fn bench(target: SocketAddr, args: &[&str]) -> Run {
    let started = Instant::now();
    let child = Command::new(BENCH)
        .args(["--json", "--target", &target.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting handoff-bench");
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(output) = rx.recv_timeout(DEADLINE) else {
        // Not reaped yet (the waiting thread holds it), so the pid is still ours.
        let _ = kill(pid, Signal::SIGKILL);
        panic!("handoff-bench {args:?} ran past {DEADLINE:?}");
    };
    let output = output.unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "handoff-bench {args:?}: {}\n{stderr}", output.status);
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("not one JSON line ({err}): {stdout:?}"));
    Run { json, stderr, elapsed }
}

fn errors(refused: u64, reset: u64, timeout: u64, short: u64, wrong: u64, other: u64) -> Value {
    json!({
        "refused": refused,
        "reset": reset,
        "timeout": timeout,
        "short_reply": short,
        "wrong_reply": wrong,
        "other": other,
    })
}

fn no_errors() -> Value {
    errors(0, 0, 0, 0, 0, 0)
}

/// How a [`TestServer`] treats each connection (one at a time, in order).
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// The article's reply.
    Article,
    /// A reply with a wrong byte.
    Wrong,
    /// The article's reply without its last byte, then EOF.
    Short,
    /// Reads the request, then resets the connection (SO_LINGER 0).
    Reset,
    /// Reads the request and never answers (the connection stays open).
    Hold,
    /// The article's reply after this many milliseconds.
    Slow(u64),
    /// The article's reply in two writes 30 ms apart.
    Split,
    /// HTTP: 200 with a 40000-byte body if the request is exactly the
    /// bench's `GET /hello`, else 400.
    Http,
    /// HTTP: 500.
    HttpError,
}

const HTTP_BODY: usize = 40_000;

/// A server on an ephemeral loopback port; one thread accepts and serves
/// the connections one by one and reports each peer address.
struct TestServer {
    addr: SocketAddr,
    accepted: mpsc::Receiver<SocketAddr>,
}

impl TestServer {
    fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            loop {
                let Ok((stream, peer)) = listener.accept() else { continue };
                if tx.send(peer).is_err() {
                    return;
                }
                serve_one(behaviour, addr, stream, &mut held);
            }
        });
        TestServer { addr, accepted }
    }

    /// Connections accepted, counted once the bench has exited: a last
    /// connection of ours queues behind all of the bench's (the accept
    /// queue is first in, first out). It comes from 127.0.0.2, so that it
    /// cannot be taken for one of the bench's (all from 127.0.0.1), whose
    /// ports it may reuse.
    fn accepted(&self) -> u64 {
        let fd =
            socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::from((MARKER_IP, 0)))).unwrap();
        connect(fd.as_raw_fd(), &SockaddrStorage::from(self.addr)).unwrap();
        let _marker = TcpStream::from(fd);
        let deadline = Instant::now() + DEADLINE;
        let mut n = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let peer = self.accepted.recv_timeout(left).expect("the marker was not accepted");
            if peer.ip() == MARKER_IP {
                return n;
            }
            n += 1;
        }
    }
}

/// The source address of [`TestServer::accepted`]'s marker connection.
const MARKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// `stream.read(buf)`, again after EINTR: a read with a timeout fails so
/// when the test process is stopped and continued (signal(7)).
fn read_through_eintr(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}

fn serve_one(
    behaviour: Behaviour,
    addr: SocketAddr,
    mut stream: TcpStream,
    held: &mut Vec<TcpStream>,
) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let Ok(n) = read_through_eintr(&mut stream, &mut buf) else { return };
    let reply = [b"server get message: ", &buf[..n]].concat();
    match behaviour {
        Behaviour::Article => {
            let _ = stream.write_all(&reply);
        }
        Behaviour::Wrong => {
            let _ = stream.write_all(b"server got message: ?");
        }
        Behaviour::Short => {
            let _ = stream.write_all(&reply[..reply.len() - 1]);
        }
        Behaviour::Reset => {
            let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            setsockopt(&stream, sockopt::Linger, &linger).unwrap();
        }
        Behaviour::Hold => held.push(stream),
        Behaviour::Slow(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            let _ = stream.write_all(&reply);
        }
        Behaviour::Split => {
            let _ = stream.write_all(&reply[..10]);
            std::thread::sleep(Duration::from_millis(30));
            let _ = stream.write_all(&reply[10..]);
        }
        Behaviour::Http => {
            let want = format!(
                "GET /hello HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: handoff-bench\r\nConnection: close\r\n\r\n"
            );
            if buf[..n] == *want.as_bytes() {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {HTTP_BODY}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(&[head.as_bytes(), &[b'b'; HTTP_BODY]].concat());
            } else {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        }
        Behaviour::HttpError => {
            let _ = stream.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

/// `-c C -n N --warmup 0`, time limits that only a broken bench reaches
/// (short, so that it fails soon): the count ends the run.
fn counted(c: &'static str, n: &'static str) -> Vec<&'static str> {
    vec!["-c", c, "-n", n, "--warmup", "0", "-d", "2", "--drain", "2", "--timeout", "2"]
}

#[test]
fn counts_exactly_the_requested_connections() {
    let server = TestServer::start(Behaviour::Article);
    let mut args = counted("3", "9");
    args.extend(["--threads", "2", "--payload", "abc"]);
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("connections"), 9, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    assert_eq!(run.u64("errors_total"), 0);
    assert_eq!(run.u64("warmup_connections"), 0);
    assert_eq!(run.u64("abandoned"), 0);
    assert_eq!(run.json["mode"], "article");
    assert_eq!(run.json["target"], server.addr.to_string());
    assert_eq!((run.u64("concurrency"), run.u64("threads")), (3, 2));
    assert_eq!(run.u64("payload_bytes"), 3);
    // The count ended the window, before -d 2.
    let window = run.f64("window_s");
    assert!(window > 0.0 && window < 1.9, "{}", run.json);
    assert!((run.f64("conns_per_s") - 9.0 / window).abs() < 1e-6 * (9.0 / window));
    let latency = &run.json["latency_us"];
    let (p50, max) = (latency["p50"].as_u64().unwrap(), latency["max"].as_u64().unwrap());
    assert!(p50 >= 1 && p50 <= max && max < 10_000_000, "{latency}");
    // Exactly 9 connections were made, not one more.
    assert_eq!(server.accepted(), 9);
}

#[test]
fn a_burst_makes_exactly_n_connections() {
    // -c N -n N: every slot connects once (the burst test).
    let server = TestServer::start(Behaviour::Slow(20));
    let mut args = counted("4", "4");
    args.extend(["--threads", "2"]);
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("connections"), 4, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    assert_eq!(server.accepted(), 4);
    // Served one by one, 20 ms each: the slowest waited for several.
    let max = run.json["latency_us"]["max"].as_u64().unwrap();
    assert!(max >= 40_000, "{}", run.json);
}

#[test]
fn warm_up_completions_are_not_counted() {
    let server = TestServer::start(Behaviour::Article);
    let args = ["-c", "2", "-n", "5", "--warmup", "0.3", "-d", "2", "--drain", "2"];
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("connections"), 5, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    let warmup = run.u64("warmup_connections");
    assert!(warmup >= 1, "{}", run.json);
    assert_eq!(run.f64("warmup_s"), 0.3);
    assert!(run.f64("window_s") < 1.9, "{}", run.json);
    // Those of the warm-up, 5 started after it, and at most one per slot in
    // flight when it ended.
    let accepted = server.accepted();
    assert!((warmup + 5..=warmup + 5 + 2).contains(&accepted), "{accepted} accepted: {}", run.json);
}

#[test]
fn wrong_replies() {
    let server = TestServer::start(Behaviour::Wrong);
    let run = bench(server.addr, &counted("1", "3"));
    assert_eq!(run.json["errors"], errors(0, 0, 0, 0, 3, 0), "{}", run.json);
    assert_eq!((run.u64("connections"), run.u64("errors_total")), (0, 3));
    // No correct reply: no latency, and the CPU is spread over the errors.
    assert_eq!(run.json["latency_us"]["max"], 0);
    let cpu = &run.json["cpu"];
    let total = cpu["total_s"].as_f64().unwrap();
    let per_conn = cpu["us_per_conn"].as_f64().unwrap();
    assert!((per_conn - total * 1e6 / 3.0).abs() < 1e-6 * per_conn.max(1.0), "{cpu}");
}

#[test]
fn short_replies() {
    let server = TestServer::start(Behaviour::Short);
    let run = bench(server.addr, &counted("2", "4"));
    assert_eq!(run.json["errors"], errors(0, 0, 0, 4, 0, 0), "{}", run.json);
    assert_eq!((run.u64("connections"), run.u64("errors_total")), (0, 4));
}

#[test]
fn resets() {
    let server = TestServer::start(Behaviour::Reset);
    let run = bench(server.addr, &counted("1", "3"));
    assert_eq!(run.json["errors"], errors(0, 3, 0, 0, 0, 0), "{}", run.json);
    assert_eq!(run.u64("errors_total"), 3);
}

#[test]
fn refusals_are_retried_at_once() {
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let run = bench(addr, &["-c", "1", "-n", "20", "--warmup", "0", "-d", "2", "--timeout", "1"]);
    assert_eq!(run.json["errors"], errors(20, 0, 0, 0, 0, 0), "{}", run.json);
    assert_eq!((run.u64("connections"), run.u64("errors_total")), (0, 20));
}

#[test]
fn failed_connects_are_retried_after_a_millisecond() {
    // With no fd left for a socket, connect fails at once (EMFILE): an
    // error of kind other, retried 1 ms later, not at the next 50 ms scan.
    let server = TestServer::start(Behaviour::Article);
    let output = Command::new("sh")
        .args(["-c", &with_fd_limit("4"), BENCH, "--json"])
        .args(["--target", &server.addr.to_string(), "-c", "1", "-n", "30"])
        .args(["--warmup", "0", "-d", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["errors"], errors(0, 0, 0, 0, 0, 30), "{json}");
    assert_eq!(json["connections"], 0);
}

#[test]
fn unanswered_connections_time_out_without_busy_waiting() {
    let server = TestServer::start(Behaviour::Hold);
    let args =
        ["-c", "2", "-n", "2", "--warmup", "0", "-d", "2", "--drain", "2", "--timeout", "0.3"];
    let run = bench(server.addr, &args);
    assert_eq!(run.json["errors"], errors(0, 0, 2, 0, 0, 0), "{}", run.json);
    assert_eq!((run.u64("connections"), run.u64("abandoned")), (0, 0));
    let window = run.f64("window_s");
    assert!((0.3..1.9).contains(&window), "{}", run.json);
    // Waiting is sleeping in epoll, not spinning (which on a loaded
    // machine may get only a quarter of a core: hence the low bar).
    let cpu = &run.json["cpu"];
    let percent = cpu["percent"].as_f64().unwrap();
    assert!(percent < 10.0, "{cpu}");
    let total = cpu["total_s"].as_f64().unwrap();
    assert!((percent - total * 100.0 / window).abs() < 1e-6, "{cpu}");
    assert_eq!(server.accepted(), 2);
}

#[test]
fn a_full_accept_queue_is_waited_on_not_an_error() {
    // A listener with the smallest backlog that never accepts: past the
    // first connection or two the handshake does not complete, and the
    // request waits for the socket to become writable.
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    bind(fd.as_raw_fd(), &SockaddrStorage::from(any)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let listener = TcpListener::from(fd);
    let addr = listener.local_addr().unwrap();
    let args =
        ["-c", "4", "-n", "4", "--warmup", "0", "-d", "2", "--drain", "2", "--timeout", "0.3"];
    let run = bench(addr, &args);
    assert_eq!(run.json["errors"], errors(0, 0, 4, 0, 0, 0), "{}", run.json);
    drop(listener);
}

#[test]
fn the_drain_waits_for_connections_in_flight() {
    // Answers come at 250 and 500 ms, after the 0.1 s window.
    let server = TestServer::start(Behaviour::Slow(250));
    let args = ["-c", "2", "--warmup", "0", "-d", "0.1", "--drain", "5", "--timeout", "5"];
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("connections"), 0, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    assert_eq!(run.u64("abandoned"), 0);
    assert!((run.f64("window_s") - 0.1).abs() < 1e-9, "{}", run.json);
    // It stopped waiting when the last one ended, not at the drain's end.
    assert!(run.elapsed < Duration::from_secs(3), "{:?}", run.elapsed);
    assert_eq!(server.accepted(), 2);
}

#[test]
fn what_is_still_open_after_the_drain_is_abandoned() {
    let server = TestServer::start(Behaviour::Hold);
    let args = ["-c", "2", "--warmup", "0", "-d", "0.1", "--drain", "0.1", "--timeout", "10"];
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("abandoned"), 2, "{}", run.json);
    assert_eq!(run.u64("connections"), 0);
    assert_eq!(run.json["errors"], no_errors());
}

#[test]
fn timeouts_while_draining_are_abandoned_not_counted() {
    let server = TestServer::start(Behaviour::Hold);
    let args = ["-c", "2", "--warmup", "0", "-d", "0.1", "--drain", "10", "--timeout", "0.3"];
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("abandoned"), 2, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    // Ended by the timeout (0.3 s), long before the drain's 10 s.
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
}

#[test]
fn a_reply_in_pieces_is_read_to_the_end() {
    let server = TestServer::start(Behaviour::Split);
    let run = bench(server.addr, &counted("1", "3"));
    assert_eq!(run.u64("connections"), 3, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
}

#[test]
fn http_mode_sends_a_get_and_reads_the_whole_body() {
    let server = TestServer::start(Behaviour::Http);
    let mut args = counted("2", "4");
    args.extend(["--http", "--path", "/hello"]);
    let run = bench(server.addr, &args);
    assert_eq!(run.u64("connections"), 4, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    assert_eq!(run.json["mode"], "http");
    assert_eq!(run.u64("payload_bytes"), 0);

    let server = TestServer::start(Behaviour::HttpError);
    let run = bench(server.addr, &args);
    assert_eq!(run.json["errors"], errors(0, 0, 0, 0, 4, 0), "{}", run.json);
}

#[test]
fn a_reply_already_ended_is_read_past_a_full_buffer() {
    // The whole reply and its FIN are queued before the bench looks (it is
    // stopped meanwhile): the first read fills the bench's 16 KiB buffer,
    // and EOF is only when the queue is empty, not at that full read.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    setsockopt(&listener, sockopt::ReceiveTimeout, &TimeVal::seconds(10)).unwrap();
    let addr = listener.local_addr().unwrap();
    let child = Command::new(BENCH)
        .args(["--json", "--http", "--target", &addr.to_string()])
        .args(["-c", "1", "-n", "1", "--warmup", "0", "-d", "2", "--timeout", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    // Should anything below fail, the bench is not left stopped.
    struct KillOnPanic(Pid);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = kill(self.0, Signal::SIGKILL);
            }
        }
    }
    let _guard = KillOnPanic(pid);
    let (mut stream, _) = listener.accept().expect("no connection within 10 s");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = [0u8; 4096];
    let n = read_through_eintr(&mut stream, &mut request).unwrap();
    assert!(request[..n].starts_with(b"GET / HTTP/1.1\r\n"));
    kill(pid, Signal::SIGSTOP).unwrap();
    let status = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap();
    assert!(matches!(status, WaitStatus::Stopped(..)), "{status:?}");
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HTTP_BODY}\r\n\r\n");
    stream.write_all(&[head.as_bytes(), &[b'b'; HTTP_BODY]].concat()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["connections"], 1, "{json}");
    assert_eq!(json["errors"], no_errors());
}

/// A `handoff-bench serve` process, killed when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(BENCH)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting handoff-bench serve");
        let addr = ready_line(&mut child);
        Serve { child, addr }
    }

    /// The server's CPU time so far, in clock ticks (/proc/PID/stat).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// The address of a server's `listening on ADDR` line, read within
/// [`DEADLINE`] (else the server is killed).
fn ready_line(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        tx.send(line)
    });
    let Ok(line) = rx.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no ready line within {DEADLINE:?}");
    };
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("ready line: {line:?}"))
        .parse()
        .unwrap()
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A duration-bound run (no -n) against `serve` with `serve_args`.
fn timed_run_against_serve(serve_args: &[&str]) {
    let server = Serve::start(serve_args);
    let args = ["-c", "2", "--threads", "2", "--warmup", "0.1", "-d", "0.3", "--marks"];
    let run = bench(server.addr, &args);
    let n = run.u64("connections");
    assert!(n >= 1, "{}", run.json);
    assert_eq!(run.json["errors"], no_errors());
    // (Not asserted: completions in the 0.1 s warm-up, which a loaded
    // machine may not see; warm_up_completions_are_not_counted does.)
    // Without -n the window is exactly -d long.
    assert!((run.f64("window_s") - 0.3).abs() < 1e-9, "{}", run.json);
    assert!((run.f64("conns_per_s") - n as f64 / 0.3).abs() < 1e-6 * n as f64, "{}", run.json);
    assert_eq!(run.stderr, "handoff-bench: window-start\nhandoff-bench: window-end\n");
}

#[test]
fn timed_run_against_the_threaded_server() {
    timed_run_against_serve(&["--threads", "2"]);
}

#[test]
fn timed_run_against_the_epoll_server() {
    timed_run_against_serve(&["--epoll", "--threads", "2"]);
}

/// Connects and sends nothing: the server closes it after its read timeout.
fn silent_client(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("no EOF from the server");
    assert_eq!(got, b"");
    started.elapsed()
}

/// Connects, waits `delay`, then sends: the reply still comes.
fn late_client(addr: SocketAddr, delay: Duration) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(delay);
    client.write_all(b"late").unwrap();
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    got
}

#[test]
fn the_threaded_server_closes_silent_clients_after_the_read_timeout() {
    let server = Serve::start(&["--threads", "1", "--read-timeout", "0.3"]);
    let waited = silent_client(server.addr);
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");
    // Still serving.
    assert_eq!(late_client(server.addr, Duration::ZERO), b"server get message: late");
}

#[test]
fn the_epoll_server_waits_for_late_requests_and_closes_silent_clients() {
    let server = Serve::start(&["--epoll", "--threads", "1", "--read-timeout", "1"]);
    let addr = server.addr;
    let before = server.cpu_ticks();
    // Past the loop's 500 ms scan, well within the read timeout.
    let late = std::thread::spawn(move || late_client(addr, Duration::from_millis(700)));
    let waited = silent_client(addr);
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(late.join().unwrap(), b"server get message: late");
    // Waiting for them was sleeping in epoll, not spinning.
    let spent = server.cpu_ticks() - before;
    assert!(spent < 10, "{spent} ticks of CPU while idle");
    assert_eq!(late_client(addr, Duration::ZERO), b"server get message: late");
    // With nothing waiting it sleeps with no timeout: past its next scan
    // time (at most 500 ms from now) it still spends no CPU.
    std::thread::sleep(Duration::from_millis(600));
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_millis(400));
    let spent = server.cpu_ticks() - before;
    assert!(spent < 5, "{spent} ticks of CPU with nothing to do");
}

/// A `serve` with `serve_args` and at most `fds` open files (`ulimit -n`).
fn serve_with_fds(fds: &str, serve_args: &[&str]) -> Serve {
    let mut child = Command::new("sh")
        .args(["-c", &with_fd_limit(fds), BENCH, "serve"])
        .args(["--listen", "127.0.0.1:0"])
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = ready_line(&mut child);
    Serve { child, addr }
}

/// A `serve` with `serve_args` and no fd left for accepted connections
/// (`ulimit -n fds`), one connection queued: CPU ticks it spends in 0.5 s.
fn ticks_out_of_fds(fds: &str, serve_args: &[&str]) -> u64 {
    let server = serve_with_fds(fds, serve_args);
    let addr = server.addr;
    // accept fails with EMFILE for as long as this one is queued.
    let _queued = TcpStream::connect(addr).unwrap();
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    server.cpu_ticks() - before
}

#[test]
fn out_of_fds_the_servers_step_back_instead_of_spinning() {
    // fds 0-2 and the listener (and the epoll instance): nothing left.
    // Spinning for 0.5 s would be 50 ticks, or a dozen on a loaded machine.
    let threaded = ticks_out_of_fds("4", &["--threads", "1"]);
    assert!(threaded < 5, "{threaded} ticks");
    let epoll = ticks_out_of_fds("5", &["--epoll", "--threads", "1"]);
    assert!(epoll < 5, "{epoll} ticks");
}

#[test]
fn the_epoll_server_accepts_again_once_an_fd_is_free() {
    // fds 0-2, the listener, the epoll instance and one for a connection.
    let server = serve_with_fds("6", &["--epoll", "--threads", "1"]);
    let addr = server.addr;
    // The first holds the last fd while it waits for its request...
    let mut first = TcpStream::connect(addr).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // ...so the second cannot be accepted (EMFILE) until it is answered.
    let second = std::thread::spawn(move || late_client(addr, Duration::ZERO));
    std::thread::sleep(Duration::from_millis(100));
    first.write_all(b"first").unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"server get message: first");
    assert_eq!(second.join().unwrap(), b"server get message: late");
}

/// Stops `pid` (SIGSTOP, until it is stopped) and continues it: blocking
/// calls with a timeout then fail with EINTR (signal(7)), which must be retried.
fn stop_and_continue(pid: Pid) {
    kill(pid, Signal::SIGSTOP).unwrap();
    let status = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap();
    assert!(matches!(status, WaitStatus::Stopped(..)), "{status:?}");
    kill(pid, Signal::SIGCONT).unwrap();
}

#[test]
fn the_threaded_server_retries_a_read_interrupted_by_a_stop() {
    let server = Serve::start(&["--threads", "1"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Let it accept and block in read(2) (which has the read timeout).
    std::thread::sleep(Duration::from_millis(100));
    stop_and_continue(Pid::from_raw(server.child.id() as i32));
    client.write_all(b"still there?").unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"server get message: still there?");
}

#[test]
fn the_load_generator_retries_a_poll_interrupted_by_a_stop() {
    let server = TestServer::start(Behaviour::Hold);
    let child = Command::new(BENCH)
        .args(["--json", "--target", &server.addr.to_string()])
        .args(["-c", "1", "-n", "1", "--warmup", "0", "-d", "3", "--timeout", "0.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Waiting in epoll_wait(2) for the reply that never comes.
    std::thread::sleep(Duration::from_millis(200));
    stop_and_continue(Pid::from_raw(child.id() as i32));
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["errors"], errors(0, 0, 1, 0, 0, 0), "{json}");
}

#[test]
fn non_loopback_targets_and_bad_options_are_refused() {
    for args in [&["--target", "192.0.2.1:80"][..], &["-c", "1", "--threads", "2"], &["-n", "0"]] {
        let status = Command::new(BENCH)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "{args:?}");
    }
}
