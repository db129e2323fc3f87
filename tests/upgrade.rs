//! Master upgrade (SIGUSR2, `upgrade`): the listening socket is handed to a
//! new master, no client is refused or reset; a failed upgrade leaves the
//! old master serving.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// Masters started by an upgrade are not the test's children: killed by
/// pid if the test fails half-way (their workers follow them).
struct Masters(Vec<u32>);

impl Drop for Masters {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if process_alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

fn info(run_dir: &std::path::Path) -> Option<serde_json::Value> {
    let stream = std::os::unix::net::UnixStream::connect(run_dir.join("control.sock")).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let mut writer = stream.try_clone().ok()?;
    writer.write_all(b"info\n").ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).ok()?;
    serde_json::from_str(&line).ok()
}

fn pid_of(info: &serde_json::Value) -> u32 {
    info["pid"].as_u64().expect("pid") as u32
}

/// Waits until `info` answers with another pid than `old`; returns it.
fn wait_for_new_master(run_dir: &std::path::Path, old: u32) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(info) = info(run_dir) {
            if pid_of(&info) != old && info["upgrade"] == "none" {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "no new master answered within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_upgrades_under_load_refuse_and_reset_nobody() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2"]);
    let mut masters = Masters(Vec::new());
    let load = Load::start(master.addr, 50);
    wait_until(WAIT, "first requests served", || load.served() >= 50);

    let mut pid = master.pid;
    let mut generation = 1;
    let mut served_before = Vec::new();
    for round in 0..3 {
        // SIGUSR2 the first time, the control command and handoff-ctl after.
        match round {
            0 => master.signal(Signal::SIGUSR2),
            1 => {
                let answer = Control::connect(&master.run_dir).ask("upgrade");
                assert!(answer["ok"].as_str().is_some_and(|ok| ok.contains("upgrade started")));
            }
            _ => {
                let (code, out, err) = ctl(&master.run_dir, &["upgrade"]);
                assert_eq!(code, Some(0), "handoff-ctl upgrade: {out}{err}");
            }
        }
        let info = wait_for_new_master(&master.run_dir, pid);
        let new_pid = pid_of(&info);
        masters.0.push(new_pid);
        generation += 1;
        assert_eq!(info["generation"], generation);
        // The old master drains and exits.
        if round == 0 {
            let status = master.wait_exit(WAIT);
            assert!(status.success(), "old master exit status {status}");
        } else {
            wait_until(WAIT, "the old master exits", || !process_alive(pid));
        }
        served_before.push(load.served());
        // The new master serves on its own before the next upgrade.
        let mark = load.served();
        wait_until(WAIT, "the new master serves", || load.served() >= mark + 50);
        pid = new_pid;
    }
    let (served, failures) = load.finish();
    let log = master.log();
    // Every old master said it stopped cleanly, with what it accepted.
    let old_accepted: Vec<u64> = log
        .lines()
        .filter(|line| line.contains("shutdown complete"))
        .filter_map(|line| field(line, "accepted")?.parse().ok())
        .collect();
    assert_eq!(old_accepted.len(), 3, "three old masters stopped cleanly:\n{log}");
    assert!(!log.contains("graceful timeout"), "{log}");
    assert_no_warnings(&log);
    let last = info(&master.run_dir).expect("info from the last master");
    let new_accepted = last["accepted"].as_u64().expect("accepted");
    println!(
        "upgrades under load: {served} requests, {} failed; accepted by generation 1-3 {:?}, \
         by generation 4 {new_accepted} so far; served at each upgrade {served_before:?}",
        failures.len(),
        old_accepted,
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..5.min(failures.len())]
    );
    assert!(old_accepted.iter().all(|&n| n > 0) && new_accepted > 0);
    // The old masters' workers are gone too: only the last master's remain.
    let last_workers: Vec<u32> = log
        .lines()
        .filter(|line| line.contains("worker registered"))
        .filter_map(|line| field(line, "pid")?.parse().ok())
        .collect();
    let (old_workers, new_workers) = last_workers.split_at(last_workers.len() - 2);
    for &worker in old_workers {
        wait_until(WAIT, "old workers exit", || !process_alive(worker));
    }
    assert!(new_workers.iter().all(|&w| process_alive(w)));
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("stop the last master");
    wait_until(WAIT, "the last master exits", || !process_alive(pid));
    let left: Vec<_> = std::fs::read_dir(&master.run_dir).expect("run dir").flatten().collect();
    assert!(left.is_empty(), "run dir emptied by the last master: {left:?}");
}

/// Replaces the file at `path` with a shell script, as an install would
/// (a new file renamed over the old).
fn replace_with_script(path: &std::path::Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, script).expect("write script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename over");
}

#[test]
fn a_failed_upgrade_leaves_the_old_master_serving_and_says_why() {
    let scratch = Scratch::new();
    // A copy of the master that the test can replace on disk.
    let copy = copy_binary("handoff-master", scratch.path());
    let log_path = scratch.path().join("master.log");
    let mut child = std::process::Command::new(&copy)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--upgrade-timeout", "1", "--run-dir"])
        .arg(scratch.run_dir())
        .arg("--worker-bin")
        .arg(bin("handoff-worker"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("start the copy");
    let _guard = Masters(vec![child.id()]);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("ready line");
    let addr: SocketAddr = line.trim().trim_start_matches("listening on ").parse().expect("addr");
    let run_dir = scratch.run_dir();
    wait_for_log(&log_path, "worker registered", 1);
    let pid = child.id();

    // 1. The new binary exits at once.
    replace_with_script(&copy, "#!/bin/sh\nexit 3\n");
    let answer = Control::connect(&run_dir).ask("upgrade");
    assert!(answer["ok"].is_string(), "{answer}");
    wait_until(WAIT, "the upgrade fails", || {
        info(&run_dir).is_some_and(|i| i["upgrade"] == "failed")
    });
    let now = info(&run_dir).expect("info");
    assert_eq!(pid_of(&now), pid);
    let why = now["upgrade_error"].as_str().expect("upgrade_error");
    assert!(why.contains("exited") && why.contains("3"), "{why}");
    one_request(addr, b"after a failed upgrade").expect("still served");

    // 2. The new binary never connects: killed after --upgrade-timeout.
    replace_with_script(&copy, "#!/bin/sh\nexec sleep 30\n");
    let started = Instant::now();
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    wait_for_log(&log_path, "upgrade: started a new master", 2);
    let new_pid: u32 = read_to_string(&log_path)
        .lines()
        .rfind(|l| l.contains("upgrade: started a new master"))
        .and_then(|l| field(l, "pid")?.parse().ok())
        .expect("new master pid");
    wait_until(WAIT, "the second upgrade fails", || {
        info(&run_dir)
            .is_some_and(|i| i["upgrade_error"].as_str().is_some_and(|e| e.contains("not ready")))
    });
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!process_alive(new_pid), "the stuck new master was killed");
    one_request(addr, b"after a timed-out upgrade").expect("still served");
    let now = info(&run_dir).expect("info");
    assert_eq!((pid_of(&now), now["generation"].as_u64()), (pid, Some(1)));
    assert_eq!(now["workers"], 1, "the old master's worker still registered");

    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "master did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

/// The new master takes the sockets but its workers never register (the
/// worker binary was replaced by one that never says Hello): after
/// --upgrade-timeout the upgrade fails, saying that, and the old master
/// goes on serving with its own workers.
#[test]
fn an_upgrade_whose_new_workers_never_register_fails_at_the_timeout_and_says_so() {
    let scratch = Scratch::new();
    let worker_copy = copy_binary("handoff-worker", scratch.path());
    let worker_bin = worker_copy.to_str().expect("utf-8 path");
    let args = ["--workers", "1", "--upgrade-timeout", "1", "--worker-bin", worker_bin];
    let mut master = Master::start(&scratch, &args);
    master.wait_for_log("worker registered", 1);
    replace_with_script(&worker_copy, "#!/bin/sh\nexec sleep 3\n");
    master.signal(Signal::SIGUSR2);
    master.wait_for_log("upgrade: started a new master", 1);
    let new_pid: u32 = master
        .log()
        .lines()
        .find(|l| l.contains("upgrade: started a new master"))
        .and_then(|l| field(l, "pid")?.parse().ok())
        .expect("new master pid");
    let _guard = Masters(vec![new_pid]);
    wait_until(WAIT, "the upgrade to fail", || {
        info(&master.run_dir).is_some_and(|i| i["upgrade"] == "failed")
    });
    let now = info(&master.run_dir).expect("info");
    let why = now["upgrade_error"].as_str().expect("upgrade_error");
    assert!(
        why.contains("not ready within 1s") && why.contains("its workers did not register"),
        "{why}"
    );
    assert_eq!(pid_of(&now), master.pid);
    wait_until(WAIT, "the new master to be gone", || !process_alive(new_pid));
    one_request(master.addr, b"after the upgrade failed").expect("still served");
    master.signal(Signal::SIGTERM);
    assert!(master.wait_exit(WAIT).success(), "{}", master.log());
}

/// The old master dies (kill -9) while the new one waits for its workers:
/// the new master was not ready, so it does not take over with what it
/// inherited; it says why and stops.
/// kill -9 of the old master right after it handed its sockets over, the
/// new master's workers slow to start: the new master used to abandon the
/// upgrade, accept the waiting clients and reset them, and nothing served.
/// It holds every socket by then, so it carries on as the master.
#[test]
fn a_new_master_whose_old_one_dies_before_it_is_ready_carries_on_and_resets_nobody() {
    let scratch = Scratch::new();
    let master_copy = copy_binary("handoff-master", scratch.path());
    let worker_copy = copy_binary("handoff-worker", scratch.path());
    let log_path = scratch.path().join("master.log");
    let mut child = std::process::Command::new(&master_copy)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--upgrade-timeout", "20"])
        // Its stuck worker is killed a second into the new master's stop.
        .args(["--graceful-timeout", "1"])
        .arg("--run-dir")
        .arg(scratch.run_dir())
        .arg("--worker-bin")
        .arg(&worker_copy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("start the copy");
    let mut guard = Masters(vec![child.id()]);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("ready line");
    wait_for_log(&log_path, "worker registered", 1);
    // The new master's workers will never register.
    replace_with_script(&worker_copy, "#!/bin/sh\nexec sleep 20\n");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR2).expect("SIGUSR2");
    wait_for_log(&log_path, "upgrade: started a new master", 1);
    let new_pid: u32 = read_to_string(&log_path)
        .lines()
        .find(|l| l.contains("upgrade: started a new master"))
        .and_then(|l| field(l, "pid")?.parse().ok())
        .expect("new master pid");
    guard.0.push(new_pid);
    // It has the sockets (it says so when listening on them).
    wait_for_log(&log_path, "inherited=true", 1);
    child.kill().expect("kill -9 the old master");
    let _ = child.wait();
    // It carries on as the master: in charge, the port queued, not reset.
    wait_for_log(&log_path, "the old master is gone before we were ready: taking over", 1);
    let mut client = connect_timeout_ok(&scratch);
    let info = Control::connect(&scratch.run_dir()).ask("info");
    assert_eq!(info["pid"].as_u64(), Some(u64::from(new_pid)), "{info}");
    // A worker joins (its own binary was broken on purpose): the client
    // that waited is answered.
    let _worker = Worker::start(&scratch.run_dir(), scratch.path().join("w.log"), "info");
    std::io::Write::write_all(&mut client, b"after the old master died").expect("send");
    let mut reply = Vec::new();
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    std::io::Read::read_to_end(&mut client, &mut reply).expect("answered");
    assert_eq!(reply, expected_reply(b"after the old master died"));
    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(new_pid) {
        assert!(Instant::now() < deadline, "the new master did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shared mode (workers accept on the master's socket, passed on to the
/// new master's workers): the same guarantee.
#[test]
fn an_upgrade_in_shared_mode_refuses_nobody() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2", "--mode", "shared"]);
    let mut masters = Masters(Vec::new());
    let load = Load::start(master.addr, 16);
    wait_until(WAIT, "first requests served", || load.served() >= 50);
    master.signal(Signal::SIGUSR2);
    let info = wait_for_new_master(&master.run_dir, master.pid);
    masters.0.push(pid_of(&info));
    assert!(master.wait_exit(WAIT).success());
    let mark = load.served();
    wait_until(WAIT, "the new master's workers serve", || load.served() >= mark + 50);
    let (served, failures) = load.finish();
    println!("shared mode upgrade: {served} requests, {} failed", failures.len());
    assert!(failures.is_empty(), "{:?}", &failures[..5.min(failures.len())]);
}

/// A client of the master in `scratch`'s port, connected (the port read
/// from `info`).
fn connect_timeout_ok(scratch: &Scratch) -> std::net::TcpStream {
    let info = Control::connect(&scratch.run_dir()).ask("info");
    let addr: SocketAddr = info["listen"].as_str().expect("listen").parse().expect("addr");
    std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connected, not refused")
}
