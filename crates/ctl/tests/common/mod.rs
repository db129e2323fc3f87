//! What the process-level tests of `handoff-ctl` share: a fake master
//! serving `control.sock` in a fresh directory, the binary run with a
//! deadline, and `serve-metrics` as a child process.
#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../../src/test_samples.rs"]
pub mod samples;

pub const BIN: &str = env!("CARGO_BIN_EXE_handoff-ctl");

/// How long anything in these tests may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh directory for one test, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake master answers to one command line: a JSON line, or
/// `None` to close the connection without answering.
pub type Answer = dyn Fn(&str) -> Option<String> + Send + Sync;

/// A fake master on `<dir>/control.sock`: one thread per connection,
/// answering each command line with `answer`. Its threads end with the
/// test process.
pub struct FakeMaster {
    commands: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

impl FakeMaster {
    pub fn start(
        dir: &Path,
        answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> FakeMaster {
        let listener =
            UnixListener::bind(dir.join("control.sock")).expect("bind the fake control.sock");
        let answer: Arc<Answer> = Arc::new(answer);
        let commands = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (log, count) = (commands.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                *count.lock().unwrap() += 1;
                let (answer, log) = (answer.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*answer, &log));
            }
        });
        FakeMaster { commands, connections }
    }

    /// Every command line received so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

fn serve(stream: UnixStream, answer: &Answer, log: &Mutex<Vec<String>>) {
    let mut writer = stream.try_clone().expect("clone");
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        log.lock().unwrap().push(line.clone());
        match answer(&line) {
            Some(reply) => {
                if writeln!(writer, "{reply}").is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

/// The usual answers: `info`, `workers`, `metrics`, and `{"ok": "<command>
/// done"}` to anything else.
pub fn usual(command: &str) -> Option<String> {
    Some(match command {
        "info" => samples::info_json(|_| {}).to_string(),
        "workers" => {
            serde_json::json!({ "workers": [samples::worker_json(0, |_| {})] }).to_string()
        }
        "metrics" => serde_json::json!({ "metrics": "handoff_up 1\n" }).to_string(),
        other => serde_json::json!({ "ok": format!("{other} done") }).to_string(),
    })
}

/// Runs `handoff-ctl` with `args` and `env`, killing it if it outlives [`DEADLINE`].
pub fn ctl_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("run handoff-ctl");
    let pid = child.id();
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait for handoff-ctl"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("handoff-ctl {args:?} did not finish within {DEADLINE:?}");
        }
    }
}

/// Runs `handoff-ctl --run-dir <dir> args…`.
pub fn ctl(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--run-dir", dir.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    ctl_env(&all, &[])
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `handoff-ctl serve-metrics`, killed when dropped.
pub struct ServeMetrics {
    pub child: Child,
    /// Its ready line ("serving metrics on …").
    pub ready: String,
}

impl ServeMetrics {
    /// Starts it and waits for its ready line.
    pub fn start(dir: &Path, args: &[&str]) -> ServeMetrics {
        let mut child = Command::new(BIN)
            .arg("--run-dir")
            .arg(dir)
            .arg("serve-metrics")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run handoff-ctl serve-metrics");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = ServeMetrics { child, ready: String::new() };
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if !line.is_empty() => server.ready = line,
            other => {
                let stderr = server.stop();
                panic!("no ready line ({other:?}); stderr: {stderr}")
            }
        }
        server
    }

    /// The TCP address of its ready line ("… on http://ADDR/metrics").
    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        let rest = self.ready.trim_end().strip_prefix("serving metrics on http://");
        let addr = rest.and_then(|r| r.strip_suffix("/metrics"));
        addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("ready line {:?}", self.ready))
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Kills it; returns what it wrote to stderr.
    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for ServeMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange, read to the end (the server closes).
pub struct Response {
    pub status: String,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Response {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default().to_owned();
        Response { status, head, body: raw[end + 4..].to_vec() }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }
}

/// A connected client, TCP or Unix.
pub trait Client: Read + Write {
    fn set_timeout(&self, timeout: Duration);
}

impl Client for std::net::TcpStream {
    fn set_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

impl Client for UnixStream {
    fn set_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

/// Reads until the server closes, within [`DEADLINE`].
pub fn read_all(client: &mut impl Client) -> Vec<u8> {
    client.set_timeout(DEADLINE);
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).expect("read until the server closes");
    raw
}

/// Sends `request` on a new TCP connection and reads the whole answer.
pub fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Response {
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    client.write_all(request).expect("send the request");
    Response::parse(&read_all(&mut client))
}

pub const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
