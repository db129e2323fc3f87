//! Binding the client-facing TCP listener with the options the article uses.

use std::io;
use std::net::SocketAddr;

use anyhow::{anyhow, Result};

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
