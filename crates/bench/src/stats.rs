//! Counters and latency histograms per thread, merged into one [`Summary`].

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `ECONNREFUSED` on connect (backlog full, or nobody listening).
    Refused,
    /// `ECONNRESET` / `EPIPE` while sending or reading.
    Reset,
    /// No EOF within the per-request timeout.
    Timeout,
    /// EOF before the whole reply arrived.
    ShortReply,
    /// A reply byte differed from the expected one, or came too many.
    WrongReply,
    /// Anything else (e.g. `EADDRNOTAVAIL` when ephemeral ports run out).
    Other,
}

/// Failed connections by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub short_reply: u64,
    pub wrong_reply: u64,
    pub other: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        let slot = match kind {
            ErrorKind::Refused => &mut self.refused,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::ShortReply => &mut self.short_reply,
            ErrorKind::WrongReply => &mut self.wrong_reply,
            ErrorKind::Other => &mut self.other,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.short_reply + self.wrong_reply + self.other
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.short_reply += other.short_reply;
        self.wrong_reply += other.wrong_reply;
        self.other += other.other;
    }
}

/// Highest latency the histogram tracks (µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What one thread measured inside the window.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Correct replies.
    pub ok: u64,
    pub errors: ErrorCounts,
    /// Latency of correct replies, µs from connect to EOF.
    pub latency_us: Histogram<u64>,
}

impl Stats {
    pub fn new() -> Result<Stats> {
        let latency_us = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .context("creating the latency histogram")?;
        Ok(Stats { ok: 0, errors: ErrorCounts::default(), latency_us })
    }

    /// Records a correct reply; never allocates (the range is fixed).
    pub fn record_ok(&mut self, latency_us: u64) {
        self.ok += 1;
        self.latency_us.saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
    }

    pub fn record_error(&mut self, kind: ErrorKind) {
        self.errors.add(kind);
    }

    pub fn merge(&mut self, other: &Stats) -> Result<()> {
        self.ok += other.ok;
        self.errors.merge(&other.errors);
        self.latency_us.add(&other.latency_us).context("merging latency histograms")
    }

    /// Completed connections, correct or not.
    pub fn completed(&self) -> u64 {
        self.ok + self.errors.total()
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// The bench's own CPU time over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
    pub total_s: f64,
    /// CPU µs per completed connection (correct or not).
    pub us_per_conn: f64,
    /// CPU time / window, in % of one core.
    pub percent: f64,
}

/// The machine-readable result (`--json` prints it as one line).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub mode: &'static str,
    pub concurrency: usize,
    pub threads: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub window_s: f64,
    /// Correct replies in the window.
    pub connections: u64,
    /// Correct replies per second.
    pub conns_per_s: f64,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    pub latency_us: Latency,
    pub cpu: Cpu,
    /// Connections completed during warm-up (not counted above).
    pub warmup_connections: u64,
    /// Connections still open at the end and closed without a verdict.
    pub abandoned: u64,
}

impl Summary {
    /// Derives rates from merged stats and raw CPU seconds.
    pub fn compute(stats: &Stats, window_s: f64, user_s: f64, sys_s: f64) -> (f64, Latency, Cpu) {
        let rate = if window_s > 0.0 { stats.ok as f64 / window_s } else { 0.0 };
        let total_s = user_s + sys_s;
        let completed = stats.completed();
        let cpu = Cpu {
            user_s,
            sys_s,
            total_s,
            us_per_conn: if completed > 0 { total_s * 1e6 / completed as f64 } else { 0.0 },
            percent: if window_s > 0.0 { total_s * 100.0 / window_s } else { 0.0 },
        };
        (rate, Latency::of(&stats.latency_us), cpu)
    }

    /// A short human summary.
    pub fn human(&self) -> String {
        let e = &self.errors;
        format!(
            "{target} ({mode}, {c} concurrent, {t} thread(s), {p} B payload)\n\
             {n} connections in {w:.2} s: {rate:.0} conn/s\n\
             errors: {total} (refused {r}, reset {rs}, timeout {to}, short {sh}, wrong {wr}, other {o})\n\
             {ab} still in flight at the end (closed uncounted), {wu} during warm-up\n\
             latency µs: p50 {p50}  p90 {p90}  p99 {p99}  max {max}\n\
             bench CPU: {cpu:.3} s ({pct:.0}% of a core), {us:.1} µs per connection",
            target = self.target,
            mode = self.mode,
            c = self.concurrency,
            t = self.threads,
            p = self.payload_bytes,
            n = self.connections,
            w = self.window_s,
            rate = self.conns_per_s,
            total = self.errors_total,
            r = e.refused,
            rs = e.reset,
            to = e.timeout,
            sh = e.short_reply,
            wr = e.wrong_reply,
            o = e.other,
            ab = self.abandoned,
            wu = self.warmup_connections,
            p50 = self.latency_us.p50,
            p90 = self.latency_us.p90,
            p99 = self.latency_us.p99,
            max = self.latency_us.max,
            cpu = self.cpu.total_s,
            pct = self.cpu.percent,
            us = self.cpu.us_per_conn,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_by_kind_and_merge() {
        let mut a = Stats::new().unwrap();
        a.record_error(ErrorKind::Refused);
        a.record_error(ErrorKind::Refused);
        a.record_error(ErrorKind::WrongReply);
        let mut b = Stats::new().unwrap();
        b.record_error(ErrorKind::Timeout);
        b.record_error(ErrorKind::ShortReply);
        b.record_error(ErrorKind::Reset);
        b.record_error(ErrorKind::Other);
        a.merge(&b).unwrap();
        assert_eq!(
            a.errors,
            ErrorCounts {
                refused: 2,
                reset: 1,
                timeout: 1,
                short_reply: 1,
                wrong_reply: 1,
                other: 1
            }
        );
        assert_eq!(a.errors.total(), 7);
        assert_eq!(a.completed(), 7);
    }

    #[test]
    fn percentiles_of_merged_histograms() {
        let mut a = Stats::new().unwrap();
        let mut b = Stats::new().unwrap();
        for us in 1..=50 {
            a.record_ok(us * 10);
        }
        for us in 51..=100 {
            b.record_ok(us * 10);
        }
        b.record_ok(0); // clamped to 1 µs
        a.merge(&b).unwrap();
        assert_eq!(a.ok, 101);
        let lat = Latency::of(&a.latency_us);
        assert!((495..=505).contains(&lat.p50), "{lat:?}");
        assert!((895..=905).contains(&lat.p90), "{lat:?}");
        assert!((985..=1001).contains(&lat.p99), "{lat:?}");
        assert!((1000..=1001).contains(&lat.max), "{lat:?}");
    }

    #[test]
    fn rates_and_cpu_per_connection() {
        let mut s = Stats::new().unwrap();
        for _ in 0..1000 {
            s.record_ok(100);
        }
        s.record_error(ErrorKind::Refused);
        let (rate, lat, cpu) = Summary::compute(&s, 2.0, 0.01, 0.02);
        assert_eq!(rate, 500.0);
        assert_eq!(lat.p50, 100);
        assert!((cpu.us_per_conn - 30_000.0 / 1001.0).abs() < 1e-6);
        assert!((cpu.percent - 1.5).abs() < 1e-9);
        let empty = Stats::new().unwrap();
        let (rate, lat, cpu) = Summary::compute(&empty, 0.0, 0.0, 0.0);
        assert_eq!((rate, lat.max, cpu.us_per_conn), (0.0, 0, 0.0));
        // CPU spent, but no window and no connection: no rate, not infinity.
        let (_, _, cpu) = Summary::compute(&empty, 0.0, 0.25, 0.5);
        assert_eq!((cpu.total_s, cpu.us_per_conn, cpu.percent), (0.75, 0.0, 0.0));
        // Errors count as completed connections for the CPU per connection.
        let mut failed = Stats::new().unwrap();
        failed.record_error(ErrorKind::Reset);
        failed.record_error(ErrorKind::Other);
        let (rate, _, cpu) = Summary::compute(&failed, 0.5, 0.001, 0.0);
        assert_eq!(rate, 0.0);
        assert!((cpu.us_per_conn - 500.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.percent - 0.2).abs() < 1e-9, "{cpu:?}");
    }

    #[test]
    fn human_summary_shows_every_count() {
        let summary = Summary {
            target: "127.0.0.1:6001".into(),
            mode: "article",
            concurrency: 8,
            threads: 2,
            payload_bytes: 5,
            warmup_s: 1.0,
            window_s: 2.0,
            connections: 1000,
            conns_per_s: 500.0,
            errors: ErrorCounts {
                refused: 1,
                reset: 2,
                timeout: 3,
                short_reply: 4,
                wrong_reply: 5,
                other: 6,
            },
            errors_total: 21,
            latency_us: Latency { p50: 10, p90: 20, p99: 30, max: 40, mean: 12.5 },
            cpu: Cpu { user_s: 0.25, sys_s: 0.5, total_s: 0.75, us_per_conn: 730.7, percent: 37.5 },
            warmup_connections: 7,
            abandoned: 9,
        };
        assert_eq!(
            summary.human(),
            "127.0.0.1:6001 (article, 8 concurrent, 2 thread(s), 5 B payload)\n\
             1000 connections in 2.00 s: 500 conn/s\n\
             errors: 21 (refused 1, reset 2, timeout 3, short 4, wrong 5, other 6)\n\
             9 still in flight at the end (closed uncounted), 7 during warm-up\n\
             latency µs: p50 10  p90 20  p99 30  max 40\n\
             bench CPU: 0.750 s (38% of a core), 730.7 µs per connection"
        );
    }
}
