//! Deploying it: listen addresses as people type them, `--pid-file`,
//! `--log-format json` (issue #11).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// A master started with exactly `args` (plus its run dir), killed on drop.
struct Started {
    child: Child,
    listening: String,
    log_path: std::path::PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "master did not exit:\n{}",
                read_to_string(&self.log_path)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn port(&self) -> u16 {
        let addr: SocketAddr = self.listening.parse().expect("listening address");
        addr.port()
    }
}

fn start(scratch: &Scratch, args: &[&str]) -> Started {
    let log_path = scratch.path().join("master.log");
    let mut child = Command::new(bin("handoff-master"))
        .arg("--run-dir")
        .arg(scratch.run_dir())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn master");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = rx.recv_timeout(WAIT).unwrap_or_default();
    let listening = line.trim().strip_prefix("listening on ").map(str::to_owned);
    let mut started = Started { child, listening: String::new(), log_path };
    match listening {
        Some(addr) => started.listening = addr,
        None => {
            let status = started.wait_exit();
            panic!("no ready line ({status}):\n{}", read_to_string(&started.log_path));
        }
    }
    started
}

#[test]
fn listen_forms_people_type_are_served() {
    // (localhost, a bare port, IPv6 any) → (what it binds, where to connect)
    for (form, bound_prefix, connect) in [
        ("localhost:0", "127.0.0.1:", "127.0.0.1"),
        (":0", "0.0.0.0:", "127.0.0.1"),
        ("[::]:0", "[::]:", "127.0.0.1"),
    ] {
        let scratch = Scratch::new();
        // Root must say so to serve every interface (tested below).
        let mut master = start(&scratch, &["--listen", form, "--workers", "1", "--allow-root"]);
        assert!(master.listening.starts_with(bound_prefix), "{form}: {}", master.listening);
        let addr: SocketAddr = format!("{connect}:{}", master.port()).parse().expect("addr");
        assert_eq!(request(addr, b"form").expect(form), expected_reply(b"form"), "{form}");
        kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        assert!(master.wait_exit().success(), "{form}");
    }
    // A Unix stream socket: served exactly as TCP, removed on exit.
    let scratch = Scratch::new();
    let path = scratch.path().join("clients.sock");
    let listen = format!("unix:{}", path.display());
    let mut master = start(&scratch, &["--listen", &listen, "--workers", "2"]);
    assert_eq!(master.listening, listen);
    let mut handles = Vec::new();
    for i in 0..4 {
        let path = path.clone();
        handles.push(std::thread::spawn(move || {
            for n in 0..50 {
                let payload = format!("unix {i} {n}");
                let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
                stream.set_read_timeout(Some(WAIT)).expect("timeout");
                std::io::Write::write_all(&mut stream, payload.as_bytes()).expect("send");
                let mut reply = Vec::new();
                std::io::Read::read_to_end(&mut stream, &mut reply).expect("reply");
                assert_eq!(reply, expected_reply(payload.as_bytes()));
            }
        }));
    }
    for handle in handles {
        handle.join().expect("unix clients all answered");
    }
    let info = Control::connect(&scratch.run_dir()).ask("info");
    assert_eq!(
        (info["listen"].as_str(), info["served"].as_u64()),
        (Some(listen.as_str()), Some(200))
    );
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(master.wait_exit().success());
    assert!(!path.exists(), "the socket file is removed on exit");
    // Workers accept TCP only: shared mode cannot take a Unix listener.
    let output = Command::new(bin("handoff-master"))
        .args(["--listen", &listen, "--mode", "shared", "--run-dir"])
        .arg(scratch.run_dir())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("--mode dispatch"), "{stderr}");
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn the_pid_file_is_written_once_listening_follows_an_upgrade_and_is_removed_on_exit() {
    let scratch = Scratch::new();
    let pid_file = scratch.path().join("master.pid");
    let pid_arg = pid_file.to_str().expect("utf-8 path");
    let mut master =
        start(&scratch, &["--listen", "127.0.0.1:0", "--workers", "1", "--pid-file", pid_arg]);
    let pid = master.child.id();
    assert_eq!(read_pid(&pid_file), Some(pid), "written by the time it listens");
    // After an upgrade it names the new master.
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    assert!(master.wait_exit().success());
    let new_pid = read_pid(&pid_file).expect("pid file kept");
    assert_ne!(new_pid, pid);
    let mut control = Control::connect(&scratch.run_dir());
    assert_eq!(control.ask("info")["pid"], new_pid);
    // SIGUSR2 came before the old master's worker registered: that worker
    // registered with the old master (which kept the workers' socket until
    // then) and left with it, not with the new one.
    let rows = control.ask("workers")["workers"].as_array().expect("rows").clone();
    assert!(rows.iter().all(|row| row["origin"] == "spawned"), "{rows:?}");
    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).expect("SIGTERM");
    wait_until(WAIT, "the new master exits", || !process_alive(new_pid));
    assert!(!pid_file.exists(), "removed on exit");
}

/// An upgrade whose new master cannot rewrite the pid file (a full disk;
/// here the name is taken by a directory, which `rename` cannot replace)
/// used to report success while the file still named the old master, which
/// had exited. Now the upgrade fails, says why, and the old master serves on.
#[test]
fn an_upgrade_that_cannot_rewrite_the_pid_file_fails_and_the_old_master_serves_on() {
    let scratch = Scratch::new();
    let pid_file = scratch.path().join("master.pid");
    let pid_arg = pid_file.to_str().expect("utf-8 path");
    let master =
        start(&scratch, &["--listen", "127.0.0.1:0", "--workers", "1", "--pid-file", pid_arg]);
    let pid = master.child.id();
    assert_eq!(read_pid(&pid_file), Some(pid));
    std::fs::remove_file(&pid_file).expect("rm");
    std::fs::create_dir(&pid_file).expect("a directory where the pid file goes");
    std::fs::write(pid_file.join("keep"), "x").expect("not empty");
    let mut control = Control::connect(&scratch.run_dir());
    wait_until(WAIT, "the worker registered", || count(&control.ask("info"), "workers") == 1);
    assert!(control.ask("upgrade")["ok"].is_string());
    wait_until(Duration::from_secs(20), "the upgrade to fail", || {
        Control::connect(&scratch.run_dir()).ask("info")["upgrade"] == "failed"
    });
    let info = Control::connect(&scratch.run_dir()).ask("info");
    assert_eq!(info["pid"], pid, "{info}");
    let why = info["upgrade_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("pid file"), "{why}");
    let addr: SocketAddr = master.listening.parse().expect("addr");
    assert_eq!(request(addr, b"still here").expect("served"), expected_reply(b"still here"));
    assert!(process_alive(pid));
}

/// A root master's pid file in a directory another user controls: the
/// attacker plants links at the temporary names the next pids would use
/// (`master.tmp.<pid>` before the fix) and waits for root to write through
/// them. The master must neither follow them nor accept such a directory.
#[test]
fn the_pid_file_never_follows_a_planted_link_and_refuses_a_directory_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let dir = scratch.path().join("piddir");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let victim = scratch.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    let pid_file = dir.join("master.pid");
    // The pids the master is likely to get, next in line.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .expect("ns_last_pid")
        .trim()
        .parse()
        .expect("a pid");
    for pid in last + 1..last + 400 {
        std::os::unix::fs::symlink(&victim, dir.join(format!("master.tmp.{pid}"))).expect("plant");
    }
    let pid_arg = pid_file.to_str().expect("utf-8 path");
    let mut master =
        start(&scratch, &["--listen", "127.0.0.1:0", "--workers", "1", "--pid-file", pid_arg]);
    let pid = master.child.id();
    assert!((last + 1..last + 400).contains(&pid), "the planted range missed pid {pid}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n", "written through");
    assert_eq!(read_pid(&pid_file), Some(pid));
    let planted = std::fs::read_dir(&dir).expect("ls").count();
    assert_eq!(planted, 400, "the pid file beside the 399 links, no temporary file left");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(master.wait_exit().success());
    assert!(!pid_file.exists(), "removed on exit");

    // A directory others can write (sticky or not) is refused at start,
    // before anything is bound.
    for mode in [0o1777, 0o777, 0o775] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let output = Command::new(bin("handoff-master"))
            .args(["--listen", "127.0.0.1:0", "--workers", "0", "--pid-file", pid_arg])
            .arg("--run-dir")
            .arg(scratch.run_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(69), "{mode:o}: {stderr}");
        assert!(stderr.contains("writable by other users"), "{mode:o}: {stderr}");
        assert!(output.stdout.is_empty(), "{mode:o}: never listened");
        assert!(!pid_file.exists());
    }
}

/// `--port PORT` is a documented shorthand for `--listen 0.0.0.0:PORT`
/// (it used to get "a similar argument exists: '--protocol'"), and it
/// cannot be given with `--listen`.
#[test]
fn port_is_shorthand_for_listen_on_every_interface() {
    let scratch = Scratch::new();
    let mut master = start(&scratch, &["--port", "0", "--workers", "0", "--allow-root"]);
    assert!(master.listening.starts_with("0.0.0.0:"), "{}", master.listening);
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(master.wait_exit().success());
    let output = Command::new(bin("handoff-master"))
        .args(["--port", "7000", "--listen", "127.0.0.1:0", "--run-dir"])
        .arg(scratch.run_dir())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
}

#[test]
fn json_logs_carry_the_same_fields_as_text() {
    let mut fields_by_format = Vec::new();
    for format in ["text", "json"] {
        let scratch = Scratch::new();
        let mut master =
            start(&scratch, &["--listen", "127.0.0.1:0", "--workers", "1", "--log-format", format]);
        wait_for_log(&master.log_path, "worker registered", 1);
        let addr: SocketAddr = master.listening.parse().expect("addr");
        request(addr, b"log").expect("served");
        kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        assert!(master.wait_exit().success());
        let log = read_to_string(&master.log_path);
        let line = log.lines().find(|l| l.contains("worker registered")).expect("line");
        let keys: Vec<String> = if format == "json" {
            // Every line of master and worker is one JSON object.
            for line in log.lines() {
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
                assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
            }
            assert!(log.contains("\"target\":\"handoff_worker::server\""), "workers too:\n{log}");
            let value: serde_json::Value = serde_json::from_str(line).expect("json");
            let mut keys: Vec<String> =
                value["fields"].as_object().expect("fields").keys().cloned().collect();
            keys.retain(|k| k != "message");
            keys.sort();
            keys
        } else {
            let mut keys: Vec<String> = line
                .split_whitespace()
                .filter_map(|word| word.split_once('=').map(|(k, _)| k.to_owned()))
                .collect();
            keys.sort();
            keys
        };
        fields_by_format.push(keys);
    }
    assert_eq!(fields_by_format[0], fields_by_format[1], "same fields in text and JSON");
}

fn status_ids(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn user_nobody_runs_master_and_workers_as_nobody_after_binding() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let Some(scratch) = Scratch::for_nobody("user_nobody_runs_master_and_workers_…") else {
        return;
    };
    let mut master =
        start(&scratch, &["--listen", "127.0.0.1:0", "--workers", "2", "--user", "nobody"]);
    wait_for_log(&master.log_path, "worker registered", 2);
    let log = read_to_string(&master.log_path);
    assert!(log.contains("dropped privileges user=nobody"), "{log}");
    let workers: Vec<u32> = log
        .lines()
        .filter(|line| line.contains("worker registered"))
        .filter_map(|line| field(line, "pid")?.parse().ok())
        .collect();
    for pid in std::iter::once(master.child.id()).chain(workers) {
        assert_eq!(status_ids(pid, "Uid:"), "65534 65534 65534 65534", "pid {pid}");
        assert_eq!(status_ids(pid, "Gid:"), "65534 65534 65534 65534", "pid {pid}");
        assert_eq!(status_ids(pid, "Groups:"), "", "pid {pid}: groups cleared");
    }
    let addr: SocketAddr = master.listening.parse().expect("addr");
    assert_eq!(request(addr, b"as nobody").expect("served"), expected_reply(b"as nobody"));
    let run_dir = scratch.run_dir();
    assert_eq!(std::fs::metadata(&run_dir).expect("run dir").uid(), 65534);
    // The control socket answers root and its own user.
    assert_eq!(Control::connect(&run_dir).ask("ping")["ok"], "pong");
    let output = Command::new(bin("handoff-ctl"))
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("ping")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("handoff-ctl as nobody");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(master.wait_exit().success());
    assert_eq!(std::fs::read_dir(&run_dir).expect("run dir").count(), 0, "emptied");
}

#[test]
fn root_serving_every_interface_must_say_so() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the guard is for root (CI runs as root)");
        return;
    }
    let scratch = Scratch::new();
    let output = Command::new(bin("handoff-master"))
        .args(["--listen", "0.0.0.0:0", "--workers", "0", "--run-dir"])
        .arg(scratch.run_dir())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("refusing to serve 0.0.0.0:") && stderr.contains("--user"), "{stderr}");
    let mut master = start(&scratch, &["--listen", "0.0.0.0:0", "--workers", "0", "--allow-root"]);
    assert!(master.listening.starts_with("0.0.0.0:"));
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(master.wait_exit().success());
}

#[test]
fn the_master_finds_its_worker_beside_it_then_on_path_else_says_how_to_install_it() {
    let scratch = Scratch::new();
    // A master alone in a directory, as `cargo install --path crates/master` leaves it.
    let lone = scratch.path().join("bin");
    copy_binary("handoff-master", &lone);
    let output = Command::new(lone.join("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--run-dir"])
        .arg(scratch.run_dir())
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("nor on PATH") && stderr.contains("cargo install --path crates/worker"),
        "{stderr}"
    );
    // With the build directory on PATH, the worker there is used.
    let log_path = scratch.path().join("master.log");
    let mut child = Command::new(lone.join("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--run-dir"])
        .arg(scratch.run_dir())
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    wait_for_log(&log_path, "worker registered", 1);
    assert!(read_to_string(&log_path).contains("using the one on PATH"));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "master did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}
