//! A reserve of spare file descriptors, so that the master can always do
//! the work that frees fds even when clients have taken every other one.
//!
//! At its open-file limit the master stops accepting clients (they wait in
//! the kernel's backlog) until it releases an fd. But some work needs fds
//! of its own and is what lets fds go: registering a worker (its channel,
//! the two fds of its `Hello`, a pidfd), spawning one, reading back a dead
//! or full worker's queue. If the limit were reached with no worker able to
//! take the queued clients, nothing would ever release an fd. So the master
//! holds [`SPARE_FDS`] fds open on `/dev/null`, lets them go right before
//! such work ([`SpareFds::release`]) and takes them back afterwards
//! ([`SpareFds::refill`]); client accepts resume only once the reserve is
//! whole again, so clients never eat into it. (nginx and libuv keep a spare
//! fd for the same reason.) The reserve is all or nothing: a refill that
//! cannot open every fd keeps none, so that under a limit too low for it the
//! reserve never holds the last fds clients need; and after a refill
//! failed, the next is tried only once the master released an fd (or its
//! fallback timer fires), not every loop turn.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

/// Fds held in reserve: enough to register a worker (4) or spawn one (4).
pub const SPARE_FDS: usize = 8;

/// The reserve.
#[derive(Debug)]
pub struct SpareFds {
    fds: Vec<OwnedFd>,
    /// Opening `/dev/null` failed for another reason than the fd limit:
    /// the reserve is not kept (and not retried).
    unavailable: bool,
    /// The caller's release mark when a refill last failed for lack of fds.
    failed_at: Option<u64>,
}

impl SpareFds {
    /// Opens the reserve (as much of it as the limit allows).
    pub fn new() -> SpareFds {
        let mut spare =
            SpareFds { fds: Vec::with_capacity(SPARE_FDS), unavailable: false, failed_at: None };
        spare.refill(0, false);
        spare
    }

    /// Closes the reserve so that the work about to run has room.
    pub fn release(&mut self) {
        self.fds.clear();
        self.failed_at = None;
    }

    /// Makes the reserve whole if it can, all or nothing, and returns
    /// whether it is whole. `mark` is the caller's count of fds released: a
    /// refill that failed is tried again only once it changed (or `force`).
    pub fn refill(&mut self, mark: u64, force: bool) -> bool {
        if self.is_full() {
            return true;
        }
        if self.failed_at == Some(mark) && !force {
            return false;
        }
        while !self.is_full() {
            match File::open("/dev/null") {
                Ok(file) => self.fds.push(OwnedFd::from(file)),
                Err(err) if is_fd_limit(&err) => {
                    self.fds.clear();
                    self.failed_at = Some(mark);
                    return false;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot open /dev/null: no spare fds kept");
                    self.unavailable = true;
                    self.fds.clear();
                    return true;
                }
            }
        }
        true
    }

    /// Is the reserve whole (or not kept at all)?
    pub fn is_full(&self) -> bool {
        self.unavailable || self.fds.len() >= SPARE_FDS
    }
}

/// EMFILE or ENFILE: out of fds, for this process or for the system.
pub fn is_fd_limit(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_and_refills() {
        let mut spare = SpareFds::new();
        assert!(spare.is_full());
        spare.release();
        assert!(!spare.is_full());
        assert!(spare.refill(7, false));
        assert!(spare.is_full());
    }

    #[test]
    fn only_emfile_and_enfile_are_the_fd_limit() {
        assert!(is_fd_limit(&io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert!(is_fd_limit(&io::Error::from_raw_os_error(nix::libc::ENFILE)));
        assert!(!is_fd_limit(&io::Error::from_raw_os_error(nix::libc::ENOENT)));
        assert!(!is_fd_limit(&io::Error::from(io::ErrorKind::Other)));
    }

    /// Runs in a child process of its own (the test binary again, this
    /// test only): it lowers the process's fd limit.
    #[test]
    fn at_the_fd_limit_the_reserve_keeps_nothing_and_is_retried_once_fds_were_released() {
        if !crate::test_support::is_child() {
            return crate::test_support::run_alone(
                "spare::tests::at_the_fd_limit_the_reserve_keeps_nothing_and_is_retried_once_fds_were_released",
                |_| {},
            );
        }
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, 64, hard).expect("setrlimit");
        // Take every fd left.
        let mut hog = Vec::new();
        loop {
            match File::open("/dev/null") {
                Ok(file) => hog.push(file),
                Err(err) => {
                    assert!(is_fd_limit(&err), "{err}");
                    break;
                }
            }
        }
        let mut spare = SpareFds::new();
        assert!(!spare.is_full(), "no room: nothing kept");
        // Room for some, not all: all or nothing.
        hog.truncate(hog.len() - SPARE_FDS / 2);
        assert!(!spare.refill(1, false));
        assert!(!spare.is_full());
        assert!(File::open("/dev/null").is_ok(), "the partial reserve let go");
        // Room for all of it, but nothing was released since the last try.
        hog.truncate(hog.len() - SPARE_FDS);
        assert!(!spare.refill(1, false), "not retried before the mark moves");
        assert!(!spare.is_full());
        assert!(spare.refill(1, true), "unless forced");
        assert!(spare.is_full());
        assert!(spare.refill(1, false), "whole: nothing to do");
        // Used, and the fds taken meanwhile: retried once the mark moved.
        spare.release();
        while let Ok(file) = File::open("/dev/null") {
            hog.push(file);
        }
        assert!(!spare.refill(2, false));
        hog.truncate(hog.len() - SPARE_FDS);
        assert!(!spare.refill(2, false));
        assert!(spare.refill(3, false), "the mark moved");
        assert!(spare.is_full());
    }
}
