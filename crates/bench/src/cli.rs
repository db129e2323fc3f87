//! Command-line options of `handoff-bench`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

/// Load generator for the article's protocol: one new TCP connection per
/// request (connect, send the payload, read to EOF, close), every reply checked.
#[derive(Debug, Parser)]
#[command(
    name = "handoff-bench",
    version,
    after_help = "`handoff-bench serve --help`: the plain baseline server (threads that accept and answer on their own).\n\
                  `handoff-bench refmaster --help`: the minimal reference master (accept4, sendmsg, close per connection) and its workers."
)]
pub struct Args {
    /// Server address; only loopback addresses are accepted.
    #[arg(long, short = 't', default_value = "127.0.0.1:6001")]
    pub target: SocketAddr,

    /// Connections kept in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,

    /// Event-loop threads sharing the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Seconds to measure for after the warm-up; with --requests, the time cap.
    #[arg(long, short = 'd', default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,

    /// Stop after this many completed connections in the window (or at --duration).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub warmup: Duration,

    /// Seconds one connection may take, connect to EOF, before it counts as a timeout.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Seconds to wait, after the window, for the connections still in flight
    /// (they are not counted; waiting only spares the server resets).
    #[arg(long, default_value = "0.5", value_parser = parse_seconds)]
    pub drain: Duration,

    /// Request payload (the article's protocol; at most 2048 bytes, one server read).
    #[arg(long, short = 'p', default_value = "hello", conflicts_with = "payload_bytes")]
    pub payload: String,

    /// Use a payload of this many 'x' bytes instead of --payload.
    #[arg(long)]
    pub payload_bytes: Option<usize>,

    /// Speak HTTP/1.1 instead: `GET PATH` with `Connection: close`, expect a 2xx reply.
    #[arg(long)]
    pub http: bool,

    /// Request path for --http.
    #[arg(long, default_value = "/")]
    pub path: String,

    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,

    /// Print `handoff-bench: window-start` / `window-end` lines on stderr at the
    /// window's edges, so a caller can sample server CPU over the same window.
    #[arg(long)]
    pub marks: bool,
}

/// The largest request the servers read at once (`recv(2048)`).
pub const MAX_PAYLOAD: usize = 2048;

impl Args {
    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<()> {
        if !self.target.ip().is_loopback() {
            bail!(
                "target {} is not a loopback address; this bench only loads 127.0.0.0/8 or ::1",
                self.target
            );
        }
        if self.concurrency == 0 || self.threads == 0 {
            bail!("--concurrency and --threads must be at least 1");
        }
        if self.threads > self.concurrency {
            bail!("--threads ({}) exceeds --concurrency ({})", self.threads, self.concurrency);
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if !self.http && self.payload().len() > MAX_PAYLOAD {
            bail!(
                "payload is {} bytes; the servers read one chunk of at most {MAX_PAYLOAD}",
                self.payload().len()
            );
        }
        Ok(())
    }

    /// The request payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        match self.payload_bytes {
            Some(n) => vec![b'x'; n],
            None => self.payload.as_bytes().to_vec(),
        }
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e6)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        let args =
            Args::try_parse_from(std::iter::once("handoff-bench").chain(args.iter().copied()))?;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.payload(), b"hello");
    }

    #[test]
    fn only_loopback_targets() {
        assert!(parse(&["--target", "127.0.0.2:80"]).is_ok());
        assert!(parse(&["--target", "[::1]:80"]).is_ok());
        assert!(parse(&["--target", "10.0.0.1:80"]).is_err());
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(parse(&["--payload-bytes", "2049"]).is_err());
        assert!(parse(&["--payload-bytes", "2048"]).is_ok());
        assert!(parse(&["-c", "2", "--threads", "3"]).is_err());
        assert!(parse(&["-n", "0"]).is_err());
        assert!(parse(&["-d", "-1"]).is_err());
    }

    #[test]
    fn threads_and_concurrency_bounds() {
        assert!(parse(&["-c", "1", "--threads", "0"]).is_err());
        assert!(parse(&["-c", "0", "--threads", "1"]).is_err());
        let both = parse(&["-c", "2", "--threads", "2"]).unwrap();
        assert_eq!((both.concurrency, both.threads), (2, 2));
        assert!(parse(&["-c", "1", "--threads", "1"]).is_ok());
    }

    #[test]
    fn http_payload_is_not_capped_and_payload_bytes_are_xs() {
        assert!(parse(&["--http", "--payload-bytes", "5000"]).is_ok());
        assert!(parse(&["--payload-bytes", "5000"]).is_err());
        assert_eq!(parse(&["--payload-bytes", "3"]).unwrap().payload(), b"xxx");
        assert_eq!(parse(&["--payload-bytes", "0"]).unwrap().payload(), b"");
        assert_eq!(parse(&["-p", "abc"]).unwrap().payload(), b"abc");
    }

    #[test]
    fn seconds_are_finite_non_negative_and_under_a_million() {
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("999999.5"), Ok(Duration::from_secs_f64(999_999.5)));
        for bad in ["1000000", "1e6", "2e6", "-1", "-0.001", "NaN", "inf", "-inf", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad:?} accepted");
        }
        // Through clap too: `--duration=-1` is a value, not a flag.
        assert!(parse(&["--duration=-1"]).is_err());
        assert!(parse(&["--warmup=-0.5"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        let args =
            parse(&["--warmup", "0", "-d", "0.5", "--timeout", "2", "--drain", "0"]).unwrap();
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.duration, Duration::from_millis(500));
        assert_eq!(args.timeout, Duration::from_secs(2));
        assert_eq!(args.drain, Duration::ZERO);
    }
}
