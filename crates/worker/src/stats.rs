//! The worker's own measurements: hand-off latency and handling time
//! histograms (HDR, microseconds, over the worker's life), plus CPU and
//! memory at report time. Recording does not allocate.

use handoff_fdpass::ProcessUsage;
use handoff_proto::WorkerStats;
use hdrhistogram::Histogram;

/// Highest latency the histograms track exactly: one hour, in µs; longer
/// values are recorded as this.
const MAX_TRACKED_US: u64 = 3_600_000_000;

pub struct Recorder {
    handoff_us: Histogram<u64>,
    handling_us: Histogram<u64>,
}

impl Recorder {
    pub fn new() -> Result<Recorder, hdrhistogram::CreationError> {
        Ok(Recorder { handoff_us: histogram()?, handling_us: histogram()? })
    }

    /// Master accept → this worker received the fd.
    pub fn record_handoff(&mut self, accepted_at_ns: u64, received_at_ns: u64) {
        self.handoff_us.saturating_record(received_at_ns.saturating_sub(accepted_at_ns) / 1000);
    }

    /// Received → closed.
    pub fn record_handling(&mut self, received_at_ns: u64, closed_at_ns: u64) {
        self.handling_us.saturating_record(closed_at_ns.saturating_sub(received_at_ns) / 1000);
    }

    /// A report for the master.
    pub fn snapshot(&self, in_flight: usize) -> WorkerStats {
        let usage = ProcessUsage::of_self();
        WorkerStats {
            self_accepted_done: Default::default(),
            accepted: 0,
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
            cpu_user_us: usage.cpu_user_us,
            cpu_sys_us: usage.cpu_sys_us,
            rss_bytes: usage.rss_bytes,
            handling_p50_us: self.handling_us.value_at_quantile(0.5),
            handling_p99_us: self.handling_us.value_at_quantile(0.99),
            handoff_p50_us: self.handoff_us.value_at_quantile(0.5),
            handoff_p99_us: self.handoff_us.value_at_quantile(0.99),
        }
    }
}

/// Two significant digits over 1 µs ..= 1 h: a few KiB, never resized.
fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_reflect_what_was_recorded() {
        let mut recorder = Recorder::new().expect("valid bounds");
        for i in 1..=100u64 {
            recorder.record_handoff(0, i * 1000);
            recorder.record_handling(0, i * 10_000);
        }
        let stats = recorder.snapshot(3);
        assert_eq!(stats.in_flight, 3);
        assert!((49..=51).contains(&stats.handoff_p50_us), "{stats:?}");
        assert!((98..=100).contains(&stats.handoff_p99_us), "{stats:?}");
        assert!((490..=510).contains(&stats.handling_p50_us), "{stats:?}");
        assert!(stats.cpu_user_us + stats.cpu_sys_us > 0);
    }

    #[test]
    fn clock_skew_and_huge_values_do_not_panic() {
        let mut recorder = Recorder::new().expect("valid bounds");
        recorder.record_handoff(10, 5);
        recorder.record_handling(0, u64::MAX);
        let stats = recorder.snapshot(0);
        assert!(stats.handling_p99_us >= MAX_TRACKED_US / 2);
    }
}
