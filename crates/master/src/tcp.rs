//! Binding the client-facing TCP listener with the options the article uses.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{accept4, SockFlag};

/// Binds `addr` with SO_REUSEADDR, non-blocking and close-on-exec, and
/// listens with `backlog`. With `reuse_port` (the `reuseport` mode) it also
/// sets SO_REUSEPORT and does not listen: it only holds the port (and
/// resolves port 0) for the workers' own listeners.
pub fn bind_listener(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> Result<mio::net::TcpListener> {
    let listen = (!reuse_port).then_some(backlog);
    let fd =
        handoff_fdpass::bind_tcp(addr, listen, reuse_port).map_err(|err| bind_error(addr, err))?;
    Ok(mio::net::TcpListener::from(fd))
}

/// systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`, read and removed
/// from the environment by the `listenfd` crate): the one TCP listening
/// socket passed, made non-blocking. `None` when not socket-activated.
/// `given` is `--listen` if it was on the command line: it must then name
/// the inherited socket's address.
pub fn activated_listener(given: Option<SocketAddr>) -> Result<Option<mio::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() != 1 {
        anyhow::bail!(
            "systemd passed {} sockets (LISTEN_FDS); handoff-master takes exactly one TCP \
             listening socket (one ListenStream= in the .socket unit)",
            fds.len()
        );
    }
    let listener = fds
        .take_tcp_listener(0)
        .map_err(|err| anyhow!("the socket systemd passed (LISTEN_FDS) is not usable: {err}"))?
        .ok_or_else(|| anyhow!("the socket systemd passed (LISTEN_FDS) is gone"))?;
    let listening = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn)
        .unwrap_or(false);
    if !listening {
        anyhow::bail!(
            "the socket systemd passed (LISTEN_FDS) is not a listening TCP socket \
             (ListenStream= in the .socket unit, Accept=no)"
        );
    }
    let addr = listener.local_addr().context("reading the inherited socket's address")?;
    if let Some(given) = given {
        if given != addr {
            anyhow::bail!(
                "--listen {given} disagrees with the socket systemd passed ({addr}): \
                 drop --listen or make it name that address"
            );
        }
    }
    listener.set_nonblocking(true).context("making the inherited socket non-blocking")?;
    Ok(Some(mio::net::TcpListener::from_std(listener)))
}

/// The socket clients connect to: TCP, or a Unix stream socket
/// (`--listen unix:PATH`, dispatch mode only; workers serve the fd the same
/// way, since they only `recv`, `send` and `shutdown` it).
#[derive(Debug)]
pub enum ClientListener {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

impl ClientListener {
    /// One `accept4`, non-blocking and close-on-exec, either kind. It does
    /// not ask for the client's address: copying it out is a measurable
    /// part of the hand-off's cost, and only a debug log wants it (the
    /// worker asks the socket then). libuv accepts the same way.
    #[inline]
    pub fn accept(&self) -> io::Result<OwnedFd> {
        accept4(self, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)
    }

    /// The TCP address (the port, for `reuseport` workers); `None` for Unix.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            ClientListener::Tcp(listener) => listener.local_addr().ok(),
            ClientListener::Unix(_) => None,
        }
    }

    /// What `listening on` and `info` show: `HOST:PORT` or `unix:PATH`.
    pub fn name(&self) -> Result<String> {
        Ok(match self {
            ClientListener::Tcp(listener) => {
                listener.local_addr().context("reading the bound address")?.to_string()
            }
            ClientListener::Unix(listener) => {
                let addr = listener.local_addr().context("reading the bound path")?;
                let path = addr.as_pathname().context("an unnamed Unix listener")?;
                format!("unix:{}", path.display())
            }
        })
    }

    /// A listener received from an old master (either kind).
    pub fn from_received(fd: OwnedFd) -> ClientListener {
        let is_unix = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd.as_raw_fd())
            .is_ok_and(|addr| addr.path().is_some());
        if is_unix {
            let std = std::os::unix::net::UnixListener::from(fd);
            ClientListener::Unix(mio::net::UnixListener::from_std(std))
        } else {
            ClientListener::Tcp(mio::net::TcpListener::from(fd))
        }
    }
}

impl AsFd for ClientListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ClientListener::Tcp(listener) => listener.as_fd(),
            ClientListener::Unix(listener) => listener.as_fd(),
        }
    }
}

impl mio::event::Source for ClientListener {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            ClientListener::Tcp(l) => l.register(registry, token, interests),
            ClientListener::Unix(l) => l.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            ClientListener::Tcp(l) => l.reregister(registry, token, interests),
            ClientListener::Unix(l) => l.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            ClientListener::Tcp(l) => l.deregister(registry),
            ClientListener::Unix(l) => l.deregister(registry),
        }
    }
}

/// Binds a Unix stream listener at `path` (mode 0666: any local user may
/// connect, as to a TCP port). A socket file nobody answers on (left by a
/// dead master) is replaced; one that answers, or another kind of file,
/// is not.
pub fn bind_unix(path: &Path, backlog: i32) -> Result<mio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("cannot listen on unix:{}: a file that is not a socket is there", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "cannot listen on unix:{}: something already listens there; choose another \
                 path with --listen unix:PATH",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let std = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
    // std listens with its own backlog (128); say ours.
    nix::sys::socket::listen(
        &std,
        nix::sys::socket::Backlog::new(backlog).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )
    .context("listen(2) on the Unix socket")?;
    std.set_nonblocking(true).context("making the Unix listener non-blocking")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("making {} mode 0666", path.display()))?;
    Ok(mio::net::UnixListener::from_std(std))
}

/// The error for a failed bind, saying which address and what to do.
fn bind_error(addr: SocketAddr, err: io::Error) -> anyhow::Error {
    match err.kind() {
        io::ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {addr}: the address is already in use (another handoff-master, \
             or another server, listens there); choose another with --listen ADDR \
             (`make run PORT=7000`)"
        ),
        io::ErrorKind::AddrNotAvailable => anyhow!(
            "cannot listen on {addr}: no interface of this machine has that address; \
             choose another with --listen ADDR"
        ),
        io::ErrorKind::PermissionDenied => anyhow!(
            "cannot listen on {addr}: permission denied (ports below 1024 need privileges); \
             choose another with --listen ADDR (`make run PORT=7000`)"
        ),
        _ => anyhow!(err).context(format!("binding and listening on {addr}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_in_use_names_the_address_and_the_way_out() {
        let addr: SocketAddr = "127.0.0.1:6001".parse().expect("address");
        let message = bind_error(addr, io::ErrorKind::AddrInUse.into()).to_string();
        assert!(message.contains("127.0.0.1:6001"), "{message}");
        assert!(message.contains("--listen") && message.contains("PORT="), "{message}");
        let message = bind_error(addr, io::ErrorKind::AddrNotAvailable.into()).to_string();
        assert!(message.contains("no interface of this machine"), "{message}");
        let message = bind_error(addr, io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(message.contains("ports below 1024"), "{message}");
        let message = format!("{:#}", bind_error(addr, io::ErrorKind::InvalidInput.into()));
        assert!(message.starts_with("binding and listening on 127.0.0.1:6001: "), "{message}");
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        crate::test_support::scratch_dir("tcp", name)
    }

    #[test]
    fn a_listener_listens_unless_it_only_holds_the_port_for_reuseport_workers() {
        let listener =
            bind_listener("127.0.0.1:0".parse().expect("addr"), 16, false).expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_ne!(addr.port(), 0);
        std::net::TcpStream::connect(addr).expect("it listens");
        let holder = bind_listener("127.0.0.1:0".parse().expect("addr"), 16, true).expect("bind");
        let held = holder.local_addr().expect("addr");
        assert_ne!(held.port(), 0, "port 0 resolved");
        let err = std::net::TcpStream::connect(held).expect_err("not listening");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let reuse_port =
            nix::sys::socket::getsockopt(&holder, nix::sys::socket::sockopt::ReusePort);
        assert_eq!(reuse_port, Ok(true));
        let err = bind_listener(addr, 16, false).expect_err("in use").to_string();
        assert!(err.contains("already in use"), "{err}");
    }

    #[test]
    fn either_listener_accepts_and_names_itself_and_is_rebuilt_from_its_fd() {
        let tcp = ClientListener::Tcp(
            bind_listener("127.0.0.1:0".parse().expect("addr"), 16, false).expect("bind"),
        );
        let addr = tcp.tcp_addr().expect("a TCP address");
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_eq!(tcp.name().expect("name"), addr.to_string());
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let fd = tcp.accept().expect("accept");
        let server_side = std::net::TcpStream::from(fd);
        assert_eq!(server_side.peer_addr().expect("peer"), client.local_addr().expect("addr"));

        let dir = scratch("kinds");
        let path = dir.join("clients.sock");
        let unix = ClientListener::Unix(bind_unix(&path, 16).expect("bind"));
        assert_eq!(unix.tcp_addr(), None);
        assert_eq!(unix.name().expect("name"), format!("unix:{}", path.display()));
        let client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let fd = unix.accept().expect("accept");
        let server_side = std::os::unix::net::UnixStream::from(fd);
        assert_eq!(
            server_side.peer_addr().expect("peer").as_pathname(),
            client.local_addr().expect("addr").as_pathname()
        );

        // As received from an old master: the kind is found from the fd.
        let fd = |listener: &ClientListener| listener.as_fd().try_clone_to_owned().expect("dup");
        match ClientListener::from_received(fd(&tcp)) {
            ClientListener::Tcp(l) => assert_eq!(l.local_addr().expect("addr"), addr),
            ClientListener::Unix(_) => panic!("a TCP listener came back as Unix"),
        }
        match ClientListener::from_received(fd(&unix)) {
            ClientListener::Unix(l) => {
                assert_eq!(l.local_addr().expect("addr").as_pathname(), Some(path.as_path()))
            }
            ClientListener::Tcp(_) => panic!("a Unix listener came back as TCP"),
        }
        drop(unix);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_listener_registers_reregisters_and_deregisters_with_mio() {
        use mio::event::Source;
        use mio::{Events, Interest, Poll, Token};
        use std::time::Duration;
        let dir = scratch("mio");
        let path = dir.join("clients.sock");
        let tcp = ClientListener::Tcp(
            bind_listener("127.0.0.1:0".parse().expect("addr"), 16, false).expect("bind"),
        );
        let addr = tcp.tcp_addr().expect("addr");
        let unix = ClientListener::Unix(bind_unix(&path, 16).expect("bind"));
        let mut poll = Poll::new().expect("poll");
        let mut events = Events::with_capacity(8);
        let mut tokens = |poll: &mut Poll| {
            crate::test_support::poll_through_eintr(poll, &mut events, Duration::from_secs(10));
            let mut tokens: Vec<usize> = events.iter().map(|e| e.token().0).collect();
            tokens.sort_unstable();
            tokens
        };
        for (i, mut listener) in [tcp, unix].into_iter().enumerate() {
            let is_tcp = matches!(listener, ClientListener::Tcp(_));
            let connect = || {
                if is_tcp {
                    drop(std::net::TcpStream::connect(addr).expect("connect"));
                } else {
                    drop(std::os::unix::net::UnixStream::connect(&path).expect("connect"));
                }
            };
            let registry = poll.registry().try_clone().expect("registry");
            listener.register(&registry, Token(i * 10 + 1), Interest::READABLE).expect("register");
            let again = listener.register(&registry, Token(99), Interest::READABLE);
            assert!(again.is_err(), "registered already (EEXIST)");
            connect();
            assert_eq!(tokens(&mut poll), [i * 10 + 1]);
            listener.accept().expect("accept");
            listener
                .reregister(&registry, Token(i * 10 + 2), Interest::READABLE)
                .expect("reregister");
            connect();
            assert_eq!(tokens(&mut poll), [i * 10 + 2], "the new token");
            listener.accept().expect("accept");
            listener.deregister(&registry).expect("deregister");
            // Registered again: it was really deregistered (else EEXIST).
            listener.register(&registry, Token(i * 10 + 3), Interest::READABLE).expect("again");
            connect();
            assert_eq!(tokens(&mut poll), [i * 10 + 3]);
            listener.deregister(&registry).expect("deregister");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_unix_listener_replaces_a_dead_socket_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("unix");
        let path = dir.join("clients.sock");
        std::fs::write(&path, b"not a socket").expect("plant");
        let err = bind_unix(&path, 16).expect_err("a plain file").to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("kept"), b"not a socket");
        std::fs::remove_file(&path).expect("rm");

        let listener = bind_unix(&path, 16).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let err = bind_unix(&path, 16).expect_err("a live one").to_string();
        assert!(err.contains("something already listens"), "{err}");
        drop(listener);
        // A socket file nobody answers on (bound, not listening: no copy of
        // its fd in a child another test forked can answer) is replaced.
        std::fs::remove_file(&path).expect("rm");
        drop(std::os::unix::net::UnixDatagram::bind(&path).expect("bind"));
        let again = bind_unix(&path, 16).expect("rebind over a stale socket");
        std::os::unix::net::UnixStream::connect(&path).expect("the new one listens");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Runs in a child process of its own (the test binary again, this test
    /// only): it sets the `LISTEN_FDS` variables, which `listenfd` reads and
    /// removes.
    #[test]
    fn a_socket_systemd_passed_is_used_only_when_it_is_one_listening_tcp_socket() {
        use std::os::fd::IntoRawFd;
        if !crate::test_support::is_child() {
            return crate::test_support::run_alone(
                "tcp::tests::a_socket_systemd_passed_is_used_only_when_it_is_one_listening_tcp_socket",
                |child| {
                    child.env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
                },
            );
        }
        let pass = |count: usize, first: std::os::fd::RawFd| {
            std::env::set_var("LISTEN_FDS", count.to_string());
            std::env::set_var("LISTEN_FDS_FIRST_FD", first.to_string());
        };
        assert!(activated_listener(None).expect("not activated").is_none());

        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std.local_addr().expect("addr");
        pass(1, std.into_raw_fd());
        let listener = activated_listener(Some(addr)).expect("taken").expect("a listener");
        assert_eq!(listener.local_addr().expect("addr"), addr);
        let err = listener.accept().expect_err("nobody connected");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "made non-blocking");
        assert!(activated_listener(None).expect("consumed").is_none(), "the variables are gone");

        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        pass(1, std.into_raw_fd());
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let err = activated_listener(Some(other)).expect_err("another address").to_string();
        assert!(err.contains("disagrees"), "{err}");

        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        pass(1, std.into_raw_fd());
        assert!(activated_listener(None).expect("no --listen").is_some());

        // A bound TCP socket that does not listen.
        let fd = handoff_fdpass::bind_tcp("127.0.0.1:0".parse().expect("addr"), None, true)
            .expect("bind");
        pass(1, fd.into_raw_fd());
        let err = activated_listener(None).expect_err("not listening").to_string();
        assert!(err.contains("not a listening TCP socket"), "{err}");

        pass(2, 1000);
        let err = activated_listener(None).expect_err("two").to_string();
        assert!(err.contains("passed 2 sockets"), "{err}");
    }
}
