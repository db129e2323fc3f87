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
