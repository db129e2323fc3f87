//! `handoff-master`: accepts TCP connections and hands each connected fd to a
//! worker process over a Unix socket (SCM_RIGHTS). See ARCHITECTURE.md.
//!
//! This file parses the command line and turns the outcome into an exit
//! status, after the sysexits(3) convention ([`exit`]); a fatal error is
//! printed once, as one plain line on stderr.
#![forbid(unsafe_code)]

mod agent;
mod cli;
mod control;
mod dispatch;
mod metrics;
mod notify;
mod pid_file;
mod privileges;
mod run_dir;
mod server;
mod spare;
mod supervisor;
mod tcp;
#[cfg(test)]
mod test_support;
mod workers;

use std::io::Write;
use std::process::ExitCode;

/// The master's exit statuses (README, "Flags").
pub mod exit {
    /// Stopped cleanly: every accepted connection answered, workers gone.
    pub const CLEAN: u8 = 0;
    /// Stopped by force (graceful timeout, a second stop signal, SIGQUIT),
    /// or clients were lost during the stop.
    pub const FORCED: u8 = 1;
    /// EX_USAGE: a bad command line (returned by `handoff_docgen::parse_or_exit`).
    pub const USAGE: u8 = 64;
    /// EX_UNAVAILABLE: could not start (address in use, run dir taken or
    /// unusable, worker binary missing: the message says which).
    pub const CANNOT_START: u8 = 69;
    /// EX_SOFTWARE: failed after it started (the event loop broke).
    pub const FAILED: u8 = 70;
}

/// The man page's SIGNALS and EXIT STATUS (docs/operating.md has the same).
const MAN_SECTIONS: &[handoff_docgen::ManSection] = &[
    (
        "SIGNALS",
        &[
            ("SIGTERM", "Graceful stop: with --drain-secs the agent check says drain that long while serving on, then the listener closes, every accepted client is answered, the workers finish. A second SIGTERM closes the listener now; a third stops at once."),
            ("SIGINT", "Graceful stop at once, without the drain; a second one stops at once."),
            ("SIGQUIT", "Stop at once (exit 1)."),
            ("SIGHUP", "Replace every spawned worker, one by one, losing no connection."),
            ("SIGUSR2", "Upgrade: start a new master from the executable on disk and hand it the sockets."),
            ("SIGTTIN, SIGTTOU", "One spawned worker more, or less."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "Stopped cleanly: every accepted client answered, the workers gone."),
            ("1", "Stopped by force (graceful timeout, a second signal, SIGQUIT), or clients were lost during the stop."),
            ("64", "A bad command line (EX_USAGE)."),
            ("69", "Could not start (EX_UNAVAILABLE): the one error line says why."),
            ("70", "Failed while running (EX_SOFTWARE)."),
        ],
    ),
];

fn main() -> ExitCode {
    // Docs if asked; a bad command line exits 64 (EX_USAGE), --help 0.
    let mut args = match handoff_docgen::parse_or_exit_with::<cli::Args>(MAN_SECTIONS) {
        Ok(args) => args,
        Err(code) => return code,
    };
    args.resolve_port_shorthand();
    if let Err(why) = args.check_combinations() {
        let _ = writeln!(handoff_logging::Stderr, "handoff-master: {why}");
        return ExitCode::from(exit::USAGE);
    }
    let format = handoff_logging::Format::parse(&args.log_format).unwrap_or_default();
    // Single-threaded still: spawned workers inherit the variable.
    std::env::set_var(handoff_logging::FORMAT_VAR, format.as_str());
    handoff_logging::init_with(format);
    match server::run(args) {
        Ok(server::Exit::Clean) => ExitCode::from(exit::CLEAN),
        Ok(server::Exit::Forced) => ExitCode::from(exit::FORCED),
        Err(err) => {
            let code = if err.is::<server::Running>() { exit::FAILED } else { exit::CANNOT_START };
            // One plain line (not also a log line), and never a panic if
            // stderr is closed.
            let _ = writeln!(handoff_logging::Stderr, "handoff-master: {err:#}");
            ExitCode::from(code)
        }
    }
}
