//! `handoff-master`: accepts TCP connections and hands each connected fd to a
//! worker process over a Unix socket (SCM_RIGHTS). See ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod cli;
mod control;
mod dispatch;
mod metrics;
mod run_dir;
mod server;
mod supervisor;
mod tcp;
mod workers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    handoff_logging::init();
    match server::run(args) {
        Ok(server::Exit::Clean) => ExitCode::SUCCESS,
        Ok(server::Exit::Forced) => ExitCode::from(1),
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("handoff-master: {err:#}");
            ExitCode::from(2)
        }
    }
}
