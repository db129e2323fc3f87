//! Supervision policy: how many spawned workers to keep, and how fast to
//! replace ones that die. Pure (it is told the time), so it is unit-tested.
//!
//! A worker that dies is replaced at once, as gunicorn's arbiter does. When
//! deaths pile up (three or more within [`CRASH_WINDOW`]) the replacement
//! waits, doubling from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], and with
//! [`CRASH_LOOP_DEATHS`] deaths in the window the master reports a crash
//! loop, so a worker that cannot start does not make the master spin.
//!
//! A spawn that fails (no fds, no memory, the binary gone) is not a death:
//! no worker ran. It is counted apart ([`Supervisor::spawn_failures`]) and
//! retried after its own doubling delay ([`FIRST_SPAWN_RETRY`] up to
//! [`MAX_SPAWN_RETRY`]), without touching the crash-loop guard.

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
/// First delay after a spawn failed.
pub const FIRST_SPAWN_RETRY: Duration = Duration::from_millis(100);
/// Longest delay between spawn attempts that keep failing.
pub const MAX_SPAWN_RETRY: Duration = Duration::from_secs(5);

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
    /// Spawns that failed (the process did not start), over the master's
    /// life.
    pub spawn_failures: u64,
    /// Spawns that failed in a row, for the retry delay.
    failed_in_a_row: u32,
    /// A spawn failed: try again then (`respawn_not_before` holds the
    /// same time).
    spawn_retry_at: Option<Instant>,
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
            spawn_failures: 0,
            failed_in_a_row: 0,
            spawn_retry_at: None,
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

    /// A spawn failed: no worker ran, so this is not a death; the next
    /// attempt waits, doubling. Returns the delay, for the log.
    pub fn spawn_failed(&mut self, now: Instant) -> Duration {
        self.spawn_failures += 1;
        let delay = FIRST_SPAWN_RETRY
            .saturating_mul(1 << self.failed_in_a_row.min(16))
            .min(MAX_SPAWN_RETRY);
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        let at = now + delay;
        self.respawn_not_before = Some(self.respawn_not_before.map_or(at, |before| before.max(at)));
        self.spawn_retry_at = self.respawn_not_before;
        delay
    }

    /// When the loop must wake to spawn: a respawn owed after a backoff, or
    /// a failed spawn to retry.
    pub fn next_spawn_at(&self) -> Option<Instant> {
        (self.owed_respawns > 0 || self.spawn_retry_at.is_some())
            .then_some(self.respawn_not_before)
            .flatten()
    }

    /// A worker was spawned; counts it as a respawn if a death was owed.
    pub fn spawned(&mut self) {
        self.failed_in_a_row = 0;
        self.spawn_retry_at = None;
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
    fn failed_spawns_are_retried_with_backoff_and_are_not_deaths() {
        let start = Instant::now();
        let mut sup = Supervisor::new(2);
        for _ in 0..10 {
            sup.spawn_failed(start);
        }
        assert_eq!((sup.deaths, sup.spawn_failures), (0, 10));
        assert!(!sup.crash_loop, "failing to start is not a crash loop");
        assert!(!sup.may_spawn(start + FIRST_SPAWN_RETRY));
        assert!(sup.may_spawn(start + MAX_SPAWN_RETRY));
        assert_eq!(sup.next_spawn_at(), Some(start + MAX_SPAWN_RETRY));
        sup.spawned();
        assert_eq!(sup.next_spawn_at(), None, "nothing owed once one started");
        assert_eq!(sup.spawn_failed(start), FIRST_SPAWN_RETRY, "the delay starts over");
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

    #[test]
    fn the_crash_loop_stays_set_while_five_deaths_are_in_the_window() {
        let start = Instant::now();
        let mut sup = Supervisor::new(1);
        let started: Vec<bool> = (0..5).map(|_| sup.record_death(start)).collect();
        assert_eq!(started, [false, false, false, false, true], "the fifth starts it");
        assert_eq!(sup.next_spawn_at(), sup.respawn_not_before, "a respawn is owed");
        assert!(sup.next_spawn_at().is_some());
        sup.settle(start + Duration::from_secs(5));
        assert!(sup.crash_loop, "exactly five are still in the window");
        // A death exactly a window old still counts; only older ones age out.
        sup.settle(start + CRASH_WINDOW);
        assert!(sup.crash_loop);
        sup.settle(start + CRASH_WINDOW + Duration::from_millis(1));
        assert!(!sup.crash_loop);
        let mut sup = Supervisor::new(1);
        let reported = (0..6).filter(|_| sup.record_death(start)).count();
        assert_eq!(reported, 1, "a crash loop is reported once");
    }

    #[test]
    fn deaths_age_out_of_the_window_when_a_new_one_is_recorded() {
        let start = Instant::now();
        let mut sup = Supervisor::new(1);
        for _ in 0..4 {
            sup.record_death(start);
        }
        assert!(!sup.may_spawn(start + FIRST_BACKOFF), "four deaths: backing off");
        let later = start + CRASH_WINDOW + Duration::from_millis(1);
        assert!(!sup.record_death(later), "the four old ones no longer count");
        assert!(!sup.crash_loop);
        assert!(sup.may_spawn(later), "one death in the window: replaced at once");
        // Exactly a window apart, the older one still counts.
        let mut sup = Supervisor::new(1);
        sup.record_death(start);
        sup.record_death(start);
        sup.record_death(start + CRASH_WINDOW);
        assert!(!sup.may_spawn(start + CRASH_WINDOW), "three in the window: backoff");
        assert!(sup.may_spawn(start + CRASH_WINDOW + FIRST_BACKOFF));
    }
}
