//! Command-line options of `handoff-worker`.

use std::path::PathBuf;
use std::time::Duration;

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

    /// Seconds between stats reports to the master (CPU, memory,
    /// latencies); the master can also ask for one at any time.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub report_interval: Duration,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}
