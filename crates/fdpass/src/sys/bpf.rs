//! The `bpf(2)` system call, as far as the kernel balancer needs it: create
//! a map, read and write one element, load a program (with the verifier's
//! log), attach it to a `SO_REUSEPORT` group; plus a listener's accept
//! queue length (`TCP_INFO`). The program itself is built, without
//! `unsafe`, in [`crate::reuseport`].

use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `union bpf_attr` for `BPF_MAP_CREATE` (linux/bpf.h, the leading fields).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;

/// `SO_ATTACH_REUSEPORT_EBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out.iter_mut().take(15).zip(name.bytes()) {
        *slot = byte;
    }
    out
}

/// One `bpf(cmd, attr, size)` call; its non-negative result.
///
/// # Safety
/// `attr` must be the attribute struct `cmd` expects, and every pointer in
/// it valid for what the kernel reads or writes through it.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` matches `cmd`; its size is passed.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, mem::size_of::<T>() as libc::c_uint)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us (close-on-exec, as
    // bpf fds always are); nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

/// `BPF_MAP_CREATE`.
pub(crate) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
        map_name: name16(name),
        ..MapCreateAttr::default()
    };
    // SAFETY: MapCreateAttr is BPF_MAP_CREATE's layout; it holds no pointer.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.map(owned)
}

/// `BPF_MAP_UPDATE_ELEM` of a map with a `u32` key and a `u64` value
/// (`BPF_ANY`).
pub(crate) fn map_update_u64(map: BorrowedFd<'_>, key: u32, value: u64) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u64 as u64,
        ..MapElemAttr::default()
    };
    // SAFETY: MapElemAttr is BPF_MAP_UPDATE_ELEM's layout; `key` and
    // `value` point at a live u32 and u64, the sizes the map was created
    // with (the kernel checks that against the map, not us).
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM` of a `u32` → `u64` map: `None` for an empty slot
/// (`ENOENT`, e.g. a sockarray slot whose listener closed).
pub(crate) fn map_lookup_u64(map: BorrowedFd<'_>, key: u32) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u64 as u64,
        ..MapElemAttr::default()
    };
    // SAFETY: as in map_update_u64; the kernel writes value_size (8) bytes
    // into `value`, which is a live u64.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(value)),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

/// `BPF_PROG_LOAD` of raw instructions (8 bytes each). On failure the
/// verifier's log, if any, is in `log` (NUL-terminated).
pub(crate) fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[u64],
    license: &CStr,
    name: &str,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    // SAFETY: ProgLoadAttr is BPF_PROG_LOAD's layout; `insns` points at
    // insn_cnt live 8-byte instructions, `license` at a NUL-terminated
    // string, `log_buf` at log_size writable bytes; all outlive the call.
    unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.map(owned)
}

/// Attaches `prog` to the `SO_REUSEPORT` group `listener` belongs to (it
/// replaces the group's program, if any).
pub(crate) fn attach_reuseport_prog(
    listener: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> io::Result<()> {
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: setsockopt reads one int from a valid pointer with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            (&fd as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A listening socket's accept queue: connections that completed the
/// handshake and wait for `accept` (`tcpi_unacked` of a listener).
pub(crate) fn listen_queue_len(listener: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(super::tcp_info(listener)?.tcpi_unacked)
}

/// A shared, writable mapping of `WORDS` signed 64-bit words: the kernel
/// balancer's table (a `BPF_F_MMAPABLE` array map of one element), which
/// the program, the master and the workers update with atomic operations.
#[derive(Debug)]
pub(crate) struct WordsMapping<const WORDS: usize> {
    base: std::ptr::NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory accessed only through
// `AtomicI64`s, like `&[AtomicI64]`, which is Send and Sync.
unsafe impl<const WORDS: usize> Send for WordsMapping<WORDS> {}
// SAFETY: as above: every access is atomic.
unsafe impl<const WORDS: usize> Sync for WordsMapping<WORDS> {}

impl<const WORDS: usize> WordsMapping<WORDS> {
    const LEN: usize = WORDS * 8;

    /// Maps the first `WORDS` words of `fd` shared and writable.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(WordsMapping { base: super::map_shared(fd, Self::LEN, true)? })
    }

    /// The words.
    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicI64; WORDS] {
        // SAFETY: `base` is a live, page-aligned mapping of LEN bytes that
        // lives as long as `self` (a bpf array map cannot shrink, so it
        // never faults); AtomicI64 has the size and alignment of i64 and
        // any bit pattern is valid; every process and the bpf program
        // touch these words only atomically.
        unsafe { &*self.base.as_ptr().cast::<[std::sync::atomic::AtomicI64; WORDS]>() }
    }
}

impl<const WORDS: usize> Drop for WordsMapping<WORDS> {
    fn drop(&mut self) {
        // SAFETY: `base` came from map_shared with LEN, and no reference
        // into it outlives `self` (`words` borrows `self`).
        unsafe { super::unmap(self.base, Self::LEN) };
    }
}
