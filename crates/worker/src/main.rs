//! `handoff-worker`: registers with a running `handoff-master`, receives
//! connected TCP fds over its Unix channel, and serves them with the
//! article's protocol. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod cli;
mod conn;
mod http;
mod registration;
mod server;
mod stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    init_logging();
    match server::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
