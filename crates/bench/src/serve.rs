//! `handoff-bench serve`: the plain baseline server of the comparison.
//!
//! N threads share one listening socket and each loops on a blocking
//! `accept`, then answers the connection itself: one `read` of at most 2048
//! bytes, one `write` of `server get message: ` + those bytes, `close`. No
//! master, no hand-off, no epoll: `accept4, read, write, close` per
//! connection, the least a server of this protocol can do, so it is the
//! yardstick the targets are measured against.
//!
//! The read and write timeouts are set once, on the listener: accepted
//! sockets inherit them (the kernel copies the listener's socket), so no
//! `setsockopt` is paid per connection. The listener's own receive timeout
//! only makes a blocking `accept` return `EAGAIN` now and then, which the
//! loop ignores.
//!
//! `--epoll` runs the other plain design instead: each thread has its own
//! `SO_REUSEPORT` listener and a mio loop, accepts until `EAGAIN` on each
//! wake-up and answers at once; a connection whose request has not arrived
//! yet waits in the loop (closed after `--read-timeout`). A busy thread
//! then takes several connections per wake-up instead of sleeping in
//! `accept` after each one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::cli::MAX_PAYLOAD;

/// The reply prefix of the article's protocol.
const REPLY_PREFIX: &[u8] = b"server get message: ";

/// A reply buffer: the prefix, then room for the largest request.
pub(crate) type Reply = [u8; REPLY_PREFIX.len() + MAX_PAYLOAD];

/// A reply buffer with the prefix in place.
pub(crate) fn reply_buffer() -> Reply {
    let mut reply = [0u8; REPLY_PREFIX.len() + MAX_PAYLOAD];
    reply[..REPLY_PREFIX.len()].copy_from_slice(REPLY_PREFIX);
    reply
}

/// A plain server whose threads accept and answer on their own (the
/// comparison's baseline): blocking accept, one read of at most 2048 bytes,
/// reply `server get message: ` + those bytes, close.
#[derive(Debug, Parser)]
#[command(name = "handoff-bench serve", version)]
pub struct ServeArgs {
    /// Address to listen on; only loopback addresses are accepted. Port 0
    /// picks one; the `listening on ADDR` line on stdout says which.
    #[arg(long, default_value = "127.0.0.1:6002")]
    pub listen: SocketAddr,

    /// Threads, each accepting and answering on its own.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// listen(2) backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,

    /// Seconds a client has to send its request and take the reply.
    #[arg(long, default_value = "5", value_parser = parse_positive_seconds)]
    pub read_timeout: Duration,

    /// Simulated CPU work per request, microseconds of busy loop (as
    /// `handoff-worker --work-us`).
    #[arg(long, default_value_t = 0)]
    pub work_us: u64,

    /// An event loop per thread on its own SO_REUSEPORT listener, instead
    /// of threads blocking in accept on one shared listener.
    #[arg(long)]
    pub epoll: bool,
}

impl ServeArgs {
    fn validate(&self) -> Result<()> {
        check_loopback(self.listen)?;
        if self.threads == 0 || self.threads > 1024 {
            bail!("--threads must be between 1 and 1024");
        }
        if self.backlog < 1 {
            bail!("--backlog must be at least 1");
        }
        Ok(())
    }
}

/// Parses `args` (after `serve`), binds, prints the ready line and serves
/// until killed.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<()> {
    let args = ServeArgs::try_parse_from(args).unwrap_or_else(|err| err.exit());
    args.validate()?;
    // One shared listener, or (--epoll) one SO_REUSEPORT listener per
    // thread, the first deciding the port.
    let bind = |addr| bind_listener(addr, args.backlog, args.read_timeout, args.epoll);
    let first = bind(args.listen)?;
    let addr = first.local_addr().context("reading the bound address")?;
    let mut listeners = vec![first];
    if args.epoll {
        for _ in 1..args.threads {
            listeners.push(bind(addr)?);
        }
    }
    print_ready(addr)?;
    let work = Duration::from_micros(args.work_us);
    let timeout = args.read_timeout;
    let mut own = listeners.into_iter();
    let shared = if args.epoll { None } else { own.next() };
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(args.threads);
        for n in 0..args.threads {
            let builder = std::thread::Builder::new().name(format!("serve-{n}"));
            let handle = match (&shared, own.next()) {
                (Some(listener), _) => builder.spawn_scoped(scope, move || {
                    serve(listener, work);
                    Ok(())
                }),
                (None, Some(listener)) => {
                    builder.spawn_scoped(scope, move || serve_epoll(listener, work, timeout))
                }
                (None, None) => bail!("no listener for thread {n}"),
            }
            .with_context(|| format!("spawning thread {n}"))?;
            handles.push(handle);
        }
        // The threads serve forever; one returns only if its loop cannot
        // be set up, which ends the server.
        for handle in handles {
            match handle.join() {
                Ok(result) => result?,
                Err(_) => bail!("a server thread panicked"),
            }
        }
        anyhow::Ok(())
    })
}

/// Prints the one stdout line a caller waits for, `listening on ADDR`
/// (as handoff-master does), and flushes it.
pub(crate) fn print_ready(addr: SocketAddr) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {addr}").context("writing the ready line")?;
    stdout.flush().context("writing the ready line")
}

/// Checks that `addr` is a loopback address: these servers only serve
/// 127.0.0.0/8 or ::1.
pub(crate) fn check_loopback(addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "--listen {addr} is not a loopback address; this server serves 127.0.0.0/8 or ::1 only"
        );
    }
    Ok(())
}

/// A blocking listener on `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT`
/// if asked), the given backlog, and `read_timeout` as the read and write
/// timeouts every accepted socket inherits.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    backlog: i32,
    read_timeout: Duration,
    reuse_port: bool,
) -> Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .context("creating the listening socket")?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).context("setting SO_REUSEADDR")?;
    if reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true).context("setting SO_REUSEPORT")?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .with_context(|| format!("binding {addr}"))?;
    listen(&fd, Backlog::new(backlog).context("the backlog")?).context("listen")?;
    let timeout =
        TimeVal::microseconds(i64::try_from(read_timeout.as_micros()).unwrap_or(i64::MAX).max(1));
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).context("setting SO_RCVTIMEO")?;
    setsockopt(&fd, sockopt::SendTimeout, &timeout).context("setting SO_SNDTIMEO")?;
    Ok(TcpListener::from(fd))
}

/// One thread's loop: accept, answer, close; forever.
fn serve(listener: &TcpListener, work: Duration) {
    let mut reply = reply_buffer();
    loop {
        match listener.accept() {
            Ok((stream, _)) => answer(stream, &mut reply, work),
            // The inherited receive timeout, or a client gone before accept.
            Err(err) if is_transient(&err) => {}
            // Out of fds and the like: step back instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The article's protocol on one connection; errors just end it (the close
/// happens when `stream` drops).
pub(crate) fn answer(mut stream: TcpStream, reply: &mut [u8], work: Duration) {
    let n = loop {
        match stream.read(&mut reply[REPLY_PREFIX.len()..]) {
            Ok(n) => break n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    burn(work);
    let _ = stream.write_all(&reply[..REPLY_PREFIX.len() + n]);
}

/// Where a non-blocking connection stands after [`answer_now`].
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Answered (or failed): close it.
    Done,
    /// The request has not arrived yet.
    Waiting,
}

/// The article's protocol on a non-blocking socket: answers if the request
/// is there. The reply (at most 2068 bytes) fits a fresh socket's send
/// buffer, so a write that does not take it all ends the connection.
fn answer_now<S: Read + Write>(stream: &mut S, reply: &mut [u8], work: Duration) -> Step {
    let n = loop {
        match stream.read(&mut reply[REPLY_PREFIX.len()..]) {
            Ok(n) => break n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Waiting,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Done,
        }
    };
    burn(work);
    let _ = stream.write(&reply[..REPLY_PREFIX.len() + n]);
    Step::Done
}

/// `--epoll`: one thread's mio loop on its own listener.
fn serve_epoll(listener: TcpListener, work: Duration, read_timeout: Duration) -> Result<()> {
    const LISTENER: Token = Token(usize::MAX);
    /// How often waiting connections are checked for their deadline.
    const SCAN: Duration = Duration::from_millis(500);
    /// Pause after an accept error other than "nothing queued" (EMFILE...).
    const BACKOFF: Duration = Duration::from_millis(10);

    listener.set_nonblocking(true).context("making the listener non-blocking")?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new().context("creating the poll instance")?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .context("watching the listener")?;
    let mut events = Events::with_capacity(256);
    let mut reply = reply_buffer();
    // Connections whose request has not arrived, by token; their deadlines.
    let mut waiting: Vec<Option<(mio::net::TcpStream, Instant)>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut n_waiting = 0usize;
    let mut next_scan = Instant::now() + SCAN;
    let mut accept_again = false;
    loop {
        let timeout = if accept_again {
            Some(BACKOFF)
        } else if n_waiting > 0 {
            Some(next_scan.saturating_duration_since(Instant::now()))
        } else {
            None
        };
        if let Err(err) = poll.poll(&mut events, timeout) {
            if err.kind() != io::ErrorKind::Interrupted {
                std::thread::sleep(BACKOFF);
            }
            continue;
        }
        let mut accept_now = std::mem::take(&mut accept_again);
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_now = true;
                continue;
            }
            let key = event.token().0;
            let Some(Some((mut stream, deadline))) = waiting.get_mut(key).map(Option::take) else {
                continue;
            };
            if answer_now(&mut stream, &mut reply, work) == Step::Waiting {
                waiting[key] = Some((stream, deadline));
            } else {
                // Dropping the stream closes it and takes it out of epoll.
                n_waiting -= 1;
                free.push(key);
            }
        }
        while accept_now {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if answer_now(&mut stream, &mut reply, work) == Step::Done {
                        continue;
                    }
                    let key = free.pop().unwrap_or(waiting.len());
                    if key == waiting.len() {
                        waiting.push(None);
                    }
                    if poll.registry().register(&mut stream, Token(key), Interest::READABLE).is_ok()
                    {
                        waiting[key] = Some((stream, Instant::now() + read_timeout));
                        n_waiting += 1;
                    } else {
                        free.push(key);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => accept_now = false,
                Err(err) if is_transient(&err) => {}
                Err(_) => {
                    accept_now = false;
                    accept_again = true;
                }
            }
        }
        let now = Instant::now();
        if n_waiting > 0 && now >= next_scan {
            next_scan = now + SCAN;
            for (key, slot) in waiting.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|(_, deadline)| *deadline <= now) {
                    *slot = None;
                    n_waiting -= 1;
                    free.push(key);
                }
            }
        }
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Burns `busy` of CPU time on this thread (the same loop as the worker's).
fn burn(busy: Duration) {
    if busy.is_zero() {
        return;
    }
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < busy {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

pub(crate) fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs < 1e6)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    fn args(extra: &[&str]) -> ServeArgs {
        let argv = ["handoff-bench serve", "--listen", "127.0.0.1:0"].iter().chain(extra);
        ServeArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn only_loopback_and_sane_numbers() {
        assert!(args(&[]).validate().is_ok());
        let mut a = args(&[]);
        a.listen = "10.0.0.1:80".parse().unwrap();
        assert!(a.validate().is_err());
        assert!(args(&["--threads", "0"]).validate().is_err());
        assert!(ServeArgs::try_parse_from(["x", "--read-timeout", "0"]).is_err());
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_timeouts() {
        let a = args(&["--read-timeout", "3"]);
        let listener = bind(&a, a.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.read_timeout().unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(accepted.write_timeout().unwrap(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn answers_like_the_article_server() {
        let a = args(&["--threads", "2"]);
        let listener = bind(&a, a.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut reply = reply_buffer();
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                answer(stream, &mut reply, Duration::ZERO);
            }
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all("你好".as_bytes()).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, "server get message: 你好".as_bytes());
        // A client that sends nothing gets the bare prefix.
        let mut client = TcpStream::connect(addr).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, REPLY_PREFIX);
        server.join().unwrap();
    }

    #[test]
    fn epoll_threads_share_the_port_and_answer_late_requests() {
        let a = args(&["--epoll", "--threads", "2", "--read-timeout", "0.3"]);
        let first = bind(&a, a.listen).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(&a, addr).unwrap();
        for listener in [first, second] {
            std::thread::spawn(move || serve_epoll(listener, Duration::ZERO, a_timeout()));
        }
        for i in 0..20 {
            let mut client = TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                // The request comes after the accept: the loop must wait for it.
                std::thread::sleep(Duration::from_millis(5));
            }
            client.write_all(b"late").unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"server get message: late");
        }
        // A client that never sends is closed after the read timeout.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let _ = idle.read_to_end(&mut got);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    fn bind(a: &ServeArgs, addr: SocketAddr) -> Result<TcpListener> {
        bind_listener(addr, a.backlog, a.read_timeout, a.epoll)
    }

    fn a_timeout() -> Duration {
        Duration::from_millis(300)
    }

    #[test]
    fn thread_and_backlog_bounds() {
        assert!(args(&["--threads", "1"]).validate().is_ok());
        assert!(args(&["--threads", "1024"]).validate().is_ok());
        assert!(args(&["--threads", "1025"]).validate().is_err());
        assert!(args(&["--backlog", "1"]).validate().is_ok());
        assert!(args(&["--backlog", "0"]).validate().is_err());
        assert!(args(&["--backlog=-1"]).validate().is_err());
    }

    #[test]
    fn positive_seconds_under_a_million() {
        assert_eq!(parse_positive_seconds("0.001"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_positive_seconds("999999"), Ok(Duration::from_secs(999_999)));
        for bad in ["0", "-0", "-1", "1000000", "1e7", "NaN", "inf", "-inf", "soon"] {
            assert!(parse_positive_seconds(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ServeArgs::try_parse_from(["x", "--read-timeout=-1"]).is_err());
    }

    #[test]
    fn transient_accept_errors() {
        for kind in [
            io::ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Interrupted,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(is_transient(&io::Error::from(kind)), "{kind:?}");
        }
        // EMFILE and the like are not: the loops step back instead.
        assert!(!is_transient(&io::Error::from_raw_os_error(24)));
        assert!(!is_transient(&io::Error::from(io::ErrorKind::PermissionDenied)));
    }

    #[test]
    fn burn_takes_the_time_asked() {
        let started = Instant::now();
        burn(Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20), "{:?}", started.elapsed());
        let started = Instant::now();
        burn(Duration::ZERO);
        assert!(started.elapsed() < Duration::from_millis(20), "{:?}", started.elapsed());
    }
}
