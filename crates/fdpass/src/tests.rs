use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::*;

fn is_cloexec(fd: &OwnedFd) -> bool {
    let flags = fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD");
    FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC)
}

#[test]
fn a_sent_fd_arrives_with_its_frame_and_is_the_same_socket() {
    let (master, worker) = Channel::pair().expect("pair");
    let (mut ours, theirs) = UnixStream::pair().expect("stream pair");
    master.send(b"header", &[theirs.as_fd()]).expect("send");
    drop(theirs);

    let mut buf = [0u8; 64];
    let mut fds = Vec::new();
    let got = worker.recv(&mut buf, &mut fds).expect("recv");
    assert_eq!(got, Received::Packet(6));
    assert_eq!(&buf[..6], b"header");
    assert_eq!(fds.len(), 1);
    assert!(is_cloexec(&fds[0]), "received fd must be close-on-exec");

    let mut received = UnixStream::from(fds.pop().expect("one fd"));
    received.write_all(b"ping").expect("write through received fd");
    let mut reply = [0u8; 4];
    ours.read_exact(&mut reply).expect("read at the other end");
    assert_eq!(&reply, b"ping");
}

#[test]
fn many_fds_travel_in_one_packet() {
    let (a, b) = Channel::pair().expect("pair");
    let streams: Vec<_> =
        (0..MAX_FDS_PER_PACKET).map(|_| UnixStream::pair().expect("pair").0).collect();
    let borrowed: Vec<_> = streams.iter().map(|s| s.as_fd()).collect();
    a.send(b"batch", &borrowed).expect("send 252 fds");
    let mut fds = Vec::new();
    let mut buf = [0u8; 16];
    assert_eq!(b.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(5));
    assert_eq!(fds.len(), MAX_FDS_PER_PACKET);
    assert!(fds.iter().all(is_cloexec));

    let too_many: Vec<_> = borrowed.iter().chain(borrowed.iter().take(1)).copied().collect();
    let err = a.send(b"x", &too_many).expect_err("253 fds is refused before the syscall");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn a_packet_longer_than_the_buffer_is_an_error_and_its_fds_are_closed() {
    let (a, b) = Channel::pair().expect("pair");
    let (_keep, theirs) = UnixStream::pair().expect("stream pair");
    a.send(&[7u8; 100], &[theirs.as_fd()]).expect("send");
    let mut fds = Vec::new();
    let mut small = [0u8; 10];
    let err = b.recv(&mut small, &mut fds).expect_err("truncated");
    assert!(matches!(err, RecvError::Truncated { capacity: 10 }), "{err}");
    assert!(!err.is_would_block());
    assert!(fds.is_empty(), "fds of a rejected packet are closed, not handed out");
}

#[test]
fn a_closed_peer_reads_as_closed() {
    let (a, b) = Channel::pair().expect("pair");
    drop(a);
    let mut fds = Vec::new();
    assert_eq!(b.recv(&mut [0u8; 8], &mut fds).expect("recv"), Received::Closed);
}

#[test]
fn a_full_channel_says_would_block_and_keeps_the_fd_with_the_caller() {
    let (a, _b) = Channel::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    let (_keep, theirs) = UnixStream::pair().expect("stream pair");
    let mut sent = 0;
    let err = loop {
        match a.send(&[0u8; 512], &[theirs.as_fd()]) {
            Ok(()) => sent += 1,
            Err(err) => break err,
        }
        assert!(sent < 1_000_000, "channel never filled");
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    // The caller's fd is untouched and still usable.
    assert!(fcntl(&theirs, FcntlArg::F_GETFD).is_ok());
}

/// A blocking channel (a worker sleeps in `recv` on it) whose other calls
/// must not block: `send_nowait` and `recv_nowait` say `WouldBlock`, and a
/// blocking `recv` returns it when its read timeout passes.
#[test]
fn a_blocking_channel_can_still_send_and_receive_without_waiting() {
    let (a, b) = Channel::pair().expect("pair");
    let mut sent = 0;
    let err = loop {
        match a.send_nowait(&[0u8; 512], &[]) {
            Ok(()) => sent += 1,
            Err(err) => break err,
        }
        assert!(sent < 1_000_000, "channel never filled");
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    let (mut buf, mut fds) = ([0u8; 512], Vec::new());
    for _ in 0..sent {
        assert!(matches!(b.recv_nowait(&mut buf, &mut fds), Ok(Received::Packet(512))));
    }
    assert!(b.recv_nowait(&mut buf, &mut fds).is_err_and(|err| err.is_would_block()));
    b.set_read_timeout(Duration::from_millis(20)).expect("timeout");
    let started = std::time::Instant::now();
    let timed_out = b.recv(&mut buf, &mut fds).expect_err("nothing to read");
    assert!(timed_out.is_would_block() && !timed_out.is_interrupted(), "{timed_out}");
    assert!(started.elapsed() >= Duration::from_millis(15), "{:?}", started.elapsed());
}

#[test]
fn listener_connect_accept_and_peer_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.sock");
    let listener = SeqpacketListener::bind(&path).expect("bind");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let client = Channel::connect(&path).expect("connect");
    let server = listener.accept().expect("accept");
    let cred = server.peer_credentials().expect("SO_PEERCRED");
    assert_eq!(cred.pid as u32, std::process::id());
    assert_eq!(cred.uid, nix::unistd::getuid().as_raw());
    client.send(b"hi", &[]).expect("send");
    let mut fds = Vec::new();
    let mut buf = [0u8; 8];
    // The accepted channel is non-blocking; the packet is already queued.
    assert_eq!(server.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(2));
    let err = server.recv(&mut buf, &mut fds).expect_err("nothing more");
    assert!(err.is_would_block());
}

#[test]
fn interoperates_with_the_sendfd_crate() {
    use sendfd::{RecvWithFd, SendWithFd};
    let (a, b) = Channel::pair().expect("pair");
    let (_keep, theirs) = UnixStream::pair().expect("stream pair");
    // sendfd's functions only take std socket types; a datagram wrapper over
    // our packet socket makes the same sendmsg/recvmsg calls.
    let a_as_datagram = UnixDatagram::from(a.fd);
    a_as_datagram.send_with_fd(b"from sendfd", &[theirs.as_raw_fd()]).expect("sendfd send");
    let mut fds = Vec::new();
    let mut buf = [0u8; 32];
    assert_eq!(b.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(11));
    assert_eq!(fds.len(), 1);

    b.send(b"to sendfd", &[theirs.as_fd()]).expect("send");
    let mut raw = [0; 1];
    let (n, n_fds) = a_as_datagram.recv_with_fd(&mut buf, &mut raw).expect("sendfd recv");
    assert_eq!((n, n_fds), (9, 1));
    // sendfd hands back a raw fd that this test now owns; close it.
    nix::unistd::close(raw[0]).expect("close the fd sendfd received");
}

#[test]
fn tcp_progress_tells_untouched_read_and_answered_connections_apart() {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"hello").expect("send");
    let wait = |server: &TcpStream, cond: &dyn Fn(TcpProgress) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let progress = TcpProgress::of(server.as_fd()).expect("tcp progress");
            if cond(progress) {
                return progress;
            }
            assert!(std::time::Instant::now() < deadline, "{progress:?}");
            std::thread::yield_now();
        }
    };
    let untouched = wait(&server, &|p| p.bytes_received == 5);
    assert_eq!(
        (untouched.bytes_unread, untouched.bytes_consumed(), untouched.bytes_sent),
        (5, 0, 0)
    );
    let mut buf = [0u8; 3];
    server.read_exact(&mut buf).expect("read part");
    let partly = TcpProgress::of(server.as_fd()).expect("tcp progress");
    assert_eq!(partly.bytes_consumed(), 3);
    server.write_all(b"reply").expect("reply");
    let written = TcpProgress::of(server.as_fd()).expect("tcp progress");
    assert_eq!(written.bytes_written(), 5, "counted as soon as written: {written:?}");
    let answered = wait(&server, &|p| p.bytes_acked == 5);
    assert_eq!((answered.bytes_sent, answered.bytes_in_send_queue), (5, 0));
}

#[test]
fn a_listener_added_exclusively_is_deleted_once() {
    use std::os::fd::AsRawFd;
    let poll = mio::Poll::new().expect("epoll instance");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    epoll_add_exclusive(poll.as_raw_fd(), listener.as_fd(), 7).expect("add");
    assert!(epoll_add_exclusive(poll.as_raw_fd(), listener.as_fd(), 7).is_err(), "added twice");
    epoll_delete(poll.as_raw_fd(), listener.as_fd()).expect("delete a registered fd");
    assert!(epoll_delete(poll.as_raw_fd(), listener.as_fd()).is_err(), "not registered any more");
}

fn is_nonblocking(fd: BorrowedFd<'_>) -> bool {
    let flags = fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL");
    nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
}

fn owned(fd: BorrowedFd<'_>) -> OwnedFd {
    fd.try_clone_to_owned().expect("dup")
}

#[test]
fn listeners_and_accepted_channels_are_nonblocking_and_close_on_exec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.sock");
    let listener = SeqpacketListener::bind(&path).expect("bind");
    assert_eq!(listener.path(), path);
    assert_eq!(listener.as_raw_fd(), listener.as_fd().as_raw_fd());
    assert!(is_nonblocking(listener.as_fd()));
    let flags = fcntl(listener.as_fd(), FcntlArg::F_GETFD).expect("F_GETFD");
    assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    let err = listener.accept().expect_err("nobody connected yet");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

    let client = Channel::connect(&path).expect("connect");
    assert!(!is_nonblocking(client.as_fd()), "connect gives a blocking channel");
    assert_eq!(client.peer_path().expect("getpeername"), Some(path.clone()));
    let server = listener.accept().expect("accept");
    assert_eq!(server.as_raw_fd(), server.as_fd().as_raw_fd());
    assert!(is_nonblocking(server.as_fd()));
    let flags = fcntl(server.as_fd(), FcntlArg::F_GETFD).expect("F_GETFD");
    assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    assert_eq!(server.peer_path().expect("getpeername"), None, "the client is unnamed");
}

#[test]
fn only_a_listening_seqpacket_socket_is_taken_as_a_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.sock");
    let listener = SeqpacketListener::bind(&path).expect("bind");
    let taken =
        SeqpacketListener::from_received(owned(listener.as_fd()), &path).expect("a listener");
    assert_eq!(taken.path(), path);

    let (a, _b) = Channel::pair().expect("pair");
    let err = SeqpacketListener::from_received(owned(a.as_fd()), &path).expect_err("connected");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    let err = SeqpacketListener::from_received(OwnedFd::from(tcp), &path).expect_err("a stream");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn only_a_unix_seqpacket_socket_is_taken_as_a_channel() {
    let (a, b) = Channel::pair().expect("pair");
    let taken = Channel::from_received(owned(a.as_fd())).expect("a channel");
    taken.send(b"via the copy", &[]).expect("send");
    let mut buf = [0u8; 32];
    assert_eq!(b.recv(&mut buf, &mut Vec::new()).expect("recv"), Received::Packet(12));

    let (stream, _other) = UnixStream::pair().expect("unix stream");
    let err = Channel::from_received(OwnedFd::from(stream)).expect_err("a unix stream");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let err = Channel::from_received(OwnedFd::from(udp)).expect_err("not unix");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn empty_frames_and_several_fds_arrive_as_sent() {
    let (a, b) = Channel::pair().expect("pair");
    let (_keep1, one) = UnixStream::pair().expect("pair");
    let (_keep2, two) = UnixStream::pair().expect("pair");
    let mut buf = [0u8; 16];
    let mut fds = Vec::new();

    // A packet without fds, then one with no bytes but an fd: neither is a close.
    a.send(b"abc", &[]).expect("send bytes only");
    assert_eq!(b.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(3));
    assert!(fds.is_empty());
    a.send(b"", &[one.as_fd()]).expect("send an fd only");
    assert_eq!(b.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(0));
    assert_eq!(fds.len(), 1);

    // Several fds keep their order.
    a.send(b"xy", &[two.as_fd(), one.as_fd()]).expect("send two");
    assert_eq!(b.recv(&mut buf, &mut fds).expect("recv"), Received::Packet(2));
    assert_eq!(fds.len(), 3, "appended to what the vector held");
    let inode = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).expect("fstat").st_ino;
    assert_eq!(inode(fds[1].as_fd()), inode(two.as_fd()));
    assert_eq!(inode(fds[2].as_fd()), inode(one.as_fd()));
}

#[test]
fn the_kernels_most_fds_per_message_all_arrive() {
    // 253 fds (SCM_MAX_FD), from a sender without our limit of 252: the
    // receive buffer holds them all, so MSG_CTRUNC cannot happen with
    // SCM_RIGHTS alone.
    use sendfd::SendWithFd;
    let (a, b) = Channel::pair().expect("pair");
    let streams: Vec<_> =
        (0..=MAX_FDS_PER_PACKET).map(|_| UnixStream::pair().expect("pair").0).collect();
    let raw: Vec<_> = streams.iter().map(|s| s.as_raw_fd()).collect();
    UnixDatagram::from(a.fd).send_with_fd(b"many", &raw).expect("sendfd send");
    let mut fds = Vec::new();
    assert_eq!(b.recv(&mut [0u8; 16], &mut fds).expect("recv"), Received::Packet(4));
    assert_eq!(fds.len(), MAX_FDS_PER_PACKET + 1);
}

#[test]
fn nonblocking_mode_and_read_timeouts_are_set_on_the_socket() {
    let (a, b) = Channel::pair().expect("pair");
    let mut buf = [0u8; 8];
    a.set_nonblocking(true).expect("nonblocking");
    assert!(is_nonblocking(a.as_fd()));
    let err = a.recv(&mut buf, &mut Vec::new()).expect_err("nothing to read");
    assert!(err.is_would_block(), "{err}");
    a.set_nonblocking(false).expect("blocking");
    assert!(!is_nonblocking(a.as_fd()));

    // A blocking channel read without waiting.
    let err = b.recv_nowait(&mut buf, &mut Vec::new()).expect_err("nothing to read");
    assert!(err.is_would_block(), "{err}");
    assert!(!is_nonblocking(b.as_fd()), "recv_nowait leaves the mode alone");

    b.set_read_timeout(std::time::Duration::from_millis(1500)).expect("timeout");
    let tv = nix::sys::socket::getsockopt(&b.fd, sockopt::ReceiveTimeout).expect("SO_RCVTIMEO");
    assert_eq!((tv.tv_sec(), tv.tv_usec()), (1, 500_000));
}

#[test]
fn tcp_progress_arithmetic() {
    let progress = TcpProgress {
        bytes_received: 10,
        bytes_unread: 4,
        bytes_acked: 3,
        bytes_sent: 9,
        bytes_in_send_queue: 2,
    };
    assert_eq!(progress.bytes_consumed(), 6);
    assert_eq!(progress.bytes_written(), 5);
}

#[test]
fn tcp_progress_of_a_non_tcp_or_listening_socket_is_an_error() {
    let (unix, _other) = UnixStream::pair().expect("pair");
    assert!(TcpProgress::of(unix.as_fd()).is_err());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let err = TcpProgress::of(listener.as_fd()).expect_err("FIONREAD of a listener");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
}

#[test]
fn a_listener_added_exclusively_wakes_its_poll() {
    let mut poll = mio::Poll::new().expect("epoll instance");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    epoll_add_exclusive(poll.as_raw_fd(), listener.as_fd(), 7).expect("add");
    let _client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let mut events = mio::Events::with_capacity(4);
    poll_through_eintr(&mut poll, &mut events);
    let tokens: Vec<_> = events.iter().map(|e| (e.token(), e.is_readable())).collect();
    assert_eq!(tokens, [(mio::Token(7), true)]);
}

#[test]
fn bind_tcp_listens_or_only_holds_the_port() {
    let fd = bind_tcp("127.0.0.1:0".parse().expect("addr"), Some(16), true).expect("bind");
    assert!(is_nonblocking(fd.as_fd()));
    let flags = fcntl(&fd, FcntlArg::F_GETFD).expect("F_GETFD");
    assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    assert!(socket::getsockopt(&fd, sockopt::AcceptConn).expect("SO_ACCEPTCONN"));
    let listener = std::net::TcpListener::from(fd);
    let addr = listener.local_addr().expect("addr");
    assert_eq!(
        listener.accept().map(|_| ()).expect_err("none yet").kind(),
        io::ErrorKind::WouldBlock
    );
    // SO_REUSEPORT: a second socket may bind the same port.
    let second = bind_tcp(addr, Some(16), true).expect("the same port again");
    assert!(socket::getsockopt(&second, sockopt::ReusePort).expect("SO_REUSEPORT"));
    let held = bind_tcp("127.0.0.1:0".parse().expect("addr"), None, false).expect("bind");
    assert!(!socket::getsockopt(&held, sockopt::AcceptConn).expect("SO_ACCEPTCONN"));
    assert!(!socket::getsockopt(&held, sockopt::ReusePort).expect("SO_REUSEPORT"));
    assert!(socket::getsockopt(&held, sockopt::ReuseAddr).expect("SO_REUSEADDR"));
}

#[test]
fn a_pidfd_becomes_readable_when_its_process_exits() {
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pidfd = pidfd_open(child.id() as i32).expect("pidfd_open");
    let mut poll = mio::Poll::new().expect("epoll instance");
    let raw = pidfd.as_raw_fd();
    poll.registry()
        .register(&mut mio::unix::SourceFd(&raw), mio::Token(1), mio::Interest::READABLE)
        .expect("register the pidfd");
    let mut events = mio::Events::with_capacity(4);
    poll_through_eintr(&mut poll, &mut events);
    assert_eq!(events.iter().count(), 1, "the process exited");
    child.wait().expect("reap");
    let err = pidfd_open(i32::MAX).expect_err("no such process");
    assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
}

#[test]
fn the_signals_list_holds_the_stray_ones_only() {
    let signals = signals_ending_a_process_by_default();
    for signal in [libc::SIGUSR1, libc::SIGPIPE, libc::SIGXFSZ, libc::SIGRTMIN(), libc::SIGRTMAX()]
    {
        assert!(signals.contains(&signal), "{signal}");
    }
    for signal in [0, libc::SIGHUP, libc::SIGTERM, libc::SIGKILL, libc::SIGINT] {
        assert!(!signals.contains(&signal), "{signal}");
    }
}

#[test]
fn monotonic_ns_reads_clock_monotonic() {
    let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64;
    let clock = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    let before = ns(clock());
    let now = monotonic_ns();
    let after = ns(clock());
    assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
}

/// `poll.poll(events, 10 s)`, again after EINTR: epoll_wait(2) fails with
/// it when the test process is stopped and continued, even without a
/// signal handler (signal(7)).
fn poll_through_eintr(poll: &mut mio::Poll, events: &mut mio::Events) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match poll.poll(events, Some(left)) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted && !left.is_zero() => {}
            result => return result.expect("poll"),
        }
    }
}

#[test]
fn close_all_closes_every_fd_given_in_runs_or_alone_and_no_other() {
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..16).map(|_| UnixStream::pair().expect("socketpair")).collect();
    // Duplicates made one after the other take the lowest free numbers, so
    // they are (mostly) consecutive: close_all's close_range path. The even
    // pairs' original ends go too, each alone between the pairs' other fds.
    let mut given: Vec<OwnedFd> =
        pairs.iter().map(|(a, _)| OwnedFd::from(a.try_clone().expect("dup"))).collect();
    let mut peers = Vec::new();
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        b.set_nonblocking(true).expect("nonblocking");
        let kept = if i % 2 == 0 {
            given.push(OwnedFd::from(a));
            None
        } else {
            Some(a)
        };
        peers.push((b, kept));
    }
    close_all(given);
    // Even pairs: both copies of `a` are gone, so `b` reads EOF. Odd
    // pairs: `a` is still open, so `b` would block.
    let mut buf = [0u8; 1];
    for (i, (mut b, kept)) in peers.into_iter().enumerate() {
        match b.read(&mut buf) {
            Ok(0) => assert!(kept.is_none(), "pair {i}: closed though one end was kept"),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(kept.is_some(), "pair {i}: every copy was given, yet one is open")
            }
            other => panic!("pair {i}: {other:?}"),
        }
    }
}

#[test]
fn wait_socket_or_epoll_says_which_is_ready_and_otherwise_waits_its_timeout() {
    use std::os::fd::AsRawFd;
    use std::time::Instant;
    let (sender, socket) = UnixDatagram::pair().expect("pair");
    let (watched_sender, watched) = UnixDatagram::pair().expect("pair");
    let poll = mio::Poll::new().expect("poll");
    let watched_fd = watched.as_raw_fd();
    poll.registry()
        .register(&mut mio::unix::SourceFd(&watched_fd), mio::Token(1), mio::Interest::READABLE)
        .expect("register");
    let epoll = poll.as_raw_fd();
    let wait = |timeout| wait_socket_or_epoll(socket.as_fd(), epoll, timeout).expect("wait");

    // Nothing: the whole timeout (rounded up to a millisecond), then neither.
    let started = Instant::now();
    assert_eq!(wait(Some(Duration::from_micros(20_500))), (false, false));
    assert!(started.elapsed() >= Duration::from_millis(21), "{:?}", started.elapsed());
    assert_eq!(wait(Some(Duration::ZERO)), (false, false));

    sender.send(b"x").expect("send");
    assert_eq!(wait(None), (true, false), "the socket");
    watched_sender.send(b"y").expect("send");
    assert_eq!(wait(None), (true, true), "both (level-triggered: the socket is unread)");
    let mut buf = [0u8; 4];
    socket.recv(&mut buf).expect("recv");
    assert_eq!(wait(Some(Duration::ZERO)), (false, true), "the epoll instance");
    watched.recv(&mut buf).expect("recv");

    // No timeout: it sleeps until a packet comes, however late.
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        sender.send(b"late").expect("send");
    });
    let started = Instant::now();
    assert_eq!(wait(None), (true, false));
    assert!(started.elapsed() >= Duration::from_millis(40), "{:?}", started.elapsed());
    late.join().expect("sender");
}
