//! Unix `SOCK_SEQPACKET` channels that carry a frame plus file descriptors.
//!
//! This crate owns the master↔worker transport and is the only crate in the
//! workspace with `unsafe` (all of it in `sys`, each block
//! with a `// SAFETY:` comment). It uses a packet socket so that a frame and the fds
//! sent with it arrive together, in one `recvmsg`, or not at all.
//!
//! Ownership rules:
//! - [`Channel::send`] borrows the fds it sends; the caller closes its own
//!   copies once `send` returns `Ok` (and keeps them on any error, so a full
//!   channel never loses a connection).
//! - [`Channel::recv`] wraps every received fd in an [`OwnedFd`] before it
//!   returns, with `FD_CLOEXEC` already set (`MSG_CMSG_CLOEXEC`), so no error
//!   path leaks one. A packet whose fds did not fit (`MSG_CTRUNC`) or whose
//!   bytes did not fit (`MSG_TRUNC`) is an error, and whatever fds did arrive
//!   are closed.
//!
//! It also owns the other small pieces of OS glue both ends share:
//! [`monotonic_ns`], the clock for timestamps that cross the channel, and
//! [`ProcessUsage`], a process's CPU time and resident memory, and
//! [`TcpProgress`], how far a connection got, [`SharedCounters`], a
//! worker's running totals in memory its master can read, and
//! [`pidfd_open`], to learn when any process exits.
//!
//! Why not `sendfd` on the hot path: its `send_with_fd` allocates a control
//! buffer per call, and its `recv_with_fd` passes no flags (no
//! `MSG_CMSG_CLOEXEC`) and does not report `MSG_CTRUNC`. The tests check that
//! the two interoperate.
#![deny(missing_docs)]

pub mod reuseport;
mod sys;
mod usage;

pub use sys::counters::{SharedCounters, COUNTER_SLOTS};
pub use usage::ProcessUsage;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

/// The most fds one packet may carry (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_PACKET: usize = 252;

/// A listening `SOCK_SEQPACKET` socket bound to a path.
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl SeqpacketListener {
    /// Binds a non-blocking listener at `path` (which must not exist) and
    /// makes the socket file mode 0600.
    pub fn bind(path: &Path) -> io::Result<SeqpacketListener> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        socket::bind(fd.as_raw_fd(), &addr)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, Backlog::new(128).map_err(io::Error::from)?)?;
        Ok(SeqpacketListener { fd, path: path.to_owned() })
    }

    /// Accepts one pending connection as a non-blocking channel.
    pub fn accept(&self) -> io::Result<Channel> {
        let fd = socket::accept4(&self.fd, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
        Ok(Channel { fd })
    }

    /// A listener received from another process (a master upgrade),
    /// known to be bound at `path`. Fails unless `fd` is a `SOCK_SEQPACKET`
    /// socket that listens. Its `O_NONBLOCK` is shared with the sender's
    /// copy and stays as the sender set it (non-blocking).
    pub fn from_received(fd: OwnedFd, path: &Path) -> io::Result<SeqpacketListener> {
        if socket::getsockopt(&fd, sockopt::SockType)? != SockType::SeqPacket
            || !socket::getsockopt(&fd, sockopt::AcceptConn)?
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a listening SOCK_SEQPACKET socket",
            ));
        }
        Ok(SeqpacketListener { fd, path: path.to_owned() })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for SeqpacketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqpacketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One end of a connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// The identity of the process on the other end, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id at the time it connected.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// What one [`Channel::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A packet of this many bytes (its fds were appended to the caller's vector).
    Packet(usize),
    /// The peer closed the channel.
    Closed,
}

/// Why a packet could not be received whole.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The socket call failed (`WouldBlock` included).
    #[error("recvmsg failed: {0}")]
    Io(#[from] io::Error),
    /// The packet was longer than the buffer; it was discarded with its fds.
    #[error("packet longer than {capacity} bytes, discarded")]
    Truncated {
        /// The buffer length it did not fit.
        capacity: usize,
    },
    /// The packet carried more fds than fit (`MSG_CTRUNC`); all that arrived
    /// were closed. Its `len` bytes in the buffer are intact.
    #[error("packet carried more fds than expected (MSG_CTRUNC), closed them")]
    FdsTruncated {
        /// Length of the packet's bytes.
        len: usize,
    },
}

impl RecvError {
    /// True for `EAGAIN`: nothing to read now.
    pub fn is_would_block(&self) -> bool {
        matches!(self, RecvError::Io(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    /// True for `EINTR`: a signal's handler ran while a blocking receive
    /// waited (with a receive timeout set, the kernel never restarts it).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, RecvError::Io(err) if err.kind() == io::ErrorKind::Interrupted)
    }
}

impl Channel {
    /// Connects to a listener at `path`. The channel is blocking until
    /// [`Channel::set_nonblocking`] says otherwise.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd =
            socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
        let addr = UnixAddr::new(path)?;
        socket::connect(fd.as_raw_fd(), &addr)?;
        Ok(Channel { fd })
    }

    /// A connected pair, both ends blocking.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Sends `frame` with `fds` attached as one packet. Fails with
    /// `WouldBlock` when the channel is full (non-blocking mode) and with
    /// `ETOOMANYREFS` when too many fds are in flight; in both cases nothing
    /// was sent and the caller still owns its fds.
    pub fn send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_with(frame, fds, false)
    }

    /// Like [`Channel::send`], but never blocks (`MSG_DONTWAIT`), whatever
    /// the socket's own mode: `WouldBlock` when the channel is full.
    pub fn send_nowait(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_with(frame, fds, true)
    }

    fn send_with(&self, frame: &[u8], fds: &[BorrowedFd<'_>], dont_wait: bool) -> io::Result<()> {
        if fds.len() > MAX_FDS_PER_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} fds in one packet, at most {MAX_FDS_PER_PACKET}", fds.len()),
            ));
        }
        let sent = sys::send_packet(self.fd.as_fd(), frame, fds, dont_wait)?;
        if sent != frame.len() {
            // A packet socket sends all or nothing; anything else is a bug.
            return Err(io::Error::other(format!("sent {sent} of {} bytes", frame.len())));
        }
        Ok(())
    }

    /// Receives one packet into `buf`, appending its fds (close-on-exec) to `fds`.
    pub fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<Received, RecvError> {
        self.recv_with(buf, fds, false)
    }

    /// Like [`Channel::recv`], but never blocks (`MSG_DONTWAIT`), whatever
    /// the socket's own mode. For a duplicate of a channel end another
    /// process owns: `O_NONBLOCK` is shared with it and is its to set.
    pub fn recv_nowait(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Received, RecvError> {
        self.recv_with(buf, fds, true)
    }

    fn recv_with(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        dont_wait: bool,
    ) -> Result<Received, RecvError> {
        let before = fds.len();
        let outcome = sys::recv_packet(self.fd.as_fd(), buf, fds, dont_wait)?;
        if outcome.fds_truncated && !outcome.bytes_truncated {
            fds.truncate(before);
            return Err(RecvError::FdsTruncated { len: outcome.len });
        }
        if outcome.bytes_truncated {
            fds.truncate(before);
            return Err(RecvError::Truncated { capacity: buf.len() });
        }
        if outcome.len == 0 && fds.len() == before {
            return Ok(Received::Closed);
        }
        Ok(Received::Packet(outcome.len))
    }

    /// Switches between blocking and non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(
            &self.fd,
            nix::fcntl::FcntlArg::F_GETFL,
        )?);
        flags.set(nix::fcntl::OFlag::O_NONBLOCK, nonblocking);
        nix::fcntl::fcntl(&self.fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(())
    }

    /// Bounds how long a blocking `recv` waits.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            timeout.as_secs() as nix::sys::time::time_t,
            timeout.subsec_micros() as nix::sys::time::suseconds_t,
        );
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)?;
        Ok(())
    }

    /// Takes a received fd as a channel, if it is a connected Unix
    /// `SOCK_SEQPACKET` socket (anything else is refused, and closed).
    pub fn from_received(fd: OwnedFd) -> io::Result<Channel> {
        let kind = socket::getsockopt(&fd, sockopt::SockType)?;
        let family = socket::getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
        if kind != SockType::SeqPacket || !family {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a Unix SOCK_SEQPACKET socket",
            ));
        }
        Ok(Channel { fd })
    }

    /// The path of the listener this end is connected to (`getpeername`),
    /// `None` if the peer is unnamed (a socketpair).
    pub fn peer_path(&self) -> io::Result<Option<PathBuf>> {
        let addr = socket::getpeername::<UnixAddr>(self.fd.as_raw_fd())?;
        Ok(addr.path().map(Path::to_path_buf))
    }

    /// Who is on the other end (`SO_PEERCRED`).
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let cred = socket::getsockopt(&self.fd, sockopt::PeerCredentials)?;
        Ok(PeerCredentials { pid: cred.pid(), uid: cred.uid(), gid: cred.gid() })
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How far a TCP connection got: what the peer sent and how much of it was
/// read, what was sent back. The master uses it to tell, after a worker
/// died, whether a connection it still holds was untouched (safe to hand to
/// another worker), fully answered, or lost mid-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpProgress {
    /// Payload bytes received from the peer (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Of those, bytes no process has read yet (`FIONREAD`).
    pub bytes_unread: u64,
    /// Payload bytes the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Payload bytes sent, retransmissions included (`tcpi_bytes_sent`).
    pub bytes_sent: u64,
    /// Bytes written but not yet acknowledged, sent or not (`SIOCOUTQ`).
    pub bytes_in_send_queue: u64,
}

impl TcpProgress {
    /// Bytes some process read from the connection.
    pub fn bytes_consumed(&self) -> u64 {
        self.bytes_received.saturating_sub(self.bytes_unread)
    }

    /// Bytes some process wrote to the connection: acknowledged by the peer
    /// or still queued to go (a graceful close still sends them).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_acked + self.bytes_in_send_queue
    }

    /// Reads `fd`'s counters (it must be a TCP socket).
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<TcpProgress> {
        sys::tcp_progress(fd)
    }
}

/// Watches a listener shared by several processes with `EPOLLEXCLUSIVE`
/// (level-triggered), so a new connection wakes one process, not all of
/// them (the thundering herd). `epoll` is the raw fd of a `mio::Poll`; events
/// arrive with `token`.
pub fn epoll_add_exclusive(epoll: RawFd, listener: BorrowedFd<'_>, token: usize) -> io::Result<()> {
    sys::epoll_add_exclusive(epoll, listener, token as u64)
}

/// Puts the calling process in the `SCHED_BATCH` scheduling class: a
/// batch process that is woken never preempts the one running on its CPU
/// (it runs when that one sleeps or its slice ends). For a worker, so that
/// the master's hand-off does not switch the master out for the worker it
/// just woke (docs/performance.md). Unprivileged; `sched(7)`.
pub fn schedule_as_batch() -> io::Result<()> {
    sys::set_batch_scheduling()
}

/// Sleeps until `socket` or the epoll instance `epoll` (the raw fd of a
/// `mio::Poll`) is readable, or `timeout` passes (`None`: no limit; rounded
/// up to whole milliseconds). Returns `(socket ready, epoll ready)`.
///
/// `poll(2)` puts the sleeper on the socket's wait queue only while it
/// sleeps, and the sender's wake-up reaches it directly, as it reaches a
/// process blocked in `recvmsg`; a socket registered with epoll instead
/// makes every send run epoll's callback, asleep or not.
pub fn wait_socket_or_epoll(
    socket: BorrowedFd<'_>,
    epoll: RawFd,
    timeout: Option<Duration>,
) -> io::Result<(bool, bool)> {
    let timeout_ms = match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    };
    sys::poll_socket_and_epoll(socket, epoll, timeout_ms)
}

/// Stops watching `fd` in the epoll instance `epoll`.
pub fn epoll_delete(epoll: RawFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    sys::epoll_delete(epoll, fd)
}

/// A non-blocking, close-on-exec TCP socket bound to `addr` with
/// `SO_REUSEADDR` (and `SO_REUSEPORT` if asked), listening with `backlog`
/// unless it is `None` (then it only holds the port).
pub fn bind_tcp(addr: SocketAddr, backlog: Option<i32>, reuse_port: bool) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(addr))?;
    if let Some(backlog) = backlog {
        socket::listen(&fd, Backlog::new(backlog).map_err(io::Error::from)?)?;
    }
    Ok(fd)
}

/// A pidfd for process `pid` (`pidfd_open(2)`, Linux 5.3+): it becomes
/// readable when the process exits, whoever reaps it, and unlike a pid it
/// cannot come to mean another process. Close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    sys::pidfd_open(pid)
}

/// Signals whose default action ends a process and that an operator may
/// send by mistake or habit (SIGUSR1/2, SIGPIPE, the timers, the
/// real-time ones, …), beyond the few a daemon acts on. Both binaries catch
/// them all and log the unused ones, so a stray signal never kills a
/// process with its sockets left behind.
pub fn signals_ending_a_process_by_default() -> Vec<i32> {
    let mut signals = vec![
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ];
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// Closes every fd of `fds`. Runs of consecutive numbers close with one
/// `close_range` each: `accept` hands out the lowest free fds, so the
/// connections of one hand-off batch are usually one run, and a batch of
/// 16 costs one system call instead of 16.
pub fn close_all(fds: impl IntoIterator<Item = OwnedFd>) {
    let mut run: Option<(RawFd, RawFd)> = None;
    for fd in fds {
        let fd = fd.into_raw_fd();
        run = match run {
            Some((first, last)) if last.checked_add(1) == Some(fd) => Some((first, fd)),
            Some((first, last)) => {
                sys::close_owned_range(first, last);
                Some((fd, fd))
            }
            None => Some((fd, fd)),
        };
    }
    if let Some((first, last)) = run {
        sys::close_owned_range(first, last);
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process on the
/// machine, so a timestamp taken by the master means the same in a worker.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
