//! How many more fds this worker can take, so that it never receives a
//! packet whose fds it has no room for.
//!
//! A packet whose fds do not fit in the receiver's open-file limit arrives
//! cut short (`MSG_CTRUNC`): the kernel closes the fds that did not fit.
//! With `--salvage queued` nobody else holds those connections any more,
//! so they would be lost. The worker therefore keeps an estimate of the
//! fds it has open — the ones it had when it started, counted once in
//! `/proc/self/fd`, plus one per connection it holds (and its own
//! listener) — and of its limit, and:
//! - receives only while there is room for the largest packet the master
//!   sends (`Welcome`'s `max_fds_per_packet`) plus a [`MARGIN`] for its own
//!   passing needs (reading `/proc/self/statm` for its stats, ...);
//! - tells the master `OutOfFds` a little before that ([`WARN`]), and
//!   `RoomForFds` once [`HYSTERESIS`] more fds are free, so that the state
//!   does not flap once per connection;
//! - recounts its open fds if a packet arrives cut short all the same.

use std::io;

/// Fds kept free for the worker's own passing needs.
pub const MARGIN: usize = 4;
/// The master is told to stop this many fds before receiving must stop.
pub const WARN: usize = 4;
/// Fds that must be free, beyond the warning level, before the master is
/// told there is room again.
pub const HYSTERESIS: usize = 8;

/// The estimate, and what the master was last told.
#[derive(Debug, Clone)]
pub struct FdRoom {
    /// The soft open-file limit.
    limit: usize,
    /// Fds open besides the ones counted by the caller (connections, own
    /// listener).
    base: usize,
    /// The most fds one of the master's packets carries.
    per_packet: usize,
    /// The master was told `OutOfFds` (and not `RoomForFds` since).
    told_out: bool,
}

impl FdRoom {
    /// Measures the limit and the fds open now (none held yet).
    pub fn measure(per_packet: u32) -> FdRoom {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX));
        FdRoom::new(limit, count_open_fds().unwrap_or(16), per_packet)
    }

    /// An estimate from known numbers.
    pub fn new(limit: usize, base: usize, per_packet: u32) -> FdRoom {
        let per_packet = usize::try_from(per_packet).unwrap_or(usize::MAX).max(1);
        FdRoom { limit, base, per_packet, told_out: false }
    }

    /// The soft open-file limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Fds still free with `held` open for connections.
    pub fn room(&self, held: usize) -> usize {
        self.limit.saturating_sub(self.base.saturating_add(held))
    }

    /// Can the worker hold even one connection?
    pub fn usable(&self) -> bool {
        self.room(0) > self.per_packet.saturating_add(MARGIN)
    }

    /// Is there room to receive the largest packet now?
    pub fn can_receive(&self, held: usize) -> bool {
        self.room(held) >= self.per_packet.saturating_add(MARGIN)
    }

    /// Is there room to accept one connection now (own listener)?
    pub fn can_accept(&self, held: usize) -> bool {
        self.room(held) > MARGIN
    }

    /// Is there room to resume accepting after a pause?
    pub fn can_resume_accepting(&self, held: usize) -> bool {
        self.room(held) > MARGIN + HYSTERESIS
    }

    /// What the master should hear, if anything: `Some(true)` for
    /// `OutOfFds`, `Some(false)` for `RoomForFds`.
    pub fn news(&self, held: usize) -> Option<bool> {
        let warn_level = self.per_packet.saturating_add(MARGIN + WARN);
        let room = self.room(held);
        if !self.told_out && room < warn_level {
            Some(true)
        } else if self.told_out && room >= warn_level + HYSTERESIS {
            Some(false)
        } else {
            None
        }
    }

    /// The master was told.
    pub fn told(&mut self, out_of_fds: bool) {
        self.told_out = out_of_fds;
    }

    /// Counts the open fds again (a packet arrived cut short: the estimate
    /// was wrong), `held` of them being connections and listener.
    pub fn recount(&mut self, held: usize) {
        self.base = match count_open_fds() {
            Ok(open) => open.saturating_sub(held),
            // No fd even to count with: every fd is open.
            Err(_) => self.limit.saturating_sub(held),
        };
    }
}

/// Fds this process has open, from `/proc/self/fd` (less the one used to
/// read it).
fn count_open_fds() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_before_it_must_stop_and_says_room_only_after_hysteresis() {
        let mut room = FdRoom::new(40, 10, 1);
        assert!(room.usable());
        // 30 free: receiving stops below 1 + MARGIN, the warning comes
        // below 1 + MARGIN + WARN.
        assert_eq!(room.news(0), None);
        let warn_at = 30 - (1 + MARGIN + WARN) + 1;
        assert_eq!(room.news(warn_at - 1), None);
        assert_eq!(room.news(warn_at), Some(true));
        room.told(true);
        assert!(room.can_receive(warn_at), "warned before it must stop");
        assert!(!room.can_receive(30 - MARGIN), "no room for a packet");
        assert_eq!(room.news(warn_at - 1), None, "no flapping back at once");
        assert_eq!(room.news(warn_at - 1 - HYSTERESIS), Some(false));
    }

    #[test]
    fn a_batch_needs_room_for_all_its_fds_and_a_tiny_limit_is_unusable() {
        let room = FdRoom::new(300, 10, 252);
        assert!(room.can_receive(0));
        assert!(!room.can_receive(40));
        assert!(!FdRoom::new(12, 10, 1).usable());
    }

    #[test]
    fn every_threshold_sits_exactly_where_it_says() {
        // limit 100, base 10, packets of 2 fds: room(held) = 90 - held.
        let room = FdRoom::new(100, 10, 2);
        assert_eq!(room.room(0), 90);
        assert_eq!(room.room(95), 0, "never below zero");
        // Receiving needs room for a packet and the margin.
        assert!(room.can_receive(90 - (2 + MARGIN)));
        assert!(!room.can_receive(90 - (2 + MARGIN) + 1));
        // Accepting one needs more than the margin.
        assert!(room.can_accept(90 - MARGIN - 1));
        assert!(!room.can_accept(90 - MARGIN));
        // Resuming needs the hysteresis on top.
        assert!(room.can_resume_accepting(90 - MARGIN - HYSTERESIS - 1));
        assert!(!room.can_resume_accepting(90 - MARGIN - HYSTERESIS));
        // Usable: room for a packet and the margin, and one more.
        assert!(FdRoom::new(10 + 2 + MARGIN + 1, 10, 2).usable());
        assert!(!FdRoom::new(10 + 2 + MARGIN, 10, 2).usable());
        // 0 fds per packet counts as one.
        assert!(!FdRoom::new(10 + 1 + MARGIN, 10, 0).usable());
    }

    #[test]
    fn room_again_is_said_exactly_at_the_warning_level_plus_the_hysteresis() {
        let mut room = FdRoom::new(100, 10, 2);
        let warn_level = 2 + MARGIN + WARN;
        // room(held) = 90 - held.
        assert_eq!(room.news(90 - warn_level), None, "at the level: no warning yet");
        assert_eq!(room.news(90 - warn_level + 1), Some(true));
        room.told(true);
        assert_eq!(room.news(90 - warn_level - HYSTERESIS + 1), None);
        assert_eq!(room.news(90 - warn_level - HYSTERESIS), Some(false));
        room.told(false);
        assert_eq!(room.news(90 - warn_level - HYSTERESIS), None, "said once");
    }

    #[test]
    fn a_recount_replaces_the_estimate_with_what_is_open() {
        // Pretend nothing was open: a recount finds at least stdin, stdout
        // and stderr.
        let mut room = FdRoom::new(1_000_000, 0, 1);
        assert_eq!(room.room(0), 1_000_000);
        room.recount(0);
        assert!(room.room(0) <= 1_000_000 - 3, "{room:?}");
        assert!(room.room(0) > 1_000_000 - 10_000, "{room:?}");
    }

    #[test]
    fn measures_something_plausible() {
        let room = FdRoom::measure(1);
        assert!(room.limit() >= 3 && room.room(0) < room.limit(), "{room:?}");
    }
}
