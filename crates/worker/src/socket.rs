//! A connection's socket as the worker uses it: every read and write passes
//! `MSG_DONTWAIT`, so it never blocks whatever the `O_NONBLOCK` flag of the
//! file description says — a flag the worker shares with whoever else holds
//! the connection (the master accepted it) and so must not rely on, and now
//! need not pay a system call to set. Writes pass `MSG_NOSIGNAL` too: a
//! client gone away is an `EPIPE` error, not a signal.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getpeername, recv, send, shutdown, MsgFlags, Shutdown, SockaddrStorage};

/// A connected stream socket the worker owns; closed when dropped.
#[derive(Debug)]
pub struct ConnSocket {
    fd: OwnedFd,
}

impl ConnSocket {
    pub fn new(fd: OwnedFd) -> ConnSocket {
        ConnSocket { fd }
    }

    /// The peer's address, for a log line (`getpeername`; the master does
    /// not ask `accept` for it).
    pub fn peer(&self) -> String {
        match getpeername::<SockaddrStorage>(self.fd.as_raw_fd()) {
            Ok(addr) => addr.to_string(),
            Err(err) => format!("unknown ({err})"),
        }
    }

    /// Sends the FIN now (`shutdown(SHUT_WR)`), while others may still hold
    /// the socket.
    pub fn shutdown_write(&self) -> io::Result<()> {
        shutdown(self.fd.as_raw_fd(), Shutdown::Write).map_err(io::Error::from)
    }
}

impl Read for ConnSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

impl Write for ConnSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            .map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for ConnSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_peer_is_the_clients_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let socket = ConnSocket::new(OwnedFd::from(accepted));
        assert_eq!(socket.peer(), client.local_addr().expect("client addr").to_string());
        // A socket with no peer says why, instead of failing the log line.
        let (lone, _) = UnixStream::pair().expect("pair");
        let unnamed = ConnSocket::new(OwnedFd::from(lone));
        assert!(!unnamed.peer().is_empty());
        let file = std::fs::File::open("/dev/null").expect("open");
        assert!(ConnSocket::new(OwnedFd::from(file)).peer().starts_with("unknown ("));
    }

    #[test]
    fn reads_and_writes_never_block_even_on_a_blocking_socket() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(false).expect("blocking");
        let raw = ours.as_raw_fd();
        let mut socket = ConnSocket::new(OwnedFd::from(ours));
        assert_eq!(socket.as_raw_fd(), raw);
        let mut buf = [0u8; 8];
        let err = socket.read(&mut buf).expect_err("nothing to read yet");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        theirs.write_all(b"hi").expect("write");
        assert_eq!(socket.read(&mut buf).expect("read"), 2);
        assert_eq!(socket.write(b"back").expect("write"), 4);
        socket.shutdown_write().expect("shutdown");
        let mut reply = Vec::new();
        theirs.read_to_end(&mut reply).expect("EOF after the FIN");
        assert_eq!(reply, b"back");
    }

    #[test]
    fn a_write_to_a_full_socket_would_block_at_once_even_on_a_blocking_socket() {
        use std::time::{Duration, Instant};
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(false).expect("blocking");
        // Bounds the test should a write block after all.
        let bound = Duration::from_secs(10);
        ours.set_write_timeout(Some(bound)).expect("timeout");
        let mut socket = ConnSocket::new(OwnedFd::from(ours));
        let started = Instant::now();
        let err = loop {
            if let Err(err) = socket.write(&[0u8; 4096]) {
                break err;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() < bound / 2, "a write blocked: {:?}", started.elapsed());
    }
}
