//! The workers' channels: registration, reports, and what happens when a
//! worker leaves, dies (salvaging the connections it held) or runs out of
//! fds (offered nothing until it has room; what is queued to it is taken
//! back for the others). A connection that comes back unreceived is handed
//! out again at most [`MAX_REDISPATCHES`] times.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use handoff_fdpass::{Received, RecvError, TcpProgress};
use handoff_proto::{
    codec, ClientProtocol, Finished, Hello, ListenMode, MasterToWorker, Outcome, Reporting,
    WorkerToMaster, PROTOCOL_VERSION, REPLY_PREFIX, REQUEST_CHUNK_LEN,
};
use mio::unix::SourceFd;
use mio::Interest;
use tracing::{debug, error, info, warn};

use crate::cli::{Mode, Salvage};
use crate::dispatch::Policy;
use crate::spare::is_fd_limit;
use crate::workers::{AcceptedConn, Origin, WorkerSlot, WorkerState};

use super::{pidfd_token, worker_token, Master, Phase};

/// How many times a connection that came back unreceived (its worker died
/// before reading it, ran out of fds, or reported it `NotReceived`) is
/// handed out again; after that the master closes it and counts it failed.
pub(super) const MAX_REDISPATCHES: u8 = 3;

impl Master {
    /// Accepts new peers on the workers' socket until EAGAIN. Registering a
    /// worker needs fds (its channel, a pidfd, then the two of its Hello),
    /// so the spare fds are let go first; if even that is not enough, the
    /// rest waits until the master releases fds (edge-triggered polling
    /// would not report the waiting peers again).
    pub(super) fn accept_workers(&mut self) {
        self.fds.spare.release();
        loop {
            let chan = match self.worker_listener.accept() {
                Ok(chan) => chan,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // Out of fds (or memory): the waiting peers are taken
                    // when fds are released, or by the fallback timer.
                    self.fds.worker_accept_owed = true;
                    self.fds.pause_mark = self.fd_release_mark();
                    let retry_at = Instant::now() + super::ACCEPT_BACKOFF;
                    self.accept_backoff_until.get_or_insert(retry_at);
                    let what = if is_fd_limit(&err) {
                        "out of fds: workers wait to register until one is released"
                    } else {
                        "accepting a worker channel failed; retrying"
                    };
                    self.warn_accept(&err, what);
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
            if !refused && self.salvage == Salvage::Queued {
                // How its death is learned once the master holds its end of
                // the channel (which then never closes while we live).
                match handoff_fdpass::pidfd_open(cred.pid) {
                    Ok(pidfd) => {
                        let raw = pidfd.as_raw_fd();
                        match self.poll.registry().register(
                            &mut SourceFd(&raw),
                            pidfd_token(key),
                            Interest::READABLE,
                        ) {
                            Ok(()) => slot.pidfd = Some(pidfd),
                            Err(err) => {
                                warn!(pid = cred.pid, %err, "cannot watch a worker's pidfd")
                            }
                        }
                    }
                    Err(err) => {
                        warn!(pid = cred.pid, %err, "no pidfd for a worker: its queued connections are lost if it dies")
                    }
                }
            }
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

    pub(super) fn handle_worker_event(&mut self, key: usize, readable: bool, writable: bool) {
        if !self.workers.contains(key) {
            return;
        }
        if writable {
            self.writable_again(key);
        }
        if readable {
            self.read_worker_channel(key);
        }
    }

    /// Worker `key`'s channel has room again (a writable event, or the
    /// retry timer): it takes work, and a watch for room comes off.
    pub(super) fn writable_again(&mut self, key: usize) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        if !worker.room.room() {
            return;
        }
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

    pub(super) fn read_worker_channel(&mut self, key: usize) {
        loop {
            let Some(worker) = self.workers.get(key) else { return };
            if matches!(worker.state, WorkerState::Broken | WorkerState::Dead) {
                return;
            }
            if worker.state == WorkerState::Refused {
                self.drain_refused(key);
                return;
            }
            if worker.state == WorkerState::Registering {
                // Its Hello carries two fds, lost if they do not fit.
                self.fds.spare.release();
            }
            self.recv_fds.clear();
            let received = worker.chan.recv(&mut self.recv_buf[..], &mut self.recv_fds);
            match received {
                Ok(Received::Packet(len)) => {
                    let msg = match codec::decode::<WorkerToMaster>(&self.recv_buf[..len]) {
                        Ok(msg) => msg,
                        Err(err) => {
                            self.recv_fds.clear();
                            let reason = format!("malformed frame ({len} bytes): {err}");
                            self.drop_worker(key, &reason);
                            return;
                        }
                    };
                    match msg {
                        WorkerToMaster::Hello(hello)
                            if self.workers[key].state == WorkerState::Registering =>
                        {
                            // The only packet that carries fds: its end of
                            // the channel and its shared counters.
                            let fds = std::mem::take(&mut self.recv_fds);
                            self.register(key, hello, fds);
                        }
                        msg if self.recv_fds.is_empty() => self.handle_worker_message(key, msg),
                        _ => {
                            self.recv_fds.clear();
                            self.drop_worker(key, "sent file descriptors outside its Hello");
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
    pub(super) fn drain_refused(&mut self, key: usize) {
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

    pub(super) fn handle_worker_message(&mut self, key: usize, msg: WorkerToMaster) {
        let state = self.workers[key].state;
        match (state, msg) {
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::Finished(report))
                if self.workers[key].reporting == Reporting::EachConnection =>
            {
                self.take_report(key, report);
            }
            // It has room again; the pending queue is tried at the end of
            // this turn, and the counts are in its shared counters.
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::Freed) => {}
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::Stats(stats)) => {
                let done = self.workers[key].record_stats(stats, Instant::now());
                self.counters.finished.merge(&done);
                self.counters.worker_accepted += done.total();
            }
            (WorkerState::Ready, WorkerToMaster::Leaving) => self.retire(key),
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::OutOfFds) => {
                self.worker_out_of_fds(key);
            }
            (WorkerState::Ready | WorkerState::Retiring, WorkerToMaster::RoomForFds) => {
                let worker = &mut self.workers[key];
                if std::mem::take(&mut worker.out_of_fds) {
                    info!(worker = worker.id, pid = worker.pid, "worker has room for fds again");
                }
                // What waits in the queues of workers still out of fds can
                // come to this one.
                let stuck: Vec<usize> = self
                    .workers
                    .iter()
                    .filter(|&(other, w)| other != key && w.out_of_fds)
                    .map(|(other, _)| other)
                    .collect();
                for other in stuck {
                    self.take_back_queue(other);
                }
            }
            (_, WorkerToMaster::StoppedAccepting) => {
                let worker = &mut self.workers[key];
                worker.listening = false;
                if let (Some(kernel), Some(slot)) = (&self.kernel_balancer, worker.kernel_slot) {
                    kernel.leave(slot);
                }
                debug!(worker = worker.id, "worker stopped accepting");
            }
            (state, msg) => {
                let reason = format!("unexpected {msg:?} while {state:?}");
                self.drop_worker(key, &reason);
            }
        }
    }

    /// Shared/reuseport mode: tells a new worker to accept for itself.
    pub(super) fn send_listen(&mut self, key: usize) {
        if self.mode == Mode::Reuseport && self.kernel_balancer.is_some() {
            return self.send_balanced_listen(key);
        }
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

    /// Reuseport with the kernel balancer: the master binds the worker's
    /// listener, puts it in a free slot of the sockarray (the program then
    /// picks it), and sends it with the load table. The master keeps no
    /// copy: the listener closes when the worker does, and the kernel
    /// moves what was queued on it to the others.
    fn send_balanced_listen(&mut self, key: usize) {
        let Some(kernel) = &self.kernel_balancer else { return };
        let ours: Vec<u32> = self.workers.iter().filter_map(|(_, w)| w.kernel_slot).collect();
        // A slot is free if none of our workers has it and no listener
        // (of an old master's worker, after an upgrade) is in it.
        let free = (0..handoff_fdpass::reuseport::MAX_SLOTS)
            .find(|slot| !ours.contains(slot) && kernel.slot_taken(*slot).is_ok_and(|t| !t));
        let Some(slot) = free else {
            let reason = "every kernel balancer slot is taken".to_owned();
            return self.drop_worker(key, &reason);
        };
        let backlog = self.backlog;
        let listener = match handoff_fdpass::bind_tcp(self.listen_addr, Some(backlog), true) {
            Ok(listener) => listener,
            Err(err) => {
                let reason = format!("cannot bind a reuseport listener for it: {err}");
                return self.drop_worker(key, &reason);
            }
        };
        let worker = &self.workers[key];
        let limit = match (self.policy, worker.capacity) {
            (Policy::Pull, 0) => 1,
            (Policy::Pull, capacity) => i64::from(capacity),
            _ => handoff_fdpass::reuseport::NO_LIMIT,
        };
        if let Err(err) = kernel.join(slot, listener.as_fd(), limit) {
            let reason = format!("cannot put its listener in the kernel balancer: {err}");
            return self.drop_worker(key, &reason);
        }
        let msg = MasterToWorker::Listen(ListenMode::Balanced { slot });
        let len = match codec::encode(&msg, &mut self.send_buf[..]) {
            Ok(len) => len,
            Err(err) => {
                kernel.leave(slot);
                return error!(%err, "cannot encode Listen");
            }
        };
        let fds = [listener.as_fd(), kernel.table().fd()];
        let worker = &mut self.workers[key];
        worker.kernel_slot = Some(slot);
        match worker.chan.send(&self.send_buf[..len], &fds) {
            Ok(()) => {
                worker.listening = true;
                debug!(worker = worker.id, slot, limit, "worker's listener in the kernel balancer");
            }
            Err(err) => {
                kernel.leave(slot);
                let reason = format!("cannot send Listen: {err}");
                self.drop_worker(key, &reason);
            }
        }
        // `listener` closes here: the worker's copy (in flight in the
        // packet, or received) is the only one.
    }

    /// Closes the master's copies of the connections a worker finished, and
    /// re-queues the ones whose fd never reached it.
    pub(super) fn take_report(&mut self, key: usize, report: Finished) {
        let mut not_received = Vec::new();
        let worker = &mut self.workers[key];
        for completion in &report.conns {
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
        self.fds.released += (report.conns.len() - not_received.len()) as u64;
        if !not_received.is_empty() {
            debug!(
                worker = worker.id,
                n = not_received.len(),
                "fds did not reach the worker; handing them out again"
            );
            self.requeue(not_received);
        }
    }

    /// Puts connections that came back unreceived at the front of the
    /// queue, in order, counting each in `redispatched` once; one that came
    /// back [`MAX_REDISPATCHES`] times already is closed and counted failed,
    /// so no connection circulates for ever.
    pub(super) fn requeue(&mut self, conns: Vec<AcceptedConn>) {
        let mut given_up = 0u64;
        for mut conn in conns.into_iter().rev() {
            if conn.header.redispatches >= MAX_REDISPATCHES {
                given_up += 1;
                continue; // dropped: the master closes it
            }
            if conn.header.redispatches == 0 {
                self.counters.redispatched += 1;
            }
            conn.header.redispatches += 1;
            self.pending.push_front(conn);
        }
        if given_up > 0 {
            self.counters.finished.failed += given_up;
            self.fds.released += given_up;
            warn!(
                given_up,
                "connections handed out {} times without reaching a worker: closed",
                u32::from(MAX_REDISPATCHES) + 1
            );
        }
    }

    pub(super) fn register(&mut self, key: usize, hello: Hello, fds: Vec<OwnedFd>) {
        let socket_pid = self.workers[key].pid;
        let mut fds = fds.into_iter();
        let (end_fd, counters_fd) = (fds.next(), fds.next());
        let extra_fds = fds.count();
        // Queued salvage needs the worker's counters; its end of the channel
        // is what lets the master take back what it never received.
        let counters = match (self.salvage, counters_fd) {
            (Salvage::Exact, _) => Ok(None),
            (Salvage::Queued, None) => Err("sent no shared counters with its Hello".to_owned()),
            (Salvage::Queued, Some(fd)) => handoff_fdpass::SharedCounters::open(fd)
                .map(Some)
                .map_err(|err| format!("its shared counters are unusable: {err}")),
        };
        let refusal = if hello.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version {} is not the master's {PROTOCOL_VERSION}",
                hello.protocol_version
            ))
        } else if i64::from(hello.pid) != i64::from(socket_pid) {
            Some(format!("says it is pid {} but the socket says pid {socket_pid}", hello.pid))
        } else if extra_fds > 0 {
            Some(format!("sent {} fds with its Hello, at most 2", extra_fds + 2))
        } else {
            counters.as_ref().err().cloned()
        };
        if let Some(reason) = refusal {
            let _ = send_refusal(&self.workers[key].chan, &reason);
            self.drop_worker(key, &reason);
            return;
        }
        let capacity = match (self.policy, hello.capacity) {
            // Pull means a worker takes one at a time unless it says more.
            (Policy::Pull, 0) => 1,
            (_, capacity) => capacity,
        };
        let reporting = match self.salvage {
            Salvage::Exact => Reporting::EachConnection,
            // The master must hear soon that a capped worker has room.
            Salvage::Queued if capacity > 0 => Reporting::CountersAndWake,
            Salvage::Queued => Reporting::Counters,
        };
        let worker_end = match (self.salvage, end_fd) {
            (Salvage::Queued, Some(fd)) if self.workers[key].pidfd.is_some() => {
                self.checked_worker_end(fd, socket_pid)
            }
            _ => None,
        };
        let id = self.next_worker_id;
        let mut frame = [0u8; 64];
        let max_fds_per_packet = match self.mode {
            Mode::Dispatch => self.batch as u32,
            Mode::Shared | Mode::Reuseport => 1,
        };
        let welcome = MasterToWorker::Welcome { worker_id: id, reporting, max_fds_per_packet };
        let sent = codec::encode(&welcome, &mut frame)
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
        worker.capacity = capacity;
        worker.reporting = reporting;
        worker.counters = counters.ok().flatten();
        worker.worker_end = worker_end;
        worker.protocol = hello.protocol;
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
    pub(super) fn retire(&mut self, key: usize) {
        let worker = &self.workers[key];
        info!(worker = worker.id, pid = worker.pid, "worker is leaving");
        self.retire_worker(key);
    }

    /// The worker's own end of the channel, sent with its Hello, if it is
    /// one: a Unix packet socket connected to our workers' socket. (A worker
    /// that sends something else only loses the take-back of its queue.)
    fn checked_worker_end(&self, fd: OwnedFd, pid: i32) -> Option<handoff_fdpass::Channel> {
        let checked =
            handoff_fdpass::Channel::from_received(fd).and_then(|end| match end.peer_path()? {
                Some(path) if path == self.worker_listener.path() => Ok(end),
                _ => Err(io::Error::other("not connected to this master's workers' socket")),
            });
        match checked {
            Ok(end) => Some(end),
            Err(err) => {
                warn!(pid, %err, "the fd sent as the worker's end of its channel is not one");
                None
            }
        }
    }

    /// A worker's pidfd says it exited: read what it sent before dying,
    /// then it is gone (at the end of this turn).
    pub(super) fn worker_exited(&mut self, key: usize) {
        self.read_worker_channel(key);
        if let Some(worker) = self.workers.get_mut(key) {
            if worker.state != WorkerState::Broken {
                worker.state = WorkerState::Dead;
            }
        }
    }

    /// A worker exited (its pidfd, or its channel closed). What it still
    /// held is salvaged: see [`Master::take_back`] and [`Master::salvage`].
    pub(super) fn worker_gone(&mut self, key: usize) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        let new_done = worker.merge_handed_done();
        self.counters.finished.merge(&new_done);
        let worker = &mut self.workers[key];
        let (id, pid, served) = (worker.id, worker.pid, worker.finished.served);
        let (state, protocol) = (worker.state, worker.protocol);
        let held: Vec<AcceptedConn> = worker.held.drain(..).collect();
        if worker.reporting != Reporting::EachConnection {
            if !self.take_back(key) {
                // Kept (its end of the channel open) until the rest of its
                // queue fits: `take_back_owed` reads on as fds free up.
                return;
            }
        } else if !held.is_empty() {
            self.salvage(id, pid, protocol, held);
        } else if state == WorkerState::Registering {
            debug!(pid, "unregistered peer left");
        } else {
            info!(worker = id, pid, served, "worker left");
        }
        self.remove_worker(key);
    }

    /// `--salvage queued`: reads back, from the master's duplicate of a dead
    /// worker's end of the channel, the connections still queued there
    /// (sent, never received) and hands them to other workers, in order;
    /// what it had received and not finished is lost with it.
    ///
    /// At the master's fd limit it reads only what fits, hands that out,
    /// and returns false: the worker's slot and its end of the channel are
    /// kept (the rest stays queued there, safe) and read on, by
    /// [`Master::take_back_owed`], each time fds are released.
    pub(super) fn take_back(&mut self, key: usize) -> bool {
        let mut taken: Vec<AcceptedConn> = Vec::new();
        let mut finished = true;
        loop {
            match self.read_back_one(key) {
                ReadBack::Conns(conns) => taken.extend(conns),
                ReadBack::Other => {}
                ReadBack::Shutdown | ReadBack::Done => break,
                ReadBack::NoRoom => {
                    finished = false;
                    break;
                }
            }
        }
        if !finished {
            let worker = &mut self.workers[key];
            if !worker.take_back_owed {
                worker.take_back_owed = true;
                self.dead_queues_owed += 1;
                // Dead: nothing may wake us for it, nor give it work.
                worker.state = WorkerState::Dead;
                let fd = worker.chan.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                // Nor may the retry timer register it again.
                worker.room.unregistered();
                if let Some(pidfd) = &worker.pidfd {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&pidfd.as_raw_fd()));
                }
                self.rotation.retain(|&k| k != key);
                warn!(
                    worker = worker.id,
                    pid = worker.pid,
                    "worker died with more queued than the master has fds for: reading the rest \
                     back as fds free up"
                );
            }
            let n = taken.len() as u64;
            self.requeue(taken);
            debug!(n, "took back part of a dead worker's queue");
            return false;
        }
        let worker = &mut self.workers[key];
        worker.worker_end = None;
        let lost = worker.in_flight();
        worker.written_off += lost;
        let (id, pid, served) = (worker.id, worker.pid, worker.finished.served);
        let redispatched = taken.len() as u64;
        self.requeue(taken);
        self.counters.lost_worker_died += lost;
        if redispatched > 0 || lost > 0 {
            warn!(
                worker = id,
                pid,
                redispatched,
                lost,
                "worker died: connections it never received go to other workers"
            );
        } else {
            info!(worker = id, pid, served, "worker left");
        }
        true
    }

    /// End of a turn in which fds were released: read on the queues of
    /// dead workers that did not fit (see [`Master::take_back`]).
    pub(super) fn take_back_owed(&mut self) {
        let owed: Vec<usize> =
            self.workers.iter().filter(|(_, w)| w.take_back_owed).map(|(key, _)| key).collect();
        for key in owed {
            if self.take_back(key) {
                self.dead_queues_owed = self.dead_queues_owed.saturating_sub(1);
                self.remove_worker(key);
            }
        }
    }

    /// A worker says it is out of fds: it is offered nothing until it says
    /// it has room. Meanwhile it receives only while it has room for a whole
    /// packet, so (`--salvage queued`, dispatch mode) what is queued to it
    /// is read back here and handed to the others, for as long as another
    /// worker takes work; the rest waits in its queue until it has room, or
    /// until another worker says it has room again (then it goes there).
    fn worker_out_of_fds(&mut self, key: usize) {
        let worker = &mut self.workers[key];
        if !worker.out_of_fds {
            info!(
                worker = worker.id,
                pid = worker.pid,
                "worker is out of fds: offering it no connection until it has room"
            );
        }
        worker.out_of_fds = true;
        self.take_back_queue(key);
    }

    /// Reads back what is queued to worker `key`, out of fds, and hands it
    /// on at once, for as long as another worker takes work
    /// (`--salvage queued`, dispatch mode).
    fn take_back_queue(&mut self, key: usize) {
        if self.mode != Mode::Dispatch || self.workers[key].worker_end.is_none() {
            return;
        }
        let mut taken = 0u64;
        while self.rotation.iter().any(|&other| self.workers[other].takes_work()) {
            match self.read_back_one(key) {
                ReadBack::Conns(conns) => {
                    taken += conns.len() as u64;
                    self.requeue(conns);
                    // Handed on at once: the master's own fds stay free.
                    self.hand_off_pending();
                }
                ReadBack::Other => {}
                ReadBack::Shutdown => {
                    // Still owed, after what was read back.
                    self.workers[key].shutdown_pending = true;
                    self.shutdowns_owed = true;
                    break;
                }
                ReadBack::Done | ReadBack::NoRoom => break,
            }
        }
        if taken > 0 {
            debug!(worker = self.workers[key].id, taken, "took back what was queued to it");
        }
    }

    /// Reads one packet back from the master's duplicate of worker `key`'s
    /// end of its channel (never blocking: `O_NONBLOCK` is the worker's).
    /// Connections read back no longer count as in flight with it. The
    /// spare fds are let go first so the packet's fds fit; a packet whose
    /// fds still did not fit loses them, and its connections are counted
    /// lost.
    fn read_back_one(&mut self, key: usize) -> ReadBack {
        self.fds.spare.release();
        let worker = &mut self.workers[key];
        let Some(end) = worker.worker_end.as_ref() else { return ReadBack::Done };
        // Room for the largest packet's fds, and a whole spare reserve
        // left after it (or no worker could be spawned or registered to
        // take them, and nothing would ever free an fd)? Probed with
        // duplicates closed at once: a packet whose fds do not fit would
        // be cut short, and those connections closed by the kernel.
        let room = self.batch.max(1) + crate::spare::SPARE_FDS;
        let probes: Vec<_> = (0..room).map(|_| end.as_fd().try_clone_to_owned()).collect();
        if probes.iter().any(|probe| probe.as_ref().is_err_and(is_fd_limit)) {
            return ReadBack::NoRoom;
        }
        drop(probes);
        self.recv_fds.clear();
        let received = end.recv_nowait(&mut self.recv_buf[..], &mut self.recv_fds);
        let len = match received {
            Ok(Received::Packet(len)) => len,
            Ok(Received::Closed) => return ReadBack::Done,
            Err(err) if err.is_would_block() => return ReadBack::Done,
            Err(RecvError::FdsTruncated { len }) => {
                let lost = match codec::decode::<MasterToWorker>(&self.recv_buf[..len]) {
                    Ok(MasterToWorker::Connection(_)) => 1,
                    Ok(MasterToWorker::Batch(headers)) => headers.len() as u64,
                    _ => 0,
                };
                worker.written_off += lost;
                self.counters.lost_worker_died += lost;
                warn!(worker = worker.id, lost, "out of fds reading back a worker's queue");
                return ReadBack::Done;
            }
            Err(err) => {
                warn!(worker = worker.id, %err, "reading back a worker's queue");
                return ReadBack::Done;
            }
        };
        let conns: Vec<AcceptedConn> = match codec::decode::<MasterToWorker>(&self.recv_buf[..len])
        {
            Ok(MasterToWorker::Connection(header)) if self.recv_fds.len() == 1 => {
                self.recv_fds.drain(..).map(|fd| AcceptedConn { fd, header }).collect()
            }
            Ok(MasterToWorker::Batch(headers)) if headers.len() == self.recv_fds.len() => headers
                .into_iter()
                .zip(self.recv_fds.drain(..))
                .map(|(header, fd)| AcceptedConn { fd, header })
                .collect(),
            Ok(MasterToWorker::Shutdown) => return ReadBack::Shutdown,
            // Our other messages (ReportStats, ...): nothing to take back.
            _ => {
                self.recv_fds.clear();
                return ReadBack::Other;
            }
        };
        worker.taken_back += conns.len() as u64;
        ReadBack::Conns(conns)
    }

    /// Sorts out the connections a dead worker held, using the master's own
    /// copies: one nobody has read from or written to is handed to another
    /// worker; one whose reply went out in full counts as served; the rest
    /// were cut off mid-way and count as lost. Closing the master's copy
    /// closes the client's connection cleanly (the request was consumed, so
    /// no unread data turns the close into a reset).
    ///
    /// "Answered in full" is judged from byte counts only for the article's
    /// protocol (one read, one reply of known length). An HTTP connection
    /// (keep-alive, pipelining: bytes say nothing about how many responses
    /// were due) is never counted served that way: touched, it is lost.
    pub(super) fn salvage(
        &mut self,
        worker_id: u32,
        pid: i32,
        protocol: ClientProtocol,
        held: Vec<AcceptedConn>,
    ) {
        let (mut requeue, mut served, mut lost) = (Vec::new(), 0u64, 0u64);
        for conn in held {
            match TcpProgress::of(conn.fd.as_fd()) {
                Ok(p) if p.bytes_consumed() == 0 && p.bytes_written() == 0 => requeue.push(conn),
                // What was written is acknowledged or still queued; either
                // way closing our copy delivers it, then the FIN.
                Ok(p) if answered_in_full(protocol, p.bytes_consumed(), p.bytes_written()) => {
                    served += 1
                }
                _ => lost += 1,
            }
        }
        let redispatched = requeue.len() as u64;
        self.requeue(requeue);
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
    pub(super) fn drop_worker(&mut self, key: usize, reason: &str) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        warn!(worker = worker.id, pid = worker.pid, reason, "dropping worker channel");
        worker.state = WorkerState::Broken;
    }

    pub(super) fn remove_worker(&mut self, key: usize) {
        let mut worker = self.workers.remove(key);
        if let (Some(kernel), Some(slot)) = (&self.kernel_balancer, worker.kernel_slot) {
            kernel.leave(slot);
        }
        // Its channel, pidfd, duplicate end and counters close with it.
        self.fds.released += 1;
        let fd = worker.chan.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        if let Some(pidfd) = &worker.pidfd {
            let _ = self.poll.registry().deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        self.rotation.retain(|&k| k != key);
        let new_done = worker.merge_handed_done();
        self.counters.finished.merge(&new_done);
        let in_flight = worker.in_flight();
        if in_flight > 0 {
            // A dropped peer may still be alive and serving what it took, so
            // nothing is handed out twice: the master just lets go.
            warn!(
                worker = worker.id,
                pid = worker.pid,
                held = in_flight,
                "dropped a worker that held connections; they stay with it"
            );
            self.counters.lost_worker_died += in_flight;
        }
    }
}

pub(super) fn send_refusal(chan: &handoff_fdpass::Channel, reason: &str) -> io::Result<()> {
    let frame = codec::encode_to_vec(&MasterToWorker::Refused { reason: reason.to_owned() })
        .map_err(io::Error::other)?;
    chan.send(&frame, &[])
}

/// What one packet read back from a worker's queue was.
enum ReadBack {
    /// Connections (with their fds).
    Conns(Vec<AcceptedConn>),
    /// The `Shutdown` the master sent it: nothing follows.
    Shutdown,
    /// Another message of the master's.
    Other,
    /// Nothing more to read (or it could not be read).
    Done,
    /// The master has no fds for the next packet's connections right now:
    /// read on once fds are released.
    NoRoom,
}

/// The reply the article's protocol gives to a request of which `consumed`
/// bytes were read.
pub(super) fn full_reply_len(consumed: u64) -> u64 {
    REPLY_PREFIX.len() as u64 + consumed.min(REQUEST_CHUNK_LEN as u64)
}

/// Can byte counts alone say that a connection was answered in full? Only
/// under the article's protocol; never under HTTP.
fn answered_in_full(protocol: ClientProtocol, consumed: u64, written: u64) -> bool {
    match protocol {
        ClientProtocol::Article => written >= full_reply_len(consumed),
        ClientProtocol::Http => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_article_protocol_is_judged_answered_from_byte_counts() {
        assert!(answered_in_full(ClientProtocol::Article, 5, full_reply_len(5)));
        assert!(!answered_in_full(ClientProtocol::Article, 5, full_reply_len(5) - 1));
        // 77 pipelined responses out of many: more bytes than any article
        // reply, and still not served.
        assert!(!answered_in_full(ClientProtocol::Http, 1800, 77 * 90));
    }

    #[test]
    fn a_full_article_reply_is_the_prefix_and_what_one_read_took() {
        // "server get message: " + the request, of which the article's
        // server reads one chunk (2048 bytes) at most.
        assert_eq!(full_reply_len(0), 20);
        assert_eq!(full_reply_len(5), 25);
        assert_eq!(full_reply_len(2048), 20 + 2048);
        assert_eq!(full_reply_len(5000), 20 + 2048);
        assert!(!answered_in_full(ClientProtocol::Article, 5, 1), "a byte is not a reply");
    }
}
