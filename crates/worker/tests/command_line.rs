//! The built `handoff-worker` binary answers `--version` and refuses a bad
//! flag with EX_USAGE (64). Being an integration test of this package, it
//! also makes `cargo test --workspace` build the binary itself, so the
//! end-to-end suite (tests/e2e.rs) never runs a stale one (`make
//! mutants` relies on that).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_handoff-worker");

#[test]
fn version_exits_zero_and_names_the_binary() {
    let output = Command::new(BIN).arg("--version").output().expect("run the binary");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("handoff-worker "), "{stdout}");
}

#[test]
fn an_unknown_flag_exits_64_and_says_which() {
    let output = Command::new(BIN).arg("--no-such-flag").output().expect("run the binary");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
}
