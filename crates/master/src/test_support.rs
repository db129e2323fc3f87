//! Helpers the master's unit tests share (compiled for them only).

use std::path::PathBuf;
use std::process::Command;

/// Set in the child that [`run_alone`] starts.
const CHILD: &str = "HANDOFF_UNIT_TEST_CHILD";

/// True in the child process [`run_alone`] started: the test's body runs
/// there, where it may change process-wide state (the fd limit, the uid,
/// the environment) without touching the tests running beside it.
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs this test binary again with only `test` (its full path,
/// `module::tests::name`), `configure`d, and asserts that it passed.
pub fn run_alone(test: &str, configure: impl FnOnce(&mut Command)) {
    let mut command = Command::new(std::env::current_exe().expect("test binary")); // ok: test-only
    command.args(["--exact", test, "--test-threads=1"]).env(CHILD, "1");
    configure(&mut command);
    let output = command.output().expect("run the child"); // ok: test-only
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

/// A fresh directory under the temp dir, unique to this process, `module`
/// and `name` (emptied if a previous run left it).
pub fn scratch_dir(module: &str, name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("handoff-{module}-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir"); // ok: test-only
    dir
}

/// `poll.poll(events, timeout)`, again after EINTR: epoll_wait(2) fails
/// with it when the test process is stopped and continued (a paused CI
/// machine, a debugger), even without a signal handler (signal(7)).
pub fn poll_through_eintr(
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    timeout: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match poll.poll(events, Some(left)) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted && !left.is_zero() => {}
            result => return result.expect("poll"), // ok: test-only
        }
    }
}
