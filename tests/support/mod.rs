//! Helpers for the end-to-end tests: start real master and worker processes
//! on ephemeral ports with a temporary run directory each, talk to them over
//! real sockets, and wait on their output with deadlines.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The default bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// For a master a test's stand-in worker registers with: the stand-in's
/// pid is the test binary's, and a master kills a worker silent for
/// `--timeout` (30 s by default), which would take every test with it.
pub const STAND_IN_TIMEOUT: [&str; 2] = ["--timeout", "0"];

pub const PREFIX: &[u8] = b"server get message: ";

/// Directory holding the workspace's built binaries (`target/debug`), found
/// from this test executable (`target/debug/deps/e2e-…`), as ripgrep's tests do.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
    for name in ["handoff-master", "handoff-worker", "handoff-ctl"] {
        assert!(
            dir.join(name).is_file(),
            "{} missing: run `cargo build --workspace --bins` first (`make test` does)",
            dir.join(name).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A temporary directory for one test: run dir, logs.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("handoff-e2e-").tempdir().expect("tempdir") }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A scratch dir that a master running as nobody (`--user nobody`)
    /// can reach (a tempdir is root's 0700); None, said loudly, when the
    /// tests do not run as root, which `--user` needs (CI runs as root).
    pub fn for_nobody(test: &str) -> Option<Scratch> {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n!!! NOT RUN: {test} needs root for --user; CI runs as root. !!!\n");
            return None;
        }
        let scratch = Scratch::new();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod scratch");
        Some(scratch)
    }
}

/// A running `handoff-master`, killed and reaped on drop.
pub struct Master {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub run_dir: PathBuf,
    pub log_path: PathBuf,
    pub pid: u32,
}

impl Master {
    /// Starts a master on 127.0.0.1:0 with `extra` arguments and waits for
    /// its `listening on ADDR` line.
    pub fn start(scratch: &Scratch, extra: &[&str]) -> Master {
        Master::start_with_env(scratch, extra, "info")
    }

    pub fn start_with_env(scratch: &Scratch, extra: &[&str], rust_log: &str) -> Master {
        Master::start_limited(scratch, "127.0.0.1:0", extra, rust_log, None)
    }

    /// Starts a master listening on `listen` (e.g. `127.0.0.3:0`, another
    /// loopback address standing for another host).
    pub fn start_on(scratch: &Scratch, listen: &str, extra: &[&str]) -> Master {
        Master::start_limited(scratch, listen, extra, "info", None)
    }

    /// Starts a master whose soft limit of open files is `soft_fd_limit`
    /// (set by the shell that execs it; its hard limit stays as it is).
    pub fn start_with_fd_limit(scratch: &Scratch, extra: &[&str], soft_fd_limit: u32) -> Master {
        Master::start_limited(scratch, "127.0.0.1:0", extra, "info", Some(soft_fd_limit))
    }

    fn start_limited(
        scratch: &Scratch,
        listen: &str,
        extra: &[&str],
        rust_log: &str,
        soft_fd_limit: Option<u32>,
    ) -> Master {
        let run_dir = scratch.run_dir();
        let log_path = scratch.path().join("master.log");
        let log = File::create(&log_path).expect("create log");
        let mut command = match soft_fd_limit {
            None => Command::new(bin("handoff-master")),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""))
                    .arg(bin("handoff-master"));
                sh
            }
        };
        let mut child = command
            .args(["--listen", listen, "--run-dir"])
            .arg(&run_dir)
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn handoff-master");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let line = read_line_within(stdout, WAIT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("no `listening on` line; log:\n{}", read_to_string(&log_path))
        });
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        Master { child: Some(child), addr, run_dir, log_path, pid }
    }

    pub fn log(&self) -> String {
        read_to_string(&self.log_path)
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        wait_for_log(&self.log_path, needle, count);
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal)
            .expect("signal master");
    }

    /// Waits (bounded) for the master to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_child_exit(&mut self.child, within, &self.log_path)
    }

    /// Pids of workers the log says registered, in order.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter(|line| line.contains("worker registered"))
            .filter_map(|line| field(line, "pid"))
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A separately started `handoff-worker`, killed and reaped on drop.
pub struct Worker {
    pub child: Option<Child>,
    pub log_path: PathBuf,
}

impl Worker {
    pub fn start(run_dir: &Path, log_path: PathBuf, rust_log: &str) -> Worker {
        Worker::start_with_args(run_dir, log_path, rust_log, &[])
    }

    pub fn start_with_args(
        run_dir: &Path,
        log_path: PathBuf,
        rust_log: &str,
        args: &[&str],
    ) -> Worker {
        let log = File::create(&log_path).expect("create worker log");
        let child = Command::new(bin("handoff-worker"))
            .arg("--run-dir")
            .arg(run_dir)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn handoff-worker");
        Worker { child: Some(child), log_path }
    }

    pub fn log(&self) -> String {
        read_to_string(&self.log_path)
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_child_exit(&mut self.child, within, &self.log_path)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) for a child to exit, and forgets it; panics with its log.
fn wait_child_exit(slot: &mut Option<Child>, within: Duration, log: &Path) -> ExitStatus {
    let child = slot.as_mut().expect("still owned");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            *slot = None;
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit; log:\n{}", read_to_string(log));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `key=value` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("{key}=");
    line.split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .find_map(|word| word.strip_prefix(&pattern))
        .map(|value| value.trim_matches('"'))
}

pub fn read_to_string(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

pub fn wait_for_log(path: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = read_to_string(path);
        if log.matches(needle).count() >= count {
            return;
        }
        let master_log = path.with_file_name("master.log");
        assert!(
            Instant::now() < deadline,
            "log {} never had {count}× {needle:?}:\n{log}\nmaster log:\n{}",
            path.display(),
            read_to_string(&master_log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_line_within(stdout: impl Read + Send + 'static, within: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the master never blocks on a full stdout pipe.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    rx.recv_timeout(within).ok().filter(|line| !line.is_empty())
}

/// Connects with timeouts set on every operation.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream
}

/// One request as the article's clients make it: connect, send, read to EOF.
pub fn request(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = connect(addr);
    send_and_read(&mut stream, payload)
}

pub fn send_and_read(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.is_empty() {
        stream.shutdown(Shutdown::Write)?;
    } else {
        stream.write_all(payload)?;
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}

pub fn expected_reply(payload: &[u8]) -> Vec<u8> {
    let mut reply = PREFIX.to_vec();
    reply.extend_from_slice(payload);
    reply
}

/// The longest a [`Load`] runs.
pub const LOAD_CAP: Duration = Duration::from_secs(60);

/// One client: connect, send, read the reply to EOF, check it.
pub fn one_request(addr: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, WAIT).map_err(|err| format!("connect: {err}"))?;
    stream.set_read_timeout(Some(WAIT)).map_err(|err| err.to_string())?;
    stream.write_all(payload).map_err(|err| format!("write: {err}"))?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|err| format!("read: {err}"))?;
    if reply != expected_reply(payload) {
        return Err(format!("wrong reply {:?}", String::from_utf8_lossy(&reply)));
    }
    Ok(())
}

/// `clients` threads requesting in a loop until [`Load::finish`] (or,
/// should a test forget, for at most [`LOAD_CAP`]).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok) = (stop.clone(), ok.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut n = 0u64;
                    let cap = Instant::now() + LOAD_CAP;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < cap {
                        let payload = format!("client {i} request {n}");
                        match one_request(addr, payload.as_bytes()) {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => failures.push(err),
                        }
                        n += 1;
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.threads.into_iter().flat_map(|t| t.join().expect("client")).collect();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Polls `cond` until it is true or `within` passes.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Is `pid` still a live (non-zombie) process?
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The inode of the server-side TCP socket whose peer is `client_local`
/// (from /proc/net/tcp), if the kernel lists it.
pub fn server_socket_inode(server: SocketAddr, client_local: SocketAddr) -> Option<u64> {
    // `ss` asks the kernel (sock_diag) for just this connection. Reading
    // /proc/net/tcp instead walks the whole table across several reads and
    // can skip live entries while it churns (seen with 120,000 TIME_WAIT
    // sockets on this machine after a benchmark), so it is only the
    // fallback when `ss` cannot run.
    let filter = format!("( sport = :{} and dport = :{} )", server.port(), client_local.port());
    let output =
        std::process::Command::new("ss").args(["-Htne", "state", "established", &filter]).output();
    if let Some(output) = output.ok().filter(|o| o.status.success()) {
        return String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
            let inode = line.split_whitespace().find_map(|field| field.strip_prefix("ino:"))?;
            inode.parse().ok().filter(|&inode: &u64| inode != 0)
        });
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want_local = format!(":{:04X}", server.port());
    let want_remote = format!(":{:04X}", client_local.port());
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
        (local.ends_with(&want_local) && remote.ends_with(&want_remote))
            .then(|| inode.parse().ok())
            .flatten()
            .filter(|&inode| inode != 0)
    })
}

/// The fd number under which `pid` holds socket `inode`, if it does.
pub fn fd_holding_socket(pid: u32, inode: u64) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten().find_map(|entry| {
        let link = std::fs::read_link(entry.path()).ok()?;
        (link.to_str()? == target).then(|| entry.file_name().to_str()?.parse().ok()).flatten()
    })
}

/// The `flags:` of /proc/<pid>/fdinfo/<fd> (open flags, with O_CLOEXEC
/// standing for FD_CLOEXEC).
pub fn fd_flags(pid: u32, fd: u32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags =
        info.lines().find_map(|line| line.strip_prefix("flags:")).expect("flags line").trim();
    u32::from_str_radix(flags, 8).expect("octal flags")
}

/// A control-socket client speaking the line protocol directly.
pub struct Control {
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Control {
    pub fn connect(run_dir: &Path) -> Control {
        let stream = std::os::unix::net::UnixStream::connect(run_dir.join("control.sock"))
            .expect("connect control socket");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_write_timeout(Some(WAIT)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Control { reader: BufReader::new(stream), writer }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send to control socket");
    }

    pub fn read_answer(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read answer");
        assert!(line.ends_with('\n'), "answer is one line: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
    }

    pub fn ask(&mut self, command: &str) -> serde_json::Value {
        self.send_raw(format!("{command}\n").as_bytes());
        self.read_answer()
    }
}

/// Runs `handoff-ctl` with `args`, returning (exit code, stdout, stderr).
pub fn ctl(run_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(bin("handoff-ctl"))
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .output()
        .expect("run handoff-ctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The agent-check address (`--agent-check`), from `info`.
pub fn agent_addr(run_dir: &std::path::Path) -> SocketAddr {
    let info = Control::connect(run_dir).ask("info");
    info["agent_check"]
        .as_str()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no agent_check in info: {info}"))
}

/// What an agent check reads: one line, then EOF.
pub fn ask_agent(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the agent");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the agent's answer to EOF");
    assert!(answer.ends_with('\n') && answer.matches('\n').count() == 1, "one line: {answer:?}");
    answer.trim_end().to_owned()
}

/// Asks the agent until it answers `expected` (or panics at [`WAIT`]).
pub fn wait_for_agent(addr: SocketAddr, expected: &str) {
    let mut last = String::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        last = ask_agent(addr);
        if last == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the agent says {last:?}, not {expected:?}");
}

/// A process's CPU time so far in clock ticks (1/100 s): (user, system),
/// from /proc/PID/stat.
pub fn cpu_ticks_user_sys(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit(')').next().expect("fields").split_whitespace().collect();
    (fields[11].parse().expect("utime"), fields[12].parse().expect("stime"))
}

/// A process's CPU time so far in clock ticks (user + system).
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, sys) = cpu_ticks_user_sys(pid);
    user + sys
}

/// Panics if a log holds a warning or an error: for runs where nothing
/// went wrong, so that an error path taken by mistake (a would-block
/// treated as a failure, say) shows.
pub fn assert_no_warnings(log: &str) {
    let bad: Vec<&str> =
        log.lines().filter(|line| line.contains(" WARN ") || line.contains(" ERROR ")).collect();
    assert!(bad.is_empty(), "warnings or errors in a clean run:\n{}", bad.join("\n"));
}

/// A count from a control answer (`info`, a `workers` row).
pub fn count(value: &serde_json::Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a count in {value}"))
}

/// A worker's `Hello` frame, as this test process (its pid, the article's
/// protocol, no capacity), speaking `protocol_version`.
pub fn hello_frame(protocol_version: u32) -> Vec<u8> {
    use handoff_proto::{codec, ClientProtocol, Hello, WorkerToMaster};
    codec::encode_to_vec(&WorkerToMaster::Hello(Hello {
        protocol_version,
        pid: std::process::id(),
        capacity: 0,
        protocol: ClientProtocol::Article,
    }))
    .expect("encode")
}

/// How many sockets process `pid` holds open.
pub fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|entry| {
                    std::fs::read_link(entry.path())
                        .is_ok_and(|link| link.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `op`, again while it fails with EINTR, for at most [`WAIT`]. A blocking
/// read with a timeout (SO_RCVTIMEO) fails so when the test process is
/// stopped and continued, as on a paused CI machine, even without a signal
/// handler (signal(7)); each try waits the whole timeout again.
pub fn again_after_eintr<T, E: std::error::Error + 'static>(
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + WAIT;
    loop {
        match op() {
            Err(err) if is_eintr(&err) && Instant::now() < deadline => {}
            result => return result,
        }
    }
}

/// True if `err`, or an error it wraps, is EINTR.
fn is_eintr(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::Interrupted)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// A copy of the built `program` in `dir` (created if missing), which a
/// test may start from there, remove or replace: its path.
pub fn copy_binary(program: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let copy = dir.join(program);
    std::fs::copy(bin(program), &copy).unwrap_or_else(|err| panic!("copy {program}: {err}"));
    copy
}

/// SIGSTOPs `pid` and waits until it has stopped: kill(2) returns before
/// it does, and a worker still running (asleep in `recvmsg`, woken to
/// stop) would first take a hand-off that came meanwhile.
pub fn stop_process(pid: nix::unistd::Pid) {
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    wait_until(WAIT, "the process to stop", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.starts_with(" T")))
    });
}

/// A worker started against a stand-in master (a bare workers' socket in
/// a run dir of its own): the worker, and its accepted channel.
pub fn worker_at_a_stand_in_master(scratch: &Scratch) -> (Worker, handoff_fdpass::Channel) {
    use std::os::unix::fs::PermissionsExt;
    let run_dir = scratch.run_dir();
    std::fs::create_dir(&run_dir).expect("run dir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("0700");
    let listener = handoff_fdpass::SeqpacketListener::bind(&run_dir.join("workers.sock"))
        .expect("stand-in master socket");
    let worker = Worker::start(&run_dir, scratch.path().join("worker.log"), "info");
    let mut connected = None;
    wait_until(WAIT, "the worker to connect", || {
        connected = listener.accept().ok();
        connected.is_some()
    });
    (worker, connected.expect("connected"))
}
