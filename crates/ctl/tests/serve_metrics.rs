//! `handoff-ctl serve-metrics` as a process: HTTP answers, deadlines, the
//! client limit, its unix socket, against a fake master.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    ctl, exchange, read_all, stderr, usual, Client, FakeMaster, Response, ServeMetrics, TempDir,
    DEADLINE, GET,
};

#[test]
fn scrapes_get_the_masters_metrics_and_other_requests_their_status() {
    let dir = TempDir::new("serve-tcp");
    let _master = FakeMaster::start(dir.path(), usual);
    let mut server = ServeMetrics::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let addr = server.tcp_addr();

    // Connected before the others and silent for now: it keeps its slot.
    let mut early = std::net::TcpStream::connect(addr).expect("connect");

    let ok = exchange(addr, GET);
    assert_eq!(ok.status, "HTTP/1.1 200 OK");
    assert_eq!(
        ok.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(ok.header("content-length").as_deref(), Some("13"));
    assert_eq!(ok.header("connection").as_deref(), Some("close"));
    assert_eq!(ok.body_text(), "handoff_up 1\n");

    let not_found = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(not_found.status, "HTTP/1.1 404 Not Found");
    assert_eq!(not_found.body_text(), "only GET /metrics is served here\n");
    let post = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(post.status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(post.header("allow").as_deref(), Some("GET"));
    let bad = exchange(addr, b"GET metrics HTTP/1.1\r\n\r\n");
    assert_eq!(bad.status, "HTTP/1.1 400 Bad Request");
    assert_eq!(bad.body_text(), "bad request\n");

    // A head longer than one read (2 KiB) but within 8 KiB is served ...
    let long = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(5000));
    assert_eq!(exchange(addr, long.as_bytes()).status, "HTTP/1.1 200 OK");
    // ... one without an end within 8 KiB is refused at once.
    // (Exactly 8 KiB: the server reads it all before it closes, so no
    // unread bytes turn its close into a reset.)
    let mut endless = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}", "p".repeat(8192));
    endless.truncate(8192);
    let started = Instant::now();
    assert_eq!(exchange(addr, endless.as_bytes()).status, "HTTP/1.1 400 Bad Request");
    assert!(started.elapsed() < Duration::from_secs(4), "refused before its deadline");

    early.write_all(GET).expect("the early client asks at last");
    assert_eq!(Response::parse(&read_all(&mut early)).status, "HTTP/1.1 200 OK");

    let stderr = server.stop();
    assert!(stderr.contains("a TCP port can be read by every user"), "{stderr}");
    assert!(!stderr.contains("accepting a metrics client failed"), "{stderr}");
}

#[test]
fn without_a_master_a_scrape_gets_503() {
    let dir = TempDir::new("serve-503");
    let server = ServeMetrics::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let answer = exchange(server.tcp_addr(), GET);
    assert_eq!(answer.status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        answer.body_text().starts_with("no handoff-master answers at "),
        "{}",
        answer.body_text()
    );
}

#[test]
fn a_client_that_does_not_finish_its_request_is_closed_at_its_deadline() {
    let dir = TempDir::new("serve-deadline");
    let server =
        ServeMetrics::start(dir.path(), &["--listen", "127.0.0.1:0", "--request-timeout", "0.3"]);
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(server.tcp_addr()).expect("connect");
    let mut partial = std::net::TcpStream::connect(server.tcp_addr()).expect("connect");
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").expect("half a request");
    assert_eq!(read_all(&mut silent), b"");
    assert_eq!(read_all(&mut partial), b"");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn the_default_socket_is_private_and_a_stale_one_is_replaced() {
    let dir = TempDir::new("serve-unix");
    let _master = FakeMaster::start(dir.path(), usual);
    let socket = dir.path().join("metrics.sock");
    let get = || {
        let mut client = UnixStream::connect(&socket).expect("connect");
        client.write_all(GET).expect("send");
        Response::parse(&read_all(&mut client))
    };
    let mut first = ServeMetrics::start(dir.path(), &[]);
    assert_eq!(
        first.ready,
        format!("serving metrics on unix:{} (GET /metrics)\n", socket.display())
    );
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(get().body_text(), "handoff_up 1\n");

    // A second one on the same live socket is refused.
    let busy = ctl(dir.path(), &["serve-metrics"]);
    assert_eq!(busy.status.code(), Some(1), "{busy:?}");
    assert!(stderr(&busy).contains("something already serves on"), "{busy:?}");

    // Killed, it leaves its socket behind: the next one replaces it.
    first.stop();
    assert!(socket.exists());
    let _second = ServeMetrics::start(dir.path(), &[]);
    assert_eq!(get().status, "HTTP/1.1 200 OK");

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "x").expect("a plain file");
    let refused =
        ctl(dir.path(), &["serve-metrics", "--listen", &format!("unix:{}", file.display())]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(stderr(&refused).contains("exists and is not a socket"), "{refused:?}");
}

/// Ctrl-C (SIGINT) or SIGTERM: it stops, exits 0 and removes its socket
/// (it used to leave metrics.sock behind).
#[test]
fn interrupted_it_removes_its_socket_and_exits_0() {
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        let dir = TempDir::new("serve-signal");
        let _master = FakeMaster::start(dir.path(), usual);
        let socket = dir.path().join("metrics.sock");
        let mut server = ServeMetrics::start(dir.path(), &[]);
        assert!(socket.exists());
        nix::sys::signal::kill(server.pid(), signal).expect("signal");
        let deadline = std::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{signal}: still running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(status.success(), "{signal}: {status:?}");
        assert!(!socket.exists(), "{signal}: metrics.sock left behind");
    }
}

/// Reads until the head's first line has arrived.
fn status_line(client: &mut UnixStream) -> String {
    client.set_timeout(DEADLINE);
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        let read = loop {
            match client.read(&mut byte) {
                // The test process was stopped and continued (signal(7)).
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read,
            }
        };
        assert_eq!(read.expect("read the status line"), 1, "{got:?}");
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).trim_end().to_owned()
}

/// Everything the server still sends, whatever way it ends.
fn rest(client: &mut UnixStream) -> Vec<u8> {
    client.set_timeout(DEADLINE);
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    got
}

#[test]
fn when_full_the_oldest_client_still_sending_makes_room() {
    // An answer far larger than a socket buffer: a client that does not
    // read stays in the middle of its answer.
    const BIG: usize = 2 << 20;
    let dir = TempDir::new("serve-full");
    let metrics = serde_json::json!({ "metrics": "m".repeat(BIG) }).to_string();
    let _master = FakeMaster::start(dir.path(), move |command| {
        if command == "metrics" {
            Some(metrics.clone())
        } else {
            usual(command)
        }
    });
    let socket = dir.path().join("m.sock");
    let listen = format!("unix:{}", socket.display());
    let _server = ServeMetrics::start(
        dir.path(),
        &["--listen", &listen, "--max-clients", "2", "--request-timeout", "30"],
    );
    let connect = || UnixStream::connect(&socket).expect("connect");

    let mut a = connect();
    a.write_all(GET).expect("a asks");
    assert_eq!(status_line(&mut a), "HTTP/1.1 200 OK");
    // b is still sending its request when c comes: b makes room, not a.
    let mut b = connect();
    let mut c = connect();
    c.write_all(GET).expect("c asks");
    assert_eq!(status_line(&mut c), "HTTP/1.1 200 OK");
    let _ = b.write_all(GET);
    assert_eq!(rest(&mut b), b"", "b was closed");

    // Both slots are answering: the oldest, a, makes room for d.
    let mut d = connect();
    d.write_all(GET).expect("d asks");
    let d = Response::parse(&read_all(&mut d));
    assert_eq!(d.status, "HTTP/1.1 200 OK");
    assert_eq!(d.body.len(), BIG, "d got all of it");
    let a_rest = rest(&mut a);
    assert!(a_rest.len() < BIG, "a was cut short: {} bytes", a_rest.len());
    let c_rest = rest(&mut c);
    let c_head_len = c_rest.windows(4).position(|w| w == b"\r\n\r\n").expect("c's head") + 4;
    assert_eq!(c_rest.len() - c_head_len, BIG, "c got all of it");
}

#[test]
fn a_client_gone_before_its_answer_does_not_stall_the_server() {
    let dir = TempDir::new("serve-gone");
    let (asked_tx, asked) = mpsc::channel();
    let (release, gate) = mpsc::channel::<()>();
    let first = Mutex::new(Some((asked_tx, gate)));
    let _master = FakeMaster::start(dir.path(), move |command| {
        if let Some((asked, gate)) = first.lock().unwrap().take() {
            asked.send(()).expect("tell the test");
            gate.recv_timeout(DEADLINE).expect("the test releases the answer");
        }
        usual(command)
    });
    let socket = dir.path().join("m.sock");
    let listen = format!("unix:{}", socket.display());
    let _server = ServeMetrics::start(dir.path(), &["--listen", &listen, "--max-clients", "2"]);
    // Connected first, silent for now.
    let mut early = UnixStream::connect(&socket).expect("connect");
    let mut gone = UnixStream::connect(&socket).expect("connect");
    gone.write_all(GET).expect("ask");
    asked.recv_timeout(DEADLINE).expect("the scrape reached the master");
    drop(gone);
    release.send(()).expect("release");
    // The answer to `gone` failed (EPIPE): its slot is free at once, so
    // `next` takes it without closing `early`.
    let mut next = UnixStream::connect(&socket).expect("connect");
    next.write_all(GET).expect("ask");
    assert_eq!(Response::parse(&read_all(&mut next)).body_text(), "handoff_up 1\n");
    early.write_all(GET).expect("the early client asks");
    assert_eq!(Response::parse(&read_all(&mut early)).status, "HTTP/1.1 200 OK");
}

/// serve-metrics with room for two clients, each given 30 s.
fn two_slot_server(dir: &std::path::Path) -> ServeMetrics {
    ServeMetrics::start(
        dir,
        &["--listen", "127.0.0.1:0", "--max-clients", "2", "--request-timeout", "30"],
    )
}

/// SO_LINGER 0: the close sends a reset; the server's read says ECONNRESET.
fn close_with_a_reset(stream: std::net::TcpStream) {
    let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
}

#[test]
fn a_client_that_resets_frees_its_slot_at_once() {
    let dir = TempDir::new("serve-reset");
    let _master = FakeMaster::start(dir.path(), usual);
    let server = two_slot_server(dir.path());
    let addr = server.tcp_addr();
    let mut early = std::net::TcpStream::connect(addr).expect("connect");
    let reset = std::net::TcpStream::connect(addr).expect("connect");
    close_with_a_reset(reset);
    // Handled after the reset (events in order): its slot is free again,
    // so nobody had to make room.
    assert_eq!(exchange(addr, GET).status, "HTTP/1.1 200 OK");
    early.write_all(GET).expect("the early client asks");
    assert_eq!(Response::parse(&read_all(&mut early)).status, "HTTP/1.1 200 OK");
}

/// The same with the reset arriving after the server took the client: its
/// read fails (ECONNRESET) while it waits for the request, and the slot is
/// freed then, not at the request timeout.
#[test]
fn a_client_that_resets_after_it_was_accepted_frees_its_slot_at_once() {
    let dir = TempDir::new("serve-reset-late");
    let _master = FakeMaster::start(dir.path(), usual);
    let server = two_slot_server(dir.path());
    let addr = server.tcp_addr();
    let sockets = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|link| link.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let idle = sockets();
    let mut early = std::net::TcpStream::connect(addr).expect("connect");
    let reset = std::net::TcpStream::connect(addr).expect("connect");
    let deadline = Instant::now() + DEADLINE;
    while sockets() < idle + 2 {
        assert!(Instant::now() < deadline, "the server never took both clients");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until_idle(server.pid());
    close_with_a_reset(reset);
    while sockets() > idle + 1 {
        assert!(Instant::now() < deadline, "the reset client's slot was kept");
        std::thread::sleep(Duration::from_millis(5));
    }
    // So the next client finds room without closing the early one.
    assert_eq!(exchange(addr, GET).status, "HTTP/1.1 200 OK");
    early.write_all(GET).expect("the early client asks");
    assert_eq!(Response::parse(&read_all(&mut early)).status, "HTTP/1.1 200 OK");
}

/// Waits until `pid` sleeps in `epoll_wait` (its loop is idle).
fn wait_until_idle(pid: nix::unistd::Pid) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        // wchan may be hidden ("0"); then sleeping is enough.
        let in_epoll = wchan.contains("epoll") || wchan.is_empty() || wchan == "0";
        if state == Some(Some('S')) && in_epoll {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never idle: {stat} {wchan}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn stopped_and_continued_it_keeps_serving() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let dir = TempDir::new("serve-stop");
    let _master = FakeMaster::start(dir.path(), usual);
    let server = ServeMetrics::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let pid = server.pid();
    wait_until_idle(pid);
    // epoll_wait fails with EINTR once a stopped process continues.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let stopped = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).expect("waitpid");
    assert!(matches!(stopped, WaitStatus::Stopped(_, Signal::SIGSTOP)), "{stopped:?}");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(exchange(server.tcp_addr(), GET).body_text(), "handoff_up 1\n");
}

#[test]
fn out_of_fds_it_says_so_and_serves_the_clients_it_has() {
    // With 8 fds (stdio, epoll, the signals' pipe pair, listener, one
    // client) the next accept fails with EMFILE: reported once, and the
    // loop goes on.
    let dir = TempDir::new("serve-emfile");
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=8:8", common::BIN, "--run-dir"])
        .arg(dir.path())
        .args(["serve-metrics", "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run prlimit handoff-ctl serve-metrics");
    let lines = |pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
    let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
    let server = ServeMetrics { child, ready: stdout.recv_timeout(DEADLINE).expect("ready line") };
    let addr = server.tcp_addr();
    let mut held = std::net::TcpStream::connect(addr).expect("connect");
    let _refused = std::net::TcpStream::connect(addr).expect("connect (left in the backlog)");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the accept failure is reported");
        if line.contains("accepting a metrics client failed") {
            break;
        }
    }
    held.write_all(GET).expect("ask");
    // Its own fds are all taken, so no master can be asked: 503.
    let answer = Response::parse(&read_all(&mut held));
    assert_eq!(answer.status, "HTTP/1.1 503 Service Unavailable");
}
