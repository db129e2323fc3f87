//! `handoff-ctl serve-metrics` (issue #10, item 2): the master's metrics
//! over HTTP from one process and one thread, bounded clients, each with a
//! deadline; only `GET /metrics`; a unix socket (0600) by default.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `handoff-ctl serve-metrics`, killed on drop.
struct Server {
    child: Child,
    /// What its ready line says it serves.
    serving: String,
}

impl Server {
    fn start(run_dir: &std::path::Path, args: &[&str]) -> Server {
        let mut child = Command::new(bin("handoff-ctl"))
            .arg("--run-dir")
            .arg(run_dir)
            .arg("serve-metrics")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve-metrics");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("a ready line");
        let serving = line
            .trim()
            .strip_prefix("serving metrics on ")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_owned();
        Server { child, serving }
    }

    fn addr(&self) -> SocketAddr {
        let rest = self.serving.strip_prefix("http://").expect("a TCP listener");
        rest.trim_end_matches("/metrics").parse().expect("address")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(stream: &mut (impl Read + Write), path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    let answer = String::from_utf8(answer).expect("text");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    (head.to_owned(), body.to_owned())
}

fn count_entries(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn serve_metrics_answers_a_scrape_while_slow_clients_neither_leak_nor_block_it() {
    const SLOW: usize = 200;
    const MAX_CLIENTS: usize = 16;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    request(master.addr, b"counted").expect("request");
    let server = Server::start(
        &master.run_dir,
        &["--listen", "127.0.0.1:0", "--max-clients", "16", "--request-timeout", "1"],
    );
    let addr = server.addr();

    // Slow clients: each sends half a request line and then nothing.
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(b"GET /metr").expect("half a request");
            stream
        })
        .collect();

    // A scraper still gets its answer, at once.
    let started = Instant::now();
    let (head, body) = http_get(&mut connect(addr), "/metrics");
    let scrape = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE handoff_connections_accepted_total counter"), "{body}");
    assert!(body.contains("handoff_connections_accepted_total 1\n"), "{body}");
    assert!(scrape < Duration::from_secs(1), "the scrape took {scrape:?}");
    let (head, _) = http_get(&mut connect(addr), "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // One process, one thread, and no more fds than the client bound allows.
    let pid = server.pid();
    assert_eq!(count_entries(format!("/proc/{pid}/task")), 1, "one thread");
    let fds = count_entries(format!("/proc/{pid}/fd"));
    assert!(fds <= MAX_CLIENTS + 10, "{fds} fds open");
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    assert!(children.trim().is_empty(), "child processes: {children}");

    // Every slow client is closed within the request timeout (or sooner,
    // to make room): none is left hanging.
    for stream in &mut slow {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        match stream.read_to_end(&mut Vec::new()) {
            Ok(_) => {}
            Err(err) => assert!(
                err.kind() == std::io::ErrorKind::ConnectionReset,
                "a slow client was left open: {err}"
            ),
        }
    }
    // stdio, epoll, the listener, the signals' pipe pair, and what the
    // test harness may leave open: no client.
    assert!(count_entries(format!("/proc/{pid}/fd")) <= 10, "every client closed");
    println!(
        "serve-metrics: {SLOW} slow clients, scrape answered in {scrape:?}, 1 thread, {fds} fds"
    );

    // No master: 503, and the server keeps running.
    drop(master);
    let (head, body) = http_get(&mut connect(addr), "/metrics");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains("no handoff-master answers"), "{body}");
}

#[test]
fn serve_metrics_listens_on_a_private_unix_socket_by_default() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let server = Server::start(&master.run_dir, &[]);
    let path = master.run_dir.join("metrics.sock");
    assert_eq!(server.serving, format!("unix:{} (GET /metrics)", path.display()));
    let mode = std::fs::symlink_metadata(&path).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut stream = UnixStream::connect(&path).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let (head, body) = http_get(&mut stream, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body.contains("handoff_uptime_seconds"), "{body}");
    let mut stream = UnixStream::connect(&path).expect("connect");
    stream.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}
