//! `handoff-bench refmaster` as a process: it answers the article's
//! protocol through its workers, and its workers do not outlive it.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running refmaster, killed when dropped.
struct RefMaster {
    child: Child,
    addr: SocketAddr,
}

impl RefMaster {
    fn start(workers: usize) -> RefMaster {
        RefMaster::start_with(workers, |_| {})
    }

    /// With `configure` applied to its command first.
    fn start_with(workers: usize, configure: impl FnOnce(&mut Command)) -> RefMaster {
        let mut command = Command::new(env!("CARGO_BIN_EXE_handoff-bench"));
        command
            .args(["refmaster", "--listen", "127.0.0.1:0", "--workers", &workers.to_string()])
            .args(["--read-timeout", "2"]);
        configure(&mut command);
        RefMaster::spawn(command)
    }

    /// Runs `command` (a refmaster, or a shell that execs one) and waits
    /// for its ready line.
    fn spawn(mut command: Command) -> RefMaster {
        command.stdout(Stdio::piped());
        let mut child = command.spawn().expect("starting handoff-bench refmaster");
        // The ready line, within 10 s (else the refmaster is killed).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            tx.send(line)
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no ready line from the refmaster within 10 s");
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("ready line: {line:?}"))
            .parse()
            .unwrap();
        RefMaster { child, addr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The refmaster's child processes.
    fn workers(&self) -> Vec<i32> {
        let path = format!("/proc/{}/task/{}/children", self.pid(), self.pid());
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_whitespace().map(|pid| pid.parse().unwrap()).collect()
    }

    /// Waits for the refmaster to exit; its status code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the refmaster did not exit within 5 s");
    }
}

impl Drop for RefMaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An empty directory of this test's own, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        // Short: the refmaster's socket path in it must fit sun_path.
        let path = std::env::temp_dir().join(format!(
            "hb-{name}-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000
        ));
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.write_all(payload).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    reply
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state says it is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "workers {pids:?} outlived their refmaster");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn answers_through_its_workers_and_stops_them_on_sigterm() {
    let mut master = RefMaster::start(2);
    let workers = master.workers();
    assert_eq!(workers.len(), 2, "workers: {workers:?}");
    for i in 0..20 {
        let payload = format!("hello {i}");
        assert_eq!(
            request(master.addr, payload.as_bytes()),
            format!("server get message: {payload}").as_bytes()
        );
    }
    // Several at once, round-robin over both workers.
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let addr = master.addr;
            std::thread::spawn(move || request(addr, format!("c{i}").as_bytes()))
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap(), format!("server get message: c{i}").as_bytes());
    }
    // Any bytes, up to one read of 2048; a client that sends nothing gets the prefix.
    let big = vec![0xffu8; 2048];
    assert_eq!(request(master.addr, &big)[20..], big[..]);
    let mut silent = TcpStream::connect(master.addr).unwrap();
    silent.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    silent.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"server get message: ");

    kill(Pid::from_raw(master.pid()), Signal::SIGTERM).unwrap();
    assert_eq!(master.wait(), Some(0));
    wait_gone(&workers);
}

#[test]
fn workers_exit_when_the_refmaster_is_killed() {
    let mut master = RefMaster::start(3);
    let workers = master.workers();
    assert_eq!(workers.len(), 3, "workers: {workers:?}");
    assert_eq!(request(master.addr, b"ping"), b"server get message: ping");
    kill(Pid::from_raw(master.pid()), Signal::SIGKILL).unwrap();
    master.wait();
    // Their channels read EOF.
    wait_gone(&workers);
}

#[test]
fn refuses_non_loopback_addresses() {
    let status = Command::new(env!("CARGO_BIN_EXE_handoff-bench"))
        .args(["refmaster", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

#[test]
fn the_load_generator_counts_every_reply_through_it() {
    let master = RefMaster::start(2);
    // -d 2 bounds the run (and then it would count fewer than 40).
    let output = Command::new(env!("CARGO_BIN_EXE_handoff-bench"))
        .args(["--json", "--target", &master.addr.to_string()])
        .args(["-c", "4", "--threads", "2", "-n", "40", "--warmup", "0", "-d", "2"])
        .args(["--timeout", "1", "--drain", "1"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["connections"], 40, "{json}");
    assert_eq!(json["errors_total"], 0, "{json}");
}

#[test]
fn its_private_directory_is_gone_once_the_workers_are_connected() {
    let tmp = TempDir::new("pd");
    let master = RefMaster::start_with(2, |command| {
        command.env("TMPDIR", &tmp.0);
    });
    // The ready line comes after the workers connected.
    let left: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(request(master.addr, b"x"), b"server get message: x");
}

#[test]
fn it_exits_with_an_error_when_a_worker_is_gone() {
    // Its error message is expected: not in the test output.
    let mut master = RefMaster::start_with(2, |command| {
        command.stderr(Stdio::null());
    });
    let workers = master.workers();
    assert_eq!(workers.len(), 2, "workers: {workers:?}");
    kill(Pid::from_raw(workers[0]), Signal::SIGKILL).unwrap();
    // Round-robin: one of the next two connections goes to the dead worker;
    // handing it over fails, and that ends the refmaster. Its connections
    // are closed unanswered, and later ones refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the refmaster kept running without a worker");
        if master.child.try_wait().unwrap().is_some() {
            break;
        }
        let Ok(mut client) = TcpStream::connect(master.addr) else { break };
        client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = client.write_all(b"anyone?");
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply);
    }
    let code = master.wait();
    assert!(code.is_some_and(|code| code != 0), "exit code {code:?}");
    wait_gone(&workers);
}

/// How many connections wait in the accept queue of the listener on
/// 127.0.0.1:`port` (a LISTEN socket's rx_queue in /proc/net/tcp).
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields[1] == local && fields[3] == "0A")
        .and_then(|fields| usize::from_str_radix(fields[4].split_once(':')?.1, 16).ok())
        .unwrap_or_else(|| panic!("no listener on port {port}"))
}

/// ETOOMANYREFS: a user may have at most its RLIMIT_NOFILE of fds in
/// flight in Unix sockets (root is exempt). A refmaster running as nobody
/// at 32 fds whose worker is stopped reaches that after 33 hand-offs: it
/// waits for the worker instead of failing, and every client is answered
/// once the worker runs again.
#[test]
fn as_nobody_too_many_fds_in_flight_wait_for_the_worker() {
    const CLIENTS: usize = 60;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("\n!!! NOT RUN: running as nobody needs root; CI runs as root. !!!\n");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_handoff-bench"))
        .args(["refmaster", "--listen", "127.0.0.1:0", "--workers", "1", "--read-timeout", "5"])
        .uid(65534)
        .gid(65534);
    let mut master = RefMaster::spawn(command);
    let workers = master.workers();
    assert_eq!(workers.len(), 1, "workers: {workers:?}");
    kill(Pid::from_raw(workers[0]), Signal::SIGSTOP).unwrap();
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut client = TcpStream::connect(master.addr).unwrap();
            client.write_all(format!("in flight {i}").as_bytes()).unwrap();
            client
        })
        .collect();
    // 33 handed off (in flight), the 34th accepted and waiting to go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while accept_queue(master.addr.port()) > CLIENTS - 34 {
        assert!(Instant::now() < deadline, "the refmaster stopped accepting early");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(workers[0]), Signal::SIGCONT).unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply);
        assert_eq!(reply, format!("server get message: in flight {i}").into_bytes(), "client {i}");
    }
    assert!(master.child.try_wait().unwrap().is_none(), "the refmaster is still running");
}
