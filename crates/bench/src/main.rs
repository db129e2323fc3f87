//! `handoff-bench`: a load generator for the article's protocol (one TCP
//! connection per request, every reply checked). See `--help`.
//! `handoff-bench serve` runs the comparison's plain baseline server instead
//! (see `handoff-bench serve --help` and `serve.rs`).
#![forbid(unsafe_code)]

mod check;
mod cli;
mod cpu;
mod engine;
mod run;
mod serve;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;

fn main() -> Result<()> {
    let mut argv = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "serve") {
        argv.next();
        argv.next();
        return serve::main(std::iter::once("handoff-bench serve".into()).chain(argv));
    }
    let args = cli::Args::parse();
    args.validate()?;
    let summary = run::run(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary).context("encoding the JSON result")?);
    } else {
        println!("{}", summary.human());
    }
    Ok(())
}
