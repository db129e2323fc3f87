//! The load balancer's side: the agent-check listener (`--agent-check`),
//! the `drain` / `ready` state operators set, and the drain grace that
//! SIGTERM and `stop` begin with (`--drain-secs`).
//!
//! Each agent connection is accepted, written one line (the answer of
//! [`crate::agent::reply`], computed once per batch of accepts) and closed;
//! nothing is read from it, and the write cannot block: a new socket's
//! send buffer holds far more than one line.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::Interest;
use tracing::{debug, info, warn};

use crate::agent::{AgentView, DrainReason};
use crate::control::out_of_resources;
use crate::workers::WorkerState;

use super::{Master, Phase, AGENT_LISTENER, WARN_INTERVAL};

/// Agent connections answered per loop turn; the rest wait for the next
/// (agents ask every second or two: more than this is a flood).
const AGENT_ACCEPTS_PER_TURN: usize = 64;
/// How long to wait before accepting again after EMFILE/ENFILE.
const AGENT_ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the master says to a load balancer, and when it stops.
pub(super) struct Balancer {
    /// `--agent-check`: the listener and the address it is bound to.
    pub listener: Option<(mio::net::TcpListener, SocketAddr)>,
    /// An operator said `drain` (and not `ready` since).
    pub drain_asked: bool,
    /// SIGTERM or `stop` with a drain grace: the listener closes then.
    pub stop_at: Option<(Instant, &'static str)>,
    /// `--drain-secs`.
    pub grace: Duration,
    /// Accept again then (after EMFILE, or when a turn's share was used).
    pub accept_again_at: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Balancer {
    pub fn new(listener: Option<mio::net::TcpListener>, grace: Duration) -> Result<Balancer> {
        let listener = match listener {
            Some(listener) => {
                let addr = listener.local_addr().context("reading the agent-check address")?;
                Some((listener, addr))
            }
            None => None,
        };
        Ok(Balancer {
            listener,
            drain_asked: false,
            stop_at: None,
            grace,
            accept_again_at: None,
            last_warning: None,
        })
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|(_, addr)| *addr)
    }

    pub fn drain(&self) -> Option<DrainReason> {
        if self.stop_at.is_some() {
            Some(DrainReason::Stopping)
        } else if self.drain_asked {
            Some(DrainReason::Asked)
        } else {
            None
        }
    }

    /// `ready`, `drain` or `stopping`, for `info`.
    pub fn state_name(&self) -> &'static str {
        match self.drain() {
            None => "ready",
            Some(DrainReason::Asked) => "drain",
            Some(DrainReason::Stopping) => "stopping",
        }
    }

    /// The next time the loop must wake for the balancer.
    pub fn deadline(&self) -> Option<Instant> {
        [self.stop_at.map(|(at, _)| at), self.accept_again_at].into_iter().flatten().min()
    }
}

/// Binds `--agent-check` (before privileges are dropped, like the client
/// listener).
pub(super) fn bind(addr: SocketAddr) -> Result<mio::net::TcpListener> {
    mio::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the agent-check address {addr} (--agent-check)"))
}

impl Master {
    /// What the agent's answer is computed from.
    pub(super) fn agent_view(&self) -> AgentView {
        let ready = || {
            self.rotation
                .iter()
                .filter_map(|&key| self.workers.get(key))
                .filter(|w| w.state == WorkerState::Ready && !w.out_of_fds)
        };
        let capacity = ready().map(|w| (w.capacity > 0).then_some(u64::from(w.capacity))).sum();
        AgentView {
            shutting_down: self.phase != Phase::Running,
            drain: self.balancer.drain(),
            workers: ready().count(),
            target_workers: self.supervisor.target,
            capacity,
            in_flight: ready().map(|w| w.in_flight()).sum(),
            queued: self.pending.len(),
            queue_limit: self.queue_limit,
        }
    }

    /// The line an agent check gets now (without the newline).
    pub(super) fn agent_line(&self) -> String {
        crate::agent::reply(&self.agent_view()).to_string()
    }

    /// The agent listener is readable: answer who waits, up to a turn's
    /// share.
    pub(super) fn answer_agent_checks(&mut self) {
        self.balancer.accept_again_at = None;
        let Some((listener, _)) = &self.balancer.listener else { return };
        let mut line = None;
        // The control socket's spare fd, let go for one agent check.
        let mut borrowed_spare = false;
        let mut turn_used = true;
        for _ in 0..AGENT_ACCEPTS_PER_TURN {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let text = line.get_or_insert_with(|| {
                        let mut text = crate::agent::reply(&self.agent_view()).to_string();
                        text.push('\n');
                        text
                    });
                    // Best effort: whoever went away already needs no answer.
                    if let Err(err) = stream.write_all(text.as_bytes()) {
                        debug!(%peer, %err, "agent check went away before its answer");
                    }
                    if std::mem::take(&mut borrowed_spare) {
                        // Closed first, so that the spare takes this very
                        // fd back before anything else (a client accept).
                        drop(stream);
                        self.control.refill_spare();
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    turn_used = false;
                    break;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                // Out of fds: the control socket's spare lets one check in
                // (answered and closed at once, the spare reopened on its
                // fd), so a balancer still hears from a master at its limit.
                Err(err)
                    if out_of_resources(&err)
                        && !borrowed_spare
                        && self.control.spare_fd.take().is_some() =>
                {
                    borrowed_spare = true;
                }
                Err(err) => {
                    let now = Instant::now();
                    // Edge-triggered: who waits brings no new event.
                    self.balancer.accept_again_at = Some(now + AGENT_ACCEPT_RETRY);
                    if self.balancer.last_warning.is_none_or(|at| now - at >= WARN_INTERVAL) {
                        self.balancer.last_warning = Some(now);
                        if out_of_resources(&err) {
                            warn!(%err, "out of fds: agent checks wait");
                        } else {
                            warn!(%err, "accepting an agent check failed");
                        }
                    }
                    turn_used = false;
                    break;
                }
            }
        }
        if borrowed_spare {
            self.control.refill_spare();
        }
        if turn_used {
            // A turn's share is used: the rest next turn.
            self.balancer.accept_again_at = Some(Instant::now());
        }
    }

    /// SIGTERM or `stop`: with a drain grace, first say `drain` for that
    /// long; a second request (or none) closes the listener now.
    pub(super) fn request_stop(&mut self, reason: &'static str) -> String {
        if self.phase != Phase::Running {
            return "already shutting down".into();
        }
        if self.balancer.grace.is_zero() || self.balancer.stop_at.is_some() {
            if self.balancer.stop_at.take().is_some() {
                info!(reason, "asked again: ending the drain grace early");
            }
            self.begin_shutdown(reason);
            return "shutting down".into();
        }
        let grace = self.balancer.grace;
        self.balancer.stop_at = Some((Instant::now() + grace, reason));
        crate::notify::stopping();
        info!(
            reason,
            drain_secs = grace.as_secs_f64(),
            agent_check = self.balancer.addr().map(|a| a.to_string()),
            "stopping: the agent check says drain; the listener closes when the grace ends \
             (send it again to close now)"
        );
        format!("draining for {:.1} s, then shutting down", grace.as_secs_f64())
    }

    /// Once per turn: end the drain grace when due, and accept agent
    /// checks left waiting.
    pub(super) fn balancer_turn(&mut self, now: Instant) {
        if let Some((at, reason)) = self.balancer.stop_at {
            if now >= at && self.phase == Phase::Running {
                self.balancer.stop_at = None;
                self.begin_shutdown(reason);
            }
        }
        if self.balancer.accept_again_at.is_some_and(|at| at <= now) {
            self.answer_agent_checks();
        }
    }

    /// `drain` on the control socket.
    pub(super) fn drain_for_balancer(&mut self) -> String {
        if !self.balancer.drain_asked {
            info!("drain asked: the agent check says drain; still serving what comes");
        }
        self.balancer.drain_asked = true;
        match self.balancer.addr() {
            Some(addr) => format!("the agent check on {addr} says drain; still serving"),
            None => "draining, but no --agent-check is set: no balancer is told".into(),
        }
    }

    /// `ready` on the control socket.
    pub(super) fn ready_for_balancer(&mut self) -> Result<String, String> {
        if self.phase != Phase::Running || self.balancer.stop_at.is_some() {
            return Err("stopping: the agent check keeps saying drain".into());
        }
        if self.balancer.drain_asked {
            info!("ready asked: the agent check says up again");
        }
        self.balancer.drain_asked = false;
        Ok(match self.balancer.addr() {
            Some(addr) => format!("the agent check on {addr} says {}", self.agent_line()),
            None => "ready, but no --agent-check is set: no balancer is told".into(),
        })
    }

    /// Starts answering agent checks (at start, or when a new master takes
    /// over after an upgrade).
    pub(super) fn watch_agent_listener(&mut self) {
        if let Some((listener, addr)) = &mut self.balancer.listener {
            match self.poll.registry().register(listener, AGENT_LISTENER, Interest::READABLE) {
                Ok(()) => info!(addr = %addr, "answering HAProxy agent checks"),
                Err(err) => warn!(%err, "cannot watch the agent-check listener"),
            }
        }
        // Edge-triggered: answer who waits already.
        self.answer_agent_checks();
    }

    /// The old master after an upgrade: the new one answers from now on.
    pub(super) fn stop_answering_agent_checks(&mut self) {
        if let Some((mut listener, _)) = self.balancer.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.balancer.accept_again_at = None;
    }
}
