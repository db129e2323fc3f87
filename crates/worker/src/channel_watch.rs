//! How the worker waits for the master's channel: registered with epoll,
//! or outside it — blocked in `recvmsg` on it, or slept on with `poll(2)`
//! beside the epoll instance.
//!
//! A channel registered with epoll costs the *sender*: every `sendmsg` from
//! the master runs epoll's wake-up callback for it (a lock taken with
//! interrupts off, in the master's system call), even when this worker is
//! busy and nobody sleeps, and a sleeping worker is woken through epoll's
//! own wait queue, one level further. A process blocked in `recvmsg` (the
//! reference master's workers) or in `poll(2)` is on the socket's wait
//! queue only while it sleeps, and the sender's wake-up reaches it
//! directly. So the channel stays out of epoll whenever the worker's epoll
//! has little else to say:
//!
//! - it holds no connection (nothing but signals in its epoll), or
//! - the master runs ahead of it (a turn read [`BUSY_BACKLOG`] packets or
//!   more), until a turn finds the channel empty — the way Linux's NAPI
//!   stops taking interrupts from a busy network card.
//!
//! Otherwise — connections whose events come through epoll, and a channel
//! that is quiet — one `epoll_wait` waiting for both is cheaper than
//! `poll(2)` followed by `epoll_wait`, and the channel is registered. It is
//! registered too while the worker does not read it at all (the link is
//! closed, or receiving is paused for lack of fds), so that a level-
//! triggered `poll(2)` never spins on it. Adding a socket to epoll reports
//! it at once if a packet came in between, so no hand-off is missed.
//!
//! Out of epoll, the worker that holds nothing sleeps the way the
//! reference's workers do: in a blocking `recvmsg` on the channel, which
//! waits for the next packet and receives it in one system call (`poll(2)`,
//! then `recvmsg`, then a `recvmsg` that finds the channel empty, cost it
//! three). Its timers are the socket's receive timeout (`SO_RCVTIMEO`,
//! [`RecvTimeout`]), and a signal ends the wait (`EINTR`: with a receive
//! timeout set, the kernel does not restart the call). A signal whose
//! handler runs after the last look and before the call goes to sleep is
//! noticed when the wait ends, within [`MAX_BLOCKED`]. The busy worker,
//! whose connections need epoll, sleeps in `poll(2)` on the channel and the
//! epoll instance together ([`handoff_fdpass::wait_socket_or_epoll`]).
//!
//! Pure: it decides from what each turn read; the server applies the
//! change. Measured in docs/performance.md ("the burst, accounted").

use std::time::Duration;

/// Packets read in one turn that mark the master as running ahead of this
/// worker. Taking the channel out of epoll and back costs the worker two
/// `epoll_ctl` calls and, at the end, one `recvmsg` that finds nothing; a
/// backlog this long pays for them with the callbacks it saves the master.
pub const BUSY_BACKLOG: usize = 8;

/// What the server must do with the channel's epoll registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Take it out of epoll: sleep on it with `poll(2)`.
    Unwatch,
    /// Put it back: `epoll_wait` waits for it and the connections alike.
    Watch,
}

/// The channel's watch state.
#[derive(Debug)]
pub struct ChannelWatch {
    watched: bool,
    /// The last turn read a backlog, and no turn since found it empty.
    busy: bool,
    /// Packets read since the end of the last turn.
    read_this_turn: usize,
}

impl Default for ChannelWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// What the worker did and does, as far as the channel's watch is concerned.
#[derive(Debug, Clone, Copy)]
struct Turn {
    /// Packets read from the channel this turn.
    packets: usize,
    /// The worker reads the channel at all: the master's link is open and
    /// receiving is not paused for lack of fds.
    can_read: bool,
    /// Its epoll holds nothing that wakes it often: no connection, no
    /// listener of its own.
    idle: bool,
}

impl ChannelWatch {
    /// Starts watched (the channel is registered when the worker starts).
    pub fn new() -> ChannelWatch {
        ChannelWatch { watched: true, busy: false, read_this_turn: 0 }
    }

    /// Is the channel in epoll? If not, the loop sleeps in `poll(2)` on it
    /// and the epoll instance.
    pub fn watched(&self) -> bool {
        self.watched
    }

    /// One packet read from the channel.
    pub fn packet_read(&mut self) {
        self.read_this_turn += 1;
    }

    /// End of a loop turn: `can_read` and `idle` as in [`Turn`].
    pub fn end_of_turn(&mut self, can_read: bool, idle: bool) -> Option<Change> {
        let packets = std::mem::take(&mut self.read_this_turn);
        self.decide(Turn { packets, can_read, idle })
    }

    fn decide(&mut self, turn: Turn) -> Option<Change> {
        if !turn.can_read {
            self.busy = false;
        } else if turn.packets >= BUSY_BACKLOG {
            self.busy = true;
        } else if turn.packets == 0 {
            self.busy = false;
        }
        let unwatched = turn.can_read && (turn.idle || self.busy);
        if unwatched != self.watched {
            return None;
        }
        self.watched = !unwatched;
        Some(if unwatched { Change::Unwatch } else { Change::Watch })
    }

    /// The server could not apply the last change (epoll refused it): the
    /// state is what it was, and the next turn decides again.
    pub fn revert(&mut self) {
        self.watched = !self.watched;
    }
}

/// The longest a blocking `recvmsg` waits: the bound on how late a worker
/// notices a signal that arrived just before the call went to sleep.
pub const MAX_BLOCKED: Duration = Duration::from_secs(1);

/// Below this, the worker does not block in `recvmsg`: the next timer is
/// due (and a receive timeout of zero would mean *no* timeout).
pub const MIN_BLOCKED: Duration = Duration::from_millis(1);

/// How late a timer may fire because the receive timeout in force was kept.
/// Setting it is a system call, so it is set again only when the one in
/// force would wake the worker later than this, or less than half as long
/// as it may sleep.
pub const TIMER_SLACK: Duration = Duration::from_millis(50);

/// How long to block in `recvmsg` before the next timer (`timeout`, `None`
/// for none), if at all.
pub fn blocking_budget(timeout: Option<Duration>) -> Option<Duration> {
    let budget = timeout.map_or(MAX_BLOCKED, |t| t.min(MAX_BLOCKED));
    (budget >= MIN_BLOCKED).then_some(budget)
}

/// The channel's receive timeout (`SO_RCVTIMEO`), as last set.
#[derive(Debug, Default)]
pub struct RecvTimeout {
    in_force: Option<Duration>,
}

impl RecvTimeout {
    /// Before blocking for at most `budget`: the timeout to set, or `None`
    /// if the one in force will do.
    pub fn change_for(&mut self, budget: Duration) -> Option<Duration> {
        let keep =
            self.in_force.is_some_and(|set| set <= budget + TIMER_SLACK && set * 2 >= budget);
        if keep {
            return None;
        }
        self.in_force = Some(budget);
        self.in_force
    }

    /// Setting it failed: nothing is known to be in force.
    pub fn forget(&mut self) {
        self.in_force = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn of a worker that holds connections (`idle` false) or not.
    fn turn(
        watch: &mut ChannelWatch,
        packets: usize,
        can_read: bool,
        idle: bool,
    ) -> Option<Change> {
        for _ in 0..packets {
            watch.packet_read();
        }
        watch.end_of_turn(can_read, idle)
    }

    #[test]
    fn an_idle_worker_sleeps_on_its_channel_outside_epoll() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, 0, true, true), Some(Change::Unwatch));
        assert!(!watch.watched());
        for packets in [BUSY_BACKLOG * 2, 1, 0] {
            assert_eq!(turn(&mut watch, packets, true, true), None, "{packets} packets");
        }
        // It takes a connection that must wait for its request, and the
        // channel is quiet: one epoll_wait for both.
        assert_eq!(turn(&mut watch, 1, true, false), Some(Change::Watch));
        assert!(watch.watched());
        assert_eq!(turn(&mut watch, 0, true, true), Some(Change::Unwatch), "idle again");
    }

    #[test]
    fn a_worker_holding_connections_keeps_a_quiet_channel_in_epoll() {
        let mut watch = ChannelWatch::new();
        for packets in [0, 1, BUSY_BACKLOG - 1] {
            assert_eq!(turn(&mut watch, packets, true, false), None);
            assert!(watch.watched());
        }
    }

    #[test]
    fn a_backlog_unwatches_until_a_turn_finds_the_channel_empty() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true, false), Some(Change::Unwatch));
        assert!(!watch.watched());
        // Busy: any packet at all keeps it out.
        assert_eq!(turn(&mut watch, 1, true, false), None);
        assert_eq!(turn(&mut watch, BUSY_BACKLOG * 4, true, false), None);
        assert!(!watch.watched());
        // Drained, connections held: back to epoll.
        assert_eq!(turn(&mut watch, 0, true, false), Some(Change::Watch));
        assert!(watch.watched());
        // A short read does not make it busy again.
        assert_eq!(turn(&mut watch, BUSY_BACKLOG - 1, true, false), None);
    }

    #[test]
    fn a_channel_not_being_read_goes_back_to_epoll_and_never_leaves_it() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true, true), Some(Change::Unwatch));
        // Receiving paused (out of fds) or the link closed: a level-
        // triggered poll(2) would spin on it.
        assert_eq!(turn(&mut watch, 3, false, true), Some(Change::Watch));
        assert!(watch.watched());
        assert_eq!(turn(&mut watch, BUSY_BACKLOG * 2, false, true), None);
        assert_eq!(turn(&mut watch, 0, false, false), None);
        assert!(watch.watched());
        // Reading again, idle: out.
        assert_eq!(turn(&mut watch, 0, true, true), Some(Change::Unwatch));
    }

    #[test]
    fn a_refused_change_is_reverted_and_tried_again() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true, false), Some(Change::Unwatch));
        watch.revert();
        assert!(watch.watched());
        assert_eq!(turn(&mut watch, 1, true, false), Some(Change::Unwatch), "still busy");
        assert_eq!(turn(&mut watch, 0, true, false), Some(Change::Watch));
        watch.revert();
        assert!(!watch.watched());
        assert_eq!(turn(&mut watch, 0, true, false), Some(Change::Watch));
    }

    #[test]
    fn the_blocking_wait_is_bounded_and_skipped_when_a_timer_is_due() {
        assert_eq!(blocking_budget(None), Some(MAX_BLOCKED));
        assert_eq!(blocking_budget(Some(Duration::from_secs(30))), Some(MAX_BLOCKED));
        let soon = Duration::from_millis(300);
        assert_eq!(blocking_budget(Some(soon)), Some(soon));
        assert_eq!(blocking_budget(Some(MIN_BLOCKED)), Some(MIN_BLOCKED));
        assert_eq!(blocking_budget(Some(MIN_BLOCKED / 2)), None);
        assert_eq!(blocking_budget(Some(Duration::ZERO)), None, "zero would wait forever");
    }

    #[test]
    fn the_receive_timeout_is_set_only_when_the_one_in_force_would_not_do() {
        let mut timeout = RecvTimeout::default();
        let second = Duration::from_secs(1);
        assert_eq!(timeout.change_for(second), Some(second), "nothing in force yet");
        assert_eq!(timeout.change_for(second), None);
        // The next timer comes nearer, turn by turn: kept while it would
        // wake the worker at most TIMER_SLACK late.
        assert_eq!(timeout.change_for(second - TIMER_SLACK), None);
        let nearer = second - TIMER_SLACK - Duration::from_millis(1);
        assert_eq!(timeout.change_for(nearer), Some(nearer));
        // The timer fired and the next is a whole interval away: the short
        // timeout in force would wake it for nothing, again and again.
        let short = Duration::from_millis(5);
        assert_eq!(timeout.change_for(short), Some(short));
        assert_eq!(timeout.change_for(second), Some(second));
        // One in force half as long as it may sleep still does.
        assert_eq!(timeout.change_for(short), Some(short));
        assert_eq!(timeout.change_for(short * 2), None);
        assert_eq!(
            timeout.change_for(short * 2 + Duration::from_millis(1)),
            Some(short * 2 + Duration::from_millis(1))
        );
        assert_eq!(timeout.change_for(second), Some(second));
        timeout.forget();
        assert_eq!(timeout.change_for(second), Some(second), "setting it failed");
    }
}
