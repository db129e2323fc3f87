//! The master's event loop: accept → hand off, worker registration and
//! reports, signals, shutdown.
//!
//! One mio `Poll` owns every source. The client listener is `LISTENER`, the
//! workers' registration socket is `WORKER_LISTENER`, signals arrive on
//! `SIGNALS`, and each worker channel has a dynamic token derived from its
//! slab key by [`worker_token`] / [`worker_key`], as does its pidfd
//! ([`pidfd_token`] / [`pidfd_key`]).
//!
//! The hand-off path ([`Master::accept_connections`] → [`Master::send_batch`])
//! does no allocation, no logging above debug and no blocking call. An
//! accepted fd is owned by the master until `sendmsg` succeeds, and then
//! closed at once (`--salvage queued`, the default; `exact` keeps it until
//! the worker reports the connection finished): while no
//! worker can take it, it waits in `pending` (bounded by `--queue-limit`;
//! when full the master stops accepting and the kernel backlog holds the
//! rest). The master never reads or writes connection bytes.
//!
//! This file holds the loop and the state; the work is split by concern:
//! `handoff` (accept → hand off, the measured path), `channels` (workers'
//! registration, reports, salvage when one dies), `supervision` (respawn,
//! scaling, rolling restart, health checks), `control` (the control socket),
//! `run_dir_check` (the run dir is still ours), `shutdown` (signals,
//! graceful and forced stop), `agent` (what a load balancer is told, and
//! the drain before a stop) and `upgrade` (handing the sockets to a new
//! master).

mod agent;
mod channels;
mod control;
mod handoff;
mod run_dir_check;
mod shutdown;
mod supervision;
mod upgrade;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff_fdpass::reuseport::KernelBalancer;
use handoff_fdpass::SeqpacketListener;
use handoff_proto::control::CONTROL_SOCKET_NAME;
use handoff_proto::{Dispatch, MAX_BATCH, MAX_FRAME_LEN, WORKERS_SOCKET_NAME};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::info;

use crate::cli::{Args, Mode, Salvage};
use crate::control::{ControlConn, ControlState};
use crate::dispatch::{Policy, RoundRobin};
use crate::run_dir::RunDir;
use crate::supervisor::Supervisor;
use crate::tcp::{bind_listener, ClientListener};
use crate::workers::{AcceptedConn, Spawner, WorkerSlot, WorkerState};

use handoff::{FdPressure, QueueLog};

const LISTENER: Token = Token(0);
const WORKER_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CONTROL_LISTENER: Token = Token(3);
/// The old master's side of an upgrade: `upgrade.sock`, then the channel
/// to the new master.
const SUCCESSOR: Token = Token(4);
/// The new master's side of an upgrade: the channel to the old master.
const PREDECESSOR: Token = Token(5);
/// HAProxy's agent checks (`--agent-check`).
const AGENT_LISTENER: Token = Token(6);
const FIRST_WORKER_TOKEN: usize = 16;
const FIRST_PIDFD_TOKEN: usize = 1 << 29;
const FIRST_CONTROL_TOKEN: usize = 1 << 30;

fn worker_token(key: usize) -> Token {
    Token(key + FIRST_WORKER_TOKEN)
}

fn worker_key(token: Token) -> Option<usize> {
    (FIRST_WORKER_TOKEN..FIRST_PIDFD_TOKEN).contains(&token.0).then(|| token.0 - FIRST_WORKER_TOKEN)
}

/// The token of a worker's pidfd (readable when the process exits).
fn pidfd_token(key: usize) -> Token {
    Token(key + FIRST_PIDFD_TOKEN)
}

fn pidfd_key(token: Token) -> Option<usize> {
    (FIRST_PIDFD_TOKEN..FIRST_CONTROL_TOKEN).contains(&token.0).then(|| token.0 - FIRST_PIDFD_TOKEN)
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

/// Context for an error that ended the loop after the master started (the
/// binary exits with another status than for a failure to start).
#[derive(Debug)]
pub struct Running;

impl std::fmt::Display for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed while running")
    }
}

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
    /// Sums of every worker's finished connections (reports, or shared
    /// counters merged), including departed workers.
    finished: handoff_proto::Totals,
    accept_errors: u64,
    accept_paused_for_resources: u64,
    /// Held by a worker that died or was dropped before finishing them
    /// (`--salvage exact`: only those it had read from and not answered).
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

/// Binds (or, started by an upgrade, takes the old master's sockets),
/// spawns the workers, and runs the loop until shutdown completes.
pub fn run(args: Args) -> Result<Exit> {
    let invocation = upgrade::Invocation::of_self()?;
    if let Some(path) = &args.pid_file {
        crate::pid_file::check_dir(path)?;
    }
    // --user: bind and make the run dir as root, then become that user.
    let target = crate::privileges::resolve(args.user.as_deref(), args.group.as_deref())?;
    let run_dir_path = args.run_dir.clone().unwrap_or_else(|| match &target {
        // Root's $XDG_RUNTIME_DIR is not the user's.
        Some(target) => handoff_proto::default_run_dir(None, target.uid.as_raw()),
        None => handoff_proto::default_run_dir(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            nix::unistd::geteuid().as_raw(),
        ),
    });
    // Loaded before privileges are dropped (it needs CAP_BPF); a new master
    // gets the old one's at an upgrade instead.
    let mut kernel_balancer = match (args.mode, args.policy, &args.upgrade_from) {
        (Mode::Reuseport, Policy::Least | Policy::Pull, None) => {
            Some(load_kernel_balancer(args.policy)?)
        }
        _ => None,
    };
    let mut prebound = None;
    // Bound before privileges are dropped, like the client listener.
    let mut agent_listener = match (args.agent_check, &args.upgrade_from) {
        (Some(addr), None) => Some(agent::bind(addr)?),
        _ => None,
    };
    if let (Some(target), None) = (&target, &args.upgrade_from) {
        prebound = Some(client_listener(&args)?);
        crate::privileges::prepare_run_dir(&run_dir_path, target)?;
        crate::privileges::drop_to(target)?;
    }
    let mut inherited = match &args.upgrade_from {
        Some(path) => Some(upgrade::receive_handover(path)?),
        None => None,
    };
    if let Some(from) = inherited.as_mut() {
        if let Some(inherited_balancer) = from.kernel_balancer.take() {
            kernel_balancer = Some(inherited_balancer);
        } else if args.mode == Mode::Reuseport && args.policy != Policy::Rr {
            kernel_balancer = Some(load_kernel_balancer(args.policy)?);
        }
        agent_listener = match (from.agent_listener.take(), args.agent_check) {
            (Some(fd), _) => Some(mio::net::TcpListener::from_std(std::net::TcpListener::from(fd))),
            // The old master had none: bind it now.
            (None, Some(addr)) => Some(agent::bind(addr)?),
            (None, None) => None,
        };
    }
    let run_dir = match inherited.as_mut() {
        Some(from) => {
            let dir = from.dir.try_clone().context("duplicating the run dir fd")?;
            let lock = from.lock.try_clone().context("duplicating the lock fd")?;
            RunDir::inherit(&run_dir_path, dir, lock)?
        }
        None => RunDir::claim(&run_dir_path)?,
    };
    let n_workers =
        args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => match find_worker_bin() {
            Ok(found) => found,
            Err(err) if n_workers > 0 => return Err(err),
            // None to spawn now: a spawn asked for later says it failed.
            Err(_) => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("handoff-worker"),
        },
    };
    if n_workers > 0 && !worker_bin.is_file() {
        bail!(
            "worker binary {} not found (build it with `cargo build`, install it with `make \
             install`, or pass --worker-bin)",
            worker_bin.display()
        );
    }

    let spawner = Spawner::new(worker_bin, &run_dir_path, args.worker_args());
    let upgraded = inherited.is_some();
    let balancer = agent::Balancer::new(agent_listener, args.drain_grace())?;
    let mut master =
        Master::new(&args, run_dir, spawner, inherited, prebound, invocation, balancer)?;
    master.kernel_balancer = kernel_balancer;
    let local = master.local_addr()?;
    info!(
        addr = %local,
        backlog = args.backlog,
        run_dir = %run_dir_path.display(),
        generation = master.generation,
        inherited = upgraded,
        "listening"
    );
    // A new master answers agent checks once it takes over.
    if !upgraded {
        master.watch_agent_listener();
    }
    // The listener is up: the pid file first, so that it exists by the
    // time anyone reads the ready line.
    if !upgraded {
        master.write_pid_file();
    }
    {
        use std::io::Write;
        let mut stdout = io::stdout().lock();
        let written = writeln!(stdout, "listening on {local}").and_then(|()| stdout.flush());
        // A master started by an upgrade shares the old one's stdout, which
        // nobody may read any more: the line is a courtesy there.
        if !upgraded {
            written.context("writing the ready line")?;
        }
    }
    for _ in 0..n_workers {
        let pid = master.spawn_worker()?;
        info!(pid, "spawned worker");
    }
    master.supervisor = Supervisor::new(n_workers);
    master.watch_predecessor()?;
    master.run().map_err(|err| err.context(Running))
}

/// `--mode reuseport --policy least|pull`: the eBPF program and its maps,
/// or why not, with the way out.
fn load_kernel_balancer(policy: Policy) -> Result<KernelBalancer> {
    match KernelBalancer::load() {
        Ok(balancer) => {
            info!(policy = policy.as_str(), "reuseport: the kernel balancer's program is loaded");
            Ok(balancer)
        }
        Err(err) => bail!(
            "--mode reuseport --policy {} picks workers with an eBPF program, which could not \
             be loaded: {err}. Plain --mode reuseport (--policy rr, the kernel's hash) works \
             without it",
            policy.as_str()
        ),
    }
}

/// `handoff-worker` beside this executable, else the first on `PATH`,
/// else (for the error message) the path beside this executable.
fn find_worker_bin() -> Result<std::path::PathBuf> {
    const NAME: &str = "handoff-worker";
    let beside = std::env::current_exe().context("locating this executable")?.with_file_name(NAME);
    if beside.is_file() {
        return Ok(beside);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(NAME)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        info!(worker_bin = %found.display(), "no handoff-worker beside the master: using the one on PATH");
        return Ok(found);
    }
    bail!(
        "worker binary {NAME} not found beside {} nor on PATH: install it next to the master \
         (`make install`, or `cargo install --path crates/worker`), or pass --worker-bin PATH",
        beside.parent().map_or_else(String::new, |dir| dir.display().to_string())
    )
}

/// The client listener: the one systemd passed, else a new one bound to
/// `--listen`. As root without `--user`, a non-loopback address needs
/// `--allow-root`.
fn client_listener(args: &Args) -> Result<ClientListener> {
    use crate::cli::ListenAddr;
    let given_tcp = match &args.listen {
        Some(ListenAddr::Tcp(addr)) => Some(*addr),
        _ => None,
    };
    let activated = crate::tcp::activated_listener(given_tcp)?;
    if activated.is_some() && matches!(args.listen, Some(ListenAddr::Unix(_))) {
        bail!("--listen unix:… disagrees with the TCP socket systemd passed: drop --listen");
    }
    if activated.is_some() && args.mode == Mode::Reuseport {
        bail!(
            "--mode reuseport binds one socket per worker: it cannot use a socket passed by \
             systemd (use dispatch or shared mode)"
        );
    }
    let listener = match (activated, &args.listen) {
        (Some(listener), _) => {
            info!("using the listening socket systemd passed (LISTEN_FDS)");
            ClientListener::Tcp(listener)
        }
        (None, Some(ListenAddr::Unix(path))) => {
            if args.mode != Mode::Dispatch || args.salvage == Salvage::Exact {
                bail!(
                    "--listen unix:PATH needs --mode dispatch and --salvage queued (workers \
                     accept TCP only, and exact salvage reads TCP state)"
                );
            }
            ClientListener::Unix(crate::tcp::bind_unix(path, args.backlog)?)
        }
        (None, listen) => {
            let addr = match listen {
                Some(ListenAddr::Tcp(addr)) => *addr,
                _ => crate::cli::DEFAULT_LISTEN,
            };
            ClientListener::Tcp(bind_listener(addr, args.backlog, args.mode == Mode::Reuseport)?)
        }
    };
    if let Some(addr) = listener.tcp_addr() {
        crate::privileges::check_exposure(addr, args.allow_root || args.user.is_some())?;
    }
    Ok(listener)
}

struct Master {
    poll: Poll,
    listener: Option<ClientListener>,
    /// `--listen unix:PATH`: the socket file, removed on exit (unless an
    /// upgrade handed it over).
    unix_path: Option<std::path::PathBuf>,
    /// `HOST:PORT` or `unix:PATH` (`info`, the ready line).
    listen_name: String,
    worker_listener: SeqpacketListener,
    control_listener: mio::net::UnixListener,
    control_clients: Slab<ControlConn<mio::net::UnixStream>>,
    control: ControlState,
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
    salvage: Salvage,
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
    /// A stop: `counters.lost()` when it began (clients lost during the
    /// stop make the exit status 1), and the worker started to answer
    /// connections taken back from a worker that died meanwhile.
    lost_when_stop_began: u64,
    rescue_worker: Option<u32>,
    /// Dead workers whose queue did not fit the master's fds yet
    /// (`WorkerSlot::take_back_owed`).
    dead_queues_owed: usize,
    pending: VecDeque<AcceptedConn>,
    queue_limit: usize,
    /// The pending queue is full: accepting waits until it has room.
    queue_full: bool,
    /// After EMFILE/ENFILE: accepting waits until an fd is released, or
    /// until then at the latest.
    accept_backoff_until: Option<Instant>,
    /// Spare fds, and what waits for fds to be released.
    fds: FdPressure,
    /// Queue-full warnings, at most one state change a second.
    queue_log: QueueLog,
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
    /// How this process was started (an upgrade starts the same again).
    invocation: upgrade::Invocation,
    /// 1, or one more than the master that handed us its sockets.
    generation: u64,
    /// Wall-clock start, seconds since the epoch (`info`).
    started_unix: f64,
    /// The old side of an upgrade this master started.
    succession: upgrade::Succession,
    /// The new side: the master we take over from, until we are in charge.
    predecessor: Option<upgrade::Predecessor>,
    /// Why the last upgrade failed.
    upgrade_error: Option<String>,
    upgrade_timeout: Duration,
    pid_file_path: Option<std::path::PathBuf>,
    pid_file: Option<crate::pid_file::PidFile>,
    /// systemd was told READY=1 (or need not be told: a new master
    /// says it when it takes over).
    ready_notified: bool,
    /// A rolling restart told systemd RELOADING=1; READY=1 follows when
    /// it ends.
    reload_notified: bool,
    /// Agent checks, `drain`/`ready`, and the drain grace of a stop.
    balancer: agent::Balancer,
    /// `--mode reuseport --policy least|pull`: the SK_REUSEPORT program,
    /// its sockarray and load table (owned here, so they outlive every
    /// worker; handed to a new master at an upgrade).
    kernel_balancer: Option<KernelBalancer>,
    // Dropped last: removes the sockets and the lock file.
    _run_dir: RunDir,
}

impl Master {
    fn new(
        args: &Args,
        run_dir: RunDir,
        spawner: Spawner,
        inherited: Option<upgrade::Inherited>,
        prebound: Option<ClientListener>,
        invocation: upgrade::Invocation,
        mut balancer: agent::Balancer,
    ) -> Result<Master> {
        if let Some(from) = &inherited {
            balancer.drain_asked = from.draining;
        }
        let poll = Poll::new().context("creating the poll instance")?;
        let worker_socket = run_dir.join(WORKERS_SOCKET_NAME);
        let control_socket = run_dir.join(CONTROL_SOCKET_NAME);
        let (listener, worker_listener, control_listener, generation, predecessor) = match inherited
        {
            Some(from) => {
                // Not watched until our workers registered (and the
                // control socket until the old master lets go).
                let listener = ClientListener::from_received(from.listener);
                let workers =
                    SeqpacketListener::from_received(from.worker_listener, &worker_socket)
                        .context("taking over the workers' socket")?;
                let control = mio::net::UnixListener::from_std(
                    std::os::unix::net::UnixListener::from(from.control_listener),
                );
                (listener, workers, control, from.generation, Some(from.predecessor))
            }
            None => {
                let mut listener = match prebound {
                    Some(listener) => listener,
                    None => client_listener(args)?,
                };
                if args.mode == Mode::Dispatch {
                    poll.registry()
                        .register(&mut listener, LISTENER, Interest::READABLE)
                        .context("registering the listener")?;
                }
                let workers = SeqpacketListener::bind(&worker_socket)
                    .with_context(|| format!("binding {}", worker_socket.display()))?;
                let mut control = mio::net::UnixListener::bind(&control_socket)
                    .with_context(|| format!("binding {}", control_socket.display()))?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        &control_socket,
                        std::fs::Permissions::from_mode(0o600),
                    )
                    .with_context(|| format!("making {} mode 0600", control_socket.display()))?;
                }
                poll.registry()
                    .register(&mut control, CONTROL_LISTENER, Interest::READABLE)
                    .context("registering the control socket")?;
                (listener, workers, control, 1, None)
            }
        };
        poll.registry()
            .register(
                &mut SourceFd(&worker_listener.as_raw_fd()),
                WORKER_LISTENER,
                Interest::READABLE,
            )
            .context("registering the workers' socket")?;
        let listen_addr = listener.tcp_addr().unwrap_or(crate::cli::DEFAULT_LISTEN);
        let listen_name = listener.name()?;
        let unix_path = listen_name.strip_prefix("unix:").map(std::path::PathBuf::from);
        let mut signals =
            Signals::new(shutdown::handled_signals()).context("installing signal handlers")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .context("registering signals")?;
        Ok(Master {
            poll,
            listener: Some(listener),
            worker_listener,
            control_listener,
            control_clients: Slab::new(),
            control: ControlState::new(args.control_idle_timeout),
            last_stats_request: None,
            started_at: Instant::now(),
            listen_addr,
            listen_name,
            unix_path,
            signals,
            workers: Slab::new(),
            rotation: Vec::new(),
            round_robin: RoundRobin::default(),
            policy: args.policy,
            mode: args.mode,
            salvage: args.salvage,
            backlog: args.backlog,
            stop_accepting_deadline: None,
            batch: usize::from(args.batch).clamp(1, MAX_BATCH),
            batch_headers: Vec::with_capacity(MAX_BATCH),
            send_buf: Box::new([0; MAX_FRAME_LEN]),
            told_no_worker: false,
            lost_when_stop_began: 0,
            rescue_worker: None,
            dead_queues_owed: 0,
            pending: VecDeque::with_capacity(args.queue_limit.min(65_536)),
            queue_limit: args.queue_limit.max(1),
            queue_full: false,
            accept_backoff_until: None,
            fds: FdPressure::new(),
            queue_log: QueueLog::default(),
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
            invocation,
            generation,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            ready_notified: predecessor.is_some(),
            predecessor,
            succession: upgrade::Succession::None,
            upgrade_error: None,
            upgrade_timeout: args.upgrade_timeout,
            pid_file_path: args.pid_file.clone(),
            pid_file: None,
            reload_notified: false,
            balancer,
            kernel_balancer: None,
            _run_dir: run_dir,
        })
    }

    fn local_addr(&self) -> Result<String> {
        Ok(self.listen_name.clone())
    }

    /// `--pid-file`: written once the listener is up (by a new master,
    /// when it takes over). A failure is logged: the master serves anyway.
    fn write_pid_file(&mut self) {
        let Some(path) = &self.pid_file_path else { return };
        match crate::pid_file::PidFile::write(path) {
            Ok(file) => self.pid_file = Some(file),
            Err(err) => tracing::error!("{err:#}"),
        }
    }

    /// systemd: READY=1 once the first workers registered, and again when
    /// a rolling restart ended.
    fn notify_turn(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        if !self.ready_notified && self.rotation.len() >= self.supervisor.target {
            self.ready_notified = true;
            crate::notify::ready();
        }
        if self.reload_notified && self.rolling.is_empty() && self.replacement.is_none() {
            self.reload_notified = false;
            crate::notify::ready();
        }
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
                    SUCCESSOR => self.successor_event(),
                    PREDECESSOR => self.predecessor_event(),
                    AGENT_LISTENER => self.answer_agent_checks(),
                    token => {
                        if let Some(key) = worker_key(token) {
                            self.handle_worker_event(
                                key,
                                event.is_readable() || event.is_read_closed() || event.is_error(),
                                event.is_writable(),
                            );
                        } else if let Some(key) = pidfd_key(token) {
                            self.worker_exited(key);
                        } else if let Some(key) = control_key(token) {
                            self.handle_control_event(key);
                        }
                    }
                }
            }
            self.end_of_turn();
            if let Some(exit) = self.exit.take() {
                if !matches!(self.succession, upgrade::Succession::Committed) {
                    if let Some(path) = &self.unix_path {
                        let _ = std::fs::remove_file(path);
                    }
                }
                return self.finish(exit);
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
        let respawn = self.supervisor.next_spawn_at();
        [
            self.accept_backoff_until,
            self.retry_at,
            deadline,
            refused_expiry,
            respawn,
            self.stop_accepting_deadline,
            Some(self.next_health_check),
            self.control.deadline(now),
            self.balancer.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
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
            for key in 0..self.workers.capacity() {
                self.writable_again(key);
            }
        }
        if !self.pending.is_empty() {
            self.hand_off_pending();
        }
        self.recover_fds(now);
        self.control_turn(now);
        self.balancer_turn(now);
        if now >= self.next_health_check {
            self.check_run_dir();
            self.check_health(now);
        }
        self.upgrade_turn(now);
        // While a new master takes over, workers register with it: this
        // one spawns none (it resumes if the upgrade fails).
        if self.phase == Phase::Running
            && !matches!(self.succession, upgrade::Succession::HandedOver { .. })
        {
            self.maintain_workers(now);
        }
        self.notify_turn();
        if self.shutdowns_owed {
            self.send_shutdowns();
        }
        if let Phase::Draining { deadline } = self.phase {
            self.progress_shutdown(deadline, now);
        }
    }
}
