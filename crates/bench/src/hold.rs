//! `handoff-bench hold`: opens many connections and holds them idle (they
//! send nothing), so that a scale run can measure what the master and the
//! workers pay per connection while tens of thousands are open.
//!
//! A process may hold at most its hard `RLIMIT_NOFILE` fds (20,000 on the
//! machine this was written on), and one source address gives one
//! ephemeral port range (about 28,000 ports): a caller holding more runs
//! several holders, each with its own `--source` (127.0.0.2, 127.0.0.3, …).
//! `IP_BIND_ADDRESS_NO_PORT` lets the kernel choose the port at `connect`,
//! per destination, instead of at `bind`.
//!
//! Prints `held N` once every connection is established, then waits until
//! its stdin closes (or `--duration` passes), checks how many the server
//! closed meanwhile, prints one JSON line and exits, closing them all.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    SockaddrIn,
};

/// Opens connections to a server and holds them idle.
#[derive(Debug, Parser)]
#[command(name = "handoff-bench hold")]
pub struct HoldArgs {
    /// Server address (IPv4 loopback only).
    #[arg(long, short = 't')]
    pub target: SocketAddr,

    /// Connections to open and hold.
    #[arg(long, short = 'n')]
    pub count: usize,

    /// Loopback address to connect from (one per holder of many thousands).
    #[arg(long, default_value = "127.0.0.1")]
    pub source: Ipv4Addr,

    /// Seconds to hold at most if stdin stays open.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
}

#[derive(serde::Serialize)]
struct Report {
    held: usize,
    /// Connections the server closed (or reset) while they were held.
    closed_by_server: usize,
    held_for_secs: f64,
}

pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> Result<()> {
    let args = HoldArgs::parse_from(args);
    let SocketAddr::V4(target) = args.target else {
        bail!("hold connects over IPv4 only, not to {}", args.target);
    };
    if !target.ip().is_loopback() || !args.source.is_loopback() {
        bail!("hold only connects from and to 127.0.0.0/8 (got {} → {target})", args.source);
    }
    raise_fd_limit(args.count)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let conn = open(args.source, target).with_context(|| {
            format!("connection {} of {} from {}", i + 1, args.count, args.source)
        })?;
        held.push(conn);
    }
    println!("held {}", held.len());
    std::io::stdout().flush().context("stdout")?;
    wait_for_stdin_to_close(Duration::from_secs(args.duration));
    let closed_by_server = held.iter().filter(|conn| closed(conn)).count();
    let report = Report {
        held: held.len(),
        closed_by_server,
        held_for_secs: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&report).context("encoding the report")?);
    Ok(())
}

/// Soft fd limit up to the hard one: `count` connections and a few more.
fn raise_fd_limit(count: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    let need = count as u64 + 16;
    if need > hard {
        bail!(
            "{count} connections need {need} fds; this process may have {hard} (the hard \
             RLIMIT_NOFILE): run several holders"
        );
    }
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(())
}

fn open(source: Ipv4Addr, target: SocketAddrV4) -> Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .context("socket")?;
    setsockopt(&fd, sockopt::IpBindAddressNoPort, &true).context("IP_BIND_ADDRESS_NO_PORT")?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(source, 0))).context("bind")?;
    loop {
        match connect(fd.as_raw_fd(), &SockaddrIn::from(target)) {
            Ok(()) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err).context("connect"),
        }
    }
}

/// Whether the server closed or reset `conn` (its read end says so).
fn closed(conn: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    match recv(conn.as_fd().as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK) {
        Ok(0) => true,
        Ok(_) => false, // a reply to a request never sent: not ours to judge
        Err(Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

fn wait_for_stdin_to_close(at_most: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        while matches!(stdin.lock().read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(at_most);
}
