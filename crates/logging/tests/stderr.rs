//! `Stderr` and `init` in a child process (this test binary run again with
//! `HANDOFF_LOGGING_CHILD` set), whose stderr the test controls: a global
//! subscriber and a broken or full stderr are per process.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use handoff_logging::Stderr;

const CHILD: &str = "HANDOFF_LOGGING_CHILD";
const DEADLINE: Duration = Duration::from_secs(10);

/// The child's side: does what `CHILD` says, then the test passes.
#[test]
fn child() {
    let Ok(mode) = std::env::var(CHILD) else { return };
    match mode.as_str() {
        "write" => {
            Stderr.write_all(b"hello world\n").expect("written");
            Stderr.flush().expect("flushed");
        }
        "broken" => {
            for _ in 0..3 {
                Stderr.write_all(b"nobody reads this\n").expect("dropped, not failed");
            }
        }
        "full" => {
            // Far more than the socket holds: most is dropped (EAGAIN).
            let chunk = [b'x'; 64 * 1024];
            for _ in 0..64 {
                Stderr.write_all(&chunk).expect("dropped, not failed");
            }
            println!("filled");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).expect("read go");
            Stderr.write_all(b"after\n").expect("written");
        }
        "init" => {
            handoff_logging::init();
            assert!(
                tracing_subscriber::fmt().try_init().is_err(),
                "init installed the global subscriber"
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Runs the `child` test in a new process with `stderr`.
fn spawn(mode: &str, stderr: Stdio) -> std::process::Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("HANDOFF_LOG_FORMAT", "json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("run the child")
}

/// Waits for `child` within [`DEADLINE`]; true if it succeeded.
fn succeeded(child: std::process::Child) -> bool {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait").status.success(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the child did not finish within {DEADLINE:?}");
        }
    }
}

#[test]
fn what_is_written_arrives_once() {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    let child = spawn("write", Stdio::from(OwnedFd::from(theirs)));
    assert!(succeeded(child));
    ours.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut got = String::new();
    (&ours).read_to_string(&mut got).expect("read its stderr");
    assert_eq!(got, "hello world\n");
}

#[test]
fn a_closed_stderr_fails_no_write() {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    drop(ours);
    let child = spawn("broken", Stdio::from(OwnedFd::from(theirs)));
    assert!(succeeded(child), "writes to a closed stderr must not fail");
}

#[test]
fn a_full_stderr_drops_lines_but_not_the_later_ones() {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    // O_NONBLOCK is shared with the child's copy: a full stderr says EAGAIN.
    theirs.set_nonblocking(true).expect("nonblocking");
    let mut child = spawn("full", Stdio::from(OwnedFd::from(theirs)));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    loop {
        let line = rx.recv_timeout(DEADLINE).expect("the child filled its stderr");
        if line.ends_with("filled") {
            break;
        }
    }
    // Drain what was kept, then let the child write once more.
    ours.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 1 << 20];
    while (&ours).read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("go");
    assert!(succeeded(child));
    ours.set_nonblocking(false).expect("blocking");
    ours.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut rest = Vec::new();
    (&ours).read_to_end(&mut rest).expect("read the rest");
    assert!(
        rest.ends_with(b"after\n"),
        "{:?}",
        String::from_utf8_lossy(&rest[rest.len().saturating_sub(64)..])
    );
}

#[test]
fn init_installs_the_global_subscriber() {
    assert!(succeeded(spawn("init", Stdio::null())));
}
