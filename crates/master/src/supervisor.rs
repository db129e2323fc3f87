//! Supervision policy: how many spawned workers to keep, and how fast to
//! replace ones that die. Pure (it is told the time), so it is unit-tested.
//!
//! A worker that dies is replaced at once, as gunicorn's arbiter does. When
//! deaths pile up (three or more within [`CRASH_WINDOW`]) the replacement
//! waits, doubling from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], and with
//! [`CRASH_LOOP_DEATHS`] deaths in the window the master reports a crash
//! loop, so a worker that cannot start does not make the master spin.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Deaths older than this no longer count toward backoff.
pub const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// First delay once deaths pile up.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between respawns.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deaths within the window that count as a crash loop.
pub const CRASH_LOOP_DEATHS: usize = 5;

#[derive(Debug)]
pub struct Supervisor {
    /// Spawned workers to keep running.
    pub target: usize,
    recent_deaths: VecDeque<Instant>,
    /// No respawn before this.
    pub respawn_not_before: Option<Instant>,
    /// Deaths not yet made up for by a respawn.
    pub owed_respawns: usize,
    pub deaths: u64,
    pub respawns: u64,
    pub crash_loop: bool,
}

impl Supervisor {
    pub fn new(target: usize) -> Supervisor {
        Supervisor {
            target,
            recent_deaths: VecDeque::new(),
            respawn_not_before: None,
            owed_respawns: 0,
            deaths: 0,
            respawns: 0,
            crash_loop: false,
        }
    }

    /// A spawned worker died without being asked to. Returns true when this
    /// death starts a crash loop (for a one-time log line).
    pub fn record_death(&mut self, now: Instant) -> bool {
        self.deaths += 1;
        self.owed_respawns += 1;
        while self.recent_deaths.front().is_some_and(|&at| now.duration_since(at) > CRASH_WINDOW) {
            self.recent_deaths.pop_front();
        }
        self.recent_deaths.push_back(now);
        let n = self.recent_deaths.len();
        let delay = if n < 3 {
            Duration::ZERO
        } else {
            FIRST_BACKOFF.saturating_mul(1 << (n - 3).min(16)).min(MAX_BACKOFF)
        };
        self.respawn_not_before = Some(now + delay);
        let was_looping = self.crash_loop;
        self.crash_loop = n >= CRASH_LOOP_DEATHS;
        self.crash_loop && !was_looping
    }

    /// May a worker be spawned now?
    pub fn may_spawn(&self, now: Instant) -> bool {
        self.respawn_not_before.is_none_or(|at| at <= now)
    }

    /// A worker was spawned; counts it as a respawn if a death was owed.
    pub fn spawned(&mut self) {
        if self.owed_respawns > 0 {
            self.owed_respawns -= 1;
            self.respawns += 1;
        }
    }

    /// Clears the crash-loop flag once the window has no deaths left.
    pub fn settle(&mut self, now: Instant) {
        while self.recent_deaths.front().is_some_and(|&at| now.duration_since(at) > CRASH_WINDOW) {
            self.recent_deaths.pop_front();
        }
        if self.recent_deaths.len() < CRASH_LOOP_DEATHS {
            self.crash_loop = false;
        }
    }

    /// The scale target changed; deaths owed beyond it are forgiven.
    pub fn set_target(&mut self, target: usize) {
        self.target = target;
        self.owed_respawns = self.owed_respawns.min(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_deaths_are_replaced_at_once_then_backoff_doubles_to_a_cap() {
        let start = Instant::now();
        let mut sup = Supervisor::new(2);
        assert!(!sup.record_death(start));
        assert!(sup.may_spawn(start));
        sup.record_death(start);
        assert!(sup.may_spawn(start));
        sup.record_death(start);
        assert!(!sup.may_spawn(start));
        assert!(sup.may_spawn(start + FIRST_BACKOFF));
        sup.record_death(start);
        assert!(!sup.may_spawn(start + FIRST_BACKOFF));
        assert!(sup.may_spawn(start + FIRST_BACKOFF * 2));
        assert!(sup.record_death(start), "fifth death in the window is a crash loop");
        assert!(sup.crash_loop);
        for _ in 0..30 {
            sup.record_death(start);
        }
        assert!(sup.may_spawn(start + MAX_BACKOFF));
        assert_eq!(sup.deaths, 35);
    }

    #[test]
    fn old_deaths_stop_counting_and_the_loop_settles() {
        let start = Instant::now();
        let mut sup = Supervisor::new(1);
        for _ in 0..5 {
            sup.record_death(start);
        }
        assert!(sup.crash_loop);
        let later = start + CRASH_WINDOW + Duration::from_secs(1);
        sup.settle(later);
        assert!(!sup.crash_loop);
        sup.record_death(later);
        assert!(sup.may_spawn(later), "one fresh death: replaced at once");
    }

    #[test]
    fn respawns_count_only_deaths_made_up_for() {
        let now = Instant::now();
        let mut sup = Supervisor::new(3);
        sup.record_death(now);
        sup.spawned();
        sup.spawned();
        assert_eq!((sup.respawns, sup.owed_respawns), (1, 0));
        sup.record_death(now);
        sup.set_target(0);
        assert_eq!(sup.owed_respawns, 0);
    }
}
