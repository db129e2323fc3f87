//! Signals, and the graceful and forced ways of stopping.
//!
//! The master handles every signal an operator might send whose default
//! action would end it ([`handled_signals`]): the ones it uses act, the
//! others are logged as not used (SIGPIPE at debug: a write to a closed
//! pipe just fails with EPIPE). Only SIGKILL and SIGSTOP, which cannot be
//! caught, and the faults a process raises itself (SIGSEGV, SIGBUS, ...)
//! keep their default action; so does SIGTSTP (Ctrl-Z stops it, as asked).

use std::io;
use std::time::Instant;

use handoff_proto::{codec, MasterToWorker};
use mio::Interest;
use nix::libc;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use tracing::{debug, error, info, warn};

use crate::cli::Mode;
use crate::workers::WorkerState;

use super::handoff::peer_gone;
use super::{Exit, Master, Phase, BLOCKED_RETRY, LISTENER, STOP_ACCEPTING_TIMEOUT};

/// Every signal the master catches: the ones it acts on, and every other
/// one an operator might send whose default action is to end the process
/// (the real-time signals included).
pub(super) fn handled_signals() -> Vec<i32> {
    let mut signals = vec![SIGINT, SIGTERM, SIGQUIT, SIGCHLD, SIGHUP, SIGTTIN, SIGTTOU];
    signals.extend(handoff_fdpass::signals_ending_a_process_by_default());
    signals
}

/// A signal's name for the log.
fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(known) => known.as_str().to_owned(),
        Err(_) if signal >= libc::SIGRTMIN() => format!("SIGRTMIN+{}", signal - libc::SIGRTMIN()),
        Err(_) => format!("signal {signal}"),
    }
}

impl Master {
    pub(super) fn handle_signals(&mut self) {
        let received: Vec<i32> = self.signals.pending().collect();
        for signal in received {
            match signal {
                SIGCHLD => self.reap_children(),
                SIGINT | SIGTERM => match self.phase {
                    // With --drain-secs, the balancer is told first.
                    Phase::Running if signal == SIGTERM => {
                        self.request_stop("SIGTERM");
                    }
                    Phase::Running => self.begin_shutdown("SIGINT"),
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
                libc::SIGUSR2 => {
                    let _ = self.start_upgrade("SIGUSR2");
                }
                libc::SIGUSR1 => {
                    info!("SIGUSR1: not used (logs go to stderr, nothing to reopen); ignored")
                }
                libc::SIGPIPE => debug!("SIGPIPE ignored: a write to a closed pipe gets EPIPE"),
                other => info!(signal = %signal_name(other), "signal not used; ignored"),
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self, reason: &str) {
        if matches!(
            self.succession,
            super::upgrade::Succession::Starting { .. }
                | super::upgrade::Succession::HandedOver { .. }
        ) {
            self.fail_upgrade(format!("this master is stopping ({reason})"));
        }
        // A drain grace still running ends here.
        self.balancer.stop_at = None;
        self.lost_when_stop_began = self.counters.lost();
        // After an upgrade's commit the new master is the main process.
        if !matches!(self.succession, super::upgrade::Succession::Committed) {
            crate::notify::stopping();
        }
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
    pub(super) fn close_listener(&mut self) {
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

    pub(super) fn force_stop(&mut self) {
        let queued = self.pending.len() as u64;
        let held: u64 = self.workers.iter().map(|(_, w)| w.in_flight()).sum();
        self.counters.lost_at_shutdown += queued + held;
        self.pending.clear();
        self.spawner.kill_all();
        warn!(
            queued,
            held_by_workers = held,
            accepted = self.counters.accepted,
            dispatched = self.counters.dispatched,
            lost = self.counters.lost(),
            "forced stop: closed queued connections"
        );
        // Not running any more: nothing may respawn the workers just killed.
        self.phase = Phase::Draining { deadline: Instant::now() };
        self.exit = Some(Exit::Forced);
    }

    pub(super) fn progress_shutdown(&mut self, deadline: Instant, now: Instant) {
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
        self.rescue_queued_connections();
        let rescue_on_its_way = self.rescue_worker.is_some_and(|pid| self.spawner.owns(pid));
        if !self.pending.is_empty()
            && self.rotation.is_empty()
            && self.workers.is_empty()
            && !rescue_on_its_way
        {
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
                let lost_in_stop = self.counters.lost().saturating_sub(self.lost_when_stop_began);
                info!(
                    accepted = self.counters.accepted,
                    dispatched = self.counters.dispatched,
                    lost = self.counters.lost(),
                    "shutdown complete"
                );
                self.exit = Some(if lost_in_stop == 0 {
                    Exit::Clean
                } else {
                    // Not a clean stop: say so in the exit status too.
                    warn!(lost = lost_in_stop, "clients were lost during the stop");
                    Exit::Forced
                });
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

    /// Connections wait (taken back from a worker that died during the
    /// stop) and every worker is leaving: start one more worker to answer
    /// them (it registers, takes the queue, and is told to finish like the
    /// others). Only a master that spawns workers does; one whose workers
    /// are all started by hand has nothing to start them with, and an old
    /// master after an upgrade has handed the workers' socket on (those
    /// connections are lost, and the exit status says so).
    fn rescue_queued_connections(&mut self) {
        if self.pending.is_empty()
            || self.listener.is_some()
            || self.supervisor.target == 0
            // After an upgrade new workers register with the new master.
            || matches!(self.succession, super::upgrade::Succession::Committed)
            || self.rescue_worker.is_some_and(|pid| self.spawner.owns(pid))
            || self.workers.iter().any(|(_, w)| w.state == WorkerState::Ready)
        {
            return;
        }
        match self.spawn_worker() {
            Ok(pid) => {
                warn!(
                    queued = self.pending.len(),
                    pid, "every worker is leaving and connections wait: started one to answer them"
                );
                self.rescue_worker = Some(pid);
            }
            Err(err) => error!("cannot start a worker for the queued connections: {err:#}"),
        }
    }

    /// Sends the `Shutdown` owed to workers: at once to a worker that is
    /// leaving, and to the others once the queue is empty (they may still
    /// be needed for it).
    pub(super) fn send_shutdowns(&mut self) {
        let mut frame = [0u8; 16];
        let Ok(len) = codec::encode(&MasterToWorker::Shutdown, &mut frame) else { return };
        // Shutdown is the last packet on a channel: not before the listener
        // is closed and its queue handed out.
        let queue_empty = self.pending.is_empty() && self.listener.is_none();
        // One healthy worker is kept taking work while another still holds
        // connections: if that one dies (a stopped worker killed by
        // `--timeout` or by hand), what was queued to it is taken back and
        // must find a worker that is not finishing.
        // The keeper: the one holding least (a stopped worker holds what
        // was queued to it, so it is not chosen while a healthy one is).
        let keeper = self
            .workers
            .iter()
            .filter(|(_, w)| w.shutdown_pending && w.state == WorkerState::Ready && w.takes_work())
            .min_by_key(|(_, w)| w.in_flight())
            .map(|(key, _)| key);
        let others_hold = keeper.is_some_and(|keeper| {
            self.workers.iter().any(|(key, w)| {
                key != keeper
                    && matches!(w.state, WorkerState::Ready | WorkerState::Retiring)
                    && w.in_flight() > 0
            })
        });
        let mut still_owed = false;
        for (key, worker) in self.workers.iter_mut() {
            if !worker.shutdown_pending {
                continue;
            }
            if !worker.room.has_room() || !(queue_empty || worker.state == WorkerState::Retiring) {
                still_owed = true;
                continue;
            }
            if others_hold && Some(key) == keeper {
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
                    worker.room.full_unwatched();
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
