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

use clap::Parser;

/// Exit statuses: 0 after a clean exit, 64 (EX_USAGE, as the master) for a
/// bad command line, 2 when it could not register or failed while serving
/// (the logged error says which).
fn main() -> ExitCode {
    if let Some(code) =
        handoff_docgen::generate_if_asked(<cli::Args as clap::CommandFactory>::command())
    {
        return code;
    }
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { 64 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    handoff_logging::init();
    match server::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(2)
        }
    }
}
