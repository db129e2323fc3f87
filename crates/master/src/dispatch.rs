//! The dispatch policy: which worker gets the next connection.
//!
//! Pure: it sees only the order workers joined in and whether each can take
//! work right now, so it is unit-tested without sockets.

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
    fn survives_the_rotation_shrinking() {
        let mut rr = RoundRobin::default();
        assert_eq!(picks(&mut rr, 4, &[true; 4], 3), [0, 1, 2].map(Some).to_vec());
        // Cursor is now 3; with two workers left it wraps instead of panicking.
        assert_eq!(picks(&mut rr, 2, &[true; 2], 2), [1, 0].map(Some).to_vec());
    }
}
