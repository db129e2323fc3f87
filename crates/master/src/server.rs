//! The master's event loop: accept → hand off, worker registration and
//! reports, signals, shutdown.
//!
//! One mio `Poll` owns every source. The client listener is `LISTENER`, the
//! workers' registration socket is `WORKER_LISTENER`, signals arrive on
//! `SIGNALS`, and each worker channel has a dynamic token derived from its
//! slab key by [`worker_token`] / [`worker_key`].
//!
//! The hand-off path ([`Master::accept_connections`] → [`Master::send_batch`])
//! does no allocation, no logging above debug and no blocking call. An
//! accepted fd is owned by the master until `sendmsg` succeeds: while no
//! worker can take it, it waits in `pending` (bounded by `--queue-limit`;
//! when full the master stops accepting and the kernel backlog holds the
//! rest). The master never reads or writes connection bytes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff_fdpass::{monotonic_ns, ProcessUsage, Received, SeqpacketListener, TcpProgress};
use handoff_proto::control::{
    parse_command, Command, ErrorReply, HelpReply, InfoReply, MetricsReply, OkReply, WorkersReply,
    CONTROL_SOCKET_NAME,
};
use handoff_proto::{
    codec, Dispatch, Finished, Hello, ListenMode, MasterToWorker, Outcome, WorkerToMaster,
    MAX_BATCH, MAX_FRAME_LEN, PROTOCOL_VERSION, REPLY_PREFIX, REQUEST_CHUNK_LEN, SELF_ACCEPTED,
    WORKERS_SOCKET_NAME,
};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::{debug, error, info, warn};

use crate::cli::{Args, Mode};
use crate::control::{ControlConn, Line, ReadStatus, MAX_CONTROL_CLIENTS};
use crate::dispatch::{Policy, RoundRobin};
use crate::run_dir::RunDir;
use crate::supervisor::Supervisor;
use crate::tcp::bind_listener;
use crate::workers::{AcceptedConn, Origin, Spawner, WorkerSlot, WorkerState};

const LISTENER: Token = Token(0);
const WORKER_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CONTROL_LISTENER: Token = Token(3);
const FIRST_WORKER_TOKEN: usize = 16;
const FIRST_CONTROL_TOKEN: usize = 1 << 30;

fn worker_token(key: usize) -> Token {
    Token(key + FIRST_WORKER_TOKEN)
}

fn worker_key(token: Token) -> Option<usize> {
    (FIRST_WORKER_TOKEN..FIRST_CONTROL_TOKEN)
        .contains(&token.0)
        .then(|| token.0 - FIRST_WORKER_TOKEN)
}

fn control_token(key: usize) -> Token {
    Token(key + FIRST_CONTROL_TOKEN)
}

fn control_key(token: Token) -> Option<usize> {
    token.0.checked_sub(FIRST_CONTROL_TOKEN)
}

/// Workers are asked for fresh stats at most this often, however many
/// control clients ask.
const STATS_REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// How long to stop accepting after EMFILE/ENFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Retry interval while a worker channel is full, as insurance against a
/// missed writable edge, and after ETOOMANYREFS (too many fds in flight).
const BLOCKED_RETRY: Duration = Duration::from_millis(20);
/// Shutdown in shared/reuseport mode: how long workers have to confirm they
/// stopped accepting.
const STOP_ACCEPTING_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `check_health` runs.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a new peer on the workers' socket has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused worker peer is kept so it can read why.
const REFUSED_LINGER: Duration = Duration::from_secs(2);
/// Warnings on the accept path are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// How the master ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every queued connection was handed out and every worker exited.
    Clean,
    /// The graceful timeout passed, or a second signal asked for a fast stop.
    Forced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining { deadline: Instant },
}

/// Totals over the master's life.
#[derive(Debug, Default)]
struct Counters {
    accepted: u64,
    dispatched: u64,
    /// Sums of every worker's `Finished` reports, including departed workers.
    finished: crate::workers::FinishedTotals,
    accept_errors: u64,
    accept_paused_for_resources: u64,
    /// Held by a worker that died after reading the request, before
    /// answering in full.
    lost_worker_died: u64,
    /// Still queued (or held) when the master was forced to stop, or left
    /// with no worker at shutdown.
    lost_at_shutdown: u64,
    redispatched: u64,
    served_by_dead_workers: u64,
    worker_timeouts: u64,
    /// Hand-off packets sent (connections per packet = dispatched / packets).
    packets: u64,
    /// Connections workers accepted themselves and finished.
    worker_accepted: u64,
}

impl Counters {
    fn lost(&self) -> u64 {
        self.lost_worker_died + self.lost_at_shutdown
    }
}

/// Binds, spawns the workers, and runs the loop until shutdown completes.
pub fn run(args: Args) -> Result<Exit> {
    let run_dir_path = args.run_dir.clone().unwrap_or_else(|| {
        handoff_proto::default_run_dir(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            nix::unistd::geteuid().as_raw(),
        )
    });
    let run_dir = RunDir::claim(&run_dir_path)?;
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("handoff-worker"),
    };
    let n_workers =
        args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n_workers > 0 && !worker_bin.is_file() {
        bail!(
            "worker binary {} not found (build it with `cargo build`, or pass --worker-bin)",
            worker_bin.display()
        );
    }

    let mut master =
        Master::new(&args, run_dir, Spawner::new(worker_bin, &run_dir_path, args.worker_args()))?;
    let local = master.local_addr()?;
    info!(addr = %local, backlog = args.backlog, run_dir = %run_dir_path.display(), "listening");
    {
        use std::io::Write;
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "listening on {local}").context("writing the ready line")?;
        stdout.flush().context("flushing the ready line")?;
    }
    for _ in 0..n_workers {
        let pid = master.spawner.spawn()?;
        info!(pid, "spawned worker");
    }
    master.supervisor = Supervisor::new(n_workers);
    master.run()
}

struct Master {
    poll: Poll,
    listener: Option<mio::net::TcpListener>,
    worker_listener: SeqpacketListener,
    control_listener: mio::net::UnixListener,
    control_clients: Slab<ControlConn<mio::net::UnixStream>>,
    last_stats_request: Option<Instant>,
    started_at: Instant,
    listen_addr: std::net::SocketAddr,
    signals: Signals,
    workers: Slab<WorkerSlot>,
    /// Keys of registered workers, in the order they registered.
    rotation: Vec<usize>,
    round_robin: RoundRobin,
    policy: Policy,
    mode: Mode,
    backlog: i32,
    /// Shutdown in shared/reuseport mode: workers have until then to confirm
    /// they stopped accepting.
    stop_accepting_deadline: Option<Instant>,
    /// Most connections per hand-off packet (`--batch`).
    batch: usize,
    /// Reused for `Batch` headers, so batching does not allocate.
    batch_headers: Vec<Dispatch>,
    send_buf: Box<[u8; MAX_FRAME_LEN]>,
    /// "No worker yet" was logged (once per master life).
    told_no_worker: bool,
    pending: VecDeque<AcceptedConn>,
    queue_limit: usize,
    /// The pending queue is full: accepting waits until it has room.
    queue_full: bool,
    /// After EMFILE/ENFILE: accepting waits until then.
    accept_backoff_until: Option<Instant>,
    /// A worker channel was full: retry the pending queue by then.
    retry_at: Option<Instant>,
    last_accept_warning: Option<Instant>,
    next_conn_id: u64,
    next_worker_id: u32,
    counters: Counters,
    spawner: Spawner,
    supervisor: Supervisor,
    /// SIGHUP: spawned workers still to be replaced, oldest first.
    rolling: VecDeque<u32>,
    /// The worker spawned for the current replacement step, until it
    /// registers.
    replacement: Option<u32>,
    /// `--timeout`: a worker silent this long is killed.
    worker_timeout: Option<Duration>,
    next_health_check: Instant,
    phase: Phase,
    /// Some worker is owed a `Shutdown` message.
    shutdowns_owed: bool,
    graceful_timeout: Duration,
    exit: Option<Exit>,
    recv_buf: Box<[u8; MAX_FRAME_LEN]>,
    recv_fds: Vec<OwnedFd>,
    // Dropped last: removes the sockets and the lock file.
    _run_dir: RunDir,
}

impl Master {
    fn new(args: &Args, run_dir: RunDir, spawner: Spawner) -> Result<Master> {
        let poll = Poll::new().context("creating the poll instance")?;
        let mut listener = bind_listener(args.listen, args.backlog, args.mode == Mode::Reuseport)?;
        if args.mode == Mode::Dispatch {
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
                .context("registering the listener")?;
        }
        let worker_socket = run_dir.join(WORKERS_SOCKET_NAME);
        let worker_listener = SeqpacketListener::bind(&worker_socket)
            .with_context(|| format!("binding {}", worker_socket.display()))?;
        poll.registry()
            .register(
                &mut SourceFd(&worker_listener.as_raw_fd()),
                WORKER_LISTENER,
                Interest::READABLE,
            )
            .context("registering the workers' socket")?;
        let control_socket = run_dir.join(CONTROL_SOCKET_NAME);
        let mut control_listener = mio::net::UnixListener::bind(&control_socket)
            .with_context(|| format!("binding {}", control_socket.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&control_socket, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} mode 0600", control_socket.display()))?;
        }
        poll.registry()
            .register(&mut control_listener, CONTROL_LISTENER, Interest::READABLE)
            .context("registering the control socket")?;
        let listen_addr = listener.local_addr().context("reading the bound address")?;
        let mut signals =
            Signals::new([SIGINT, SIGTERM, SIGQUIT, SIGCHLD, SIGHUP, SIGTTIN, SIGTTOU])
                .context("installing signal handlers")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .context("registering signals")?;
        Ok(Master {
            poll,
            listener: Some(listener),
            worker_listener,
            control_listener,
            control_clients: Slab::new(),
            last_stats_request: None,
            started_at: Instant::now(),
            listen_addr,
            signals,
            workers: Slab::new(),
            rotation: Vec::new(),
            round_robin: RoundRobin::default(),
            policy: args.policy,
            mode: args.mode,
            backlog: args.backlog,
            stop_accepting_deadline: None,
            batch: usize::from(args.batch).clamp(1, MAX_BATCH),
            batch_headers: Vec::with_capacity(MAX_BATCH),
            send_buf: Box::new([0; MAX_FRAME_LEN]),
            told_no_worker: false,
            pending: VecDeque::with_capacity(args.queue_limit.min(65_536)),
            queue_limit: args.queue_limit.max(1),
            queue_full: false,
            accept_backoff_until: None,
            retry_at: None,
            last_accept_warning: None,
            next_conn_id: 1,
            next_worker_id: 1,
            counters: Counters::default(),
            spawner,
            supervisor: Supervisor::new(0),
            rolling: VecDeque::new(),
            replacement: None,
            worker_timeout: (!args.timeout.is_zero()).then_some(args.timeout),
            next_health_check: Instant::now(),
            phase: Phase::Running,
            shutdowns_owed: false,
            graceful_timeout: args.graceful_timeout,
            exit: None,
            recv_buf: Box::new([0; MAX_FRAME_LEN]),
            recv_fds: Vec::with_capacity(4),
            _run_dir: run_dir,
        })
    }

    fn local_addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.listen_addr)
    }

    fn run(mut self) -> Result<Exit> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("polling");
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_connections(),
                    WORKER_LISTENER => self.accept_workers(),
                    SIGNALS => self.handle_signals(),
                    CONTROL_LISTENER => self.accept_control_clients(),
                    token => {
                        if let Some(key) = worker_key(token) {
                            self.handle_worker_event(
                                key,
                                event.is_readable() || event.is_read_closed() || event.is_error(),
                                event.is_writable(),
                            );
                        } else if let Some(key) = control_key(token) {
                            self.handle_control_event(key);
                        }
                    }
                }
            }
            self.end_of_turn();
            if let Some(exit) = self.exit.take() {
                return Ok(exit);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let deadline = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            Phase::Running => None,
        };
        let refused_expiry = self
            .workers
            .iter()
            .filter_map(|(_, w)| w.refused_at)
            .min()
            .map(|at| at + REFUSED_LINGER);
        let respawn = (self.supervisor.owed_respawns > 0)
            .then_some(self.supervisor.respawn_not_before)
            .flatten();
        [
            self.accept_backoff_until,
            self.retry_at,
            deadline,
            refused_expiry,
            respawn,
            self.stop_accepting_deadline,
            Some(self.next_health_check),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    // ---- accept → hand off (the measured path) ----

    fn accept_connections(&mut self) {
        if self.queue_full || self.accept_backoff_until.is_some() {
            return;
        }
        // Connections known to be waiting in the kernel's accept queue (a
        // readiness event means at least one); when it reaches 0 the queue
        // is read with TCP_INFO, cheaper than an accept that fails with
        // EAGAIN.
        let mut known_waiting = 1u32;
        loop {
            let Some(listener) = &self.listener else { return };
            if known_waiting == 0 {
                match handoff_fdpass::accept_queue_len(listener.as_fd()) {
                    Ok(0) => break,
                    Ok(n) => known_waiting = n,
                    // Unknown: fall back to accepting until EAGAIN.
                    Err(_) => known_waiting = u32::MAX,
                }
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    known_waiting = known_waiting.saturating_sub(1);
                    let accepted_at_ns = monotonic_ns();
                    let conn_id = self.next_conn_id;
                    self.next_conn_id += 1;
                    self.counters.accepted += 1;
                    debug!(conn_id, %peer, "accepted");
                    self.pending.push_back(AcceptedConn {
                        fd: OwnedFd::from(stream),
                        header: Dispatch { conn_id, peer, accepted_at_ns },
                    });
                    // Hand off as soon as a batch is ready.
                    if self.pending.len() >= self.batch {
                        self.hand_off_pending();
                    }
                    if self.pending.len() >= self.queue_limit && self.phase == Phase::Running {
                        self.queue_full = true;
                        warn!(
                            queued = self.pending.len(),
                            workers = self.rotation.len(),
                            "queue full: stopped accepting; the kernel backlog holds new clients"
                        );
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.counters.accept_errors += 1;
                    if is_resource_exhaustion(&err) {
                        self.counters.accept_paused_for_resources += 1;
                        self.accept_backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        self.warn_accept(&err, "out of resources: pausing accept");
                        break;
                    }
                    // ECONNABORTED and friends concern one client: go on.
                    self.warn_accept(&err, "accept failed");
                }
            }
        }
        if !self.pending.is_empty() {
            self.hand_off_pending();
            if !self.pending.is_empty() && self.rotation.is_empty() && !self.told_no_worker {
                self.told_no_worker = true;
                info!("no worker yet: holding connections until one joins");
            }
        }
    }

    fn warn_accept(&mut self, err: &io::Error, what: &str) {
        let now = Instant::now();
        if self.last_accept_warning.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL) {
            self.last_accept_warning = Some(now);
            warn!(%err, accept_errors = self.counters.accept_errors, "{what}");
        }
    }

    /// The next worker to get connections, by `--policy`.
    fn choose_worker(&mut self) -> Option<usize> {
        let workers = &self.workers;
        let rotation = &self.rotation;
        let position = match self.policy {
            Policy::Rr | Policy::Pull => {
                self.round_robin.next(rotation.len(), |i| workers[rotation[i]].takes_work())
            }
            Policy::Least => self.round_robin.least(rotation.len(), |i| {
                let worker = &workers[rotation[i]];
                worker.takes_work().then(|| worker.in_flight())
            }),
        }?;
        Some(rotation[position])
    }

    /// Hands queued connections to workers, in arrival order, up to
    /// `--batch` per packet, while workers can take them.
    fn hand_off_pending(&mut self) {
        // Each failed attempt takes a worker out of the running, so this
        // ends; the bound is a guard.
        let mut attempts = 0;
        while !self.pending.is_empty() && attempts <= self.rotation.len() * 2 + 1 {
            let Some(key) = self.choose_worker() else { break };
            if !self.send_batch(key) {
                attempts += 1;
            }
        }
        if self.queue_full && self.pending.len() < self.queue_limit {
            self.queue_full = false;
            info!(queued = self.pending.len(), "queue has room: accepting again");
            self.accept_connections();
        }
    }

    /// Sends the oldest queued connections (as many as the batch size and
    /// the worker's free capacity allow) to worker `key` in one packet.
    /// Returns whether they went.
    fn send_batch(&mut self, key: usize) -> bool {
        let worker = &self.workers[key];
        let free = match worker.capacity {
            0 => usize::MAX,
            cap => (cap as usize).saturating_sub(worker.held.len()),
        };
        let n = self.pending.len().min(self.batch).min(free).min(MAX_BATCH);
        if n == 0 {
            return false;
        }
        let encoded = if n == 1 {
            codec::encode(
                &MasterToWorker::Connection(self.pending[0].header),
                &mut self.send_buf[..],
            )
        } else {
            let mut headers = std::mem::take(&mut self.batch_headers);
            headers.clear();
            headers.extend(self.pending.iter().take(n).map(|conn| conn.header));
            let msg = MasterToWorker::Batch(headers);
            let encoded = codec::encode(&msg, &mut self.send_buf[..]);
            if let MasterToWorker::Batch(headers) = msg {
                self.batch_headers = headers;
            }
            encoded
        };
        let len = match encoded {
            Ok(len) => len,
            Err(err) => {
                // Cannot happen: a unit test checks that a full batch fits.
                error!(%err, "cannot encode a hand-off; closing those connections");
                self.counters.lost_at_shutdown += n as u64;
                self.pending.drain(..n);
                return true;
            }
        };
        // The fds go by reference; for a batch the array is filled past `n`
        // with a placeholder that is never sent.
        let single: [BorrowedFd<'_>; 1];
        let mut batch_fds;
        let fds: &[BorrowedFd<'_>] = if n == 1 {
            single = [self.pending[0].fd.as_fd()];
            &single
        } else {
            batch_fds = [self.worker_listener.as_fd(); MAX_BATCH];
            for (slot, conn) in batch_fds.iter_mut().zip(self.pending.iter().take(n)) {
                *slot = conn.fd.as_fd();
            }
            &batch_fds[..n]
        };
        let worker = &mut self.workers[key];
        match worker.chan.send(&self.send_buf[..len], fds) {
            Ok(()) => {
                worker.dispatched += n as u64;
                self.counters.dispatched += n as u64;
                self.counters.packets += 1;
                debug!(n, worker = worker.id, "handed off");
                // The master keeps its copies until the worker reports the
                // connections finished, so a worker's death loses nothing it
                // had not touched (see `salvage`).
                worker.held.extend(self.pending.drain(..n));
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                worker.writable = false;
                let interest = Interest::READABLE | Interest::WRITABLE;
                let fd = worker.chan.as_raw_fd();
                if let Err(err) =
                    self.poll.registry().reregister(&mut SourceFd(&fd), worker_token(key), interest)
                {
                    warn!(worker = worker.id, %err, "cannot watch a full channel; dropping worker");
                    worker.state = WorkerState::Broken;
                }
                self.retry_at.get_or_insert_with(|| Instant::now() + BLOCKED_RETRY);
                false
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::ETOOMANYREFS) => {
                // Too many fds in flight for this user: every worker would
                // say the same. Keep them and retry shortly.
                for (_, worker) in self.workers.iter_mut() {
                    worker.writable = false;
                }
                self.retry_at.get_or_insert_with(|| Instant::now() + BLOCKED_RETRY);
                false
            }
            Err(err) if peer_gone(&err) => {
                // Its end is closed: it died. Salvaged at the end of the turn.
                debug!(worker = worker.id, pid = worker.pid, %err, "hand-off found the worker gone");
                worker.state = WorkerState::Dead;
                false
            }
            Err(err) => {
                warn!(worker = worker.id, pid = worker.pid, %err, "hand-off failed; dropping worker");
                worker.state = WorkerState::Broken;
                false
            }
        }
    }

    // ---- workers ----

    fn accept_workers(&mut self) {
        loop {
            let chan = match self.worker_listener.accept() {
                Ok(chan) => chan,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!(%err, "accepting a worker channel failed");
                    return;
                }
            };
            let cred = match chan.peer_credentials() {
                Ok(cred) => cred,
                Err(err) => {
                    warn!(%err, "cannot read a worker's credentials; refusing it");
                    continue;
                }
            };
            let our_uid = nix::unistd::geteuid().as_raw();
            let refused = cred.uid != our_uid && cred.uid != 0;
            if refused {
                warn!(pid = cred.pid, uid = cred.uid, "refusing a worker of another user");
                let _ = send_refusal(&chan, &format!("uid {} may not register", cred.uid));
            }
            let entry = self.workers.vacant_entry();
            let key = entry.key();
            let fd = chan.as_raw_fd();
            if let Err(err) = self.poll.registry().register(
                &mut SourceFd(&fd),
                worker_token(key),
                Interest::READABLE,
            ) {
                warn!(%err, "cannot watch a worker channel; refusing it");
                continue;
            }
            let slot = entry.insert(WorkerSlot::new(chan, cred.pid));
            if refused {
                // Kept until it hangs up (or briefly), reading and ignoring
                // what it sends: closing with its Hello unread would reset
                // the channel and lose the refusal before it is read.
                slot.state = WorkerState::Refused;
                slot.refused_at = Some(Instant::now());
                continue;
            }
            debug!(pid = cred.pid, "worker connected");
            // Its Hello may already be queued; edge-triggered polling will
            // report it, since registration happened before we read.
        }
    }

    fn handle_worker_event(&mut self, key: usize, readable: bool, writable: bool) {
        if !self.workers.contains(key) {
            return;
        }
        if writable && !self.workers[key].writable {
            let worker = &mut self.workers[key];
            worker.writable = true;
            let fd = worker.chan.as_raw_fd();
            if let Err(err) = self.poll.registry().reregister(
                &mut SourceFd(&fd),
                worker_token(key),
                Interest::READABLE,
            ) {
                warn!(worker = worker.id, %err, "cannot re-watch a worker channel; dropping worker");
                worker.state = WorkerState::Broken;
            }
        }
        if readable {
            self.read_worker_channel(key);
        }
    }

    fn read_worker_channel(&mut self, key: usize) {
        loop {
            let Some(worker) = self.workers.get(key) else { return };
            if matches!(worker.state, WorkerState::Broken | WorkerState::Dead) {
                return;
            }
            if worker.state == WorkerState::Refused {
                self.drain_refused(key);
                return;
            }
            self.recv_fds.clear();
            let received = worker.chan.recv(&mut self.recv_buf[..], &mut self.recv_fds);
            match received {
                Ok(Received::Packet(len)) => {
                    if !self.recv_fds.is_empty() {
                        self.recv_fds.clear();
                        self.drop_worker(key, "sent file descriptors (workers never do)");
                        return;
                    }
                    match codec::decode::<WorkerToMaster>(&self.recv_buf[..len]) {
                        Ok(msg) => self.handle_worker_message(key, msg),
                        Err(err) => {
                            let reason = format!("malformed frame ({len} bytes): {err}");
                            self.drop_worker(key, &reason);
                            return;
                        }
                    }
                }
                Ok(Received::Closed) => {
                    self.worker_gone(key);
                    return;
                }
                Err(err) if err.is_would_block() => return,
                // The worker closed its end with our packets unread: it died.
                Err(handoff_fdpass::RecvError::Io(err))
                    if err.kind() == io::ErrorKind::ConnectionReset =>
                {
                    self.worker_gone(key);
                    return;
                }
                Err(err) => {
                    self.drop_worker(key, &err.to_string());
                    return;
                }
            }
        }
    }

    /// Reads and ignores what a refused peer sends; removes it at EOF.
    fn drain_refused(&mut self, key: usize) {
        loop {
            let Some(worker) = self.workers.get(key) else { return };
            self.recv_fds.clear();
            match worker.chan.recv(&mut self.recv_buf[..], &mut self.recv_fds) {
                Ok(Received::Packet(_)) => continue,
                Err(err) if err.is_would_block() => return,
                Ok(Received::Closed) | Err(_) => {
                    self.remove_worker(key);
                    return;
                }
            }
        }
    }

    fn handle_worker_message(&mut self, key: usize, msg: WorkerToMaster) {
        let state = self.workers[key].state;
        match (state, msg) {
            (WorkerState::Registering, WorkerToMaster::Hello(hello)) => self.register(key, hello),
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::Finished(report)) => {
                self.take_report(key, report);
            }
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::Stats(stats)) => {
                self.workers[key].record_stats(stats, Instant::now());
            }
            (WorkerState::Ready, WorkerToMaster::Leaving) => self.retire(key),
            (_, WorkerToMaster::StoppedAccepting) => {
                let worker = &mut self.workers[key];
                worker.listening = false;
                debug!(worker = worker.id, "worker stopped accepting");
            }
            (state, msg) => {
                let reason = format!("unexpected {msg:?} while {state:?}");
                self.drop_worker(key, &reason);
            }
        }
    }

    /// Shared/reuseport mode: tells a new worker to accept for itself.
    fn send_listen(&mut self, key: usize) {
        let mode = match self.mode {
            Mode::Dispatch => return,
            Mode::Shared => ListenMode::Shared,
            Mode::Reuseport => ListenMode::ReusePort {
                addr: self.listen_addr,
                backlog: u32::try_from(self.backlog).unwrap_or(128),
            },
        };
        let Some(listener) = &self.listener else { return };
        let len = match codec::encode(&MasterToWorker::Listen(mode), &mut self.send_buf[..]) {
            Ok(len) => len,
            Err(err) => {
                error!(%err, "cannot encode Listen");
                return;
            }
        };
        let fds = [listener.as_fd()];
        let fds: &[BorrowedFd<'_>] = if self.mode == Mode::Shared { &fds } else { &[] };
        let worker = &mut self.workers[key];
        match worker.chan.send(&self.send_buf[..len], fds) {
            Ok(()) => worker.listening = true,
            Err(err) => {
                let reason = format!("cannot send Listen: {err}");
                self.drop_worker(key, &reason);
            }
        }
    }

    /// Closes the master's copies of the connections a worker finished, and
    /// re-queues the ones whose fd never reached it.
    fn take_report(&mut self, key: usize, report: Finished) {
        let mut not_received = Vec::new();
        let worker = &mut self.workers[key];
        for completion in &report.conns {
            if completion.conn_id == SELF_ACCEPTED {
                worker.self_accepted_done += 1;
                worker.finished.add(completion);
                self.counters.finished.add(completion);
                self.counters.worker_accepted += 1;
                continue;
            }
            let Some(conn) = worker.take_held(completion.conn_id) else {
                let reason =
                    format!("reported connection {} that it does not hold", completion.conn_id);
                self.drop_worker(key, &reason);
                return;
            };
            if completion.outcome == Outcome::NotReceived {
                not_received.push(conn);
            } else {
                worker.finished.add(completion);
                self.counters.finished.add(completion);
                // `conn` drops here: the master closes its copy.
            }
        }
        if !not_received.is_empty() {
            warn!(
                worker = worker.id,
                n = not_received.len(),
                "fds did not reach the worker; handing them out again"
            );
            self.counters.redispatched += not_received.len() as u64;
            for conn in not_received.into_iter().rev() {
                self.pending.push_front(conn);
            }
        }
    }

    fn register(&mut self, key: usize, hello: Hello) {
        let socket_pid = self.workers[key].pid;
        let refusal = if hello.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version {} is not the master's {PROTOCOL_VERSION}",
                hello.protocol_version
            ))
        } else if i64::from(hello.pid) != i64::from(socket_pid) {
            Some(format!("says it is pid {} but the socket says pid {socket_pid}", hello.pid))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let _ = send_refusal(&self.workers[key].chan, &reason);
            self.drop_worker(key, &reason);
            return;
        }
        let id = self.next_worker_id;
        let mut frame = [0u8; 64];
        let sent = codec::encode(&MasterToWorker::Welcome { worker_id: id }, &mut frame)
            .map_err(io::Error::other)
            .and_then(|len| self.workers[key].chan.send(&frame[..len], &[]));
        if let Err(err) = sent {
            let reason = format!("cannot send Welcome: {err}");
            self.drop_worker(key, &reason);
            return;
        }
        self.next_worker_id += 1;
        let origin = if self.spawner.owns(hello.pid) { Origin::Spawned } else { Origin::External };
        let draining = matches!(self.phase, Phase::Draining { .. });
        let worker = &mut self.workers[key];
        worker.id = id;
        worker.origin = origin;
        worker.capacity = match (self.policy, hello.capacity) {
            // Pull means a worker takes one at a time unless it says more.
            (Policy::Pull, 0) => 1,
            (_, capacity) => capacity,
        };
        worker.state = WorkerState::Ready;
        worker.shutdown_pending = draining;
        self.shutdowns_owed |= draining;
        self.rotation.push(key);
        info!(worker = id, pid = hello.pid, origin = origin.as_str(), "worker registered");
        if self.mode != Mode::Dispatch && !draining {
            self.send_listen(key);
        }
        if self.replacement == Some(hello.pid) {
            self.replacement = None;
            if let Some(old) = self.rolling.pop_front() {
                match self.key_of_pid(old) {
                    Some(old_key) => self.retire_worker(old_key),
                    None => self.spawner.mark_retiring(old),
                }
            }
            if self.rolling.is_empty() {
                info!("rolling restart: every worker replaced");
            }
        }
        self.hand_off_pending();
    }

    /// A worker asked to leave (it got SIGINT/SIGTERM): no more work for it,
    /// and a `Shutdown` as the last message on its channel, so every fd sent
    /// before it is served.
    fn retire(&mut self, key: usize) {
        let worker = &self.workers[key];
        info!(worker = worker.id, pid = worker.pid, "worker is leaving");
        self.retire_worker(key);
    }

    /// A worker closed its channel (it exited or was killed). What it still
    /// held is salvaged: see [`Master::salvage`].
    fn worker_gone(&mut self, key: usize) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        let (id, pid, served) = (worker.id, worker.pid, worker.finished.served);
        let state = worker.state;
        let held: Vec<AcceptedConn> = worker.held.drain(..).collect();
        if !held.is_empty() {
            self.salvage(id, pid, held);
        } else if state == WorkerState::Registering {
            debug!(pid, "unregistered peer left");
        } else {
            info!(worker = id, pid, served, "worker left");
        }
        self.remove_worker(key);
    }

    /// Sorts out the connections a dead worker held, using the master's own
    /// copies: one nobody has read from or written to is handed to another
    /// worker; one whose reply went out in full counts as served; the rest
    /// were cut off mid-way and count as lost. Closing the master's copy
    /// closes the client's connection cleanly (the request was consumed, so
    /// no unread data turns the close into a reset).
    fn salvage(&mut self, worker_id: u32, pid: i32, held: Vec<AcceptedConn>) {
        let (mut requeue, mut served, mut lost) = (Vec::new(), 0u64, 0u64);
        for conn in held {
            match TcpProgress::of(conn.fd.as_fd()) {
                Ok(p) if p.bytes_consumed() == 0 && p.bytes_sent == 0 => requeue.push(conn),
                Ok(p)
                    if p.bytes_sent > 0 && p.bytes_acked >= full_reply_len(p.bytes_consumed()) =>
                {
                    served += 1
                }
                _ => lost += 1,
            }
        }
        let redispatched = requeue.len() as u64;
        for conn in requeue.into_iter().rev() {
            self.pending.push_front(conn);
        }
        self.counters.redispatched += redispatched;
        self.counters.served_by_dead_workers += served;
        self.counters.finished.served += served;
        self.counters.lost_worker_died += lost;
        warn!(
            worker = worker_id,
            pid,
            redispatched,
            served,
            lost,
            "worker died holding connections: untouched ones go to other workers"
        );
    }

    /// Drops a misbehaving peer with a logged reason; clients are unaffected.
    fn drop_worker(&mut self, key: usize, reason: &str) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        warn!(worker = worker.id, pid = worker.pid, reason, "dropping worker channel");
        worker.state = WorkerState::Broken;
    }

    fn remove_worker(&mut self, key: usize) {
        let worker = self.workers.remove(key);
        let fd = worker.chan.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.rotation.retain(|&k| k != key);
        if !worker.held.is_empty() {
            // A dropped peer may still be alive and serving what it took, so
            // nothing is handed out twice: the master just lets go.
            warn!(
                worker = worker.id,
                pid = worker.pid,
                held = worker.held.len(),
                "dropped a worker that held connections; they stay with it"
            );
            self.counters.lost_worker_died += worker.held.len() as u64;
        }
    }

    /// Asks a registered worker to finish and exit (scale down, rolling
    /// restart, or its own request).
    fn retire_worker(&mut self, key: usize) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        if worker.state != WorkerState::Ready {
            return;
        }
        worker.state = WorkerState::Retiring;
        worker.shutdown_pending = true;
        self.shutdowns_owed = true;
        self.spawner.mark_retiring(worker.pid as u32);
        info!(worker = worker.id, pid = worker.pid, "retiring worker");
    }

    fn key_of_pid(&self, pid: u32) -> Option<usize> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid as u32 == pid && w.state == WorkerState::Ready)
            .map(|(key, _)| key)
    }

    /// Keeps the spawned workers at the target: respawns (with the
    /// supervisor's backoff), scales up or down, and steps a rolling restart.
    fn maintain_workers(&mut self, now: Instant) {
        self.supervisor.settle(now);
        if self.replacement.is_none() {
            while let Some(&old) = self.rolling.front() {
                if self.spawner.owns(old) && !self.spawner.is_retiring(old) {
                    break;
                }
                self.rolling.pop_front();
            }
            if !self.rolling.is_empty() && self.supervisor.may_spawn(now) {
                match self.spawner.spawn() {
                    Ok(pid) => {
                        info!(pid, left = self.rolling.len(), "spawned a replacement worker");
                        self.replacement = Some(pid);
                    }
                    Err(err) => {
                        error!("{err:#}");
                        self.supervisor.record_death(now);
                    }
                }
            }
        }
        let want = self.supervisor.target + usize::from(self.replacement.is_some());
        let serving = self.spawner.n_serving();
        if serving < want && self.supervisor.may_spawn(now) {
            for _ in serving..want {
                match self.spawner.spawn() {
                    Ok(pid) => {
                        self.supervisor.spawned();
                        info!(pid, target = self.supervisor.target, "spawned worker");
                    }
                    Err(err) => {
                        error!("{err:#}");
                        self.supervisor.record_death(now);
                        break;
                    }
                }
            }
        } else if serving > want {
            let mut newest_first: Vec<(u32, usize)> = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.state == WorkerState::Ready
                        && w.origin == Origin::Spawned
                        && Some(w.pid as u32) != self.replacement
                })
                .map(|(key, w)| (w.id, key))
                .collect();
            newest_first.sort_unstable_by(|a, b| b.cmp(a));
            for (_, key) in newest_first.into_iter().take(serving - want) {
                self.retire_worker(key);
            }
        }
    }

    /// Once a second: kill workers silent for `--timeout`, drop peers that
    /// never said Hello.
    fn check_health(&mut self, now: Instant) {
        self.next_health_check = now + HEALTH_CHECK_INTERVAL;
        let mut silent = Vec::new();
        let mut mute = Vec::new();
        for (key, worker) in self.workers.iter() {
            let quiet_for = now.saturating_duration_since(worker.last_seen());
            match worker.state {
                WorkerState::Ready | WorkerState::Retiring
                    if !worker.killed
                        && self.worker_timeout.is_some_and(|timeout| quiet_for > timeout) =>
                {
                    silent.push((key, quiet_for));
                }
                WorkerState::Registering if quiet_for > HELLO_TIMEOUT => mute.push(key),
                _ => {}
            }
        }
        for (key, quiet_for) in silent {
            let worker = &mut self.workers[key];
            warn!(
                worker = worker.id,
                pid = worker.pid,
                silent_secs = quiet_for.as_secs(),
                "worker stopped reporting: killing it (its connections are salvaged when it is gone)"
            );
            worker.killed = true;
            if worker.state == WorkerState::Ready {
                worker.state = WorkerState::Retiring;
            }
            self.counters.worker_timeouts += 1;
            let pid = nix::unistd::Pid::from_raw(worker.pid);
            if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                warn!(pid = worker.pid, %err, "cannot kill the silent worker");
            }
        }
        for key in mute {
            self.drop_worker(key, "did not say Hello in time");
        }
    }

    // ---- control socket ----

    fn accept_control_clients(&mut self) {
        loop {
            let mut stream = match self.control_listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!(%err, "accepting a control client failed");
                    return;
                }
            };
            let refusal = match nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(cred) if cred.uid() == nix::unistd::geteuid().as_raw() || cred.uid() == 0 => {
                    None
                }
                Ok(cred) => {
                    warn!(
                        pid = cred.pid(),
                        uid = cred.uid(),
                        "refused a control client of another user"
                    );
                    Some(format!("permission denied: uid {} is not the master's", cred.uid()))
                }
                Err(err) => Some(format!("cannot check credentials: {err}")),
            };
            let refusal = refusal.or_else(|| {
                (self.control_clients.len() >= MAX_CONTROL_CLIENTS)
                    .then(|| format!("too many control clients (limit {MAX_CONTROL_CLIENTS})"))
            });
            if let Some(reason) = refusal {
                let line = json_line(&ErrorReply { error: reason }) + "\n";
                // Best effort: the socket buffer of a new connection has room.
                let _ = std::io::Write::write_all(&mut stream, line.as_bytes());
                continue;
            }
            let entry = self.control_clients.vacant_entry();
            let key = entry.key();
            if let Err(err) = self.poll.registry().register(
                &mut stream,
                control_token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(%err, "cannot watch a control client");
                continue;
            }
            entry.insert(ControlConn::new(stream));
            debug!(key, "control client connected");
            // Commands may already be waiting.
            self.handle_control_event(key);
        }
    }

    fn handle_control_event(&mut self, key: usize) {
        let mut lines = Vec::new();
        let status = match self.control_clients.get_mut(key) {
            Some(client) => client.read_lines(&mut lines),
            None => return,
        };
        for line in lines {
            let (answer, then) = self.answer_line(&line);
            let Some(client) = self.control_clients.get_mut(key) else { return };
            if !client.queue(&answer) {
                warn!(key, "control client does not read its answers: disconnecting it");
                self.close_control_client(key);
                return;
            }
            match then {
                AfterAnswer::Continue => {}
                AfterAnswer::Close => {
                    client.closing = true;
                    break;
                }
            }
        }
        let Some(client) = self.control_clients.get_mut(key) else { return };
        if status == ReadStatus::Closed {
            client.closing = true;
        }
        match client.flush() {
            Ok(()) if client.closing && client.flushed() => self.close_control_client(key),
            Ok(()) => {}
            Err(err) => {
                debug!(key, %err, "control client went away");
                self.close_control_client(key);
            }
        }
    }

    fn close_control_client(&mut self, key: usize) {
        if self.control_clients.contains(key) {
            let mut client = self.control_clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
    }

    /// The JSON line answering one command line, and what to do next.
    fn answer_line(&mut self, line: &Line) -> (String, AfterAnswer) {
        let command = match line {
            Line::TooLong(err) => Err(err.clone()),
            Line::Text(text) => parse_command(text),
        };
        let command = match command {
            Ok(command) => command,
            Err(err) => {
                debug!(%err, "bad control command");
                return (json_line(&ErrorReply { error: err.to_string() }), AfterAnswer::Continue);
            }
        };
        let answer = match command {
            Command::Help => json_line(&HelpReply::new()),
            Command::Info => json_line(&self.info_reply()),
            Command::Workers => {
                self.request_worker_stats();
                json_line(&self.workers_reply())
            }
            Command::Metrics => {
                self.request_worker_stats();
                let text =
                    crate::metrics::render(&self.info_reply(), &self.workers_reply().workers);
                json_line(&MetricsReply { metrics: text })
            }
            Command::Ping => json_line(&OkReply { ok: "pong".into() }),
            Command::Stop => {
                if self.phase == Phase::Running {
                    info!("stop requested on the control socket");
                    self.begin_shutdown("control stop");
                }
                json_line(&OkReply { ok: "shutting down".into() })
            }
            Command::Scale(n) => {
                if self.phase != Phase::Running {
                    json_line(&ErrorReply { error: "shutting down: not scaling".into() })
                } else {
                    self.scale(n as usize, "control scale");
                    json_line(&OkReply { ok: format!("scaling to {n} spawned workers") })
                }
            }
            Command::Reload => {
                self.begin_rolling_restart("control reload");
                json_line(&OkReply {
                    ok: format!("replacing {} spawned workers one by one", self.rolling.len()),
                })
            }
            Command::Quit => return (json_line(&OkReply { ok: "bye".into() }), AfterAnswer::Close),
        };
        (answer, AfterAnswer::Continue)
    }

    fn info_reply(&self) -> InfoReply {
        let usage = ProcessUsage::of_self();
        let finished = &self.counters.finished;
        InfoReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            listen: self.listen_addr.to_string(),
            run_dir: self._run_dir.path().display().to_string(),
            state: match self.phase {
                Phase::Running => "running",
                Phase::Draining { .. } => "draining",
            }
            .to_owned(),
            uptime_secs: self.started_at.elapsed().as_secs_f64(),
            mode: format!("{:?}", self.mode).to_lowercase(),
            accepted: self.counters.accepted,
            worker_accepted: self.counters.worker_accepted,
            dispatched: self.counters.dispatched,
            handoff_packets: self.counters.packets,
            queued: self.pending.len() as u64,
            in_flight: self.workers.iter().map(|(_, w)| w.in_flight()).sum(),
            completed: finished.total(),
            served: finished.served,
            resets: finished.resets,
            failed: finished.failed,
            timeouts: finished.timeouts,
            lost: self.counters.lost(),
            lost_worker_died: self.counters.lost_worker_died,
            lost_at_shutdown: self.counters.lost_at_shutdown,
            redispatched: self.counters.redispatched,
            served_by_dead_workers: self.counters.served_by_dead_workers,
            accept_errors: self.counters.accept_errors,
            accept_paused_for_resources: self.counters.accept_paused_for_resources,
            workers: self.rotation.len() as u64,
            target_workers: self.supervisor.target as u64,
            worker_deaths: self.supervisor.deaths,
            respawns: self.supervisor.respawns,
            worker_timeouts: self.counters.worker_timeouts,
            crash_loop: self.supervisor.crash_loop,
            cpu_user_secs: usage.cpu_user_us as f64 / 1e6,
            cpu_sys_secs: usage.cpu_sys_us as f64 / 1e6,
            cpu_us_per_dispatched: (self.counters.dispatched > 0)
                .then(|| usage.cpu_us() as f64 / self.counters.dispatched as f64),
            rss_bytes: usage.rss_bytes,
        }
    }

    fn workers_reply(&self) -> WorkersReply {
        let now = Instant::now();
        let mut rows: Vec<_> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Ready | WorkerState::Retiring))
            .map(|(_, w)| w.row(now))
            .collect();
        rows.sort_by_key(|row| row.id);
        WorkersReply { workers: rows }
    }

    /// Asks every worker for a fresh stats report (answered later; the
    /// control client gets the latest report now, never waits).
    fn request_worker_stats(&mut self) {
        let now = Instant::now();
        if self.last_stats_request.is_some_and(|at| now.duration_since(at) < STATS_REQUEST_INTERVAL)
        {
            return;
        }
        self.last_stats_request = Some(now);
        let mut frame = [0u8; 16];
        let Ok(len) = codec::encode(&MasterToWorker::ReportStats, &mut frame) else { return };
        for (_, worker) in self.workers.iter_mut() {
            if worker.state == WorkerState::Ready && worker.writable {
                // A full channel just means this report comes later.
                let _ = worker.chan.send(&frame[..len], &[]);
            }
        }
    }

    // ---- signals and shutdown ----

    fn handle_signals(&mut self) {
        let received: Vec<i32> = self.signals.pending().collect();
        for signal in received {
            match signal {
                SIGCHLD => self.reap_children(),
                SIGINT | SIGTERM => match self.phase {
                    Phase::Running => {
                        self.begin_shutdown(if signal == SIGINT { "SIGINT" } else { "SIGTERM" })
                    }
                    Phase::Draining { .. } => {
                        warn!("second stop signal: stopping now");
                        self.force_stop();
                    }
                },
                SIGQUIT => {
                    info!("SIGQUIT: stopping now");
                    self.force_stop();
                }
                SIGHUP => self.begin_rolling_restart("SIGHUP"),
                SIGTTIN => self.scale(self.supervisor.target.saturating_add(1), "SIGTTIN"),
                SIGTTOU => self.scale(self.supervisor.target.saturating_sub(1), "SIGTTOU"),
                _ => {}
            }
        }
    }

    fn reap_children(&mut self) {
        let now = Instant::now();
        for exited in self.spawner.reap() {
            let (pid, status) = (exited.pid, exited.status);
            if self.replacement == Some(pid) {
                self.replacement = None;
            }
            if exited.planned || self.phase != Phase::Running {
                if status.success() {
                    info!(pid, %status, "worker exited");
                } else {
                    warn!(pid, %status, "worker exited");
                }
                continue;
            }
            warn!(pid, %status, "worker died: replacing it");
            if self.supervisor.record_death(now) {
                error!(
                    deaths = self.supervisor.deaths,
                    "workers keep dying: crash loop, respawns are backed off"
                );
            }
        }
    }

    /// Keeps `target` spawned workers from now on.
    fn scale(&mut self, target: usize, reason: &str) {
        let target = target.min(handoff_proto::control::MAX_SCALE as usize);
        if self.phase != Phase::Running {
            warn!(reason, "shutting down: not scaling");
            return;
        }
        info!(reason, from = self.supervisor.target, to = target, "scaling spawned workers");
        self.supervisor.set_target(target);
    }

    /// Replaces every spawned worker, one at a time: a new one is spawned,
    /// and when it has registered one old one is retired (it finishes what
    /// it holds); no connection is refused or lost on the way.
    fn begin_rolling_restart(&mut self, reason: &str) {
        if self.phase != Phase::Running {
            return;
        }
        self.rolling = self
            .spawner
            .serving_pids()
            .into_iter()
            .filter(|&pid| Some(pid) != self.replacement)
            .collect();
        info!(
            reason,
            workers = self.rolling.len(),
            "rolling restart: replacing workers one by one"
        );
    }

    fn begin_shutdown(&mut self, reason: &str) {
        info!(
            reason,
            queued = self.pending.len(),
            workers = self.rotation.len(),
            "shutting down: no longer accepting"
        );
        // Take what already completed the handshake, so closing the
        // listener resets nobody; ignore the queue limit this once.
        self.queue_full = false;
        self.accept_backoff_until = None;
        self.phase = Phase::Draining { deadline: Instant::now() + self.graceful_timeout };
        match self.mode {
            Mode::Dispatch => self.close_listener(),
            // Workers accept for themselves: they stop first (and confirm),
            // then the master takes what is left in the queue.
            Mode::Shared | Mode::Reuseport => {
                let mut frame = [0u8; 16];
                if let Ok(len) = codec::encode(&MasterToWorker::StopAccepting, &mut frame) {
                    for (_, worker) in self.workers.iter_mut().filter(|(_, w)| w.listening) {
                        if worker.chan.send(&frame[..len], &[]).is_err() {
                            worker.listening = false;
                        }
                    }
                }
                self.stop_accepting_deadline = Some(Instant::now() + STOP_ACCEPTING_TIMEOUT);
            }
        }
        for key in self.rotation.clone() {
            self.workers[key].shutdown_pending = true;
        }
        self.shutdowns_owed = !self.rotation.is_empty();
        // Peers that never said Hello will not get work: drop them.
        let registering: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Registering)
            .map(|(key, _)| key)
            .collect();
        for key in registering {
            self.remove_worker(key);
        }
    }

    /// Takes what already completed the handshake (so closing resets
    /// nobody), then closes the listening socket.
    fn close_listener(&mut self) {
        if self.mode == Mode::Shared {
            if let Some(listener) = &mut self.listener {
                let _ = self.poll.registry().register(listener, LISTENER, Interest::READABLE);
            }
        }
        if self.mode != Mode::Reuseport {
            self.accept_connections();
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn force_stop(&mut self) {
        let queued = self.pending.len() as u64;
        let held: u64 = self.workers.iter().map(|(_, w)| w.in_flight()).sum();
        self.counters.lost_at_shutdown += queued + held;
        self.pending.clear();
        self.spawner.kill_all();
        warn!(queued, held_by_workers = held, "forced stop: closed queued connections");
        self.exit = Some(Exit::Forced);
    }

    /// Timers and bookkeeping that run once per loop turn.
    fn end_of_turn(&mut self) {
        let now = Instant::now();
        let dead: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Dead)
            .map(|(key, _)| key)
            .collect();
        for key in dead {
            self.worker_gone(key);
        }
        let broken: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.state == WorkerState::Broken
                    || w.refused_at.is_some_and(|at| now.duration_since(at) >= REFUSED_LINGER)
            })
            .map(|(key, _)| key)
            .collect();
        for key in broken {
            self.remove_worker(key);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            for (_, worker) in self.workers.iter_mut() {
                worker.writable = true;
            }
        }
        if !self.pending.is_empty() {
            self.hand_off_pending();
        }
        if self.accept_backoff_until.is_some_and(|until| until <= now) {
            self.accept_backoff_until = None;
            self.accept_connections();
        }
        if now >= self.next_health_check {
            self.check_health(now);
        }
        if self.phase == Phase::Running {
            self.maintain_workers(now);
        }
        if self.shutdowns_owed {
            self.send_shutdowns();
        }
        if let Phase::Draining { deadline } = self.phase {
            self.progress_shutdown(deadline, now);
        }
    }

    fn progress_shutdown(&mut self, deadline: Instant, now: Instant) {
        if self.exit.is_some() {
            return;
        }
        if self.listener.is_some() {
            let all_stopped = !self.workers.iter().any(|(_, w)| w.listening);
            if all_stopped || self.stop_accepting_deadline.is_none_or(|at| now >= at) {
                self.close_listener();
            } else if now < deadline {
                return;
            }
        }
        if !self.pending.is_empty() && self.rotation.is_empty() && self.workers.is_empty() {
            warn!(
                queued = self.pending.len(),
                "no worker to hand queued connections to: closing them"
            );
            self.counters.lost_at_shutdown += self.pending.len() as u64;
            self.pending.clear();
        }
        if self.pending.is_empty() && self.workers.is_empty() {
            self.reap_children();
            if self.spawner.n_alive() == 0 {
                info!(
                    accepted = self.counters.accepted,
                    dispatched = self.counters.dispatched,
                    lost = self.counters.lost(),
                    "shutdown complete"
                );
                self.exit = Some(Exit::Clean);
                return;
            }
        }
        if now >= deadline {
            error!(
                queued = self.pending.len(),
                workers = self.workers.len(),
                "graceful timeout passed: killing workers"
            );
            self.force_stop();
        }
    }

    /// Sends the `Shutdown` owed to workers: at once to a worker that is
    /// leaving, and to the others once the queue is empty (they may still
    /// be needed for it).
    fn send_shutdowns(&mut self) {
        let mut frame = [0u8; 16];
        let Ok(len) = codec::encode(&MasterToWorker::Shutdown, &mut frame) else { return };
        // Shutdown is the last packet on a channel: not before the listener
        // is closed and its queue handed out.
        let queue_empty = self.pending.is_empty() && self.listener.is_none();
        let mut still_owed = false;
        for (_, worker) in self.workers.iter_mut() {
            if !worker.shutdown_pending {
                continue;
            }
            if !worker.writable || !(queue_empty || worker.state == WorkerState::Retiring) {
                still_owed = true;
                continue;
            }
            match worker.chan.send(&frame[..len], &[]) {
                Ok(()) => {
                    worker.shutdown_pending = false;
                    worker.state = WorkerState::Retiring;
                    debug!(worker = worker.id, "sent shutdown");
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    worker.writable = false;
                    still_owed = true;
                    self.retry_at.get_or_insert_with(|| Instant::now() + BLOCKED_RETRY);
                }
                Err(err) if peer_gone(&err) => worker.state = WorkerState::Dead,
                Err(err) => {
                    warn!(worker = worker.id, %err, "cannot send shutdown; dropping worker");
                    worker.state = WorkerState::Broken;
                }
            }
        }
        self.shutdowns_owed = still_owed;
    }
}

/// What the control loop does after queueing an answer.
enum AfterAnswer {
    Continue,
    Close,
}

/// One JSON object, serialized without newlines.
fn json_line<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|err| format!("{{\"error\":\"cannot serialize the answer: {err}\"}}"))
}

fn send_refusal(chan: &handoff_fdpass::Channel, reason: &str) -> io::Result<()> {
    let frame = codec::encode_to_vec(&MasterToWorker::Refused { reason: reason.to_owned() })
        .map_err(io::Error::other)?;
    chan.send(&frame, &[])
}

/// The reply the article's protocol gives to a request of which `consumed`
/// bytes were read.
fn full_reply_len(consumed: u64) -> u64 {
    REPLY_PREFIX.len() as u64 + consumed.min(REQUEST_CHUNK_LEN as u64)
}

/// The error a send gets when the other end of the channel is closed.
fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE
            || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS
            || code == nix::libc::ENOMEM
    )
}
