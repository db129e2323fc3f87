//! `handoff-ctl serve-metrics`: the master's Prometheus metrics over HTTP,
//! for a scraper.
//!
//! One process, one thread, one mio loop: it accepts up to `--max-clients`
//! connections at once, gives each `--request-timeout` for the whole
//! exchange (request head in, answer out; a client that never finishes its
//! request line is closed then), reads at most [`MAX_HEAD`] bytes of a
//! request, and answers only `GET /metrics` (404 for another path, 405 for
//! another method, 400 for a malformed head). When every slot is taken, the
//! oldest client still sending its request is closed to make room, so slow
//! clients never lock a scraper out. Each scrape asks the master for
//! `metrics` on its control socket (once per loop turn, however many
//! scrapes are ready): 503 when no master answers.
//!
//! It listens on `unix:PATH` (mode 0600: only this uid, and root, can
//! connect; the default is `<run-dir>/metrics.sock`) or on `HOST:PORT`,
//! which every local user can reach — the control socket's data is then no
//! longer private, so that is an explicit choice.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff_proto::control::MetricsReply;
use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};

use crate::client::ControlClient;

/// The default socket, in the run dir: `unix:<run-dir>/metrics.sock`.
pub const DEFAULT_SOCKET_NAME: &str = "metrics.sock";

/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// How long the master has to answer one scrape's `metrics`.
const MASTER_TIMEOUT: Duration = Duration::from_secs(2);

/// The listener's token; client `key` is `Token(key + 1)`.
const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(usize::MAX);

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path (unix:/path/to/metrics.sock)".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse().map(Listen::Tcp).map_err(|_| {
            format!("`{text}` is neither HOST:PORT (e.g. 127.0.0.1:9464) nor unix:PATH")
        })
    }
}

/// Options of `serve-metrics`.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: Listen,
    pub max_clients: usize,
    pub request_timeout: Duration,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Bad,
}

/// Is `head` a complete request head? Then what does it ask for.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).or_else(|| {
        // Tolerate bare newlines, as many servers do.
        head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
    })?;
    let head = &head[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok();
    let Some(line) = line.map(|l| l.trim_end_matches('\r')) else { return Some(Request::Bad) };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::Bad);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Some(Request::Bad);
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    })
}

enum Phase {
    Reading(Vec<u8>),
    /// The request is complete; the answer comes at the end of this turn.
    Answering(Request),
    Writing {
        out: Vec<u8>,
        done: usize,
    },
}

struct Client {
    stream: Stream,
    deadline: Instant,
    accepted_at: Instant,
    phase: Phase,
}

/// Runs until killed.
pub fn run(run_dir: &Path, options: &Options) -> Result<()> {
    let mut poll = Poll::new().context("creating the poll instance")?;
    let mut listener = bind(&options.listen)?;
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
    }
    .context("registering the listener")?;
    // Ctrl-C, SIGTERM, SIGHUP: stop, and remove our socket file on the way.
    let mut signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .context("registering signals")?;
    let shown = match (&listener, &options.listen) {
        (Listener::Tcp(l), _) => {
            let addr = l.local_addr().context("reading the bound address")?;
            eprintln!(
                "handoff-ctl: note: a TCP port can be read by every user of this machine \
                 (and beyond, if not on loopback); use --listen unix:PATH to keep the metrics \
                 to this uid"
            );
            format!("http://{addr}/metrics")
        }
        (Listener::Unix(_), listen) => format!("{listen} (GET /metrics)"),
    };
    {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "serving metrics on {shown}").context("writing the ready line")?;
        stdout.flush().context("flushing the ready line")?;
    }
    let mut server = Server {
        run_dir: run_dir.to_owned(),
        options: options.clone(),
        clients: slab::Slab::new(),
    };
    let mut events = Events::with_capacity(256);
    loop {
        let timeout = server
            .clients
            .iter()
            .map(|(_, c)| c.deadline)
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(err) = poll.poll(&mut events, timeout) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("polling");
        }
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    if let Some(signal) = signals.pending().next() {
                        if let Listen::Unix(path) = &options.listen {
                            let _ = std::fs::remove_file(path);
                        }
                        eprintln!("handoff-ctl: signal {signal}: stopped serving metrics");
                        return Ok(());
                    }
                }
                LISTENER => server.accept(&poll, &mut listener),
                Token(token) => server.drive(&poll, token - 1),
            }
        }
        server.answer(&poll);
        server.expire(&poll);
    }
}

struct Server {
    run_dir: PathBuf,
    options: Options,
    clients: slab::Slab<Client>,
}

impl Server {
    fn accept(&mut self, poll: &Poll, listener: &mut Listener) {
        loop {
            let accepted = match listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let mut stream = match accepted {
                Ok(stream) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // Out of fds, say: the slots free up within the timeout,
                    // and the next connection brings a new event.
                    eprintln!("handoff-ctl: accepting a metrics client failed: {err}");
                    return;
                }
            };
            if self.clients.len() >= self.options.max_clients.max(1) {
                self.make_room(poll);
            }
            let now = Instant::now();
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if poll
                .registry()
                .register(stream.source(), Token(key + 1), Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            entry.insert(Client {
                stream,
                deadline: now + self.options.request_timeout,
                accepted_at: now,
                phase: Phase::Reading(Vec::new()),
            });
            // The request may be there already.
            self.drive(poll, key);
        }
    }

    /// Every slot is taken: close the oldest client still sending its
    /// request (else the oldest of all).
    fn make_room(&mut self, poll: &Poll) {
        let oldest = |reading_only: bool| {
            self.clients
                .iter()
                .filter(|(_, c)| !reading_only || matches!(c.phase, Phase::Reading(_)))
                .min_by_key(|(_, c)| c.accepted_at)
                .map(|(key, _)| key)
        };
        if let Some(key) = oldest(true).or_else(|| oldest(false)) {
            self.close(poll, key);
        }
    }

    fn close(&mut self, poll: &Poll, key: usize) {
        if let Some(mut client) = self.clients.try_remove(key) {
            let _ = poll.registry().deregister(client.stream.source());
        }
    }

    /// Reads the request or writes the answer, as far as the socket goes.
    fn drive(&mut self, poll: &Poll, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let keep = match &mut client.phase {
            Phase::Reading(head) => read_head(&mut client.stream, head).map(|parsed| {
                if let Some(request) = parsed {
                    client.phase = Phase::Answering(request);
                }
            }),
            Phase::Answering(_) => Ok(()),
            Phase::Writing { out, done } => write_out(&mut client.stream, out, done).map(drop),
        };
        // Answered in full: close (Connection: close).
        let finished = matches!(&client.phase, Phase::Writing { out, done } if *done == out.len());
        if keep.is_err() || finished {
            self.close(poll, key);
        }
    }

    /// Answers every client whose request is complete, with one `metrics`
    /// from the master for all of them.
    fn answer(&mut self, poll: &Poll) {
        let ready: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Answering(_)))
            .map(|(key, _)| key)
            .collect();
        if ready.is_empty() {
            return;
        }
        let mut metrics = None;
        for key in ready {
            let Some(client) = self.clients.get_mut(key) else { continue };
            let Phase::Answering(request) = &client.phase else { continue };
            let response = match request {
                Request::Metrics => {
                    let fetched = metrics.get_or_insert_with(|| fetch_metrics(&self.run_dir));
                    match fetched {
                        Ok(text) => response(
                            "200 OK",
                            "text/plain; version=0.0.4; charset=utf-8",
                            text.as_bytes(),
                        ),
                        Err(err) => response(
                            "503 Service Unavailable",
                            "text/plain; charset=utf-8",
                            format!("{err:#}\n").as_bytes(),
                        ),
                    }
                }
                Request::NotFound => response(
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    b"only GET /metrics is served here\n",
                ),
                Request::MethodNotAllowed => response(
                    "405 Method Not Allowed\r\nAllow: GET",
                    "text/plain; charset=utf-8",
                    b"only GET /metrics is served here\n",
                ),
                Request::Bad => {
                    response("400 Bad Request", "text/plain; charset=utf-8", b"bad request\n")
                }
            };
            client.phase = Phase::Writing { out: response, done: 0 };
            self.drive(poll, key);
        }
    }

    /// Closes clients past their deadline.
    fn expire(&mut self, poll: &Poll) {
        let now = Instant::now();
        let late: Vec<usize> =
            self.clients.iter().filter(|(_, c)| c.deadline <= now).map(|(key, _)| key).collect();
        for key in late {
            self.close(poll, key);
        }
    }
}

/// Reads what the client sent; `Ok(Some)` once the head is complete (or
/// too long: a bad request), `Err` when the client is gone.
fn read_head(stream: &mut Stream, head: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 2048];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                let room = MAX_HEAD - head.len();
                head.extend_from_slice(&chunk[..n.min(room)]);
                if let Some(request) = parse_head(head) {
                    return Ok(Some(request));
                }
                if head.len() >= MAX_HEAD {
                    return Ok(Some(Request::Bad));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Writes what the socket takes; `Ok(true)` when everything went.
fn write_out(stream: &mut Stream, out: &[u8], done: &mut usize) -> io::Result<bool> {
    while *done < out.len() {
        match stream.write(&out[*done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn fetch_metrics(run_dir: &Path) -> Result<String> {
    let mut client = ControlClient::connect_with_timeout(run_dir, MASTER_TIMEOUT)?;
    let (_, reply) = client.ask::<MetricsReply>("metrics")?;
    Ok(reply.metrics)
}

fn bind(listen: &Listen) -> Result<Listener> {
    match listen {
        Listen::Tcp(addr) => Ok(Listener::Tcp(
            TcpListener::bind(*addr).with_context(|| format!("listening on {addr}"))?,
        )),
        Listen::Unix(path) => {
            remove_stale_socket(path)?;
            // Created 0600 from the start: no window in which others could
            // connect.
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let bound = UnixListener::bind(path);
            nix::sys::stat::umask(old);
            let listener = bound.with_context(|| format!("listening on {}", path.display()))?;
            Ok(Listener::Unix(listener))
        }
    }
}

/// A socket left by a previous run is removed; a live one, or a file that
/// is not a socket, is not.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket; choose another path", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("something already serves on {}; stop it or choose another path", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_get_of_metrics_is_served() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Request::Metrics));
        assert_eq!(parse_head(b"GET /metrics?a=b HTTP/1.0\n\n"), Some(Request::Metrics));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::MethodNotAllowed));
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Some(Request::Bad));
        assert_eq!(parse_head(b"\xff\xfe x y\r\n\r\n"), Some(Request::Bad));
        assert_eq!(parse_head(b"GET metrics HTTP/1.1\r\n\r\n"), Some(Request::Bad));
    }

    #[test]
    fn listen_takes_an_address_or_a_unix_path() {
        assert_eq!("127.0.0.1:9464".parse(), Ok(Listen::Tcp(([127, 0, 0, 1], 9464).into())));
        assert_eq!("unix:/run/m.sock".parse(), Ok(Listen::Unix("/run/m.sock".into())));
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
    }
}
