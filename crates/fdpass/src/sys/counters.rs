//! Counters in memory shared by a worker (the only writer) and its master
//! (a reader): the worker's running totals of the connections it finished,
//! which the master reads whenever it needs them — for `info`, for the
//! `least` policy, and after the worker died — without a message or a
//! system call per connection.
//!
//! The memory is a sealed memfd: the worker creates and seals it (it can
//! never shrink, so a mapping never faults) and sends the fd with its
//! `Hello`; the master checks the seals and the size before mapping it
//! read-only. Each slot is an `AtomicU64` written by one process only.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super as sys;

/// Slots in one set of counters.
pub const COUNTER_SLOTS: usize = 8;

/// Bytes mapped: one page, far more than the slots need.
const MAPPED_LEN: usize = 4096;

const _: () = assert!(COUNTER_SLOTS * std::mem::size_of::<AtomicU64>() <= MAPPED_LEN);

/// A mapping of [`COUNTER_SLOTS`] shared `u64` counters.
#[derive(Debug)]
pub struct SharedCounters {
    base: NonNull<u8>,
    writable: bool,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory accessed only through
// `AtomicU64`s; the pointer may move between threads like any `&[AtomicU64]`.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// New zeroed counters for this process to write (a worker).
    pub fn create() -> io::Result<SharedCounters> {
        let fd = sys::sealed_memfd(c"handoff-counters", MAPPED_LEN)?;
        let base = sys::map_shared(fd.as_fd(), MAPPED_LEN, true)?;
        Ok(SharedCounters { base, writable: true, fd })
    }

    /// Maps counters another process created and sent (the master), read
    /// only. Refuses an fd that is not a sealed memfd of the right size.
    pub fn open(fd: OwnedFd) -> io::Result<SharedCounters> {
        sys::check_sealed(fd.as_fd(), MAPPED_LEN)?;
        let base = sys::map_shared(fd.as_fd(), MAPPED_LEN, false)?;
        Ok(SharedCounters { base, writable: false, fd })
    }

    /// The memfd, to send to the other process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn slots(&self) -> &[AtomicU64; COUNTER_SLOTS] {
        // SAFETY: `base` is a live, page-aligned mapping of MAPPED_LEN bytes
        // (sealed against shrinking, so it cannot fault) that lives as long
        // as `self`; AtomicU64 has the size and alignment of u64 and any bit
        // pattern is valid; other processes touch it only atomically.
        // Atomic loads of pointer-sized values are fine on read-only memory.
        unsafe { &*self.base.as_ptr().cast::<[AtomicU64; COUNTER_SLOTS]>() }
    }

    /// Reads every slot.
    pub fn load(&self) -> [u64; COUNTER_SLOTS] {
        let slots = self.slots();
        std::array::from_fn(|i| slots[i].load(Ordering::Acquire))
    }

    /// Writes every slot (the single writer's side). Does nothing on a
    /// read-only mapping.
    pub fn store(&self, values: &[u64; COUNTER_SLOTS]) {
        if !self.writable {
            debug_assert!(false, "store on read-only shared counters");
            return;
        }
        for (slot, value) in self.slots().iter().zip(values) {
            slot.store(*value, Ordering::Release);
        }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: `base` came from map_shared with MAPPED_LEN, and no
        // reference into it outlives `self` (`slots` borrows `self`).
        unsafe { sys::unmap(self.base, MAPPED_LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_what_the_writer_stores() {
        let writer = SharedCounters::create().expect("create");
        let reader =
            SharedCounters::open(writer.fd().try_clone_to_owned().expect("dup")).expect("open");
        assert_eq!(reader.load(), [0; COUNTER_SLOTS]);
        let values = [1, 2, 3, 4, 5, 6, 7, u64::MAX];
        writer.store(&values);
        assert_eq!(reader.load(), values);
    }

    #[test]
    fn the_memfd_can_be_neither_resized_nor_sealed_further() {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let counters = SharedCounters::create().expect("create");
        let seals = SealFlag::from_bits_truncate(
            fcntl(counters.fd(), FcntlArg::F_GET_SEALS).expect("F_GET_SEALS"),
        );
        assert_eq!(seals, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL);
        let file = std::fs::File::from(counters.fd().try_clone_to_owned().expect("dup"));
        assert_eq!(file.metadata().expect("fstat").len(), MAPPED_LEN as u64);
        assert!(file.set_len(2 * MAPPED_LEN as u64).is_err(), "grown");
        assert!(file.set_len(0).is_err(), "shrunk");
    }

    #[test]
    fn a_memfd_must_be_sealed_against_shrinking_and_long_enough() {
        let memfd = |len: usize, seals| sys::memfd_with_seals(c"test", len, seals).expect("memfd");
        let refused = |fd: OwnedFd| {
            let err = SharedCounters::open(fd).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            err.to_string()
        };
        let (shrink, seal) = (libc::F_SEAL_SHRINK, libc::F_SEAL_SEAL);
        assert_eq!(refused(memfd(MAPPED_LEN, 0)), "memfd not sealed against shrinking");
        // Without F_SEAL_SEAL its owner could still add F_SEAL_WRITE, which
        // a writable mapping does not survive.
        assert_eq!(refused(memfd(MAPPED_LEN, shrink)), "memfd not sealed against shrinking");
        assert_eq!(refused(memfd(MAPPED_LEN - 8, shrink | seal)), "memfd too short");
        let longer =
            SharedCounters::open(memfd(2 * MAPPED_LEN, shrink | seal)).expect("long enough");
        assert_eq!(longer.load(), [0; COUNTER_SLOTS]);
    }

    #[test]
    fn dropping_the_counters_unmaps_them() {
        use std::os::unix::fs::MetadataExt;
        let counters = SharedCounters::create().expect("create");
        // Kept open, so the inode cannot be reused while we look.
        let file = std::fs::File::from(counters.fd().try_clone_to_owned().expect("dup"));
        let inode = file.metadata().expect("fstat").ino().to_string();
        let mapped = || {
            let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
            maps.lines().any(|line| line.split_whitespace().nth(4) == Some(inode.as_str()))
        };
        assert!(mapped());
        drop(counters);
        assert!(!mapped());
    }

    #[test]
    fn an_unsealed_or_foreign_fd_is_refused() {
        let file = tempfile::tempfile().expect("temp file");
        file.set_len(MAPPED_LEN as u64).expect("size");
        let err = SharedCounters::open(OwnedFd::from(file)).expect_err("a plain file");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }
}
