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

    #[test]
    fn since_is_the_difference_never_negative() {
        let later = CpuTimes { user_s: 1.5, sys_s: 0.75 };
        let earlier = CpuTimes { user_s: 1.0, sys_s: 0.25 };
        assert_eq!(later.since(earlier), CpuTimes { user_s: 0.5, sys_s: 0.5 });
        assert_eq!(earlier.since(later), CpuTimes { user_s: 0.0, sys_s: 0.0 });
    }

    /// utime + stime of this process from /proc/self/stat, in seconds.
    fn proc_cpu_seconds() -> (f64, f64) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = stat.rsplit_once(") ").unwrap().1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `rest` starts at field 3.
        // USER_HZ, in which /proc counts, is 100 on Linux.
        let tick = 100.0;
        (fields[11].parse::<f64>().unwrap() / tick, fields[12].parse::<f64>().unwrap() / tick)
    }

    #[test]
    fn now_is_in_seconds_like_the_kernels_own_count() {
        // Some user and some system CPU time first (system time: reading
        // /proc is all system calls), so that neither counter is zero.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            for _ in 0..20 {
                std::hint::black_box(proc_cpu_seconds());
            }
            let (user, sys) = proc_cpu_seconds();
            if user >= 0.02 && sys >= 0.02 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no CPU time counted: {user} {sys}");
        }
        let (user_before, sys_before) = proc_cpu_seconds();
        let now = CpuTimes::now().unwrap();
        let (user_after, sys_after) = proc_cpu_seconds();
        // Other tests run in this process meanwhile: allow a quarter second
        // and a tick either side.
        let slack = 0.25;
        assert!(
            now.user_s >= user_before - slack && now.user_s <= user_after + slack,
            "{now:?} vs /proc user {user_before}..{user_after}"
        );
        assert!(
            now.sys_s >= sys_before - slack && now.sys_s <= sys_after + slack,
            "{now:?} vs /proc sys {sys_before}..{sys_after}"
        );
    }
}
