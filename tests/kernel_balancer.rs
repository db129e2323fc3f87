//! `--mode reuseport --policy least|pull`: the master's eBPF program picks
//! each new connection's worker in the kernel and moves a closing
//! listener's queue to the others. Against the real kernel (CI runs as
//! root). Each fault scenario here loses clients with plain `--mode
//! reuseport` (the kernel's hash, no program): checked by hand by running
//! them with `--policy rr`, which the `HANDOFF_TEST_POLICY` variable sets.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::*;

/// The policy under test: `least`, unless `HANDOFF_TEST_POLICY` says
/// otherwise (`rr` shows the faults the program fixes).
fn policy() -> String {
    std::env::var("HANDOFF_TEST_POLICY").unwrap_or_else(|_| "least".to_owned())
}

fn balanced(workers: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--workers", workers, "--mode", "reuseport", "--policy", &policy(), "--timeout", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(scratch: &Scratch, args: &[String]) -> Master {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Master::start(scratch, &args)
}

fn rows(control: &mut Control) -> Vec<Value> {
    control.ask("workers")["workers"].as_array().cloned().unwrap_or_default()
}

fn row_of(control: &mut Control, pid: u32) -> Option<Value> {
    rows(control).into_iter().find(|row| row["pid"].as_u64() == Some(u64::from(pid)))
}

/// Waits until `n` workers accept for themselves.
fn wait_accepting(master: &Master, n: usize) {
    master.wait_for_log("accepting connections myself", n);
}

#[test]
fn info_and_workers_show_the_program_and_each_workers_load() {
    let scratch = Scratch::new();
    let master = start(&scratch, &balanced("2", &[]));
    wait_accepting(&master, 2);
    for i in 0..20 {
        one_request(master.addr, format!("hello {i}").as_bytes()).expect("served");
    }
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the workers report", || count(&control.ask("info"), "worker_accepted") == 20);
    let info = control.ask("info");
    assert_eq!(info["reuseport_selection"], format!("ebpf {}", policy()), "{info}");
    assert_eq!(count(&info, "kernel_selected"), 20, "{info}");
    assert_eq!(count(&info, "kernel_fallbacks"), 0, "{info}");
    let rows = rows(&mut control);
    let mut slots: Vec<u64> = rows.iter().map(|row| count(row, "kernel_slot")).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![0, 1], "{rows:?}");
    // Every connection finished: each load is back at 0.
    wait_until(WAIT, "loads released", || {
        let rows = self::rows(&mut control);
        rows.iter().all(|row| row["kernel_load"].as_i64() == Some(0))
    });
    let metrics = control.ask("metrics")["metrics"].as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("handoff_kernel_balancer_connections_total{what=\"placed\"} 20"));
    assert!(metrics.contains("handoff_worker_kernel_load{worker=\"1\"} 0"), "{metrics}");
    // Plain reuseport says who chooses too.
    let scratch = Scratch::new();
    let plain = Master::start(&scratch, &["--workers", "1", "--mode", "reuseport"]);
    let info = Control::connect(&plain.run_dir).ask("info");
    assert_eq!(info["reuseport_selection"], "kernel hash", "{info}");
    assert!(info["kernel_selected"].is_null(), "{info}");
}

/// 60 clients arrive while one of two workers is stopped (SIGSTOP); then
/// it is killed. With the kernel's hash about half are queued to it and
/// reset when it dies. With the program: in the first 250 ms a burst of 30
/// gives it at most what the live worker holds (each pick reserves, so it
/// looks busier with every connection it is given); once its heartbeat is
/// stale it gets none of the next 30; and when its listener closes the
/// kernel moves what it had queued to the live worker.
#[test]
fn clients_arriving_at_a_stopped_worker_that_is_then_killed_are_all_answered() {
    let scratch = Scratch::new();
    let master = start(&scratch, &balanced("2", &[]));
    wait_accepting(&master, 2);
    let victim = master.worker_pids()[0];
    let mut control = Control::connect(&master.run_dir);
    let victim_load = |control: &mut Control| {
        row_of(control, victim).and_then(|row| row["kernel_load"].as_i64()).unwrap_or(0)
    };
    stop_process(Pid::from_raw(victim as i32));
    let burst = |from: usize| -> Vec<_> {
        (from..from + 30)
            .map(|i| {
                let addr = master.addr;
                std::thread::spawn(move || one_request(addr, format!("arriving {i}").as_bytes()))
            })
            .collect()
    };
    // (By hand, with the kernel's hash: no counts to wait for.)
    let programmed = policy() != "rr";
    let placed = |control: &mut Control, n: u64| {
        if programmed {
            wait_until(WAIT, "a burst placed", || {
                count(&control.ask("info"), "kernel_selected") >= n
            });
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let mut clients = burst(0);
    placed(&mut control, 30);
    let first = victim_load(&mut control);
    // Stale now: it beat last before the SIGSTOP.
    std::thread::sleep(Duration::from_millis(400));
    clients.extend(burst(30));
    placed(&mut control, 60);
    let second = victim_load(&mut control) - first;
    println!("queued to the stopped worker: {first} of the first 30, {second} of the next 30");
    if programmed {
        assert!(first < 30, "the stopped worker took the whole burst");
        assert_eq!(second, 0, "a stopped worker with a stale heartbeat was chosen");
    }
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("SIGKILL");
    let failures: Vec<String> =
        clients.into_iter().filter_map(|client| client.join().expect("client").err()).collect();
    assert!(failures.is_empty(), "{} of 60 failed: {failures:?}\n{}", failures.len(), master.log());
    if programmed {
        let info = control.ask("info");
        assert!(count(&info, "kernel_migrated") >= first as u64, "{info}");
    }
}

/// A slow worker (200 ms per request) beside a fast one: the program sends
/// the slow one work only when both are equally busy. The kernel's hash
/// would split the connections about evenly.
#[test]
fn the_program_sends_work_away_from_a_slow_worker_started_by_hand() {
    let scratch = Scratch::new();
    let master = start(&scratch, &balanced("0", &[]));
    let slow = Worker::start_with_args(
        &master.run_dir,
        scratch.path().join("slow.log"),
        "info",
        &["--delay-ms", "200"],
    );
    let slow_pid = slow.child.as_ref().expect("child").id();
    wait_for_log(&slow.log_path, "accepting connections myself", 1);
    let fast = Worker::start(&master.run_dir, scratch.path().join("fast.log"), "info");
    wait_for_log(&fast.log_path, "accepting connections myself", 1);
    let threads: Vec<_> = (0..4)
        .map(|c| {
            let addr = master.addr;
            std::thread::spawn(move || {
                for i in 0..15 {
                    one_request(addr, format!("slow test {c}/{i}").as_bytes()).expect("served");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every reply exact");
    }
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "all reported", || count(&control.ask("info"), "worker_accepted") == 60);
    let rows = rows(&mut control);
    let accepted = |slow: bool| {
        rows.iter()
            .filter(|row| (row["pid"].as_u64() == Some(u64::from(slow_pid))) == slow)
            .map(|row| count(row, "accepted"))
            .sum::<u64>()
    };
    let (slow, fast) = (accepted(true), accepted(false));
    println!("slow worker {slow}, fast worker {fast} of 60");
    assert!(
        fast >= 2 * slow,
        "the program should favour the fast worker: slow {slow}, fast {fast}"
    );
    assert!(slow * 100 <= 40 * 60, "the slow worker's share is above 40 %: {slow} of 60");
}

/// Closed-loop load while `action` runs; no client may fail.
fn under_load(master: &Master, clients: usize, action: impl FnOnce(&mut Control)) {
    let load = Load::start(master.addr, clients);
    wait_until(WAIT, "first requests served", || load.served() >= 100);
    let mut control = Control::connect(&master.run_dir);
    action(&mut control);
    let mark = load.served();
    wait_until(WAIT, "serving on", || load.served() >= mark + 100);
    let (served, failures) = load.finish();
    let info = control.ask("info");
    println!("{served} requests, {} failed, migrated {}", failures.len(), info["kernel_migrated"]);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..5.min(failures.len())]
    );
}

fn wait_reload_done(control: &mut Control, old: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = rows(control);
        let pids: Vec<u64> = rows.iter().filter_map(|row| row["pid"].as_u64()).collect();
        if pids.len() == old.len() && pids.iter().all(|pid| !old.contains(pid)) {
            return;
        }
        assert!(Instant::now() < deadline, "reload did not finish: {rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ten_rolling_reloads_under_load_refuse_and_reset_nobody() {
    let scratch = Scratch::new();
    let master = start(&scratch, &balanced("2", &[]));
    wait_accepting(&master, 2);
    under_load(&master, 16, |control| {
        for _ in 0..10 {
            let old: Vec<u64> =
                rows(control).iter().filter_map(|row| row["pid"].as_u64()).collect();
            assert!(control.ask("reload")["ok"].is_string());
            wait_reload_done(control, &old);
        }
    });
}

#[test]
fn scaling_four_one_four_under_load_refuses_and_resets_nobody() {
    let scratch = Scratch::new();
    let master = start(&scratch, &balanced("4", &[]));
    wait_accepting(&master, 4);
    under_load(&master, 16, |control| {
        for target in [1u64, 4, 1, 4] {
            assert!(control.ask(&format!("scale {target}"))["ok"].is_string());
            wait_until(Duration::from_secs(20), "scaled", || {
                let rows = rows(control);
                rows.len() as u64 == target && rows.iter().all(|row| row["state"] == "ready")
            });
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

#[test]
fn a_master_upgrade_under_load_hands_the_program_over_and_resets_nobody() {
    let scratch = Scratch::new();
    let mut master = start(&scratch, &balanced("2", &[]));
    wait_accepting(&master, 2);
    let old_pid = master.pid;
    let mut new_pid = None;
    under_load(&master, 16, |control| {
        assert!(control.ask("upgrade")["ok"].is_string());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = Control::connect(&master.run_dir).ask("info");
            if info["pid"].as_u64() != Some(u64::from(old_pid)) && info["upgrade"] == "none" {
                assert_eq!(info["reuseport_selection"], format!("ebpf {}", policy()), "{info}");
                new_pid = info["pid"].as_u64();
                break;
            }
            assert!(Instant::now() < deadline, "no new master");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(master.wait_exit(WAIT).success());
    let new_pid = new_pid.expect("new master") as i32;
    let info = Control::connect(&master.run_dir).ask("info");
    // The new master's program chose its workers' listeners.
    assert!(count(&info, "kernel_selected") > 0, "{info}");
    let _ = kill(Pid::from_raw(new_pid), Signal::SIGTERM);
    wait_until(WAIT, "the new master exits", || !process_alive(new_pid as u32));
}

#[test]
fn without_the_privilege_to_load_bpf_a_policy_in_reuseport_mode_is_refused() {
    use std::os::unix::process::CommandExt;
    let Some(scratch) = Scratch::for_nobody("without_the_privilege_to_load_bpf…") else { return };
    let run_dir = scratch.path().join("run-nobody");
    let output = std::process::Command::new(bin("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "0", "--mode", "reuseport"])
        .args(["--policy", "least", "--run-dir"])
        .arg(&run_dir)
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
    assert!(stderr.contains("Plain --mode reuseport"), "{stderr}");
    assert!(output.stdout.is_empty(), "never listened");
}

#[test]
fn a_policy_in_shared_mode_is_refused() {
    let scratch = Scratch::new();
    for policy in ["least", "pull"] {
        let output = std::process::Command::new(bin("handoff-master"))
            .args(["--listen", "127.0.0.1:0", "--mode", "shared", "--policy", policy])
            .arg("--run-dir")
            .arg(scratch.run_dir())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("no effect with --mode shared"), "{stderr}");
    }
}
