//! What a handoff process costs: CPU time (`getrusage`) and resident memory
//! (`/proc/self/statm`). Both the master and its workers report these.

use nix::sys::resource::{getrusage, UsageWho};

/// CPU and memory of the calling process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// CPU time in user mode, microseconds.
    pub cpu_user_us: u64,
    /// CPU time in kernel mode, microseconds.
    pub cpu_sys_us: u64,
    /// Resident set size, bytes (0 if /proc cannot be read).
    pub rss_bytes: u64,
}

impl ProcessUsage {
    /// Measures the calling process now.
    pub fn of_self() -> ProcessUsage {
        let (cpu_user_us, cpu_sys_us) = match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(usage) => (micros(usage.user_time()), micros(usage.system_time())),
            Err(_) => (0, 0),
        };
        ProcessUsage { cpu_user_us, cpu_sys_us, rss_bytes: rss_bytes().unwrap_or(0) }
    }

    /// User plus system CPU, microseconds.
    pub fn cpu_us(&self) -> u64 {
        self.cpu_user_us + self.cpu_sys_us
    }
}

fn micros(time: nix::sys::time::TimeVal) -> u64 {
    (time.tv_sec() as u64) * 1_000_000 + time.tv_usec() as u64
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(resident_pages * page_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_adds_user_and_system_in_microseconds() {
        let usage = ProcessUsage { cpu_user_us: 3, cpu_sys_us: 2, rss_bytes: 0 };
        assert_eq!(usage.cpu_us(), 5);
        assert_eq!(micros(nix::sys::time::TimeVal::new(2, 500)), 2_000_500);
    }

    #[test]
    fn rss_matches_what_proc_says() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        let rss = rss_bytes().expect("rss");
        // Read at slightly different times: within a few MiB.
        assert!(rss.abs_diff(kib * 1024) < 8 << 20, "{rss} vs {kib} KiB");
    }

    #[test]
    fn cpu_grows_with_work_and_rss_is_plausible() {
        let before = ProcessUsage::of_self();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = ProcessUsage::of_self();
        assert!(after.cpu_us() > before.cpu_us(), "{before:?} -> {after:?}");
        assert!(after.rss_bytes > 100_000 && after.rss_bytes < 1 << 34, "{after:?}");
    }
}
