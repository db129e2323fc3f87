//! `handoff-worker`: registers with a running `handoff-master`, receives
//! connected TCP fds over its Unix channel, and serves them with the
//! article's protocol. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod cli;
mod conn;
mod http;
mod registration;
mod server;
mod socket;
mod stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    handoff_logging::init();
    match server::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(2)
        }
    }
}
