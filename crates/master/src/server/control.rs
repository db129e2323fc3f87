//! The control socket: accepting operators' clients and answering their
//! commands from counters the master already holds.
//!
//! It owns the control side of the loop: the listener (accepts retried
//! after EMFILE/ENFILE, a spare fd released to let one operator in, the
//! idlest client evicted when all slots are taken), each client's slice of
//! lines per turn (clients with more waiting are revisited by
//! [`Master::control_turn`] at the end of the turn), the output cap, and
//! the idle timeout.

use std::io;
use std::time::Instant;

use handoff_fdpass::ProcessUsage;
use handoff_proto::control::{
    parse_command, Command, ErrorReply, HelpReply, InfoReply, MetricsReply, OkReply, WorkersReply,
};
use handoff_proto::{codec, MasterToWorker};
use mio::Interest;
use tracing::{debug, info, warn};

use crate::cli::Mode;
use crate::control::{
    out_of_resources, ControlConn, Line, ReadStatus, ACCEPT_RETRY, LINES_PER_TURN,
    MAX_CONTROL_CLIENTS,
};
use crate::workers::WorkerState;

use super::{control_token, Master, Phase, STATS_REQUEST_INTERVAL, WARN_INTERVAL};

impl Master {
    pub(super) fn accept_control_clients(&mut self) {
        let now = Instant::now();
        loop {
            let mut stream = match self.control_listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.control.accept_retry_at = None;
                    // accept4 says EMFILE before it looks for a client: the
                    // spare may have been let go for nobody. Take its fd back
                    // now, before a client accept does.
                    self.control.refill_spare();
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // Out of fds: let the spare go so one operator gets in.
                    if out_of_resources(&err) && self.control.spare_fd.take().is_some() {
                        continue;
                    }
                    // The listener is edge-triggered: whoever waits in its
                    // backlog brings no new event, so come back ourselves.
                    self.control.accept_retry_at = Some(now + ACCEPT_RETRY);
                    if self.control.last_accept_warning.is_none_or(|at| now - at >= WARN_INTERVAL) {
                        self.control.last_accept_warning = Some(now);
                        warn!(%err, "accepting a control client failed: retrying until it works");
                    }
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
            if let Some(reason) = refusal {
                let line = json_line(&ErrorReply { error: reason }) + "\n";
                // Best effort: the socket buffer of a new connection has room.
                let _ = std::io::Write::write_all(&mut stream, line.as_bytes());
                continue;
            }
            if self.control_clients.len() >= MAX_CONTROL_CLIENTS {
                self.evict_idlest_control_client(now);
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
            entry.insert(ControlConn::new(stream, now));
            if self.control.next_idle_check.is_none() {
                self.control.next_idle_check = Some(now + self.control.idle_timeout);
            }
            debug!(key, "control client connected");
            // Commands may already be waiting.
            self.handle_control_event(key);
        }
    }

    /// All slots are taken: the client idle the longest makes room for a
    /// new one (which may be an operator locked out by forgotten clients).
    fn evict_idlest_control_client(&mut self, now: Instant) {
        let Some((key, idle)) = self
            .control_clients
            .iter()
            .map(|(key, client)| (key, now.saturating_duration_since(client.last_active)))
            .max_by_key(|&(_, idle)| idle)
        else {
            return;
        };
        info!(
            idle_secs = idle.as_secs_f64(),
            limit = MAX_CONTROL_CLIENTS,
            "control clients at the limit: closing the one idle the longest"
        );
        self.say_goodbye(
            key,
            &format!(
                "closed after {:.1} s idle: every control slot ({MAX_CONTROL_CLIENTS}) was taken \
                 and a new client needed one",
                idle.as_secs_f64()
            ),
        );
    }

    /// Queues a last error line for `key` (best effort) and closes it.
    fn say_goodbye(&mut self, key: usize, why: &str) {
        if let Some(client) = self.control_clients.get_mut(key) {
            if client.queue(&json_line(&ErrorReply { error: why.to_owned() })) {
                let _ = client.flush();
            }
        }
        self.close_control_client(key);
    }

    pub(super) fn handle_control_event(&mut self, key: usize) {
        let now = Instant::now();
        let mut lines = std::mem::take(&mut self.control.lines);
        lines.clear();
        let status = match self.control_clients.get_mut(key) {
            Some(client) => client.read_lines(&mut lines, LINES_PER_TURN),
            None => {
                self.control.lines = lines;
                return;
            }
        };
        let took_lines = !lines.is_empty();
        let mut gone = false;
        let mut closing = status == ReadStatus::Closed;
        for line in lines.drain(..) {
            let (answer, then) = self.answer_line(&line);
            let Some(client) = self.control_clients.get_mut(key) else {
                gone = true;
                break;
            };
            if !client.queue(&answer) {
                warn!(
                    key,
                    "control client does not read its answers (it sends faster than it reads): \
                     disconnecting it"
                );
                self.close_control_client(key);
                gone = true;
                break;
            }
            if let AfterAnswer::Close = then {
                closing = true;
                break;
            }
        }
        self.control.lines = lines;
        if gone {
            return;
        }
        let Some(client) = self.control_clients.get_mut(key) else { return };
        if took_lines {
            client.last_active = now;
        }
        client.closing |= closing;
        if status == ReadStatus::More && !client.closing && !client.revisit {
            // Edge-triggered: what is left brings no new event.
            client.revisit = true;
            self.control.revisit.push(key);
        }
        match client.flush() {
            Ok(wrote) => {
                if wrote > 0 {
                    client.last_active = now;
                }
                if client.closing && client.flushed() {
                    self.close_control_client(key);
                }
            }
            Err(err) => {
                debug!(key, %err, "control client went away");
                self.close_control_client(key);
            }
        }
    }

    pub(super) fn close_control_client(&mut self, key: usize) {
        if self.control_clients.contains(key) {
            let mut client = self.control_clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
            drop(client);
            // An fd is free again: keep it in reserve if the spare was used.
            self.control.refill_spare();
        }
    }

    /// Once per loop turn: serve the next slice of clients that stopped at
    /// the line limit, retry a failed accept, close idle clients.
    pub(super) fn control_turn(&mut self, now: Instant) {
        if !self.control.revisit.is_empty() {
            let keys = std::mem::take(&mut self.control.revisit);
            for &key in &keys {
                if let Some(client) = self.control_clients.get_mut(key) {
                    client.revisit = false;
                    self.handle_control_event(key);
                }
            }
        }
        if self.control.accept_retry_at.is_some_and(|at| at <= now) {
            self.control.accept_retry_at = None;
            self.control.refill_spare();
            self.accept_control_clients();
        }
        if self.control.next_idle_check.is_some_and(|at| at <= now) {
            self.close_idle_control_clients(now);
        }
    }

    fn close_idle_control_clients(&mut self, now: Instant) {
        let timeout = self.control.idle_timeout;
        let idle: Vec<usize> = self
            .control_clients
            .iter()
            .filter(|(_, client)| now.saturating_duration_since(client.last_active) >= timeout)
            .map(|(key, _)| key)
            .collect();
        if !idle.is_empty() {
            debug!(clients = idle.len(), "closing idle control clients");
        }
        for key in idle {
            self.say_goodbye(
                key,
                &format!(
                    "closed after {:.1} s idle (--control-idle-timeout)",
                    timeout.as_secs_f64()
                ),
            );
        }
        self.control.next_idle_check =
            self.control_clients.iter().map(|(_, c)| c.last_active).min().map(|at| at + timeout);
    }

    /// The JSON line answering one command line, and what to do next.
    pub(super) fn answer_line(&mut self, line: &Line) -> (String, AfterAnswer) {
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
            Command::Info => {
                // Workers' own accepts are counted from their stats reports.
                if self.mode != Mode::Dispatch {
                    self.request_worker_stats();
                }
                self.merge_worker_counts();
                json_line(&self.info_reply())
            }
            Command::Workers => {
                self.request_worker_stats();
                self.merge_worker_counts();
                json_line(&self.workers_reply())
            }
            Command::Metrics => {
                self.request_worker_stats();
                self.merge_worker_counts();
                let text =
                    crate::metrics::render(&self.info_reply(), &self.workers_reply().workers);
                json_line(&MetricsReply { metrics: text })
            }
            Command::Ping => json_line(&OkReply { ok: "pong".into() }),
            Command::Stop => {
                if self.phase == Phase::Running {
                    info!("stop requested on the control socket");
                }
                json_line(&OkReply { ok: self.request_stop("control stop") })
            }
            Command::Drain => json_line(&OkReply { ok: self.drain_for_balancer() }),
            Command::Ready => match self.ready_for_balancer() {
                Ok(ok) => json_line(&OkReply { ok }),
                Err(error) => json_line(&ErrorReply { error }),
            },
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
            Command::Upgrade => match self.start_upgrade("control upgrade") {
                Ok(started) => json_line(&OkReply { ok: started }),
                Err(why) => json_line(&ErrorReply { error: format!("cannot upgrade: {why}") }),
            },
            Command::Quit => return (json_line(&OkReply { ok: "bye".into() }), AfterAnswer::Close),
        };
        (answer, AfterAnswer::Continue)
    }

    pub(super) fn info_reply(&self) -> InfoReply {
        let usage = ProcessUsage::of_self();
        let finished = &self.counters.finished;
        let kernel_counters = self.kernel_balancer.as_ref().map(|k| k.table().counters());
        InfoReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at_unix: self.started_unix,
            generation: self.generation,
            upgrade: self.upgrade_state().to_owned(),
            upgrade_error: self.upgrade_error.clone(),
            listen: self.listen_name.clone(),
            run_dir: self._run_dir.path().display().to_string(),
            state: match self.phase {
                Phase::Running => "running",
                Phase::Draining { .. } => "draining",
            }
            .to_owned(),
            uptime_secs: self.started_at.elapsed().as_secs_f64(),
            mode: format!("{:?}", self.mode).to_lowercase(),
            salvage: self.salvage.as_str().to_owned(),
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
            health_checks: finished.health_checks,
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
            agent_check: self.balancer.addr().map(|addr| addr.to_string()),
            agent_reply: self.agent_line(),
            balancer: self.balancer.state_name().to_owned(),
            stopping_in_secs: self
                .balancer
                .stop_at
                .map(|(at, _)| at.saturating_duration_since(Instant::now()).as_secs_f64()),
            reuseport_selection: self.reuseport_selection(),
            kernel_selected: kernel_counters.map(|(selected, _, _)| selected),
            kernel_migrated: kernel_counters.map(|(_, migrated, _)| migrated),
            kernel_fallbacks: kernel_counters.map(|(_, _, fallbacks)| fallbacks),
        }
    }

    /// In reuseport mode, who picks the listener of a new connection.
    fn reuseport_selection(&self) -> Option<String> {
        (self.mode == Mode::Reuseport).then(|| match &self.kernel_balancer {
            Some(_) => format!("ebpf {}", self.policy.as_str()),
            None => "kernel hash".to_owned(),
        })
    }

    pub(super) fn workers_reply(&self) -> WorkersReply {
        let now = Instant::now();
        let mut rows: Vec<_> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Ready | WorkerState::Retiring))
            .map(|(_, w)| {
                let mut row = w.row(now);
                if let (Some(kernel), Some(slot)) = (&self.kernel_balancer, w.kernel_slot) {
                    row.kernel_load = Some(kernel.table().load(slot));
                }
                row
            })
            .collect();
        rows.sort_by_key(|row| row.id);
        WorkersReply { workers: rows }
    }

    /// Brings the totals up to every worker's shared counters (read from
    /// memory: no message, no system call).
    pub(super) fn merge_worker_counts(&mut self) {
        for (_, worker) in self.workers.iter_mut() {
            let new_done = worker.merge_handed_done();
            self.counters.finished.merge(&new_done);
        }
    }

    /// Asks every worker for a fresh stats report (answered later; the
    /// control client gets the latest report now, never waits).
    pub(super) fn request_worker_stats(&mut self) {
        let now = Instant::now();
        if self.last_stats_request.is_some_and(|at| now.duration_since(at) < STATS_REQUEST_INTERVAL)
        {
            return;
        }
        self.last_stats_request = Some(now);
        let mut frame = [0u8; 16];
        let Ok(len) = codec::encode(&MasterToWorker::ReportStats, &mut frame) else { return };
        for (_, worker) in self.workers.iter_mut() {
            if worker.state == WorkerState::Ready && worker.room.has_room() {
                // A full channel just means this report comes later.
                let _ = worker.chan.send(&frame[..len], &[]);
            }
        }
    }
}

/// What the control loop does after queueing an answer.
pub(super) enum AfterAnswer {
    Continue,
    Close,
}

/// One JSON object, serialized without newlines.
pub(super) fn json_line<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|err| format!("{{\"error\":\"cannot serialize the answer: {err}\"}}"))
}
