//! Whether the master's channel is watched by epoll, or polled while the
//! master runs ahead (the way Linux's NAPI stops taking interrupts from a
//! busy network card and polls it until it is drained).
//!
//! A channel registered with epoll costs the *sender*: every `sendmsg` from
//! the master runs epoll's wake-up callback for it (a lock taken with
//! interrupts off, in the master's system call), even when this worker is
//! busy and nobody sleeps. A blocked `recvmsg` (the reference master's
//! workers) costs nothing while the worker is busy. So when one turn finds
//! a backlog of [`BUSY_BACKLOG`] packets or more — the master hands off
//! faster than this worker serves — the worker takes the channel out of
//! epoll and reads it at each turn instead (its other events are polled
//! without sleeping meanwhile). The first turn that finds the channel empty
//! puts it back before the worker sleeps; adding a socket to epoll reports
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
    /// Take it out of epoll: read it every turn.
    Unwatch,
    /// Put it back: the worker may sleep on it.
    Watch,
}

/// The channel's watch state.
#[derive(Debug)]
pub struct ChannelWatch {
    watched: bool,
    /// Packets read since the end of the last turn.
    read_this_turn: usize,
}

impl Default for ChannelWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelWatch {
    /// Starts watched (the channel is registered when the worker starts).
    pub fn new() -> ChannelWatch {
        ChannelWatch { watched: true, read_this_turn: 0 }
    }

    /// Is the channel in epoll? If not, the loop must read it every turn
    /// and must not sleep.
    pub fn watched(&self) -> bool {
        self.watched
    }

    /// One packet read from the channel.
    pub fn packet_read(&mut self) {
        self.read_this_turn += 1;
    }

    /// End of a loop turn. `can_read`: the worker is reading the channel at
    /// all (the master's link is open and receiving is not paused for
    /// lack of fds); when it is not, the channel goes back to epoll, so the
    /// loop never spins on it.
    pub fn end_of_turn(&mut self, can_read: bool) -> Option<Change> {
        let read = std::mem::take(&mut self.read_this_turn);
        match (self.watched, can_read) {
            (true, true) if read >= BUSY_BACKLOG => {
                self.watched = false;
                Some(Change::Unwatch)
            }
            (false, false) => {
                self.watched = true;
                Some(Change::Watch)
            }
            (false, true) if read == 0 => {
                self.watched = true;
                Some(Change::Watch)
            }
            _ => None,
        }
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

    fn turn(watch: &mut ChannelWatch, packets: usize, can_read: bool) -> Option<Change> {
        for _ in 0..packets {
            watch.packet_read();
        }
        watch.end_of_turn(can_read)
    }

    #[test]
    fn a_short_read_keeps_the_channel_watched() {
        let mut watch = ChannelWatch::new();
        for packets in [0, 1, BUSY_BACKLOG - 1] {
            assert_eq!(turn(&mut watch, packets, true), None);
            assert!(watch.watched());
        }
    }

    #[test]
    fn a_backlog_unwatches_until_a_turn_finds_the_channel_empty() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true), Some(Change::Unwatch));
        assert!(!watch.watched());
        // Busy: any packet at all keeps it polled.
        assert_eq!(turn(&mut watch, 1, true), None);
        assert_eq!(turn(&mut watch, BUSY_BACKLOG * 4, true), None);
        assert!(!watch.watched());
        // Drained: back to epoll before sleeping.
        assert_eq!(turn(&mut watch, 0, true), Some(Change::Watch));
        assert!(watch.watched());
    }

    #[test]
    fn a_channel_not_being_read_goes_back_to_epoll_and_never_leaves_it() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true), Some(Change::Unwatch));
        // Receiving paused (out of fds) or the link closed: no spinning.
        assert_eq!(turn(&mut watch, 3, false), Some(Change::Watch));
        assert!(watch.watched());
        assert_eq!(turn(&mut watch, BUSY_BACKLOG * 2, false), None);
        assert!(watch.watched());
    }

    #[test]
    fn a_refused_change_is_reverted_and_tried_again() {
        let mut watch = ChannelWatch::new();
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true), Some(Change::Unwatch));
        watch.revert();
        assert!(watch.watched());
        assert_eq!(turn(&mut watch, 0, true), None);
        assert_eq!(turn(&mut watch, BUSY_BACKLOG, true), Some(Change::Unwatch));
        assert_eq!(turn(&mut watch, 0, true), Some(Change::Watch));
        watch.revert();
        assert!(!watch.watched());
        assert_eq!(turn(&mut watch, 0, true), Some(Change::Watch));
    }
}
