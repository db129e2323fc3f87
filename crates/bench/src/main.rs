//! `handoff-bench`: a load generator for the article's protocol (one TCP
//! connection per request, every reply checked). See `--help`.
//! `handoff-bench serve` runs the comparison's plain baseline server instead
//! (see `handoff-bench serve --help` and `serve.rs`), and
//! `handoff-bench refmaster` the minimal reference master with its
//! `refworker`s (`refmaster.rs`), and `handoff-bench hold` opens and holds
//! idle connections for the scale run (`hold.rs`).
#![forbid(unsafe_code)]

mod check;
mod cli;
mod cpu;
mod engine;
mod hold;
mod refmaster;
mod run;
mod serve;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;

fn main() -> Result<()> {
    // Subcommands: clap sees `handoff-bench NAME` as the program name.
    let sub = |name: &str| {
        std::iter::once(format!("handoff-bench {name}").into()).chain(std::env::args_os().skip(2))
    };
    match std::env::args_os().nth(1).as_ref().and_then(|arg| arg.to_str()) {
        Some("serve") => return serve::main(sub("serve")),
        Some("refmaster") => return refmaster::main(sub("refmaster")),
        Some("refworker") => return refmaster::worker_main(sub("refworker")),
        Some("hold") => return hold::main(sub("hold")),
        _ => {}
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
