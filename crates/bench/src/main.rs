//! `handoff-bench`: a load generator for the article's protocol (one TCP
//! connection per request, every reply checked). See `--help`.
#![forbid(unsafe_code)]

mod check;
mod cli;
mod cpu;
mod engine;
mod run;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;

fn main() -> Result<()> {
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
