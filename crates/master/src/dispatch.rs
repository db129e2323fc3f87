//! The dispatch policy: which worker gets the next connection.
//!
//! Pure: it sees only the order workers joined in, whether each can take
//! work right now and how much it holds, so it is unit-tested without
//! sockets.

/// Which worker gets the next connection (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Round-robin over the workers that can take work (Node's cluster).
    Rr,
    /// The worker with the fewest connections in flight; ties round-robin.
    Least,
    /// Like `Pool.apply_async`: only workers with free capacity get work
    /// (capacity defaults to 1), the rest waits in the master's queue.
    Pull,
}

impl Policy {
    /// The name `--policy` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Rr => "rr",
            Policy::Least => "least",
            Policy::Pull => "pull",
        }
    }
}

/// Round-robin over the workers in the order they registered, skipping those
/// that cannot take work (channel full, shutting down), as Node's cluster
/// module does.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: usize,
}

impl RoundRobin {
    /// Picks the next eligible position in `0..n`, starting after the last
    /// pick, or `None` when no position is eligible.
    pub fn next(&mut self, n: usize, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        for step in 0..n {
            let position = (self.cursor + step) % n;
            if eligible(position) {
                self.cursor = (position + 1) % n;
                return Some(position);
            }
        }
        None
    }
}

impl RoundRobin {
    /// The eligible position with the lowest load (`load` returns `None` for
    /// ineligible ones), scanning from the cursor so ties rotate. An idle
    /// one (load 0) ends the scan: nothing after it could win the tie, so a
    /// large pool with idle workers costs a few looks, not one per worker.
    pub fn least(&mut self, n: usize, mut load: impl FnMut(usize) -> Option<u64>) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for step in 0..n {
            let position = (self.cursor + step) % n;
            if let Some(l) = load(position) {
                if best.is_none_or(|(b, _)| l < b) {
                    best = Some((l, position));
                    if l == 0 {
                        break;
                    }
                }
            }
        }
        let (_, position) = best?;
        self.cursor = (position + 1) % n;
        Some(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(rr: &mut RoundRobin, n: usize, eligible: &[bool], count: usize) -> Vec<Option<usize>> {
        (0..count).map(|_| rr.next(n, |i| eligible[i])).collect()
    }

    #[test]
    fn cycles_through_every_worker() {
        let mut rr = RoundRobin::default();
        assert_eq!(
            picks(&mut rr, 3, &[true, true, true], 6),
            [0, 1, 2, 0, 1, 2].map(Some).to_vec()
        );
    }

    #[test]
    fn skips_workers_that_cannot_take_work() {
        let mut rr = RoundRobin::default();
        assert_eq!(picks(&mut rr, 3, &[true, false, true], 4), [0, 2, 0, 2].map(Some).to_vec());
    }

    #[test]
    fn none_when_nobody_is_eligible_or_nobody_is_there() {
        let mut rr = RoundRobin::default();
        assert_eq!(rr.next(2, |_| false), None);
        assert_eq!(rr.next(0, |_| true), None);
    }

    #[test]
    fn least_prefers_the_least_loaded_and_rotates_ties() {
        let mut rr = RoundRobin::default();
        let loads = [Some(3), Some(1), None, Some(1)];
        assert_eq!(rr.least(4, |i| loads[i]), Some(1));
        assert_eq!(rr.least(4, |i| loads[i]), Some(3), "tie: the next one after the last pick");
        assert_eq!(rr.least(4, |i| loads[i]), Some(1));
        assert_eq!(rr.least(2, |_| None), None);
    }

    #[test]
    fn least_stops_looking_at_the_first_idle_worker() {
        let mut rr = RoundRobin::default();
        let loads = [Some(2), Some(0), Some(0), Some(1)];
        let mut looked = Vec::new();
        let pick = rr.least(4, |i| {
            looked.push(i);
            loads[i]
        });
        assert_eq!(pick, Some(1));
        assert_eq!(looked, [0, 1], "nothing after an idle worker can win");
        // The cursor moved past it: the other idle one is next.
        assert_eq!(rr.least(4, |i| loads[i]), Some(2));
        assert_eq!(rr.least(4, |i| loads[i]), Some(1), "wrapped around");
    }

    #[test]
    fn resumes_after_the_last_pick_when_the_rotation_grows() {
        let mut rr = RoundRobin::default();
        assert_eq!(picks(&mut rr, 2, &[true; 2], 1), [Some(0)].to_vec());
        // A third worker registers: the rotation goes on from the second,
        // and the newcomer gets its turn before the first gets another.
        assert_eq!(picks(&mut rr, 3, &[true; 3], 4), [1, 2, 0, 1].map(Some).to_vec());
        let mut rr = RoundRobin::default();
        assert_eq!(picks(&mut rr, 2, &[true; 2], 2), [0, 1].map(Some).to_vec());
        // The cursor wrapped to 0 after the last of two.
        assert_eq!(picks(&mut rr, 3, &[true; 3], 3), [0, 1, 2].map(Some).to_vec());
        // least scans from the same cursor: with equal loads it picks the
        // position after the last pick, even a new one.
        let mut rr = RoundRobin::default();
        assert_eq!(rr.least(2, |_| Some(0)), Some(0));
        assert_eq!(rr.least(3, |_| Some(0)), Some(1));
        assert_eq!(rr.least(3, |_| Some(0)), Some(2));
    }

    #[test]
    fn survives_the_rotation_shrinking() {
        let mut rr = RoundRobin::default();
        assert_eq!(picks(&mut rr, 4, &[true; 4], 3), [0, 1, 2].map(Some).to_vec());
        // Cursor is now 3; with two workers left it wraps instead of panicking.
        assert_eq!(picks(&mut rr, 2, &[true; 2], 2), [1, 0].map(Some).to_vec());
    }
}
