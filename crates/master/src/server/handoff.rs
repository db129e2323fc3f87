//! The measured path: accept → choose a worker → hand off (`sendmsg` with
//! the fds). No allocation, no logging above debug, no blocking call here.
//!
//! Also what surrounds it when fds run out ([`FdPressure`]): at EMFILE the
//! master stops accepting clients (the kernel's backlog holds them) and
//! resumes as soon as it releases an fd — every hand-off does, with
//! `--salvage queued` — once its reserve of spare fds ([`SpareFds`]) is
//! whole again; a fallback timer covers releases it cannot see (ENFILE).
//! And the queue-full state, logged at most once a second ([`QueueLog`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use handoff_fdpass::monotonic_ns;
use handoff_proto::{codec, Dispatch, MasterToWorker, MAX_BATCH};
use mio::unix::SourceFd;
use mio::Interest;
use tracing::{debug, error, info, warn};

use crate::cli::{Mode, Salvage};
use crate::dispatch::Policy;
use crate::spare::SpareFds;
use crate::workers::{AcceptedConn, WorkerState};

use super::{worker_token, Master, Phase, ACCEPT_BACKOFF, BLOCKED_RETRY, WARN_INTERVAL};

/// What waits for fds, and the reserve kept for the work that frees them.
#[derive(Debug)]
pub(super) struct FdPressure {
    /// Released before registering or spawning a worker and before reading
    /// back a worker's queue; refilled at the end of the loop turn.
    pub spare: SpareFds,
    /// The release mark ([`Master::fd_release_mark`]) when accepting last
    /// stopped for lack of fds: any change means an fd was released.
    pub pause_mark: u64,
    /// The workers' socket hit the fd limit even with the reserve released:
    /// accept there again once fds are released.
    pub worker_accept_owed: bool,
    /// Fds the master closed off the hand-off path (copies of finished
    /// connections, worker slots, connections given up).
    pub released: u64,
}

impl FdPressure {
    pub fn new() -> FdPressure {
        FdPressure { spare: SpareFds::new(), pause_mark: 0, worker_accept_owed: false, released: 0 }
    }
}

/// The queue-full state as last logged, so that a queue filling and
/// draining once per connection (`--policy pull` at `--queue-limit`) logs
/// at most one state change a second, with how often it filled meanwhile.
#[derive(Debug, Default)]
pub(super) struct QueueLog {
    /// The state the log last showed.
    logged_full: bool,
    last_at: Option<Instant>,
    /// Times the queue filled since the last line.
    fills: u64,
}

impl Master {
    pub(super) fn accept_connections(&mut self) {
        if self.queue_full || self.accept_backoff_until.is_some() {
            return;
        }
        if !self.reserve_whole() && self.phase == Phase::Running {
            // The reserve is out for a worker's sake: clients wait until it
            // is back (end of this turn), so they never take its fds.
            self.accept_backoff_until = Some(Instant::now());
            return;
        }
        // Accept until EAGAIN: one failing accept4 per wake-up. (Reading the
        // queue length with TCP_INFO instead cost more system calls, as
        // connections keep arriving while the loop runs: measured, see
        // docs/performance.md.)
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok(fd) => {
                    let accepted_at_ns = monotonic_ns();
                    let conn_id = self.next_conn_id;
                    self.next_conn_id += 1;
                    self.counters.accepted += 1;
                    debug!(conn_id, "accepted");
                    self.pending.push_back(AcceptedConn {
                        fd,
                        header: Dispatch { conn_id, accepted_at_ns, redispatches: 0 },
                    });
                    // Hand off as soon as a batch is ready.
                    if self.pending.len() >= self.batch {
                        self.hand_off_pending();
                    }
                    if self.pending.len() >= self.queue_limit && self.phase == Phase::Running {
                        self.queue_full = true;
                        self.queue_log.fills += 1;
                        self.log_queue_state(Instant::now());
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.counters.accept_errors += 1;
                    if is_resource_exhaustion(&err) {
                        // Until an fd is released (or, for what the master
                        // cannot see released, the fallback timer).
                        self.counters.accept_paused_for_resources += 1;
                        self.accept_backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        self.fds.pause_mark = self.fd_release_mark();
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

    /// Changes whenever the master releases an fd: each hand-off packet
    /// closes the master's copies (`--salvage queued`), and
    /// `fds.released` counts the other closes.
    pub(super) fn fd_release_mark(&self) -> u64 {
        self.counters.packets.wrapping_add(self.fds.released)
    }

    /// May clients be accepted as far as the spare fds go? When the reserve
    /// is whole, or when the master holds no client's fd (then the limit is
    /// just too low for the whole reserve, and there is nothing to protect
    /// it from: waiting would never end).
    fn reserve_whole(&self) -> bool {
        self.fds.spare.is_full()
            || (self.pending.is_empty() && self.workers.iter().all(|(_, w)| w.held.is_empty()))
    }

    /// End of a loop turn: takes back the spare fds, and resumes what
    /// waited for fds — the workers' socket first, then clients — as soon
    /// as one was released (or the fallback timer says to try).
    pub(super) fn recover_fds(&mut self, now: Instant) {
        let released = self.fd_release_mark() != self.fds.pause_mark;
        let timer_due = self.accept_backoff_until.is_some_and(|until| until <= now);
        if self.fds.worker_accept_owed && (released || timer_due) {
            self.fds.worker_accept_owed = false;
            self.accept_workers();
        }
        // (A count, so that the hand-off path's turns scan no worker.)
        if self.dead_queues_owed > 0 && (released || timer_due) {
            self.take_back_owed();
        }
        let mark = self.fd_release_mark();
        if !self.fds.spare.refill(mark, timer_due) && !self.reserve_whole() {
            // Still short: clients keep waiting for a release (or the
            // fallback timer, re-armed so that the loop never spins).
            if released || self.accept_backoff_until.is_none_or(|until| until <= now) {
                self.accept_backoff_until = Some(now + ACCEPT_BACKOFF);
                self.fds.pause_mark = mark;
            }
            return;
        }
        if self.accept_backoff_until.is_some() && (released || timer_due) {
            self.accept_backoff_until = None;
            // (Only the dispatching master accepts clients; in shared and
            // reuseport modes this pause was the workers' socket's.)
            if self.mode == Mode::Dispatch {
                self.accept_connections();
            }
        }
    }

    /// Logs the queue-full state if it changed since the last line and that
    /// line is a second old (called at each change and once a second).
    pub(super) fn log_queue_state(&mut self, now: Instant) {
        let log = &mut self.queue_log;
        if log.logged_full == self.queue_full
            || log.last_at.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL)
        {
            return;
        }
        log.logged_full = self.queue_full;
        log.last_at = Some(now);
        let fills = std::mem::take(&mut log.fills);
        if self.queue_full {
            warn!(
                queued = self.pending.len(),
                workers = self.rotation.len(),
                times = fills,
                "queue full: stopped accepting; the kernel backlog holds new clients"
            );
        } else {
            info!(
                queued = self.pending.len(),
                times_full = fills,
                "queue has room: accepting again"
            );
        }
    }

    pub(super) fn warn_accept(&mut self, err: &io::Error, what: &str) {
        let now = Instant::now();
        if self.last_accept_warning.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL) {
            self.last_accept_warning = Some(now);
            warn!(%err, accept_errors = self.counters.accept_errors, "{what}");
        }
    }

    /// The next worker to get connections, by `--policy`.
    pub(super) fn choose_worker(&mut self) -> Option<usize> {
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
    pub(super) fn hand_off_pending(&mut self) {
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
            self.log_queue_state(Instant::now());
            self.accept_connections();
        }
    }

    /// Sends the oldest queued connections (as many as the batch size and
    /// the worker's free capacity allow) to worker `key` in one packet.
    /// Returns whether they went.
    pub(super) fn send_batch(&mut self, key: usize) -> bool {
        let worker = &self.workers[key];
        let free = match worker.capacity {
            0 => usize::MAX,
            cap => usize::try_from(u64::from(cap).saturating_sub(worker.in_flight()))
                .unwrap_or(usize::MAX),
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
                // Connections, each once: one handed out again (its worker
                // died or ran out of fds first) counts in `redispatched`.
                let first = self.pending.iter().take(n).filter(|c| c.header.redispatches == 0);
                self.counters.dispatched += first.count() as u64;
                self.counters.packets += 1;
                debug!(n, worker = worker.id, "handed off");
                match self.salvage {
                    // Let go: the worker's copy is now usually the last
                    // reference, and the worker sends the FIN itself either
                    // way, so this close is cheap (and a batch's consecutive fds
                    // close in one call). If the worker dies before
                    // receiving them, they are read back from its channel.
                    Salvage::Queued => {
                        handoff_fdpass::close_all(self.pending.drain(..n).map(|conn| conn.fd))
                    }
                    // Keep the copies until the worker reports them
                    // finished, so its death loses nothing it had not
                    // touched (see `salvage`).
                    Salvage::Exact => worker.held.extend(self.pending.drain(..n)),
                }
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if worker.room.full() {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let fd = worker.chan.as_raw_fd();
                    if let Err(err) = self.poll.registry().reregister(
                        &mut SourceFd(&fd),
                        worker_token(key),
                        interest,
                    ) {
                        warn!(worker = worker.id, %err, "cannot watch a full channel; dropping worker");
                        worker.room.unregistered();
                        worker.state = WorkerState::Broken;
                    }
                }
                self.retry_at.get_or_insert_with(|| Instant::now() + BLOCKED_RETRY);
                false
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::ETOOMANYREFS) => {
                // Too many fds in flight for this user: every worker would
                // say the same. Keep them and retry shortly.
                for (_, worker) in self.workers.iter_mut() {
                    worker.room.full_unwatched();
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
}

/// The error a send gets when the other end of the channel is closed.
pub(super) fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

pub(super) fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE
            || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS
            || code == nix::libc::ENOMEM
    )
}
