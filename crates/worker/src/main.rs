//! `handoff-worker`: registers with a running `handoff-master`, receives
//! connected TCP fds over its Unix channel, and serves them with the
//! article's protocol. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod article;
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

/// Exit statuses, after sysexits(3) as the master's: 0 after a clean exit,
/// 64 (EX_USAGE) for a bad command line, 69 (EX_UNAVAILABLE) when it could
/// not start or register, 70 (EX_SOFTWARE) when it failed while serving
/// (the logged error says which).
fn main() -> ExitCode {
    // Docs if asked; a bad command line exits 64 (EX_USAGE), --help 0.
    let args = match handoff_docgen::parse_or_exit::<cli::Args>() {
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
