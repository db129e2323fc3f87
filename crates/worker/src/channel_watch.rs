//! How the worker waits for the master's channel: registered with epoll,
//! or outside it, slept on with `poll(2)` beside the epoll instance.
//!
//! A channel registered with epoll costs the *sender*: every `sendmsg` from
//! the master runs epoll's wake-up callback for it (a lock taken with
//! interrupts off, in the master's system call), even when this worker is
//! busy and nobody sleeps, and a sleeping worker is woken through epoll's
//! own wait queue, one level further. A process blocked in `recvmsg` (the
//! reference master's workers) or in `poll(2)` is on the socket's wait
//! queue only while it sleeps, and the sender's wake-up reaches it
//! directly. So the channel stays out of epoll, and the worker sleeps in
//! `poll(2)` on the channel and the epoll instance together
//! ([`handoff_fdpass::wait_socket_or_epoll`]), whenever its epoll has
//! little else to say:
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
//! Pure: it decides from what each turn read; the server applies the
//! change. Measured in docs/performance.md ("the burst, accounted").

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
}
