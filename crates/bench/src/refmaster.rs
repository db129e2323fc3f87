//! `handoff-bench refmaster`: the minimal reference master, the floor that
//! handoff-master's per-connection cost is compared with (issue 9).
//!
//! The article's design reduced to its system calls. The master loops on
//! a blocking `accept4`, hands the connection to the next worker,
//! round-robin, in one `sendmsg` (`SCM_RIGHTS`, a one-byte header) over a
//! `SOCK_SEQPACKET` channel, and `close`s its copy at once: three system
//! calls per connection and nothing else — no epoll, no reports from the
//! workers, no bookkeeping, no allocation. A connection handed to a worker
//! that dies is lost.
//!
//! Each worker (`handoff-bench refworker`, a child process) blocks in
//! `recvmsg`, then serves the connection like the article's handler: one
//! read of at most 2048 bytes, a write of `server get message: ` + those
//! bytes, close. The read and write timeouts are set once on the listener
//! and inherited by every accepted socket (as in `serve`), so a silent
//! client holds a worker for at most `--read-timeout`.
//!
//! The channels: the workers connect to a `SOCK_SEQPACKET` listener in a
//! private (0700) directory, which is removed once all of them have
//! connected; the master checks each one's pid (`SO_PEERCRED`). A connected
//! pair behaves exactly like a `socketpair`; it is made this way because
//! this crate has no `unsafe`, and adopting an inherited fd number would
//! need it (`handoff_fdpass::Channel` has no constructor from a raw fd).
//!
//! Lifetime: on SIGINT or SIGTERM the master kills and reaps its workers
//! and exits 0; if it dies any other way, its workers read EOF on their
//! channel and exit.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use handoff_fdpass::{Channel, Received, SeqpacketListener};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{accept4, SockFlag};

use crate::serve;

/// The hand-off packet's bytes (the fd travels as ancillary data).
const HEADER: &[u8] = b"c";

/// How long the workers have to start and connect.
const STARTUP: Duration = Duration::from_secs(10);

/// The minimal reference master (issue 9): blocking accept4, one sendmsg
/// with SCM_RIGHTS to the next worker (round-robin), close; its workers
/// answer the article's protocol.
#[derive(Debug, Parser)]
#[command(name = "handoff-bench refmaster", version)]
pub struct RefMasterArgs {
    /// Address to listen on; only loopback addresses are accepted. Port 0
    /// picks one; the `listening on ADDR` line on stdout says which.
    #[arg(long, default_value = "127.0.0.1:6003")]
    pub listen: SocketAddr,

    /// Worker processes (handoff-bench refworker).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,

    /// listen(2) backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 2048)]
    pub backlog: i32,

    /// Seconds a client has to send its request and take the reply.
    #[arg(long, default_value = "5", value_parser = serve::parse_positive_seconds)]
    pub read_timeout: Duration,
}

impl RefMasterArgs {
    /// Checks what clap cannot: a loopback address, sane counts.
    fn validate(&self) -> Result<()> {
        serve::check_loopback(self.listen)?;
        if self.workers == 0 || self.workers > 1024 {
            bail!("--workers must be between 1 and 1024");
        }
        if self.backlog < 1 {
            bail!("--backlog must be at least 1");
        }
        Ok(())
    }
}

/// `handoff-bench refworker`: one worker of `refmaster` (started by it).
#[derive(Debug, Parser)]
#[command(name = "handoff-bench refworker", version)]
pub struct RefWorkerArgs {
    /// The refmaster's channel listener to connect to.
    #[arg(long)]
    pub connect: PathBuf,
}

/// Parses `args` (after `refmaster`), starts the workers, prints the ready
/// line and dispatches until stopped.
pub fn main(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let args = RefMasterArgs::try_parse_from(args).unwrap_or_else(|err| err.exit());
    args.validate()?;
    let listener = serve::bind_listener(args.listen, args.backlog, args.read_timeout, false)?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let (children, channels) = start_workers(args.workers)?;
    stop_workers_on_signal(children)?;
    serve::print_ready(addr)?;
    dispatch(&listener, &channels)
}

/// The master's loop: accept4, sendmsg to the next worker, close.
fn dispatch(listener: &TcpListener, channels: &[Channel]) -> Result<()> {
    for channel in channels.iter().cycle() {
        let conn = loop {
            match accept4(listener, SockFlag::SOCK_CLOEXEC) {
                Ok(conn) => break conn,
                // The listener's receive timeout, or a client gone first.
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => {}
                // Out of fds or memory: step back instead of spinning.
                Err(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => return Err(err).context("accept4"),
            }
        };
        loop {
            match channel.send(HEADER, &[conn.as_fd()]) {
                Ok(()) => break,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                // Too many fds in flight for this user: let the workers catch up.
                Err(err) if err.raw_os_error() == Some(Errno::ETOOMANYREFS as i32) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(err) => return Err(err).context("handing a connection to a worker"),
            }
        }
        drop(conn);
    }
    bail!("no workers")
}

/// Spawns `n` workers and accepts their channels, in no particular order.
fn start_workers(n: usize) -> Result<(Vec<Child>, Vec<Channel>)> {
    let dir = PrivateDir::create()?;
    let path = dir.0.join("workers.sock");
    let listener =
        SeqpacketListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let child = Command::new(&exe)
            .arg("refworker")
            .arg("--connect")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning worker {i}"))?;
        children.push(child);
    }
    let pids: Vec<i32> = children.iter().filter_map(|c| i32::try_from(c.id()).ok()).collect();
    let mut channels = Vec::with_capacity(n);
    let deadline = Instant::now() + STARTUP;
    while channels.len() < n {
        match listener.accept() {
            Ok(channel) => {
                // Only our own workers (the directory is 0700 anyway).
                let pid = channel.peer_credentials().context("SO_PEERCRED")?.pid;
                if pids.contains(&pid) {
                    channel.set_nonblocking(false).context("making a channel blocking")?;
                    channels.push(channel);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                for child in &mut children {
                    if let Some(status) = child.try_wait().context("checking a worker")? {
                        bail!("a worker exited at startup ({status})");
                    }
                }
                if Instant::now() > deadline {
                    bail!("{} of {n} workers connected within {STARTUP:?}", channels.len());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(err) => return Err(err).context("accepting a worker's channel"),
        }
    }
    Ok((children, channels))
}

/// A 0700 directory for the channel listener, removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<PrivateDir> {
        let path = std::env::temp_dir().join(format!(
            "handoff-refmaster-{}-{}",
            std::process::id(),
            handoff_fdpass::monotonic_ns()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Blocks SIGINT and SIGTERM in this thread and starts a thread that waits
/// for them, then kills and reaps the workers and exits 0. Call it before
/// any other thread starts, so that every thread has them blocked.
fn stop_workers_on_signal(mut children: Vec<Child>) -> Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let _ = signals.wait();
            for child in &mut children {
                let _ = child.kill();
            }
            for child in &mut children {
                let _ = child.wait();
            }
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// `handoff-bench refworker`: connects to the master, then serves each
/// connection it is handed until the channel closes.
pub fn worker_main(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let args = RefWorkerArgs::try_parse_from(args).unwrap_or_else(|err| err.exit());
    serve_handed(&args.connect)
}

fn serve_handed(path: &Path) -> Result<()> {
    let channel = Channel::connect(path)
        .with_context(|| format!("connecting to the refmaster at {}", path.display()))?;
    let mut header = [0u8; 16];
    let mut fds = Vec::with_capacity(4);
    let mut reply = serve::reply_buffer();
    loop {
        match channel.recv(&mut header, &mut fds) {
            Ok(Received::Packet(_)) => {
                for fd in fds.drain(..) {
                    serve::answer(TcpStream::from(fd), &mut reply, Duration::ZERO);
                }
            }
            // The master is gone: so is this worker.
            Ok(Received::Closed) => return Ok(()),
            Err(handoff_fdpass::RecvError::Io(err))
                if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("receiving from the refmaster"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RefMasterArgs {
        let argv = ["handoff-bench refmaster", "--listen", "127.0.0.1:0"].iter().chain(extra);
        RefMasterArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn workers_backlog_and_address_bounds() {
        assert!(args(&[]).validate().is_ok());
        assert!(args(&["--workers", "1"]).validate().is_ok());
        assert!(args(&["--workers", "1024"]).validate().is_ok());
        assert!(args(&["--workers", "0"]).validate().is_err());
        assert!(args(&["--workers", "1025"]).validate().is_err());
        assert!(args(&["--backlog", "1"]).validate().is_ok());
        assert!(args(&["--backlog", "0"]).validate().is_err());
        let mut a = args(&[]);
        a.listen = "192.0.2.1:80".parse().unwrap();
        assert!(a.validate().is_err());
    }
}
