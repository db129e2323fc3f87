//! The bench's own CPU time, all threads (`getrusage(RUSAGE_SELF)`).

use anyhow::{Context, Result};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;

/// User and system CPU time of this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    pub fn now() -> Result<CpuTimes> {
        let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
        Ok(CpuTimes {
            user_s: usage.user_time().num_microseconds() as f64 / 1e6,
            sys_s: usage.system_time().num_microseconds() as f64 / 1e6,
        })
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        // Spin until 5 ms of CPU show, however loaded the machine (a fixed
        // 30 ms of wall time got under 5 ms of CPU with both cores busy);
        // a clock that never moves fails at the deadline.
        let before = CpuTimes::now().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
            let spent = CpuTimes::now().unwrap().since(before);
            if spent.user_s + spent.sys_s > 0.005 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no CPU time counted: {spent:?}");
        }
    }
}
