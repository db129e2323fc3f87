use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn u64_of(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a count in {value}"))
}

fn f64_of(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {value}"))
}

fn worker_cpu(row: &Value) -> f64 {
    row["cpu_user_secs"].as_f64().unwrap_or(0.0) + row["cpu_sys_secs"].as_f64().unwrap_or(0.0)
}

#[test]
fn counters_of_master_and_workers_agree_exactly_with_what_clients_saw() {
    const N: u64 = 600;
    let scratch = Scratch::new();
    let master = Master::start_with_env(&scratch, &["--workers", "2"], "info,handoff_worker=debug");
    master.wait_for_log("worker registered", 2);
    let mut control = Control::connect(&master.run_dir);
    let before = control.ask("workers");
    let cpu_before: f64 = before["workers"].as_array().expect("rows").iter().map(worker_cpu).sum();
    let master_cpu_before = {
        let info = control.ask("info");
        f64_of(&info, "cpu_user_secs") + f64_of(&info, "cpu_sys_secs")
    };

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = master.addr;
            std::thread::spawn(move || {
                for i in 0..N / 4 {
                    let payload = format!("{t}-{i}");
                    let reply = request(addr, payload.as_bytes()).expect("request");
                    assert_eq!(reply, expected_reply(payload.as_bytes()));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }

    // Workers report finished connections once per loop turn: wait for the
    // last report, then everything must add up exactly.
    wait_until(WAIT, "every completion to be reported", || {
        u64_of(&control.ask("info"), "completed") == N
    });
    let info = control.ask("info");
    assert_eq!(u64_of(&info, "accepted"), N);
    assert_eq!(u64_of(&info, "dispatched"), N);
    assert_eq!(u64_of(&info, "served"), N);
    assert_eq!(u64_of(&info, "in_flight"), 0);
    assert_eq!(u64_of(&info, "queued"), 0);
    assert_eq!(u64_of(&info, "lost"), 0);
    assert_eq!(u64_of(&info, "workers"), 2);
    // One connection per hand-off packet (--batch 1), and nothing went wrong.
    assert_eq!(u64_of(&info, "handoff_packets"), N);
    for key in [
        "worker_accepted",
        "resets",
        "failed",
        "timeouts",
        "lost_worker_died",
        "lost_at_shutdown",
        "redispatched",
        "served_by_dead_workers",
        "accept_errors",
        "accept_paused_for_resources",
        "worker_deaths",
        "worker_timeouts",
    ] {
        assert_eq!(u64_of(&info, key), 0, "{key}: {info}");
    }
    // The master's user and system CPU time are what the kernel says (in
    // 10 ms ticks; asked until each shows some, so that a wrong unit shows).
    let master_ticks = || cpu_ticks_user_sys(master.pid);
    wait_until(WAIT, "the master's user and system time to show", || {
        let (user, sys) = master_ticks();
        control.ask("info");
        user > 1 && sys > 1
    });
    let before = master_ticks();
    let info = control.ask("info");
    let after = master_ticks();
    for (key, low, high) in
        [("cpu_user_secs", before.0, after.0), ("cpu_sys_secs", before.1, after.1)]
    {
        let secs = f64_of(&info, key);
        assert!(
            (low as f64 - 1.0) / 100.0 <= secs && secs <= (high as f64 + 1.0) / 100.0,
            "{key} {secs} s, the kernel says {low}..{high} ticks"
        );
    }
    // The master's CPU per dispatched connection is its CPU time so far
    // divided by the connections it dispatched (both read at once).
    let cpu_us = (f64_of(&info, "cpu_user_secs") + f64_of(&info, "cpu_sys_secs")) * 1e6;
    let per_conn = f64_of(&info, "cpu_us_per_dispatched");
    assert!(per_conn > 0.0, "{info}");
    assert!(
        (per_conn - cpu_us / N as f64).abs() <= 1e-6 * per_conn.max(1.0),
        "cpu_us_per_dispatched {per_conn} is not {cpu_us} us / {N}: {info}"
    );
    assert!(u64_of(&info, "rss_bytes") > 0);
    assert!(f64_of(&info, "cpu_user_secs") + f64_of(&info, "cpu_sys_secs") > master_cpu_before);

    // Each worker's own count matches the connections it logged as served.
    // A worker counts a connection before closing it and logs it after, so
    // the last lines may still be on their way: wait for all N.
    let mut served_by_pid: HashMap<i64, u64> = HashMap::new();
    wait_until(WAIT, "every served line to be logged", || {
        served_by_pid.clear();
        for line in master.log().lines().filter(|l| l.contains("handoff_worker::server: served")) {
            let pid = field(line, "pid").and_then(|p| p.parse().ok()).expect("pid in served line");
            *served_by_pid.entry(pid).or_default() += 1;
        }
        served_by_pid.values().sum::<u64>() == N
    });
    // CPU comes from the workers' own reports: wait until the reports that
    // `workers` asks for show the load.
    let mut rows = Vec::new();
    wait_until(WAIT, "worker CPU to show the load", || {
        rows = control.ask("workers")["workers"].as_array().expect("rows").clone();
        rows.iter().map(worker_cpu).sum::<f64>() > cpu_before
    });
    let mut total = 0;
    for row in &rows {
        let pid = row["pid"].as_i64().expect("pid");
        let served = u64_of(row, "served");
        assert_eq!(u64_of(row, "dispatched"), served, "{row}");
        assert_eq!(u64_of(row, "completed"), served, "{row}");
        assert_eq!(u64_of(row, "in_flight"), 0, "{row}");
        assert_eq!(served_by_pid.get(&pid).copied().unwrap_or(0), served, "worker {pid}: {row}");
        assert!(served > 0, "both workers served: {row}");
        assert_eq!(row["origin"], "spawned");
        assert!(row["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
        assert!(row["handling_p99_us"].as_u64().is_some(), "{row}");
        assert!(row["handoff_p99_us"].as_u64().is_some(), "{row}");
        assert!(row["last_report_age_secs"].as_f64().is_some_and(|age| age < 10.0), "{row}");
        total += served;
    }
    assert_eq!(total, N);
    assert_no_warnings(&master.log());
}

#[test]
fn bad_control_input_never_stalls_the_master_and_clients_keep_being_served() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);

    // Meanwhile, ordinary clients keep coming; every one must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let background = {
        let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), master.addr);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                let payload = format!("bg {i}");
                let reply = request(addr, payload.as_bytes()).expect("background request");
                assert_eq!(reply, expected_reply(payload.as_bytes()));
                served.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    let mut control = Control::connect(&master.run_dir);
    let unknown = control.ask("frobnicate");
    assert!(unknown["error"].as_str().is_some_and(|e| e.contains("unknown command `frobnicate`")));
    let too_long = {
        let mut line = vec![b'a'; 1 << 20];
        line.push(b'\n');
        control.send_raw(&line);
        control.read_answer()
    };
    assert!(
        too_long["error"].as_str().is_some_and(|e| e.contains("longer than the limit")),
        "{too_long}"
    );
    let garbage: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').chain([b'\n']).collect();
    control.send_raw(&garbage);
    assert!(control.read_answer()["error"].is_string());
    assert_eq!(control.ask("ping")["ok"], "pong", "the connection stays usable");

    // 100 control clients at once.
    let mut many: Vec<_> = (0..100).map(|_| Control::connect(&master.run_dir)).collect();
    for client in &mut many {
        client.send_raw(b"info\n");
    }
    for client in &mut many {
        assert!(client.read_answer()["accepted"].is_u64());
    }
    drop(many);

    // A client that asks and asks but never reads is cut off, not buffered
    // for without bound.
    let mut greedy = std::os::unix::net::UnixStream::connect(master.run_dir.join("control.sock"))
        .expect("connect");
    greedy.set_write_timeout(Some(WAIT)).expect("timeout");
    let mut cut_off = false;
    for _ in 0..20_000 {
        if greedy.write_all(b"metrics\n").is_err() {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the master kept buffering for a client that never reads");
    master.wait_for_log("does not read its answers", 1);

    // A client that disconnects in the middle of its answers.
    for _ in 0..20 {
        let mut rude = std::os::unix::net::UnixStream::connect(master.run_dir.join("control.sock"))
            .expect("connect");
        rude.write_all(&b"metrics\n".repeat(50)).expect("send");
        let mut first = [0u8; 10];
        let _ = rude.read(&mut first);
        drop(rude);
    }

    assert_eq!(control.ask("ping")["ok"], "pong");
    stop.store(true, Ordering::Relaxed);
    background.join().expect("background clients were all answered");
    assert!(served.load(Ordering::Relaxed) > 0);
    let info = control.ask("info");
    assert_eq!(u64_of(&info, "lost"), 0);
}

/// Checks the Prometheus text exposition format: every sample line is
/// `name{label="value",...} number`, every family has exactly one TYPE
/// (declared before its samples) and one HELP, counters end in `_total`.
fn check_prometheus_text(text: &str) -> usize {
    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("name");
            assert!(helps.insert(name.to_owned()), "second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            assert!(valid_name(name), "bad metric name {name}");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} should end in _total");
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE for {name}"
            );
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    (name, Some(labels.strip_suffix('}').expect("closing brace")))
                }
                None => (series, None),
            };
            assert!(valid_name(name), "bad metric name in {line}");
            assert!(types.contains_key(name), "sample before TYPE: {line}");
            if let Some(labels) = labels {
                let mut rest = labels;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(valid_name(key), "bad label name in {line}");
                    // Find the closing quote, skipping escaped characters.
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in after.char_indices() {
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.expect("closing quote");
                    rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
                }
            }
            samples += 1;
        }
    }
    for name in types.keys() {
        assert!(helps.contains(name), "no HELP for {name}");
    }
    samples
}

#[test]
fn metrics_are_valid_prometheus_text_with_a_series_per_worker() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    for i in 0..10 {
        request(master.addr, format!("m{i}").as_bytes()).expect("request");
    }
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "reports from both workers", || {
        control.ask("workers")["workers"]
            .as_array()
            .is_some_and(|rows| rows.len() == 2 && rows.iter().all(|r| r["cpu_user_secs"].is_f64()))
    });
    let answer = control.ask("metrics");
    let text = answer["metrics"].as_str().expect("metrics field");
    assert!(check_prometheus_text(text) > 20);
    assert!(text.contains("handoff_connections_accepted_total 10\n"), "{text}");
    for id in ["1", "2"] {
        assert!(text.contains(&format!(
            "handoff_worker_cpu_seconds_total{{worker=\"{id}\",mode=\"user\"}}"
        )));
    }
    // handoff-ctl prints the bare text, ready for a textfile collector.
    let (code, stdout, _) = ctl(&master.run_dir, &["metrics"]);
    assert_eq!(code, Some(0));
    assert!(check_prometheus_text(&stdout) > 20);
}

#[test]
fn handoff_ctl_prints_tables_json_and_a_top_view_and_says_when_no_master_runs() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    for i in 0..20 {
        request(master.addr, format!("c{i}").as_bytes()).expect("request");
    }
    let (code, stdout, stderr) = ctl(&master.run_dir, &["info"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("dispatched") && stdout.contains(&master.pid.to_string()), "{stdout}");
    let (code, stdout, _) = ctl(&master.run_dir, &["workers"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), 3, "header and one line per worker:\n{stdout}");
    let (code, stdout, _) = ctl(&master.run_dir, &["workers", "--json"]);
    assert_eq!(code, Some(0));
    let json: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(json["workers"].as_array().map(Vec::len), Some(2));
    let (code, stdout, _) =
        ctl(&master.run_dir, &["top", "--iterations", "1", "--interval", "0.2"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("master") && stdout.contains("worker 1") && stdout.contains("worker 2"),
        "{stdout}"
    );

    let (code, _, stderr) = ctl(&scratch.path().join("nowhere"), &["info"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no handoff-master answers at"), "{stderr}");
}

#[test]
fn processes_of_another_uid_can_neither_command_the_master_nor_register_as_workers() {
    if !nix::unistd::geteuid().is_root() {
        // Loudly: this test checks nothing unless it runs as root.
        eprintln!(
            "\n!!! NOT RUN: processes_of_another_uid_… needs root to start a child as \
             another uid; CI runs as root. Run `sudo -E cargo test --test e2e control::` \
             to check it. !!!\n"
        );
        return;
    }
    const NOBODY: u32 = 65534;
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0"]);
    // `nobody` must be able to reach the binaries and the run dir wherever
    // this checkout lives (CI may clone under a 0700 home): copy them into
    // the scratch dir and open it up.
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(scratch.path(), 0o755);
    let bin_copy = scratch.path().join("bin");
    std::fs::create_dir(&bin_copy).expect("bin dir");
    open(&bin_copy, 0o755);
    for program in ["handoff-ctl", "handoff-worker"] {
        std::fs::copy(bin(program), bin_copy.join(program)).expect("copy binary");
    }
    let as_nobody = |program: &str, args: &[&str]| {
        let output = std::process::Command::new(bin_copy.join(program))
            .arg("--run-dir")
            .arg(&master.run_dir)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run as nobody");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // The run dir is 0700: another user cannot even reach the sockets.
    let (code, stderr) = as_nobody("handoff-ctl", &["info"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Even with the permissions opened up by mistake, SO_PEERCRED refuses.
    open(&master.run_dir, 0o755);
    open(&master.run_dir.join("control.sock"), 0o666);
    open(&master.run_dir.join("workers.sock"), 0o666);
    let (code, stderr) = as_nobody("handoff-ctl", &["info"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    let sockets = socket_fds(master.pid);
    let (code, stderr) = as_nobody("handoff-worker", &[]);
    assert_eq!(code, Some(69), "EX_UNAVAILABLE");
    assert!(stderr.contains("uid 65534 may not register"), "{stderr}");
    // The refused peer's channel is closed as soon as it hangs up (not
    // when the 2 s a refused peer may linger run out).
    wait_until(Duration::from_secs(1), "the refused channel to close", || {
        socket_fds(master.pid) == sockets
    });
    // A refused peer that does not hang up is kept a while, its packets
    // read and ignored: closing with them unread would reset the channel
    // and lose the refusal before the peer reads it.
    let peer = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
             s.connect(sys.argv[1])\n\
             s.send(b'not a hello')\n\
             time.sleep(0.5)\n\
             print(len(s.recv(65536)))",
        ])
        .arg(master.run_dir.join("workers.sock"))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run python3 as nobody");
    assert!(peer.status.success(), "the refused peer read no refusal: {peer:?}");
    let read: usize = String::from_utf8_lossy(&peer.stdout).trim().parse().expect("a length");
    assert!(read > 0, "{peer:?}");
    assert!(master.log().contains("refused a control client of another user"));
    assert!(master.log().contains("refusing a worker of another user"));
    // And the master is unharmed.
    let mut control = Control::connect(&master.run_dir);
    assert_eq!(u64_of(&control.ask("info"), "workers"), 0);
    master.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(master.wait_exit(WAIT).success());
}
