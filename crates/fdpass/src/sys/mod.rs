//! The raw system calls: `sendmsg`/`recvmsg` with `SCM_RIGHTS` ancillary
//! data, socket options and ioctls, `pidfd_open`, and the sealed shared
//! memory of [`counters`].
//!
//! The only `unsafe` code in the workspace (here and in [`counters`]). The
//! control-message buffer lives on the stack, so sending or receiving a
//! packet never allocates (the caller's fd vector is reused across calls).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::MAX_FDS_PER_PACKET;

pub mod bpf;
pub mod counters;

/// Room for one `cmsghdr` plus [`MAX_FDS_PER_PACKET`] fds (16 + 252 * 4
/// bytes on 64-bit Linux), rounded up, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; CONTROL_BUFFER_LEN]);

const CONTROL_BUFFER_LEN: usize = 1088;

const _: () = assert!(mem::align_of::<libc::cmsghdr>() <= 8);

fn control_space(n_fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n_fds * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Sends one packet; returns the bytes sent.
pub(crate) fn send_packet(
    socket: BorrowedFd<'_>,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
    dont_wait: bool,
) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_PACKET);
    let mut control = ControlBuffer([0; CONTROL_BUFFER_LEN]);
    let mut iov =
        libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = control_space(fds.len());
        assert!(space <= CONTROL_BUFFER_LEN, "control buffer too small for {} fds", fds.len());
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed bytes aligned for
        // cmsghdr, so CMSG_FIRSTHDR returns a valid pointer to the first
        // header inside it.
        let header = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: `header` is in bounds (checked above: space holds one header
        // plus fds.len() fds) and properly aligned; CMSG_DATA points just past
        // it, and we write exactly fds.len() ints there, within `space`.
        unsafe {
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len =
                libc::CMSG_LEN((fds.len() * mem::size_of::<RawFd>()) as libc::c_uint) as _;
            let data = libc::CMSG_DATA(header).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }
    let flags = libc::MSG_NOSIGNAL | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: msg points at a live iovec over `frame` and at a control buffer
    // that outlives the call; the kernel only reads from both.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, flags) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// What `recv_packet` saw besides the fds it pushed.
pub(crate) struct RecvOutcome {
    pub(crate) len: usize,
    pub(crate) bytes_truncated: bool,
    pub(crate) fds_truncated: bool,
}

/// Receives one packet into `buf`, pushing every fd it carried onto `fds`
/// (already owned, close-on-exec).
pub(crate) fn recv_packet(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    dont_wait: bool,
) -> io::Result<RecvOutcome> {
    let mut control = ControlBuffer([0; CONTROL_BUFFER_LEN]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_BUFFER_LEN as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: msg points at a live iovec over `buf` and a control buffer of
    // msg_controllen bytes, both writable and outliving the call.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, flags) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful recvmsg, msg_control/msg_controllen describe
    // the control messages the kernel wrote into `control`; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within that length and return null at its end.
    let mut header = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !header.is_null() {
        // SAFETY: `header` is non-null, so it points at a complete cmsghdr
        // inside the control buffer (see above).
        let (level, kind, cmsg_len) =
            unsafe { ((*header).cmsg_level, (*header).cmsg_type, (*header).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA of a valid header points at its payload.
            let data = unsafe { libc::CMSG_DATA(header) };
            let header_len = data as usize - header as usize;
            let n_fds = cmsg_len.saturating_sub(header_len) / mem::size_of::<RawFd>();
            for i in 0..n_fds {
                // SAFETY: the payload holds n_fds ints written by the kernel,
                // possibly unaligned.
                let raw = unsafe { ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed `raw` in our fd table via
                // SCM_RIGHTS; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `header` is a valid header inside the buffer described by msg.
        header = unsafe { libc::CMSG_NXTHDR(&msg, header) };
    }
    Ok(RecvOutcome {
        len: len as usize,
        bytes_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

fn tcp_info(socket: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is a plain C struct for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and outlives the call; the
    // kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Byte counts of a TCP connection, from `TCP_INFO` and `FIONREAD`.
pub(crate) fn tcp_progress(socket: BorrowedFd<'_>) -> io::Result<crate::TcpProgress> {
    let info = tcp_info(socket)?;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which is valid.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut unacked: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one int to the pointer,
    // which is valid.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::TcpProgress {
        bytes_received: info.tcpi_bytes_received,
        bytes_unread: unread.max(0) as u64,
        bytes_in_send_queue: unacked.max(0) as u64,
        bytes_acked: info.tcpi_bytes_acked,
        bytes_sent: info.tcpi_bytes_sent,
    })
}

/// Adds `fd` to the epoll instance `epoll` (level-triggered, readable) with
/// `EPOLLEXCLUSIVE`, so one new connection wakes one of the processes
/// sharing a listener instead of all of them.
pub(crate) fn epoll_add_exclusive(epoll: RawFd, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
    let mut event =
        libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32, u64: token };
    // SAFETY: `event` is a valid epoll_event for the duration of the call;
    // epoll_ctl only reads it. A bad `epoll` or `fd` is reported as EBADF.
    let rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut event) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `fd` from the epoll instance `epoll`.
pub(crate) fn epoll_delete(epoll: RawFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed since
    // Linux 2.6.9); bad fds are reported as errors.
    let rc = unsafe {
        libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd.as_raw_fd(), std::ptr::null_mut())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` on `socket` and the epoll instance `epoll`, for readability,
/// up to `timeout_ms` (-1: no limit). Returns which of the two is ready
/// (readable, hung up or in error).
pub(crate) fn poll_socket_and_epoll(
    socket: BorrowedFd<'_>,
    epoll: RawFd,
    timeout_ms: i32,
) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: epoll, events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the
    // call; poll writes only their `revents`. A bad fd is reported in its
    // `revents` (POLLNVAL), not as undefined behaviour.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let ready = |fd: &libc::pollfd| fd.revents != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}

/// Puts the calling process in `SCHED_BATCH` (priority 0).
pub(crate) fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which
    // only reads it; pid 0 is the calling process.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for process `pid` (`pidfd_open`, Linux 5.3+): readable once the
/// process has exited, whoever its parent is. Close-on-exec.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd
    // or -1; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd (close-on-exec) for us and
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// A sealed memfd of `len` bytes (it can be neither shrunk nor grown, so a
/// mapping of it can never fault), close-on-exec.
pub(crate) fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    memfd_with_seals(name, len, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL)
}

/// A memfd of `len` bytes with `seals` added (the tests also make ones
/// that [`check_sealed`] refuses), close-on-exec.
pub(crate) fn memfd_with_seals(
    name: &std::ffi::CStr,
    len: usize,
    seals: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let rc =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd for us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(rc) };
    // SAFETY: plain syscalls on an fd we own; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Checks that `fd` is a memfd sealed against shrinking, at least `len`
/// bytes long: only then can it be mapped without risking SIGBUS when its
/// owner (another process) would truncate it.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    // SAFETY: F_GET_SEALS takes no argument; a non-memfd gives EINVAL.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    if seals & needed != needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "memfd not sealed against shrinking",
        ));
    }
    // SAFETY: stat is a plain C struct for which all-zero is a valid value.
    let mut stat: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `stat` is writable and outlives the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if (stat.st_size as u64) < len as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "memfd too short"));
    }
    Ok(())
}

/// Maps `len` bytes of `fd` shared; writable only if asked.
pub(crate) fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    writable: bool,
) -> io::Result<ptr::NonNull<u8>> {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: a fresh mapping chosen by the kernel (addr null) overlaps no
    // Rust object; the fd is valid for the call.
    let addr =
        unsafe { libc::mmap(ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    ptr::NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps what [`map_shared`] mapped.
///
/// # Safety
/// `addr` and `len` must come from one successful `map_shared`, and no
/// reference into the mapping may be used afterwards.
pub(crate) unsafe fn unmap(addr: ptr::NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees the mapping is ours and unused.
    unsafe { libc::munmap(addr.as_ptr().cast(), len) };
}

/// Closes the fds `first..=last`, all owned by the caller: one `close` for
/// one fd, else one `close_range` (Linux 5.9+; one `close` each before).
pub fn close_owned_range(first: RawFd, last: RawFd) {
    debug_assert!(0 <= first && first <= last);
    if first < last {
        // SAFETY: the caller gave up ownership of every fd in first..=last
        // (it turned each OwnedFd into a raw fd and keeps no copy), so no
        // live OwnedFd or other handle names any of them; flags 0 only
        // closes.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
        if rc == 0 {
            return;
        }
    }
    for fd in first..=last {
        // SAFETY: as above (one fd, or close_range failed without closing).
        unsafe { libc::close(fd) };
    }
}
