//! Man pages and shell completions come from the binaries' own flag
//! definitions (`HANDOFF_GENERATE_DOCS`, `make man`).

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn every_binary_writes_its_man_page_and_completions_naming_its_flags() {
    let scratch = Scratch::new();
    let dir = scratch.path().join("docs");
    for (binary, flag) in [
        ("handoff-master", "--salvage"),
        ("handoff-worker", "--read-timeout"),
        ("handoff-ctl", "--run-dir"),
    ] {
        let mut child = Command::new(bin(binary))
            .env("HANDOFF_GENERATE_DOCS", &dir)
            .args(["--run-dir", &scratch.run_dir().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{binary}: {err}"));
        // It must write and exit at once, not start serving.
        let mut status = None;
        wait_until(WAIT, "the binary to write its docs and exit", || {
            status = child.try_wait().expect("wait");
            status.is_some()
        });
        let status = status.expect("exited");
        assert!(status.success(), "{binary} exited {status}");
        let page = read_to_string(&dir.join("man").join(format!("{binary}.1")));
        assert!(page.contains(&format!(".TH {binary}")), "{binary}: not a man page");
        // roff escapes each dash of a flag.
        assert!(page.contains(&flag.replace('-', "\\-")), "{binary}: man page lacks {flag}");
        // What clap does not know: the exit statuses (and the signals of
        // the daemons).
        assert!(page.contains(".SH \"EXIT STATUS\""), "{binary}: no EXIT STATUS");
        assert!(page.contains("\\fB64\\fR"), "{binary}: exit 64 not described");
        if binary != "handoff-ctl" {
            assert!(page.contains(".SH \"SIGNALS\""), "{binary}: no SIGNALS");
            assert!(page.contains("SIGTERM"), "{binary}: SIGTERM not described");
        }
        for shell in ["bash", "zsh", "fish"] {
            let completion =
                read_to_string(&dir.join("completions").join(format!("{binary}.{shell}")));
            assert!(
                completion.contains(flag.trim_start_matches('-')),
                "{binary}: {shell} completion lacks {flag}"
            );
        }
    }
}
