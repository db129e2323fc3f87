//! The worker's event loop: receive fds from the master, serve them, report.
//!
//! `MASTER` is the channel to the master, `SIGNALS` carries SIGINT/SIGTERM,
//! and every connection that could not be finished at once has a token
//! derived from its slab key. A received fd is made close-on-exec by the
//! transport (`MSG_CMSG_CLOEXEC`); it is read and written with
//! `MSG_DONTWAIT` ([`ConnSocket`]), so whatever non-blocking flag the master
//! left on the shared file description, the worker never blocks on it.
//!
//! Finished connections are counted as the master's `Welcome` said
//! ([`Reporting`]): as running totals in counters shared with the master,
//! which it reads when it wants (plus a `Freed` wake-up per turn for a worker
//! with a capacity), so the master is never woken once per connection;
//! or (`--salvage exact`) by id once per loop turn, when the master keeps
//! its own copy of each fd until the report, and a packet whose fd did not
//! arrive is reported `NotReceived` so the master hands it to another
//! worker. Every connection has a deadline
//! (`--read-timeout`) from the hand-off. When the master says `Shutdown` or
//! goes away, the worker drains: it finishes the requests in progress, takes
//! no new request on a keep-alive connection (the last response says
//! `Connection: close`, an idle connection is closed at once), and exits
//! when it holds nothing.
//!
//! Near its open-file limit ([`FdRoom`]) the worker tells the master
//! `OutOfFds`, receives only while a whole packet's fds fit (with
//! `--salvage exact` it goes on receiving: a packet cut short is reported
//! `NotReceived` and the master, which kept a copy, hands it to another
//! worker), pauses its own listener, and says `RoomForFds` once it has
//! room again. Signals other than SIGINT/SIGTERM are logged as not used.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use handoff_fdpass::{monotonic_ns, Channel, Received, RecvError, SharedCounters, COUNTER_SLOTS};
use handoff_proto::{
    codec, Completion, Dispatch, Finished, ListenMode, MasterToWorker, Outcome, Reporting, Totals,
    WorkerToMaster, MAX_COMPLETIONS_PER_REPORT, MAX_FRAME_LEN, SELF_ACCEPTED,
};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::libc;
use signal_hook::consts::{SIGINT, SIGTERM};
use slab::Slab;
use tracing::{debug, info, info_span, warn};

use crate::channel_watch::{blocking_budget, Change, ChannelWatch, RecvTimeout};
use crate::cli::Args;
use crate::conn::{Outcome as ConnOutcome, Progress, Work};
use crate::fd_room::FdRoom;
use crate::protocol::{Conn, Protocol};
use crate::registration::{register, Registration};
use crate::socket::ConnSocket;
use crate::stats::Recorder;

const MASTER: Token = Token(0);
const SIGNALS: Token = Token(1);
const LISTENER: Token = Token(2);
const FIRST_CONN_TOKEN: usize = 3;

/// Shared mode: connections accepted per wake-up of the (level-triggered,
/// exclusive) shared listener, so one busy worker does not take them all.
const SHARED_ACCEPT_BURST: usize = 16;

/// When a report finds the channel full, the next try comes this much later.
const REPORT_RETRY: Duration = Duration::from_millis(10);

fn conn_token(key: usize) -> Token {
    Token(key + FIRST_CONN_TOKEN)
}

fn conn_key(token: Token) -> Option<usize> {
    token.0.checked_sub(FIRST_CONN_TOKEN)
}

/// Every signal a worker catches: SIGINT and SIGTERM (leave), and every
/// other one an operator might send whose default action would end it,
/// logged as not used. (SIGQUIT keeps its default: quit now.)
fn handled_signals() -> Vec<i32> {
    let mut signals = vec![SIGINT, SIGTERM, libc::SIGHUP];
    signals.extend(handoff_fdpass::signals_ending_a_process_by_default());
    signals
}

/// Registers with the master and serves until told to stop.
/// Context for an error that ended the worker after it registered (it
/// exits 70, EX_SOFTWARE, rather than 69 for a failure to start).
#[derive(Debug)]
pub struct Serving;

impl std::fmt::Display for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed while serving")
    }
}

pub fn run(args: Args) -> Result<()> {
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        handoff_proto::default_run_dir(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            nix::unistd::geteuid().as_raw(),
        )
    });
    let socket_path = run_dir.join(handoff_proto::WORKERS_SOCKET_NAME);
    // Before registering: once the master has logged our pid, an operator
    // (or a test) may signal us, and a signal without its handler yet would
    // take the default action (SIGUSR2 killed a worker that had just
    // registered).
    let signals = signal_hook_mio::v1_0::Signals::new(handled_signals())
        .context("installing signal handlers")?;
    // Beside the pipe epoll reads: a flag the loop can look at without a
    // system call before it blocks in `recvmsg` (crate::channel_watch).
    let signal_arrived = Arc::new(AtomicBool::new(false));
    for signal in handled_signals() {
        signal_hook::flag::register(signal, Arc::clone(&signal_arrived))
            .context("installing signal handlers")?;
    }
    raise_fd_limit();
    if args.scheduling == "batch" {
        if let Err(err) = handoff_fdpass::schedule_as_batch() {
            warn!(%err, "cannot switch to SCHED_BATCH; going on as started");
        }
    }
    let Registration { chan, counters, worker_id, reporting, max_fds_per_packet } =
        register(&socket_path, args.max_conns, args.protocol.to_wire())?;
    let span = info_span!("worker", id = worker_id, pid = std::process::id());
    let _entered = span.enter();
    info!(
        master = %socket_path.display(),
        read_timeout = ?args.read_timeout,
        max_conns = args.max_conns,
        protocol = ?args.protocol,
        work_us = args.work_us,
        delay_ms = args.delay_ms,
        ?reporting,
        "registered"
    );
    let worker = Worker::new(
        chan,
        counters,
        (signals, signal_arrived),
        reporting,
        max_fds_per_packet,
        &args,
    )?;
    if !worker.fd_room.usable() {
        anyhow::bail!(
            "the open-file limit ({}) leaves no room for a single connection; raise it \
             (`ulimit -n`){}",
            worker.fd_room.limit(),
            if max_fds_per_packet > 1 { " or lower the master's --batch" } else { "" }
        );
    }
    worker.run().map_err(|err| err.context(Serving))
}

/// Raises this process's soft limit of open files to its hard limit: a
/// worker holds one fd per connection it serves, and the common soft limit
/// of 1024 would cap it there (nginx's `worker_rlimit_nofile`, done for
/// every worker).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => warn!(%err, soft, hard, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(err) => warn!(%err, "cannot read the open-file limit"),
    }
}

/// Where the worker stands with its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterLink {
    /// Receiving connections.
    Open,
    /// We asked to leave; the master will end the channel with `Shutdown`.
    Leaving,
    /// `Shutdown` received: no more fds will come; the channel stays open
    /// for the last report.
    ShutdownReceived,
    /// The channel is closed.
    Gone,
}

/// A listener this worker accepts on itself.
struct OwnListener {
    listener: mio::net::TcpListener,
    /// `Shared`: the master's socket, watched with EPOLLEXCLUSIVE
    /// (level-triggered). `ReusePort`: our own, watched edge-triggered.
    shared: bool,
}

/// Our slot in the master's kernel balancer (`Listen(Balanced)`): the
/// load the program reads, which we release as connections finish and
/// reconcile now and then with what we really hold and have queued.
struct KernelLoad {
    table: handoff_fdpass::reuseport::LoadTable,
    slot: u32,
    next_reconcile_at: Instant,
}

/// How often a worker beats in the kernel balancer's table (a worker that
/// stops beating is taken for stopped or hung) and sets its kernel load to
/// what it really has: the drift this corrects (handshakes that never
/// completed, connections the kernel's hash placed) is rare, so this is no
/// hot path.
const RECONCILE_EVERY: Duration =
    Duration::from_millis(handoff_fdpass::reuseport::HEARTBEAT_EVERY_MS);

/// How long a worker leaving the kernel balancer waits between being
/// withdrawn (no SYN picks it any more) and closing its listener: SYNs the
/// program placed just before finish their handshake well within it.
const WITHDRAW_GRACE: Duration = Duration::from_millis(10);

struct Worker {
    poll: Poll,
    own_listener: Option<OwnListener>,
    kernel_load: Option<KernelLoad>,
    /// Connections accepted on `own_listener`.
    accepted_self: u64,
    /// How those ended, reported in the stats.
    self_accepted_done: Totals,
    chan: Channel,
    /// Whether `chan` is in epoll or read every turn (a busy worker).
    channel_watch: ChannelWatch,
    /// epoll refused the last change of `channel_watch` (logged once).
    channel_watch_refused: bool,
    /// `poll(2)` found the channel readable (it is out of epoll): read it
    /// at the end of this turn.
    channel_ready: bool,
    /// The channel's `SO_RCVTIMEO`, for the blocking `recvmsg` of a worker
    /// that holds nothing.
    recv_timeout: RecvTimeout,
    link: MasterLink,
    signals: signal_hook_mio::v1_0::Signals,
    /// Set by the handler of every signal in `signals`, cleared when they
    /// are read: a signal may be waiting, so do not block in `recvmsg`.
    signal_arrived: Arc<AtomicBool>,
    /// Sends wait for room (the last report, on the way out); otherwise a
    /// full channel is retried later.
    sends_wait: bool,
    conns: Slab<Conn>,
    /// Streams of the connections in `conns`, same keys; kept apart so a
    /// `Conn` can be driven while its stream is borrowed.
    streams: Slab<ConnSocket>,
    /// Connection deadlines in the order they were set (one timeout for
    /// all, so the queue is sorted): (deadline, slab key, conn id). A
    /// keep-alive connection's deadline moves on with each request; its
    /// older entries are skipped.
    deadlines: VecDeque<(Instant, usize, u64)>,
    read_timeout: Duration,
    /// Connections waiting out a simulated delay, sorted the same way.
    wakeups: VecDeque<(Instant, usize, u64)>,
    /// No more connections will come (`Shutdown`, or the master is gone):
    /// keep-alive connections get no request after the one in progress.
    draining: bool,
    work: Work,
    protocol: Protocol,
    /// `--proxy-protocol`.
    proxy_protocol: bool,
    /// How the master wants finished connections reported.
    reporting: Reporting,
    /// Handed-off connections finished, running totals (not with
    /// [`Reporting::EachConnection`]), mirrored in `counters`.
    handed_done: Totals,
    /// `handed_done` when the master was last told (`Freed`).
    handed_done_told: Totals,
    /// Memory the master reads our running totals from.
    counters: SharedCounters,
    /// Completions not yet reported by id (capacity reused across reports).
    unreported: Vec<Completion>,
    /// The report could not be sent: retry by then.
    report_retry_at: Option<Instant>,
    /// The master's channel was full at the last send (logged once per
    /// episode: a stopped or overloaded master).
    channel_full: bool,
    recorder: Recorder,
    report_interval: Duration,
    next_stats_at: Instant,
    /// The master asked for a stats report.
    stats_requested: bool,
    frame_buf: Box<[u8; MAX_FRAME_LEN]>,
    out_buf: Box<[u8; MAX_FRAME_LEN]>,
    fds: Vec<OwnedFd>,
    /// How many more fds it can take, and what the master was told.
    fd_room: FdRoom,
    /// Not reading the master's channel until there is room for a packet's
    /// fds (`--salvage queued`).
    receive_paused: bool,
    /// Not accepting on its own listener until there is room.
    accept_paused: bool,
    /// Packets that arrived cut short (fds closed by the kernel) since the
    /// last warning about them.
    fds_lost: u64,
}

impl Worker {
    fn new(
        chan: Channel,
        counters: SharedCounters,
        (mut signals, signal_arrived): (signal_hook_mio::v1_0::Signals, Arc<AtomicBool>),
        reporting: Reporting,
        max_fds_per_packet: u32,
        args: &Args,
    ) -> Result<Worker> {
        let poll = Poll::new().context("creating the poll instance")?;
        // Blocking, so that a worker holding nothing can sleep in `recvmsg`
        // on it; every other receive and every send says `MSG_DONTWAIT`.
        chan.set_nonblocking(false).context("making the channel blocking")?;
        poll.registry()
            .register(&mut SourceFd(&chan.as_raw_fd()), MASTER, Interest::READABLE)
            .context("registering the master channel")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .context("registering signals")?;
        Ok(Worker {
            poll,
            own_listener: None,
            kernel_load: None,
            accepted_self: 0,
            self_accepted_done: Totals::default(),
            chan,
            channel_watch: ChannelWatch::new(),
            channel_watch_refused: false,
            channel_ready: false,
            recv_timeout: RecvTimeout::default(),
            link: MasterLink::Open,
            signals,
            signal_arrived,
            sends_wait: false,
            conns: Slab::with_capacity(256),
            streams: Slab::with_capacity(256),
            deadlines: VecDeque::with_capacity(256),
            read_timeout: args.read_timeout,
            wakeups: VecDeque::new(),
            draining: false,
            work: args.work(),
            protocol: args.protocol,
            proxy_protocol: args.proxy_protocol,
            reporting,
            handed_done: Totals::default(),
            handed_done_told: Totals::default(),
            counters,
            unreported: Vec::with_capacity(MAX_COMPLETIONS_PER_REPORT),
            report_retry_at: None,
            channel_full: false,
            recorder: Recorder::new().context("creating latency histograms")?,
            report_interval: args.report_interval,
            // The first report goes out at once, so the master has numbers.
            next_stats_at: Instant::now(),
            stats_requested: false,
            frame_buf: Box::new([0; MAX_FRAME_LEN]),
            out_buf: Box::new([0; MAX_FRAME_LEN]),
            fds: Vec::with_capacity(4),
            // Counted last, with everything above open.
            fd_room: FdRoom::measure(max_fds_per_packet),
            receive_paused: false,
            accept_paused: false,
            fds_lost: 0,
        })
    }

    /// Fds held for connections and our own listener (the variable part of
    /// what is open).
    fn fds_held(&self) -> usize {
        self.streams.len() + usize::from(self.own_listener.is_some())
    }

    /// Tells the master if we ran out of fds or have room again (state
    /// changes only, with hysteresis).
    fn tell_fd_room(&mut self) {
        if self.link == MasterLink::Gone {
            return;
        }
        let held = self.fds_held();
        let Some(out) = self.fd_room.news(held) else { return };
        let msg = if out { WorkerToMaster::OutOfFds } else { WorkerToMaster::RoomForFds };
        match self.send(&msg) {
            Ok(()) => {
                self.fd_room.told(out);
                let (limit, lost) = (self.fd_room.limit(), std::mem::take(&mut self.fds_lost));
                if out {
                    info!(
                        held,
                        limit, lost, "close to the open-file limit: asked for no more connections"
                    );
                } else {
                    info!(held, limit, "room for connections again");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.report_retry_at.get_or_insert(Instant::now() + REPORT_RETRY);
            }
            Err(err) => {
                warn!(%err, "cannot report to the master");
                self.link = MasterLink::Gone;
            }
        }
    }

    /// End of a loop turn: takes the master's channel out of epoll while the
    /// master runs ahead of us, and puts it back once it is drained
    /// ([`ChannelWatch`]).
    fn update_channel_watch(&mut self) {
        let can_read =
            matches!(self.link, MasterLink::Open | MasterLink::Leaving) && !self.receive_paused;
        let idle = self.conns.is_empty() && self.own_listener.is_none();
        let Some(change) = self.channel_watch.end_of_turn(can_read, idle) else { return };
        let fd = self.chan.as_raw_fd();
        let registry = self.poll.registry();
        let applied = match change {
            Change::Unwatch => registry.deregister(&mut SourceFd(&fd)),
            Change::Watch => registry.register(&mut SourceFd(&fd), MASTER, Interest::READABLE),
        };
        match applied {
            Ok(()) => {
                self.channel_watch_refused = false;
                match change {
                    Change::Unwatch => {
                        debug!("channel out of epoll: waiting on it in recvmsg or poll")
                    }
                    Change::Watch => debug!("channel back in epoll"),
                }
            }
            Err(err) => {
                // Tried again next turn; meanwhile the channel is read as
                // before. Said once per episode.
                if !self.channel_watch_refused {
                    warn!(%err, ?change, "cannot change how the master's channel is watched");
                }
                self.channel_watch_refused = true;
                self.channel_watch.revert();
            }
        }
    }

    /// End of a loop turn: tells the master about our fds, and resumes
    /// receiving and accepting once there is room.
    fn check_fd_room(&mut self) {
        self.tell_fd_room();
        let held = self.fds_held();
        if self.receive_paused && self.fd_room.can_receive(held) {
            self.receive_paused = false;
            self.read_master();
        }
        if self.accept_paused && self.fd_room.can_resume_accepting(self.fds_held()) {
            self.resume_accepting();
        }
    }

    /// Stops accepting on our own listener until there is room. A shared
    /// listener is level-triggered: it leaves epoll meanwhile, or the loop
    /// would spin on it.
    fn pause_accepting(&mut self) {
        let Some(own) = &self.own_listener else { return };
        if self.accept_paused {
            return;
        }
        if own.shared {
            let _ = handoff_fdpass::epoll_delete(self.poll.as_raw_fd(), own.listener.as_fd());
        }
        self.accept_paused = true;
        debug!(held = self.conns.len(), "out of fds: stopped accepting for now");
    }

    fn resume_accepting(&mut self) {
        self.accept_paused = false;
        let Some(own) = &self.own_listener else { return };
        if own.shared {
            let added = handoff_fdpass::epoll_add_exclusive(
                self.poll.as_raw_fd(),
                own.listener.as_fd(),
                LISTENER.0,
            );
            if let Err(err) = added {
                warn!(%err, "cannot watch the shared listener again");
                return;
            }
        }
        debug!("room again: accepting");
        // Edge-triggered (reuseport): what waits is not reported again.
        self.accept_own();
    }

    fn run(mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        // The master may have sent connections before we registered the
        // channel with epoll: read what is already there.
        self.read_master();
        loop {
            if !self.draining
                && matches!(self.link, MasterLink::ShutdownReceived | MasterLink::Gone)
            {
                self.drain();
            }
            if self.done() {
                break;
            }
            let timeout = self.poll_timeout();
            if let Some(kernel) = &self.kernel_load {
                kernel.table.fall_asleep(kernel.slot);
            }
            let polled = self.wait(&mut events, timeout);
            if let Some(kernel) = &self.kernel_load {
                kernel.table.wake_up(kernel.slot);
            }
            if let Err(err) = polled {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("polling");
            }
            for event in events.iter() {
                match event.token() {
                    MASTER => self.read_master(),
                    LISTENER => self.accept_own(),
                    SIGNALS => {
                        if self.handle_signals() {
                            warn!(held = self.conns.len(), "second stop signal: exiting now");
                            return Ok(());
                        }
                    }
                    token => {
                        if let Some(key) = conn_key(token) {
                            self.drive(key);
                        }
                    }
                }
            }
            if std::mem::take(&mut self.channel_ready) {
                self.read_master();
            }
            self.wake_delayed();
            self.expire_deadlines();
            self.reconcile_kernel_load();
            self.report();
            self.check_fd_room();
            self.update_channel_watch();
        }
        self.report_final();
        info!("exiting");
        Ok(())
    }

    /// Sleeps until an event or `timeout`: in `epoll_wait` while the
    /// channel is registered, else in `poll(2)` on the channel and the
    /// epoll instance (see [`crate::channel_watch`]), collecting epoll's
    /// events only if it has some.
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        if self.channel_watch.watched() {
            return self.poll.poll(events, timeout);
        }
        if let Some(budget) = self.may_block_in_recv(timeout) {
            return self.wait_in_recv(events, budget);
        }
        let (channel_ready, epoll_ready) = handoff_fdpass::wait_socket_or_epoll(
            self.chan.as_fd(),
            self.poll.as_raw_fd(),
            timeout,
        )?;
        self.channel_ready = channel_ready;
        if epoll_ready {
            self.poll.poll(events, Some(Duration::ZERO))
        } else {
            events.clear();
            Ok(())
        }
    }

    /// How long the loop may sleep in a blocking `recvmsg` on the channel
    /// (see [`crate::channel_watch`]), if it may: it holds nothing whose
    /// events come through epoll, no signal waits to be read, and it reads
    /// the channel at all.
    fn may_block_in_recv(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        let idle = self.conns.is_empty() && self.own_listener.is_none();
        if !idle || self.signal_arrived.load(Ordering::Relaxed) || !self.ready_to_receive() {
            return None;
        }
        blocking_budget(timeout)
    }

    /// Sleeps in `recvmsg` on the channel for at most `budget`, and takes
    /// the packet it returns. A signal ends the wait: epoll then says which.
    fn wait_in_recv(&mut self, events: &mut Events, budget: Duration) -> io::Result<()> {
        events.clear();
        if let Some(timeout) = self.recv_timeout.change_for(budget) {
            if let Err(err) = self.chan.set_read_timeout(timeout) {
                self.recv_timeout.forget();
                return Err(err);
            }
        }
        self.fds.clear();
        let received = self.chan.recv(&mut self.frame_buf[..], &mut self.fds);
        match received {
            Err(err) if err.is_interrupted() => self.poll.poll(events, Some(Duration::ZERO)),
            received => {
                self.take_packet(received);
                Ok(())
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let stats = (self.link != MasterLink::Gone).then_some(self.next_stats_at);
        let deadline = self.deadlines.front().map(|&(at, _, _)| at);
        let wakeup = self.wakeups.front().map(|&(at, _, _)| at);
        let reconcile = self
            .kernel_load
            .as_ref()
            .filter(|_| self.own_listener.is_some())
            .map(|kernel| kernel.next_reconcile_at);
        [stats, deadline, wakeup, self.report_retry_at, reconcile]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    /// No more connections will come: ends keep-alive. Connections idle
    /// between requests are closed after a short grace (a request on its
    /// way is answered, with `Connection: close`); a request in progress is answered
    /// (with `Connection: close`), then its connection closed; one that has
    /// not sent its first request keeps its deadline.
    fn drain(&mut self) {
        self.draining = true;
        let held = self.conns.len();
        let idle: Vec<usize> =
            self.conns.iter_mut().filter_map(|(key, conn)| conn.drain().then_some(key)).collect();
        let mut closed = 0;
        let idle_count = idle.len();
        for key in idle {
            if self.drive(key) {
                closed += 1;
            }
        }
        if held > 0 {
            info!(
                held,
                idle_closed = closed,
                idle_kept = idle_count - closed,
                "draining: no new requests on held connections"
            );
        }
    }

    fn done(&self) -> bool {
        matches!(self.link, MasterLink::ShutdownReceived | MasterLink::Gone)
            && self.conns.is_empty()
    }

    /// Reads the channel until it is empty (or reading must stop).
    fn read_master(&mut self) {
        while self.ready_to_receive() {
            self.fds.clear();
            let received = self.chan.recv_nowait(&mut self.frame_buf[..], &mut self.fds);
            if !self.take_packet(received) {
                return;
            }
        }
    }

    /// Whether to read the channel now: the link is open and a packet's
    /// fds fit. Tells the master about our room first.
    fn ready_to_receive(&mut self) -> bool {
        if !matches!(self.link, MasterLink::Open | MasterLink::Leaving) {
            return false;
        }
        self.tell_fd_room();
        if self.reporting != Reporting::EachConnection && !self.fd_room.can_receive(self.fds_held())
        {
            // What the master sent stays queued (it may take it back)
            // until connections finish and free fds.
            self.receive_paused = true;
            return false;
        }
        true
    }

    /// Acts on what one receive from the channel returned; false when
    /// there is nothing more to read now (empty, closed).
    fn take_packet(&mut self, received: Result<Received, RecvError>) -> bool {
        if matches!(received, Ok(Received::Packet(_)) | Err(RecvError::FdsTruncated { .. })) {
            self.channel_watch.packet_read();
        }
        let (len, fds_lost) = match received {
            Ok(Received::Packet(len)) => (len, false),
            Ok(Received::Closed) => {
                info!(held = self.conns.len(), "master went away: finishing held connections");
                self.stop_listening();
                self.link = MasterLink::Gone;
                return false;
            }
            // Empty, or (blocked in `recvmsg`) its timeout passed.
            Err(err) if err.is_would_block() => return false,
            // Its fds were closed, but the bytes are intact: say which
            // connection did not arrive so the master re-sends it. We
            // had less room than we thought: count again.
            Err(RecvError::FdsTruncated { len }) => {
                self.fds_lost += 1;
                self.fd_room.recount(self.fds_held());
                (len, true)
            }
            Err(err) => {
                warn!(%err, "bad packet from the master");
                return true;
            }
        };
        match codec::decode::<MasterToWorker>(&self.frame_buf[..len]) {
            Ok(MasterToWorker::Connection(dispatch)) => {
                match (fds_lost, self.fds.len(), self.fds.pop()) {
                    (false, 1, Some(fd)) => self.start(dispatch, fd),
                    (_, n_fds, _) => {
                        if fds_lost {
                            // Out of fds: said once, by `tell_fd_room`.
                            debug!(conn_id = dispatch.conn_id, "hand-off cut short");
                        } else {
                            warn!(
                                conn_id = dispatch.conn_id,
                                n_fds, "hand-off without exactly one fd"
                            );
                        }
                        self.fds.clear();
                        self.complete(dispatch.conn_id, Outcome::NotReceived, 0, 0);
                    }
                }
            }
            Ok(MasterToWorker::Batch(dispatches)) => {
                if fds_lost || dispatches.len() != self.fds.len() {
                    if fds_lost {
                        debug!(n_headers = dispatches.len(), "batch cut short");
                    } else {
                        warn!(
                            n_headers = dispatches.len(),
                            n_fds = self.fds.len(),
                            "batch with the wrong number of fds"
                        );
                    }
                    self.fds.clear();
                    for dispatch in &dispatches {
                        self.complete(dispatch.conn_id, Outcome::NotReceived, 0, 0);
                    }
                    return true;
                }
                let mut fds = std::mem::take(&mut self.fds);
                for (dispatch, fd) in dispatches.into_iter().zip(fds.drain(..)) {
                    self.start(dispatch, fd);
                }
                // Give the vector back, keeping its capacity.
                self.fds = fds;
            }
            Ok(MasterToWorker::ReportStats) => self.stats_requested = true,
            Ok(MasterToWorker::Listen(mode)) => {
                let mut fds = std::mem::take(&mut self.fds).into_iter();
                let (fd, table) = (fds.next(), fds.next());
                if let Err(err) = self.listen(mode, fd, table) {
                    warn!("cannot accept for myself: {err:#}");
                }
            }
            Ok(MasterToWorker::StopAccepting) => {
                self.stop_listening();
                if let Err(err) = self.send(&WorkerToMaster::StoppedAccepting) {
                    warn!(%err, "cannot confirm that we stopped accepting");
                }
            }
            Ok(MasterToWorker::Shutdown) => {
                info!(held = self.conns.len(), "master asked us to finish and exit");
                self.stop_listening();
                self.link = MasterLink::ShutdownReceived;
            }
            Ok(other) => warn!(msg = ?other, "unexpected message from the master"),
            Err(err) => warn!(%err, len, "malformed frame from the master"),
        }
        true
    }

    /// Starts accepting for ourselves (`--mode shared` or `reuseport`).
    fn listen(
        &mut self,
        mode: ListenMode,
        fd: Option<OwnedFd>,
        table: Option<OwnedFd>,
    ) -> Result<()> {
        self.stop_listening();
        let (std_listener, shared) = match mode {
            ListenMode::Shared => {
                let fd = fd.context("Listen(Shared) came without the listening socket")?;
                (std::net::TcpListener::from(fd), true)
            }
            ListenMode::Balanced { slot } => {
                let fd = fd.context("Listen(Balanced) came without the listening socket")?;
                let table = table.context("Listen(Balanced) came without the load table")?;
                let table = handoff_fdpass::reuseport::LoadTable::open(table)
                    .context("mapping the kernel balancer's load table")?;
                self.kernel_load =
                    Some(KernelLoad { table, slot, next_reconcile_at: Instant::now() });
                (std::net::TcpListener::from(fd), false)
            }
            ListenMode::ReusePort { addr, backlog } => {
                let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
                let fd = handoff_fdpass::bind_tcp(addr, Some(backlog), true)
                    .with_context(|| format!("binding {addr} with SO_REUSEPORT"))?;
                (std::net::TcpListener::from(fd), false)
            }
        };
        std_listener.set_nonblocking(true).context("making the listener non-blocking")?;
        let mut listener = mio::net::TcpListener::from_std(std_listener);
        if shared {
            handoff_fdpass::epoll_add_exclusive(
                self.poll.as_raw_fd(),
                listener.as_fd(),
                LISTENER.0,
            )
            .context("watching the shared listener with EPOLLEXCLUSIVE")?;
        } else {
            self.poll
                .registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
                .context("watching our listener")?;
        }
        info!(shared, "accepting connections myself");
        self.own_listener = Some(OwnListener { listener, shared });
        // Connections may already be queued.
        self.accept_own();
        Ok(())
    }

    /// Accepts on our own listener: a burst on the shared (level-triggered)
    /// one, until EAGAIN on a reuseport (edge-triggered) one.
    fn accept_own(&mut self) {
        let mut accepted = 0;
        loop {
            let Some(own) = &self.own_listener else { return };
            if own.shared && accepted >= SHARED_ACCEPT_BURST {
                return;
            }
            if !self.fd_room.can_accept(self.fds_held()) {
                self.pause_accepting();
                return;
            }
            match own.listener.accept() {
                Ok((stream, _)) => {
                    accepted += 1;
                    self.accepted_self += 1;
                    let dispatch = Dispatch {
                        conn_id: SELF_ACCEPTED,
                        accepted_at_ns: monotonic_ns(),
                        redispatches: 0,
                    };
                    self.start(dispatch, OwnedFd::from(stream));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Fewer fds than we thought: count again, and wait for
                    // room (`check_fd_room` resumes).
                    self.fd_room.recount(self.fds_held());
                    warn!(%err, "out of fds: accepting again once connections finish");
                    self.pause_accepting();
                    return;
                }
                // One client gave up before we took it.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(err) => {
                    warn!(%err, "accept failed");
                    return;
                }
            }
        }
    }

    /// Beats, and sets our kernel load to what we hold of our own connections plus
    /// what waits in our listener's queue, unless the program reserved
    /// meanwhile (then the next turn tries again). A stopped worker never
    /// gets here, so its reservations keep it looking busy.
    fn reconcile_kernel_load(&mut self) {
        let (Some(kernel), Some(own)) = (&mut self.kernel_load, &self.own_listener) else {
            return;
        };
        let now = Instant::now();
        if now < kernel.next_reconcile_at {
            return;
        }
        kernel.next_reconcile_at = now + RECONCILE_EVERY;
        kernel.table.beat(kernel.slot);
        let before = kernel.table.load(kernel.slot);
        let Ok(queued) = handoff_fdpass::reuseport::listen_queue_len(own.listener.as_fd()) else {
            return;
        };
        let held = self.accepted_self.saturating_sub(self.self_accepted_done.total());
        let observed = i64::try_from(held).unwrap_or(i64::MAX).saturating_add(i64::from(queued));
        if before != observed && kernel.table.reconcile(kernel.slot, before, observed) {
            debug!(before, observed, "kernel load reconciled");
        }
    }

    /// Closes our own listener. A reuseport listener is drained first: what
    /// is queued on it would be reset by the close (unless the kernel's
    /// net.ipv4.tcp_migrate_req=1 moves it to another listener).
    fn stop_listening(&mut self) {
        let Some(own) = &self.own_listener else { return };
        if let Some(kernel) = &self.kernel_load {
            // The kernel balancer: stop being chosen first, and give the
            // handshakes it already sent here a moment to land in the
            // queue, which we then drain (or which the kernel moves to
            // another listener at the close). A connection chosen for a
            // listener in the middle of its close is reset otherwise.
            kernel.table.withdraw(kernel.slot);
            std::thread::sleep(WITHDRAW_GRACE);
        }
        if !own.shared {
            self.accept_own();
        }
        let Some(mut own) = self.own_listener.take() else { return };
        if own.shared {
            let _ = handoff_fdpass::epoll_delete(self.poll.as_raw_fd(), own.listener.as_fd());
        } else {
            let _ = self.poll.registry().deregister(&mut own.listener);
        }
        info!(accepted = self.accepted_self, "stopped accepting");
    }

    /// Takes ownership of a handed-off connection and serves as much of it as
    /// the socket allows right now; only a connection that must wait is
    /// registered with epoll.
    fn start(&mut self, dispatch: Dispatch, fd: OwnedFd) {
        let received_at_ns = monotonic_ns();
        self.recorder.record_handoff(dispatch.accepted_at_ns, received_at_ns);
        let key = self.conns.insert(Conn::new(
            dispatch,
            received_at_ns,
            self.protocol,
            self.proxy_protocol,
        ));
        let stream_key = self.streams.insert(ConnSocket::new(fd));
        debug_assert_eq!(key, stream_key);
        if self.draining {
            // Not expected (nothing is received or accepted once draining),
            // but such a connection must not stay open for more requests.
            self.conns[key].drain();
        }
        if self.drive(key) {
            return;
        }
        let registered = self.poll.registry().register(
            &mut SourceFd(&self.streams[key].as_raw_fd()),
            conn_token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => self.set_deadline(key),
            Err(err) => {
                warn!(conn_id = dispatch.conn_id, %err, "cannot watch a connection");
                self.finish(key, ConnOutcome::Failed);
            }
        }
    }

    fn set_deadline(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let deadline = Instant::now() + self.read_timeout;
            conn.deadline = Some(deadline);
            self.deadlines.push_back((deadline, key, conn.dispatch.conn_id));
        }
    }

    /// Drives one connection; returns true if it finished (and was closed).
    fn drive(&mut self, key: usize) -> bool {
        let (Some(conn), Some(stream)) = (self.conns.get_mut(key), self.streams.get_mut(key))
        else {
            return false;
        };
        let progress = conn.drive(stream, &self.work);
        let active = conn.take_activity() && conn.deadline.is_some();
        let conn_id = conn.dispatch.conn_id;
        match progress {
            Progress::Done(outcome) => {
                self.finish(key, outcome);
                true
            }
            Progress::WaitIo => {
                if active {
                    self.set_deadline(key);
                }
                false
            }
            Progress::WaitUntil(at) => {
                // Kept sorted: a drain's grace may end before a simulated
                // delay queued earlier.
                let pos = self.wakeups.partition_point(|&(t, _, _)| t <= at);
                self.wakeups.insert(pos, (at, key, conn_id));
                false
            }
        }
    }

    /// Drives connections whose simulated delay is over.
    fn wake_delayed(&mut self) {
        let now = Instant::now();
        while let Some(&(at, key, conn_id)) = self.wakeups.front() {
            if at > now {
                break;
            }
            self.wakeups.pop_front();
            if self.conns.get(key).is_some_and(|c| c.dispatch.conn_id == conn_id) {
                self.drive(key);
            }
        }
    }

    /// Closes connections whose deadline passed. Entries of connections that
    /// already finished are skipped (their slab key is gone or reused by a
    /// connection with another id).
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, key, conn_id)) = self.deadlines.front() {
            let current = self
                .conns
                .get(key)
                .filter(|c| c.dispatch.conn_id == conn_id)
                .and_then(|c| c.deadline);
            if current.is_some_and(|at| at == deadline) && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // Only the connection's latest deadline counts.
            if current.is_some_and(|at| at == deadline) {
                debug!(conn_id, "read timeout");
                self.finish_with(key, Outcome::TimedOut, 0, 0);
            }
        }
    }

    fn finish(&mut self, key: usize, outcome: ConnOutcome) {
        match outcome {
            ConnOutcome::Served { bytes_in, bytes_out } => {
                self.finish_with(key, Outcome::Served, bytes_in, bytes_out)
            }
            ConnOutcome::Reset => self.finish_with(key, Outcome::Reset, 0, 0),
            ConnOutcome::HealthCheck => self.finish_with(key, Outcome::HealthCheck, 0, 0),
            ConnOutcome::Failed => self.finish_with(key, Outcome::Failed, 0, 0),
        }
    }

    fn finish_with(&mut self, key: usize, outcome: Outcome, bytes_in: usize, bytes_out: usize) {
        let conn = self.conns.remove(key);
        let stream = self.streams.remove(key);
        let conn_id = conn.dispatch.conn_id;
        // Counted before the close: if this worker is killed now, the master
        // reads a count that includes the reply already written.
        if conn_id == SELF_ACCEPTED {
            if let Some(kernel) = &self.kernel_load {
                kernel.table.release(kernel.slot);
            }
            // Counted in the stats reports, not one by one: the master never
            // saw this connection.
            self.self_accepted_done.add(&Completion {
                conn_id,
                outcome,
                bytes_in: u32::try_from(bytes_in).unwrap_or(u32::MAX),
                bytes_out: u32::try_from(bytes_out).unwrap_or(u32::MAX),
            });
        } else {
            self.complete(conn_id, outcome, bytes_in, bytes_out);
        }
        if outcome == Outcome::Served && conn_id != SELF_ACCEPTED {
            // The master may still hold its copy, so our close might not end
            // the connection: send the FIN now. With `--salvage exact` it
            // holds it until this completion reaches it. Otherwise it lets
            // go right after the hand-off, but the hand-off woke us, and on
            // a busy machine we often preempt it before its close. Then its
            // close would be the last: the client's EOF would wait for it,
            // and it would pay the TCP teardown (on loopback, the client's
            // wake-up too) on the one process that does not scale out. A
            // connection a worker accepted itself has no other copy.
            let _ = stream.shutdown_write();
        }
        if conn.deadline.is_some() {
            // It was registered (it had to wait). Closing our fd would not
            // remove it from epoll while another process (an `exact`
            // master) still holds the file: deregister first.
            let _ = self.poll.registry().deregister(&mut SourceFd(&stream.as_raw_fd()));
        }
        // The peer is looked up only if the line is logged.
        let peer = || conn.proxied_source().map_or_else(|| stream.peer(), |addr| addr.to_string());
        match outcome {
            Outcome::Served => debug!(conn_id, peer = %peer(), bytes_in, "served"),
            _ => debug!(conn_id, peer = %peer(), ?outcome, "finished without a reply"),
        }
        drop(stream);
        self.recorder.record_handling(conn.received_at_ns, monotonic_ns());
    }

    /// Records how a handed-off connection ended, for the next report.
    fn complete(&mut self, conn_id: u64, outcome: Outcome, bytes_in: usize, bytes_out: usize) {
        let mut completion = Completion {
            conn_id,
            outcome,
            bytes_in: u32::try_from(bytes_in).unwrap_or(u32::MAX),
            bytes_out: u32::try_from(bytes_out).unwrap_or(u32::MAX),
        };
        if self.reporting == Reporting::EachConnection {
            self.unreported.push(completion);
            return;
        }
        // The master no longer holds a copy to send again: a connection
        // whose fd did not arrive is gone, a failure.
        if completion.outcome == Outcome::NotReceived {
            completion.outcome = Outcome::Failed;
        }
        self.handed_done.add(&completion);
        let mut slots = [0; COUNTER_SLOTS];
        slots[..Totals::SLOTS].copy_from_slice(&self.handed_done.to_slots());
        self.counters.store(&slots);
    }

    /// Returns true when asked to stop for the second time.
    fn handle_signals(&mut self) -> bool {
        // Before reading them: one that comes after is flagged again.
        self.signal_arrived.store(false, Ordering::Relaxed);
        let mut second = false;
        let received: Vec<i32> = self.signals.pending().collect();
        for signal in received {
            if signal == libc::SIGPIPE {
                debug!("SIGPIPE ignored: a write to a closed pipe gets EPIPE");
                continue;
            }
            if signal != SIGINT && signal != SIGTERM {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map_or_else(|_| format!("signal {signal}"), |known| known.as_str().to_owned());
                info!(signal = %name, "signal not used by a worker; ignored");
                continue;
            }
            match self.link {
                MasterLink::Open => {
                    info!("stop signal: asking the master for no more connections");
                    self.link = MasterLink::Leaving;
                    if let Err(err) = self.send(&WorkerToMaster::Leaving) {
                        warn!(%err, "cannot tell the master we are leaving; finishing now");
                        self.link = MasterLink::Gone;
                    }
                }
                MasterLink::Leaving | MasterLink::ShutdownReceived | MasterLink::Gone => {
                    second = true;
                }
            }
        }
        second
    }

    /// Sends what is due: the completions of this turn (in frames of at most
    /// [`MAX_COMPLETIONS_PER_REPORT`]) and the stats when due or asked for.
    fn report(&mut self) {
        if self.link == MasterLink::Gone {
            self.unreported.clear();
            return;
        }
        let now = Instant::now();
        if self.report_retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.report_retry_at = None;
        if self.reporting == Reporting::CountersAndWake && self.handed_done != self.handed_done_told
        {
            match self.send(&WorkerToMaster::Freed) {
                Ok(()) => self.handed_done_told = self.handed_done,
                Err(err) => return self.report_failed(&err, now),
            }
        }
        while !self.unreported.is_empty() {
            let n = self.unreported.len().min(MAX_COMPLETIONS_PER_REPORT);
            let rest = self.unreported.split_off(n);
            let batch = std::mem::replace(&mut self.unreported, rest);
            let msg = WorkerToMaster::Finished(Finished { conns: batch });
            let sent = self.send(&msg);
            let mut batch = match msg {
                WorkerToMaster::Finished(finished) => finished.conns,
                _ => Vec::new(),
            };
            match sent {
                Ok(()) => {
                    // Keep the larger buffer for the next turn.
                    if self.unreported.is_empty() {
                        batch.clear();
                        self.unreported = batch;
                    }
                }
                Err(err) => {
                    // Kept for the retry (and dropped if the master is gone).
                    batch.append(&mut self.unreported);
                    self.unreported = batch;
                    return self.report_failed(&err, now);
                }
            }
        }
        if self.stats_requested || now >= self.next_stats_at {
            let mut stats = self.recorder.snapshot(self.conns.len());
            stats.accepted = self.accepted_self;
            stats.self_accepted_done = self.self_accepted_done;
            match self.send(&WorkerToMaster::Stats(stats)) {
                Ok(()) => {
                    self.stats_requested = false;
                    self.next_stats_at = now + self.report_interval;
                }
                Err(err) => self.report_failed(&err, now),
            }
        }
    }

    /// A report could not be sent: a full channel is retried shortly; any
    /// other error means the master is gone.
    fn report_failed(&mut self, err: &io::Error, now: Instant) {
        if err.kind() == io::ErrorKind::WouldBlock {
            if !std::mem::replace(&mut self.channel_full, true) {
                info!("the master's channel is full: reports wait until it reads again");
            }
            self.report_retry_at = Some(now + REPORT_RETRY);
        } else {
            warn!(%err, "cannot report to the master");
            self.link = MasterLink::Gone;
        }
    }

    /// The last report before exiting, waiting for room if the channel is full.
    fn report_final(&mut self) {
        if self.link == MasterLink::Gone {
            return;
        }
        self.sends_wait = true;
        self.stats_requested = true;
        self.report_retry_at = None;
        self.report();
    }

    fn send(&mut self, msg: &WorkerToMaster) -> io::Result<()> {
        let len = codec::encode(msg, &mut self.out_buf[..]).map_err(io::Error::other)?;
        let frame = &self.out_buf[..len];
        if self.sends_wait {
            self.chan.send(frame, &[])?;
        } else {
            self.chan.send_nowait(frame, &[])?;
        }
        if std::mem::take(&mut self.channel_full) {
            info!("the master reads its channel again: reports resume");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for key in [0, 1, 1000] {
            assert_eq!(conn_key(conn_token(key)), Some(key));
        }
        assert_eq!(conn_key(MASTER), None);
        assert_eq!(conn_key(SIGNALS), None);
    }
}
