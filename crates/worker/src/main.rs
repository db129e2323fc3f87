//! `handoff-worker`: registers with a running `handoff-master`, receives
//! connected TCP fds over its Unix channel, and serves them with the
//! article's protocol. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod article;
mod channel_watch;

mod cli;
mod conn;
mod fd_room;
mod http;
mod protocol;
mod proxy;
mod registration;
mod server;
mod socket;
mod stats;

use std::process::ExitCode;

/// The man page's SIGNALS and EXIT STATUS.
const MAN_SECTIONS: &[handoff_docgen::ManSection] = &[
    (
        "SIGNALS",
        &[
            ("SIGTERM, SIGINT", "Leave: ask the master for no more work, finish what it holds, exit 0. A second one exits now."),
            ("other signals that would end it", "Logged and ignored."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "A clean exit."),
            ("64", "A bad command line (EX_USAGE)."),
            ("69", "Could not start or register with the master (EX_UNAVAILABLE)."),
            ("70", "Failed while serving (EX_SOFTWARE)."),
        ],
    ),
];

/// Exit statuses, after sysexits(3) as the master's: 0 after a clean exit,
/// 64 (EX_USAGE) for a bad command line, 69 (EX_UNAVAILABLE) when it could
/// not start or register, 70 (EX_SOFTWARE) when it failed while serving
/// (the logged error says which).
fn main() -> ExitCode {
    // Docs if asked; a bad command line exits 64 (EX_USAGE), --help 0.
    let args = match handoff_docgen::parse_or_exit_with::<cli::Args>(MAN_SECTIONS) {
        Ok(args) => args,
        Err(code) => return code,
    };
    handoff_logging::init();
    match server::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(if err.is::<server::Serving>() { 70 } else { 69 })
        }
    }
}
