//! The measured path: accept → choose a worker → hand off (`sendmsg` with
//! the fds). No allocation, no logging above debug, no blocking call here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use handoff_fdpass::monotonic_ns;
use handoff_proto::{codec, Dispatch, MasterToWorker, MAX_BATCH};
use mio::unix::SourceFd;
use mio::Interest;
use tracing::{debug, error, info, warn};

use crate::cli::Salvage;
use crate::dispatch::Policy;
use crate::workers::{AcceptedConn, WorkerState};

use super::{worker_token, Master, Phase, ACCEPT_BACKOFF, BLOCKED_RETRY, WARN_INTERVAL};

impl Master {
    pub(super) fn accept_connections(&mut self) {
        if self.queue_full || self.accept_backoff_until.is_some() {
            return;
        }
        // Accept until EAGAIN: one failing accept4 per wake-up. (Reading the
        // queue length with TCP_INFO instead cost more system calls, as
        // connections keep arriving while the loop runs: measured, see
        // docs/performance.md.)
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
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
            info!(queued = self.pending.len(), "queue has room: accepting again");
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
                self.counters.dispatched += n as u64;
                self.counters.packets += 1;
                debug!(n, worker = worker.id, "handed off");
                match self.salvage {
                    // Let go: the worker's copy is now the last reference,
                    // so this close is cheap. If the worker dies before
                    // receiving them, they are read back from its channel.
                    Salvage::Queued => self.pending.drain(..n).for_each(drop),
                    // Keep the copies until the worker reports them
                    // finished, so its death loses nothing it had not
                    // touched (see `salvage`).
                    Salvage::Exact => worker.held.extend(self.pending.drain(..n)),
                }
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
