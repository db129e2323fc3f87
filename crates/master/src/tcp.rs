//! Binding the client-facing TCP listener with the options the article uses.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

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

/// The `peer` a Unix client's `Dispatch` header carries (it has no IP).
const UNIX_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl ClientListener {
    /// One `accept4`: the connection and its peer.
    #[inline]
    pub fn accept(&self) -> io::Result<(OwnedFd, SocketAddr)> {
        match self {
            ClientListener::Tcp(listener) => {
                listener.accept().map(|(stream, peer)| (OwnedFd::from(stream), peer))
            }
            ClientListener::Unix(listener) => {
                listener.accept().map(|(stream, _)| (OwnedFd::from(stream), UNIX_PEER))
            }
        }
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
    }
}
