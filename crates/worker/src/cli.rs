//! Command-line options of `handoff-worker`.

use std::path::PathBuf;

use clap::Parser;

/// Registers with a running handoff-master and serves the connections it
/// hands over.
#[derive(Debug, Parser)]
#[command(name = "handoff-worker", version)]
pub struct Args {
    /// The master's run directory
    /// [default: $XDG_RUNTIME_DIR/handoff, else /tmp/handoff-<uid>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}
