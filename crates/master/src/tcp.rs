//! Binding the client-facing TCP listener with the options the article uses.

use std::net::SocketAddr;

use anyhow::{Context, Result};

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
    let fd = handoff_fdpass::bind_tcp(addr, listen, reuse_port)
        .with_context(|| format!("binding and listening on {addr}"))?;
    Ok(mio::net::TcpListener::from(fd))
}
