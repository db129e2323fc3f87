//! systemd: socket activation with `systemd-socket-activate` (the master
//! serves on the inherited socket and binds none of its own), readiness
//! on a test `NOTIFY_SOCKET` (READY, RELOADING/READY around SIGHUP,
//! MAINPID after an upgrade, STOPPING), and the shipped units verified.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// A port free a moment ago (systemd-socket-activate refuses port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Reads notifications until one contains `want`; returns everything read.
fn wait_for_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no {want:?} notification; got {seen:?}");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(message.clone());
                if message.lines().any(|line| line == want || line.starts_with(want)) {
                    return message;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            // The test process was stopped and continued (signal(7)).
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => panic!("reading NOTIFY_SOCKET: {err}"),
        }
    }
}

/// A master started by an upgrade (not our child), killed if the test
/// fails half-way.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process_alive(self.0) {
            let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
}

struct Activated {
    child: Child,
    addr: SocketAddr,
    log_path: std::path::PathBuf,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `systemd-socket-activate -l 127.0.0.1:PORT handoff-master ARGS`; it
/// execs the master (same pid) when the first client connects.
fn activate(scratch: &Scratch, notify: Option<&Path>, extra: &[&str]) -> Activated {
    assert!(
        Path::new(ACTIVATE).is_file(),
        "{ACTIVATE} missing: install Debian's systemd package (scripts/setup-ci.sh does)"
    );
    let log_path = scratch.path().join("master.log");
    for _attempt in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new(ACTIVATE);
        if let Some(notify) = notify {
            command.arg("-E").arg(format!("NOTIFY_SOCKET={}", notify.display()));
        }
        let child = command
            .args(["-E", "RUST_LOG=info", "-l"])
            .arg(addr.to_string())
            .arg(bin("handoff-master"))
            .arg("--run-dir")
            .arg(scratch.run_dir())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log"))
            .spawn()
            .expect("spawn systemd-socket-activate");
        let mut activated = Activated { child, addr, log_path: log_path.clone() };
        let deadline = Instant::now() + WAIT;
        loop {
            let log = read_to_string(&log_path);
            if log.contains("Listening on") {
                return activated;
            }
            if let Ok(Some(_)) = activated.child.try_wait() {
                break; // the port was taken meanwhile: try another
            }
            assert!(Instant::now() < deadline, "systemd-socket-activate never listened:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("systemd-socket-activate could not listen:\n{}", read_to_string(&log_path));
}

#[test]
fn socket_activated_master_serves_on_the_inherited_socket_and_notifies() {
    let scratch = Scratch::new();
    let notify_path = scratch.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    // Workers that take 0.3 s to start, so that READY=1 sent before they
    // registered would show.
    let slow_worker = scratch.path().join("slow-worker");
    std::fs::write(
        &slow_worker,
        format!("#!/bin/sh\nsleep 0.3\nexec {} \"$@\"\n", bin("handoff-worker").display()),
    )
    .expect("write the worker script");
    std::fs::set_permissions(&slow_worker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the worker script");
    let slow_worker = slow_worker.to_str().expect("utf-8 path");
    let mut activated =
        activate(&scratch, Some(&notify_path), &["--workers", "2", "--worker-bin", slow_worker]);
    let pid = activated.child.id();
    // The first client starts the master; it waits in the inherited
    // socket's backlog meanwhile, and is answered.
    let addr = activated.addr;
    let first = std::thread::spawn(move || request(addr, b"first"));
    let mut seen = Vec::new();
    wait_for_notify(&notify, "READY=1", &mut seen);
    let log = read_to_string(&activated.log_path);
    assert_eq!(log.matches("worker registered").count(), 2, "ready only then: {log}");
    let first = first.join().expect("first client");
    assert_eq!(first.expect("served"), expected_reply(b"first"));
    assert!(log.contains("using the listening socket systemd passed"), "{log}");
    assert!(log.contains(&format!("listening addr={}", activated.addr)), "{log}");
    // One listening socket on that port, held by the master (and by
    // nobody else: it bound none of its own).
    let info = Control::connect(&scratch.run_dir()).ask("info");
    assert_eq!(info["pid"], pid, "systemd-socket-activate execs the master");
    assert_eq!(info["listen"], activated.addr.to_string());

    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("SIGHUP");
    wait_for_notify(&notify, "RELOADING=1", &mut seen);
    wait_for_notify(&notify, "READY=1", &mut seen);

    // An upgrade: the old master names the new main pid, which then says
    // it is ready.
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    let before = seen.len();
    let message = wait_for_notify(&notify, "MAINPID=", &mut seen);
    let new_pid: u32 = message
        .lines()
        .find_map(|line| line.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("MAINPID value");
    assert_ne!(new_pid, pid);
    let _new_master = KillOnDrop(new_pid);
    // First the old master names the new main pid (systemd accepts the new
    // one's notifications only after that), then the new one is ready.
    assert!(!message.contains("READY=1"), "the old master's MAINPID= comes first: {seen:?}");
    let ready = wait_for_notify(&notify, "READY=1", &mut seen);
    assert!(ready.contains(&format!("MAINPID={new_pid}")), "{seen:?}");
    assert_eq!(seen.len() - before, 2, "{seen:?}");
    let status = activated.child.wait().expect("old master exits");
    assert!(status.success(), "{status}");
    assert_eq!(request(activated.addr, b"after").expect("served"), expected_reply(b"after"));

    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).expect("SIGTERM");
    wait_for_notify(&notify, "STOPPING=1", &mut seen);
    wait_until(WAIT, "the new master exits", || !process_alive(new_pid));
    println!("notifications: {seen:?}");
}

#[test]
fn a_listen_flag_that_disagrees_with_the_activated_socket_is_refused() {
    let scratch = Scratch::new();
    let mut activated = activate(&scratch, None, &["--workers", "0", "--listen", "127.0.0.1:1"]);
    // Trigger the exec.
    let _ = std::net::TcpStream::connect_timeout(&activated.addr, WAIT);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = activated.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the master did not refuse");
        std::thread::sleep(Duration::from_millis(10));
    };
    let log = read_to_string(&activated.log_path);
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(log.contains("disagrees with the socket systemd passed"), "{log}");
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd");
    // The service names the installed binary; verify against a copy that
    // names the one just built, so the check does not need an install.
    let scratch = Scratch::new();
    for unit in ["handoff.service", "handoff.socket"] {
        let text = std::fs::read_to_string(dist.join(unit)).expect("unit file");
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        std::fs::write(scratch.path().join(unit), text).expect("copy unit");
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(scratch.path().join("handoff.socket"))
        .arg(scratch.path().join("handoff.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/setup-ci.sh installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "{stderr}");
}
