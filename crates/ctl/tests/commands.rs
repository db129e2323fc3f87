//! Every command of `handoff-ctl` against a fake master: what it sends,
//! what it prints (table or `--json`), its exit status.

mod common;

use common::{ctl, ctl_env, stderr, stdout, usual, FakeMaster, TempDir};
use std::sync::Mutex;

#[test]
fn info_workers_and_metrics_print_tables_or_the_raw_json() {
    let dir = TempDir::new("tables");
    let master = FakeMaster::start(dir.path(), usual);

    let info = ctl(dir.path(), &["info"]);
    assert!(info.status.success(), "{info:?}");
    let text = stdout(&info);
    assert!(
        text.starts_with("version                 9.9.9\npid                     42\n"),
        "{text}"
    );

    let json = ctl(dir.path(), &["--json", "info"]);
    assert_eq!(stdout(&json), format!("{}\n", usual("info").unwrap()));

    for command in ["workers", "stats"] {
        let workers = ctl(dir.path(), &[command]);
        assert!(workers.status.success(), "{workers:?}");
        let text = stdout(&workers);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0][..3], ["id", "pid", "state"]);
        assert_eq!(lines[1][..3], ["0", "100", "ready"]);
        // --wide: every column, the origin among them.
        let wide = ctl(dir.path(), &[command, "--wide"]);
        let text = stdout(&wide);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[1][..4], ["0", "100", "spawned", "ready"], "{text}");
    }
    assert_eq!(
        stdout(&ctl(dir.path(), &["workers", "--json"])),
        format!("{}\n", usual("workers").unwrap())
    );

    assert_eq!(stdout(&ctl(dir.path(), &["metrics"])), "handoff_up 1\n");
    assert_eq!(
        stdout(&ctl(dir.path(), &["--json", "metrics"])),
        format!("{}\n", usual("metrics").unwrap())
    );

    assert_eq!(
        master.commands(),
        [
            "info", "info", "workers", "workers", "workers", "workers", "workers", "metrics",
            "metrics"
        ]
    );
}

#[test]
fn each_action_sends_its_own_command() {
    let dir = TempDir::new("actions");
    let master = FakeMaster::start(dir.path(), usual);
    for (args, sent) in [
        (&["ping"][..], "ping"),
        (&["stop"], "stop"),
        (&["drain"], "drain"),
        (&["ready"], "ready"),
        (&["reload"], "reload"),
        (&["scale", "3"], "scale 3"),
    ] {
        let output = ctl(dir.path(), args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_eq!(stdout(&output), format!("{sent} done\n"), "{args:?}");
        assert_eq!(master.commands().last().map(String::as_str), Some(sent));
        let json = ctl(dir.path(), &[&["--json"], args].concat());
        assert_eq!(stdout(&json), format!("{{\"ok\":\"{sent} done\"}}\n"), "{args:?}");
    }
}

#[test]
fn no_master_or_a_refusal_exits_1_with_the_reason() {
    let dir = TempDir::new("nomaster");
    let output = ctl(dir.path(), &["ping"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr(&output).starts_with("handoff-ctl: no handoff-master answers at "),
        "{output:?}"
    );

    let _master = FakeMaster::start(dir.path(), |_| Some("{\"error\":\"draining\"}".into()));
    let output = ctl(dir.path(), &["drain"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stderr(&output), "handoff-ctl: the master says: draining\n");
}

#[test]
fn the_run_dir_defaults_to_xdg_runtime_dir() {
    let dir = TempDir::new("xdg");
    let run_dir = dir.path().join("handoff");
    std::fs::create_dir(&run_dir).expect("run dir");
    let _master = FakeMaster::start(&run_dir, usual);
    let output = ctl_env(&["ping"], &[("XDG_RUNTIME_DIR", dir.path())]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "ping done\n");
}

#[test]
fn info_of_several_masters_side_by_side() {
    let (a, b, c) =
        (TempDir::new("several-a"), TempDir::new("several-b"), TempDir::new("several-c"));
    let _a = FakeMaster::start(a.path(), usual);
    let _b = FakeMaster::start(b.path(), usual);
    let dirs = |extra: &[&std::path::Path]| -> Vec<String> {
        [a.path(), b.path()]
            .iter()
            .chain(extra)
            .flat_map(|d| ["--run-dir".to_owned(), d.display().to_string()])
            .collect()
    };
    let run =
        |args: Vec<String>| ctl_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);

    let both = run([dirs(&[]), vec!["info".into()]].concat());
    assert!(both.status.success(), "{both:?}");
    let text = stdout(&both);
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, [a.path().to_str().unwrap(), b.path().to_str().unwrap()]);
    assert!(text.lines().any(|l| l.split_whitespace().eq(["pid", "42", "42"])), "{text}");

    // c has no master: shown as unreachable, and the exit status says so.
    let three = run([dirs(&[c.path()]), vec!["info".into()]].concat());
    assert_eq!(three.status.code(), Some(1), "{three:?}");
    let text = stdout(&three);
    assert!(
        text.lines().any(|l| l.split_whitespace().eq([
            "state",
            "running",
            "running",
            "unreachable"
        ])),
        "{text}"
    );
    assert_eq!(stderr(&three), "handoff-ctl: 1 of 3 masters did not answer\n");

    let json = run([dirs(&[c.path()]), vec!["--json".into(), "info".into()]].concat());
    assert_eq!(json.status.code(), Some(1), "{json:?}");
    let value: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    let objects = value.as_array().expect("an array");
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["run_dir"], a.path().to_str().unwrap());
    assert_eq!(objects[1]["info"]["pid"], 42);
    assert!(
        objects[2]["error"].as_str().unwrap().starts_with("no handoff-master answers"),
        "{value}"
    );

    let workers = run([dirs(&[]), vec!["workers".into()]].concat());
    assert_eq!(workers.status.code(), Some(1), "{workers:?}");
    assert_eq!(stderr(&workers), "handoff-ctl: only `info` takes --run-dir more than once\n");
}

/// A fake master going through an upgrade: `info` answers come from
/// `after` in turn once `upgrade` was asked (the last one repeats).
fn upgrading(dir: &std::path::Path, after: Vec<serde_json::Value>) -> FakeMaster {
    let upgraded = Mutex::new(None::<std::vec::IntoIter<serde_json::Value>>);
    let last = Mutex::new(None);
    FakeMaster::start(dir, move |command| match command {
        "upgrade" => {
            *upgraded.lock().unwrap() = Some(after.clone().into_iter());
            Some("{\"ok\":\"upgrading\"}".into())
        }
        "info" => {
            let mut upgraded = upgraded.lock().unwrap();
            let Some(answers) = upgraded.as_mut() else { return usual("info") };
            let mut last = last.lock().unwrap();
            if let Some(next) = answers.next() {
                *last = Some(next);
            }
            last.clone().map(|info| info.to_string())
        }
        other => usual(other),
    })
}

fn info(pid: u32, upgrade: &str, generation: u64, error: Option<&str>) -> serde_json::Value {
    common::samples::info_json(|m| {
        m.insert("pid".into(), pid.into());
        m.insert("upgrade".into(), upgrade.into());
        m.insert("generation".into(), generation.into());
        m.insert("upgrade_error".into(), error.into());
    })
}

#[test]
fn upgrade_waits_until_the_new_master_is_in_charge() {
    let dir = TempDir::new("upgrade");
    let _master = upgrading(
        dir.path(),
        vec![
            info(42, "in progress", 1, None),
            info(43, "taking over", 1, None),
            info(43, "none", 2, None),
        ],
    );
    let output = ctl(dir.path(), &["upgrade", "--timeout", "5"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "upgraded: master pid 42 -> 43 (generation 2)\n");
    assert_eq!(stderr(&output), "upgrading\n");
}

#[test]
fn a_failed_upgrade_exits_1_with_the_masters_reason() {
    let dir = TempDir::new("upgrade-failed");
    let _master = upgrading(
        dir.path(),
        vec![info(42, "in progress", 1, None), info(42, "failed", 1, Some("exec failed"))],
    );
    let output = ctl(dir.path(), &["upgrade", "--timeout", "5"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stderr(&output),
        "upgrading\nhandoff-ctl: upgrade failed: exec failed; the master (pid 42) keeps serving\n"
    );
}

#[test]
fn an_upgrade_without_outcome_gives_up_at_the_timeout() {
    let dir = TempDir::new("upgrade-stuck");
    let _master = upgrading(dir.path(), vec![info(42, "in progress", 1, None)]);
    let started = std::time::Instant::now();
    let output = ctl(dir.path(), &["upgrade", "--timeout", "0.3"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("no outcome within 300ms"), "{output:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

#[test]
fn durations_must_be_positive() {
    let dir = TempDir::new("durations");
    for args in [
        &["upgrade", "--timeout", "0"][..],
        &["upgrade", "--timeout=-1"],
        &["upgrade", "--timeout", "inf"],
        &["serve-metrics", "--request-timeout", "0"],
    ] {
        let output = ctl(dir.path(), args);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        assert!(stderr(&output).contains("is not a positive number of seconds"), "{output:?}");
    }
    let output = ctl(dir.path(), &["top", "--interval", "0"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn top_prints_one_frame_per_refresh_and_reconnects_when_closed() {
    let dir = TempDir::new("top");
    // Closes each connection after one sample (info + workers), as the
    // master does with idle control clients: top reconnects.
    let answered = Mutex::new(0u32);
    let master = FakeMaster::start(dir.path(), move |command| {
        let mut n = answered.lock().unwrap();
        *n += 1;
        if (*n).is_multiple_of(3) {
            return None;
        }
        usual(command)
    });
    let output = ctl(dir.path(), &["top", "--interval", "0.05", "--iterations", "2"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    let frame = "handoff on 127.0.0.1:8080  up 12s  accepted 1001  completed 1007  lost 1012\n\n\
                 process   pid  conn/s  in_flight  cpu_%      rss\n\
                 master     42       0       1005    0.0  3.5 MiB\n\
                 worker 0  100       0          3    0.0  2.0 MiB\n";
    // Not a terminal: no screen clearing, a blank line after each frame.
    assert_eq!(text, format!("{frame}\n{frame}\n"));
    assert!(master.connections() >= 2, "reconnected");
}

/// `top` has no JSON form: `--json top` is refused, not silently ignored.
#[test]
fn top_refuses_json() {
    let dir = TempDir::new("topjson");
    let _master = FakeMaster::start(dir.path(), usual);
    let output = ctl(dir.path(), &["--json", "top", "--iterations", "1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("has no JSON form"), "{output:?}");
}
