//! Binding the client-facing TCP listener with the options the article uses.

use std::io;
use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};

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
