//! `--agent-check`: the line a load balancer reads (HAProxy's agent
//! format), `drain` / `ready`, the drain grace of SIGTERM (`--drain-secs`),
//! and the agent socket surviving an upgrade. The tests against a real
//! HAProxy are in `cluster`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

#[test]
fn the_agent_says_up_drain_ready_and_down_from_the_masters_state() {
    let scratch = Scratch::new();
    let master = Master::start(
        &scratch,
        &["--workers", "2", "--max-conns", "2", "--agent-check", "127.0.0.1:0"],
    );
    master.wait_for_log("worker registered", 2);
    let agent = agent_addr(&master.run_dir);
    assert_eq!(ask_agent(agent), "ready up 100% maxconn:4");

    // Two clients that send nothing are held by workers: half the
    // capacity is taken.
    let held: Vec<TcpStream> = (0..2).map(|_| connect(master.addr)).collect();
    wait_for_agent(agent, "ready up 50% maxconn:4");

    // drain: said at once, and connections are still served.
    let answer = Control::connect(&master.run_dir).ask("drain");
    assert!(answer["ok"].as_str().is_some_and(|ok| ok.contains("says drain")), "{answer}");
    assert_eq!(ask_agent(agent), "drain");
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(info["balancer"], "drain");
    assert_eq!(info["agent_reply"], "drain");
    // Logged once, when it begins; asking again changes nothing.
    master.wait_for_log("drain asked", 1);
    Control::connect(&master.run_dir).ask("drain");
    assert_eq!(master.log().matches("drain asked").count(), 1, "{}", master.log());
    drop(held);
    assert_eq!(
        request(master.addr, b"while drained").expect("served"),
        expected_reply(b"while drained")
    );

    // ready (through handoff-ctl): up again, full weight once the held
    // clients are gone.
    let (code, out, err) = ctl(&master.run_dir, &["ready"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for_agent(agent, "ready up 100% maxconn:4");
    let (code, out, _) = ctl(&master.run_dir, &["drain"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("drain"), "{out}");
    assert_eq!(ask_agent(agent), "drain");
    ctl(&master.run_dir, &["ready"]);

    // No worker: down, with the reason for HAProxy's log.
    Control::connect(&master.run_dir).ask("scale 0");
    wait_for_agent(agent, "down #no handoff worker can take connections");
    Control::connect(&master.run_dir).ask("scale 2");
    wait_for_agent(agent, "ready up 100% maxconn:4");
    // Dozens of checks, each accepted until the queue was empty: the end
    // of the queue (EAGAIN) is no failure.
    assert_no_warnings(&master.log());
}

#[test]
fn without_agent_check_there_is_no_agent_and_drain_says_nobody_is_told() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    let info = Control::connect(&master.run_dir).ask("info");
    assert!(info["agent_check"].is_null(), "{info}");
    let answer = Control::connect(&master.run_dir).ask("drain");
    assert!(answer["ok"].as_str().is_some_and(|ok| ok.contains("no balancer")), "{answer}");
}

#[test]
fn sigterm_says_drain_for_the_grace_still_serving_then_closes_the_listener() {
    let scratch = Scratch::new();
    let mut master = Master::start(
        &scratch,
        &["--workers", "1", "--agent-check", "127.0.0.1:0", "--drain-secs", "1.5"],
    );
    master.wait_for_log("worker registered", 1);
    let agent = agent_addr(&master.run_dir);
    let signalled = Instant::now();
    master.signal(Signal::SIGTERM);
    wait_for_agent(agent, "drain");
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(info["balancer"], "stopping");
    assert!(info["stopping_in_secs"].as_f64().is_some_and(|s| s > 0.0 && s <= 1.5), "{info}");
    // Still serving during the grace.
    assert_eq!(
        request(master.addr, b"in the grace").expect("served"),
        expected_reply(b"in the grace")
    );
    // `ready` cannot undo a stop.
    let answer = Control::connect(&master.run_dir).ask("ready");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("stopping")), "{answer}");
    // Nor can an upgrade: a new master would serve on and the stop be lost.
    let answer = Control::connect(&master.run_dir).ask("upgrade");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("stop")), "{answer}");
    let info = Control::connect(&master.run_dir).ask("info");
    assert!(info["upgrade_error"].as_str().is_some_and(|e| e.contains("stop")), "{info}");
    assert_eq!(info["balancer"], "stopping", "{info}");
    let status = master.wait_exit(WAIT);
    assert!(status.success(), "clean exit: {status:?}");
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(1400), "the grace was not waited for: {took:?}");
    let log = master.log();
    let draining = log.find("the agent check says drain").expect("drain logged");
    let closing = log.find("shutting down: no longer accepting").expect("shutdown logged");
    assert!(draining < closing, "drain before the listener closes:\n{log}");
}

#[test]
fn a_second_sigterm_ends_the_grace_early_and_sigint_does_not_wait() {
    for (second, signals) in
        [(true, vec![Signal::SIGTERM, Signal::SIGTERM]), (false, vec![Signal::SIGINT])]
    {
        let scratch = Scratch::new();
        let mut master = Master::start(
            &scratch,
            &["--workers", "1", "--agent-check", "127.0.0.1:0", "--drain-secs", "30"],
        );
        master.wait_for_log("worker registered", 1);
        let started = Instant::now();
        for signal in signals {
            master.signal(signal);
            if second {
                master.wait_for_log("the agent check says drain", 1);
            }
        }
        let status = master.wait_exit(WAIT);
        assert!(status.success(), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "waited for the 30 s grace");
        if second {
            master.wait_for_log("ending the drain grace early", 1);
        }
    }
}

#[test]
fn the_agent_socket_and_a_drain_survive_an_upgrade() {
    let scratch = Scratch::new();
    let master = Master::start(
        &scratch,
        &["--workers", "1", "--agent-check", "127.0.0.1:0", "--drain-secs", "0"],
    );
    master.wait_for_log("worker registered", 1);
    let agent = agent_addr(&master.run_dir);
    Control::connect(&master.run_dir).ask("drain");
    let (code, out, err) = ctl(&master.run_dir, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let info = Control::connect(&master.run_dir).ask("info");
    assert_ne!(info["pid"].as_u64(), Some(u64::from(master.pid)), "a new master: {info}");
    let new_pid = info["pid"].as_u64().expect("pid") as i32;
    let _kill_new = KillOnDrop(new_pid);
    // The same address, answered by the new master, still draining.
    assert_eq!(info["agent_check"], agent.to_string(), "{info}");
    assert_eq!(ask_agent(agent), "drain");
    Control::connect(&master.run_dir).ask("ready");
    wait_for_agent(agent, "ready up 100%");
    assert_eq!(request(master.addr, b"after").expect("served"), expected_reply(b"after"));
}

/// After an upgrade the old master, still draining a client its worker
/// holds, no longer answers agent checks: every answer is the new one's.
#[test]
fn after_an_upgrade_only_the_new_master_answers_agent_checks() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--agent-check", "127.0.0.1:0"]);
    master.wait_for_log("worker registered", 1);
    let agent = agent_addr(&master.run_dir);
    // Held by the old master's worker: the old master drains until it is
    // answered.
    let mut held = connect(master.addr);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the client handed over", || count(&control.ask("info"), "dispatched") == 1);
    drop(control);
    let (code, out, err) = ctl(&master.run_dir, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let info = Control::connect(&master.run_dir).ask("info");
    let new_pid = info["pid"].as_u64().expect("pid") as i32;
    assert_ne!(new_pid as u32, master.pid, "a new master: {info}");
    let _kill_new = KillOnDrop(new_pid);
    for _ in 0..30 {
        assert_eq!(ask_agent(agent), "ready up 100%");
    }
    assert!(process_alive(master.pid), "the old master still drains, and could have answered");
    assert_eq!(send_and_read(&mut held, b"held").expect("reply"), expected_reply(b"held"));
}

/// The master an upgrade started is not our child: SIGKILL it (and so its
/// workers' channel) if the test ends early.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGTERM);
    }
}

#[test]
fn handoff_ctl_shows_several_masters_side_by_side() {
    let (a, b) = (Scratch::new(), Scratch::new());
    let first = Master::start(&a, &["--workers", "1", "--agent-check", "127.0.0.1:0"]);
    let second = Master::start(&b, &["--workers", "1"]);
    first.wait_for_log("worker registered", 1);
    Control::connect(&first.run_dir).ask("drain");
    let dirs = [first.run_dir.display().to_string(), second.run_dir.display().to_string()];
    let output = std::process::Command::new(bin("handoff-ctl"))
        .args(["--run-dir", &dirs[0], "--run-dir", &dirs[1], "info"])
        .output()
        .expect("handoff-ctl");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    let header = out.lines().next().expect("header");
    assert!(header.contains(&dirs[0]) && header.contains(&dirs[1]), "{out}");
    let row = |label: &str| {
        out.lines()
            .find(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{out}"))
            .split_whitespace()
            .skip(label.split_whitespace().count())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("pid"), [first.pid.to_string(), second.pid.to_string()]);
    assert_eq!(row("balancer"), ["drain", "ready"]);

    // One that does not answer: shown, and the exit status says so.
    let gone = a.path().join("nobody");
    let output = std::process::Command::new(bin("handoff-ctl"))
        .args(["--run-dir", &dirs[0], "--run-dir"])
        .arg(&gone)
        .args(["--json", "info"])
        .output()
        .expect("handoff-ctl");
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON array on stdout");
    assert_eq!(json[0]["info"]["pid"].as_u64(), Some(u64::from(first.pid)));
    assert!(json[1]["error"].as_str().is_some_and(|e| e.contains("nobody")), "{json}");
}

/// Without `--agent-check`, `drain` and `ready` both say that no balancer
/// is told (`ready` used to answer as if an agent check existed).
#[test]
fn drain_and_ready_without_an_agent_check_say_no_balancer_is_told() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    for command in ["drain", "ready"] {
        let (code, out, err) = ctl(&master.run_dir, &[command]);
        assert_eq!(code, Some(0), "{command}: {out}{err}");
        assert!(out.contains("no --agent-check is set"), "{command}: {out}");
    }
}
