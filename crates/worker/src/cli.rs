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

    /// Seconds a client has, from the hand-off, to send its request and take
    /// the reply; then the connection is closed and counted as timed out.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub read_timeout: Duration,

    /// The most connections this worker holds at once; the master sends no
    /// more while it is at the cap (0 = no cap).
    #[arg(long, alias = "capacity", default_value_t = 0)]
    pub max_conns: u32,

    /// The protocol spoken to clients.
    #[arg(long, value_enum, default_value = "article")]
    pub protocol: crate::protocol::Protocol,

    /// Simulated CPU work per request, microseconds of busy loop.
    #[arg(long, default_value_t = 0)]
    pub work_us: u64,

    /// Simulated delay per request, milliseconds; the worker serves other
    /// connections meanwhile.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's `send-proxy`
    /// and `send-proxy-v2` send) before each client's bytes; its client
    /// address becomes the connection's peer. A connection without a valid
    /// one is closed without a reply and counted as failed.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// `normal` (the default): keep the scheduling class it was started
    /// with; `batch`: run in SCHED_BATCH, so that this worker, woken by a
    /// hand-off, waits for the master to sleep or use up its slice instead
    /// of preempting it (measured in docs/performance.md).
    #[arg(long, default_value = "normal", value_parser = ["batch", "normal"])]
    pub scheduling: String,
}

impl Args {
    pub fn work(&self) -> crate::conn::Work {
        crate::conn::Work {
            busy: Duration::from_micros(self.work_us),
            delay: Duration::from_millis(self.delay_ms),
        }
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("1e-6"), Ok(Duration::from_micros(1)));
        for bad in ["0", "0.0", "-0", "-1", "inf", "NaN", "", "1s"] {
            let err = parse_seconds(bad).expect_err(bad); // ok: test
            assert_eq!(err, format!("`{bad}` is not a positive number of seconds"));
        }
    }
}
