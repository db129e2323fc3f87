//! The run directory (issue #10, items 1 and 12): a directory the master
//! does not control is refused, the lock file is never written through a
//! symlink, and a run dir removed or replaced under a running master is
//! noticed, said, and answered with a graceful stop.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs a master that is expected to refuse to start: its exit code and
/// stderr. One still running after `within` is killed (code `None`).
fn master_refusing(run_dir: &Path, within: Duration) -> (Option<i32>, String) {
    let scratch_err = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = Command::new(bin("handoff-master"))
        .args(["--listen", "127.0.0.1:0", "--workers", "0", "--run-dir"])
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(scratch_err.reopen().expect("reopen")))
        .spawn()
        .expect("spawn handoff-master");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, read_to_string(scratch_err.path()))
}

/// Exited on its own with a failure status (not 0, not 1 = forced stop).
fn refused(code: Option<i32>) -> bool {
    code.is_some_and(|code| code > 1)
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn a_lock_file_planted_as_a_symlink_is_never_written_through() {
    let scratch = Scratch::new();
    let run_dir = scratch.run_dir();
    std::fs::create_dir(&run_dir).expect("mkdir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let victim = scratch.path().join("victim");
    std::fs::write(&victim, b"precious contents\n").expect("victim");
    std::os::unix::fs::symlink(&victim, run_dir.join("master.lock")).expect("plant symlink");

    let (code, stderr) = master_refusing(&run_dir, Duration::from_secs(5));
    assert_eq!(
        std::fs::read(&victim).expect("victim"),
        b"precious contents\n",
        "the master wrote through the symlink; stderr:\n{stderr}"
    );
    assert!(refused(code), "the master must refuse; exit {code:?}, stderr:\n{stderr}");
    assert!(
        stderr.contains("master.lock is a symbolic link") && stderr.contains("--run-dir"),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(run_dir.join("master.lock")).is_ok(), "left for a human");

    // Once the symlink is gone, the master starts there.
    std::fs::remove_file(run_dir.join("master.lock")).expect("remove symlink");
    let master = Master::start(&scratch, &["--workers", "0"]);
    let mut control = Control::connect(&master.run_dir);
    assert_eq!(control.ask("ping")["ok"], "pong");
}

#[test]
fn a_run_dir_other_users_could_write_into_is_refused_with_the_reason() {
    let scratch = Scratch::new();
    let run_dir = scratch.run_dir();
    std::fs::create_dir(&run_dir).expect("mkdir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // What another user could have planted before the master came.
    std::fs::write(run_dir.join("planted"), b"").expect("plant");

    let (code, stderr) = master_refusing(&run_dir, Duration::from_secs(5));
    assert!(refused(code), "a 0777 run dir must be refused; exit {code:?}, stderr:\n{stderr}");
    let shown = run_dir.display().to_string();
    assert!(
        stderr.contains(&format!("run dir {shown} is mode 0777"))
            && stderr.contains("other users can write into it")
            && stderr.contains("--run-dir"),
        "{stderr}"
    );
    assert_eq!(mode_of(&run_dir), 0o777, "refused, not tightened");
    assert!(!run_dir.join("master.lock").exists(), "nothing created in it");

    // Owned by another user (needs root to arrange, as CI has).
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        nix::unistd::chown(&run_dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let (code, stderr) = master_refusing(&run_dir, Duration::from_secs(5));
        assert!(refused(code), "exit {code:?}: {stderr}");
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    }
}

#[test]
fn a_run_dir_removed_under_a_running_master_stops_it_gracefully_with_the_reason() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    // A client in the middle of its request when the dir goes.
    let mut held = connect(master.addr);
    wait_until(WAIT, "the held client to be handed off", || {
        Control::connect(&master.run_dir).ask("info")["dispatched"].as_u64() == Some(1)
    });

    let removed_at = Instant::now();
    std::fs::remove_dir_all(&master.run_dir).expect("rm -rf the run dir");
    master.wait_for_log("was removed", 1);
    let noticed = removed_at.elapsed();
    let reply = send_and_read(&mut held, b"still served").expect("reply");
    assert_eq!(reply, expected_reply(b"still served"));
    let status = master.wait_exit(WAIT);
    let log = master.log();
    assert!(refused(status.code()), "exit {status}: {log}");
    let shown = master.run_dir.display().to_string();
    assert!(log.contains(&format!("run dir {shown} was removed")), "{log}");
    assert!(log.contains("stopping gracefully"), "{log}");
    assert!(log.contains("worker exited"), "the worker was stopped, not orphaned:\n{log}");
    assert!(noticed < Duration::from_secs(3), "noticed after {noticed:?}");
    println!("run dir removed: noticed after {noticed:?}, held client answered, exit {status}");
}

#[test]
fn a_run_dir_replaced_under_a_running_master_stops_it_without_touching_the_new_one() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0"]);
    let mut control = Control::connect(&master.run_dir);
    assert_eq!(control.ask("ping")["ok"], "pong");
    let moved = scratch.path().join("run.old");
    std::fs::rename(&master.run_dir, &moved).expect("rename");
    std::fs::create_dir(&master.run_dir).expect("a new dir at the path");
    std::fs::set_permissions(&master.run_dir, std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::write(master.run_dir.join("master.lock"), b"not yours\n").expect("their file");

    master.wait_for_log("was replaced", 1);
    let status = master.wait_exit(WAIT);
    assert!(refused(status.code()), "exit {status}: {}", master.log());
    assert_eq!(
        std::fs::read(master.run_dir.join("master.lock")).expect("their file"),
        b"not yours\n",
        "the new dir's files are not the old master's to remove"
    );
    let left: Vec<_> = std::fs::read_dir(&moved).expect("old dir").flatten().collect();
    assert!(left.is_empty(), "the old master cleaned up its own dir: {left:?}");
    // And a new master can use the path now.
    let again = Master::start(&scratch, &["--workers", "0"]);
    assert_eq!(Control::connect(&again.run_dir).ask("ping")["ok"], "pong");
}

#[test]
fn a_socket_someone_still_listens_on_is_not_taken_for_a_stale_one() {
    // The lock file is free (no master), but a process listens on
    // control.sock: the master must not unlink it and carry on.
    let scratch = Scratch::new();
    let run_dir = scratch.run_dir();
    std::fs::create_dir(&run_dir).expect("mkdir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let listening = std::os::unix::net::UnixListener::bind(run_dir.join("control.sock"))
        .expect("listen on control.sock");
    let (code, stderr) = master_refusing(&run_dir, Duration::from_secs(5));
    assert!(refused(code), "started anyway ({code:?}): {stderr}");
    assert!(stderr.contains("still listens on"), "{stderr}");
    assert!(run_dir.join("control.sock").exists(), "the live socket was removed");
    drop(listening);
    // Nobody listens any more: now it is stale, removed, and the master starts.
    let master = Master::start(&scratch, &["--workers", "0"]);
    master.wait_for_log("removed a stale socket", 1);
}
