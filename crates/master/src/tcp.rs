//! Binding the client-facing TCP listener with the options the article uses.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};

/// Binds `addr` with SO_REUSEADDR, non-blocking and close-on-exec, and
/// listens with `backlog`.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> Result<mio::net::TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating the TCP socket")?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("setting SO_REUSEADDR")?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .with_context(|| format!("binding {addr}"))?;
    let backlog = Backlog::new(backlog).with_context(|| format!("invalid backlog {backlog}"))?;
    socket::listen(&fd, backlog).with_context(|| format!("listening on {addr}"))?;
    Ok(mio::net::TcpListener::from(fd))
}
