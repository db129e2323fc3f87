//! What the master tells a load balancer about itself: the one line of
//! HAProxy's agent check (`--agent-check ADDR`).
//!
//! HAProxy connects to the agent every `agent-inter`, reads one line and
//! closes. The line is words separated by spaces: an administrative state
//! (`ready`, `drain`), an operational state (`up`, `down`), a weight as a
//! percentage of the server's configured weight (`75%`), `maxconn:N`, and
//! after `down` a reason for HAProxy's log (`#...`). [`reply`] computes it
//! from an [`AgentView`] of state the master already holds; no worker is
//! asked and nothing is measured for it. The socket side lives in
//! `server::agent`.

use std::fmt;

/// What the agent's answer is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentView {
    /// The master is shutting down: its listener is closed or closing.
    pub shutting_down: bool,
    /// Why the balancer should send no new connections, if it should.
    pub drain: Option<DrainReason>,
    /// Registered workers that can take connections (or accept them, in
    /// shared/reuseport mode).
    pub workers: usize,
    /// Spawned workers the master keeps running; 0 when workers only join
    /// by themselves (`--workers 0`).
    pub target_workers: usize,
    /// The most connections the workers hold at once, summed, when every
    /// one has a cap (`--max-conns`); `None` if any has none.
    pub capacity: Option<u64>,
    /// Connections handed to workers and not finished.
    pub in_flight: u64,
    /// Connections waiting in the master for a worker.
    pub queued: usize,
    /// `--queue-limit`.
    pub queue_limit: usize,
}

/// Why the agent says `drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// An operator asked (`drain` on the control socket).
    Asked,
    /// SIGTERM or `stop`: the listener closes when `--drain-secs` ends.
    Stopping,
}

/// The agent's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentReply {
    /// Take connections, this share of the configured weight (1..=100);
    /// at most `maxconn` at once when the workers have caps.
    Up { weight_percent: u8, maxconn: Option<u64> },
    /// Send no new connections; the ones that come are still served.
    Drain,
    /// Send nothing: no worker can take work, or the master is stopping.
    Down { reason: &'static str },
}

impl fmt::Display for AgentReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            // `ready` first: it cancels a drain this agent said earlier.
            AgentReply::Up { weight_percent, maxconn } => {
                write!(f, "ready up {weight_percent}%")?;
                if let Some(maxconn) = maxconn {
                    write!(f, " maxconn:{maxconn}")?;
                }
                Ok(())
            }
            AgentReply::Drain => f.write_str("drain"),
            AgentReply::Down { reason } => write!(f, "down #{reason}"),
        }
    }
}

/// The answer for `view`.
///
/// The weight is 100 % times three shares, each between 0 and 1: the
/// workers registered of those the master keeps, the free part of their
/// capacity (when they have caps), and the free part of the master's queue.
/// It never drops below 1 % while the master can take work: 0 % would be
/// a drain in all but name, and that is what `drain` says.
pub fn reply(view: &AgentView) -> AgentReply {
    if view.shutting_down {
        return AgentReply::Down { reason: "handoff is shutting down" };
    }
    if view.workers == 0 {
        return AgentReply::Down { reason: "no handoff worker can take connections" };
    }
    if view.drain.is_some() {
        return AgentReply::Drain;
    }
    // Each share as a fraction `numerator / denominator`, multiplied out
    // in integers.
    let workers = match view.target_workers {
        0 => (1, 1),
        target => (view.workers.min(target) as u128, target as u128),
    };
    let capacity = match view.capacity {
        Some(total) if total > 0 => ((total - view.in_flight.min(total)) as u128, total as u128),
        _ => (1, 1),
    };
    let queue_limit = view.queue_limit.max(1) as u128;
    let queue = (queue_limit - (view.queued as u128).min(queue_limit), queue_limit);
    let weight = 100 * workers.0 * capacity.0 * queue.0 / (workers.1 * capacity.1 * queue.1);
    AgentReply::Up {
        weight_percent: weight.clamp(1, 100) as u8,
        maxconn: view.capacity.filter(|&total| total > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> AgentView {
        AgentView {
            shutting_down: false,
            drain: None,
            workers: 4,
            target_workers: 4,
            capacity: None,
            in_flight: 0,
            queued: 0,
            queue_limit: 100,
        }
    }

    fn weight(view: &AgentView) -> u8 {
        match reply(view) {
            AgentReply::Up { weight_percent, .. } => weight_percent,
            other => panic!("not up: {other:?}"),
        }
    }

    #[test]
    fn a_healthy_idle_master_is_up_at_full_weight() {
        assert_eq!(reply(&healthy()), AgentReply::Up { weight_percent: 100, maxconn: None });
        assert_eq!(reply(&healthy()).to_string(), "ready up 100%");
    }

    #[test]
    fn the_weight_falls_with_the_workers_missing() {
        assert_eq!(weight(&AgentView { workers: 3, ..healthy() }), 75);
        assert_eq!(weight(&AgentView { workers: 1, ..healthy() }), 25);
        // More than the target (a joined worker): no more than full.
        assert_eq!(weight(&AgentView { workers: 6, ..healthy() }), 100);
        // Workers that join by themselves: each counts in full.
        assert_eq!(weight(&AgentView { workers: 1, target_workers: 0, ..healthy() }), 100);
    }

    #[test]
    fn the_weight_falls_as_the_capacity_fills_and_maxconn_is_the_capacity() {
        let capped = AgentView { capacity: Some(40), ..healthy() };
        assert_eq!(reply(&capped), AgentReply::Up { weight_percent: 100, maxconn: Some(40) });
        assert_eq!(weight(&AgentView { in_flight: 10, ..capped }), 75);
        assert_eq!(weight(&AgentView { in_flight: 30, ..capped }), 25);
        // Full (or over, as reports lag): the least weight, still up.
        assert_eq!(weight(&AgentView { in_flight: 40, ..capped }), 1);
        assert_eq!(weight(&AgentView { in_flight: 45, ..capped }), 1);
        assert_eq!(
            reply(&AgentView { in_flight: 10, ..capped }).to_string(),
            "ready up 75% maxconn:40"
        );
        // Uncapped workers: in flight says nothing about room.
        assert_eq!(weight(&AgentView { in_flight: 1000, ..healthy() }), 100);
    }

    #[test]
    fn the_weight_falls_as_the_masters_queue_fills() {
        assert_eq!(weight(&AgentView { queued: 50, ..healthy() }), 50);
        assert_eq!(weight(&AgentView { queued: 99, ..healthy() }), 1);
        assert_eq!(weight(&AgentView { queued: 100, ..healthy() }), 1);
        assert_eq!(weight(&AgentView { queued: 7, queue_limit: 0, ..healthy() }), 1);
    }

    #[test]
    fn the_shares_multiply() {
        let view =
            AgentView { workers: 2, capacity: Some(8), in_flight: 4, queued: 25, ..healthy() };
        // 2/4 × 4/8 × 75/100 = 18.75 %.
        assert_eq!(weight(&view), 18);
    }

    #[test]
    fn drain_wins_over_up_and_loses_to_down() {
        let asked = AgentView { drain: Some(DrainReason::Asked), ..healthy() };
        assert_eq!(reply(&asked).to_string(), "drain");
        let stopping = AgentView { drain: Some(DrainReason::Stopping), ..healthy() };
        assert_eq!(reply(&stopping), AgentReply::Drain);
        assert!(matches!(reply(&AgentView { workers: 0, ..asked }), AgentReply::Down { .. }));
        assert!(matches!(
            reply(&AgentView { shutting_down: true, ..stopping }),
            AgentReply::Down { .. }
        ));
    }

    #[test]
    fn no_worker_or_a_shutdown_is_down_with_a_reason() {
        assert_eq!(
            reply(&AgentView { workers: 0, ..healthy() }).to_string(),
            "down #no handoff worker can take connections"
        );
        assert_eq!(
            reply(&AgentView { shutting_down: true, ..healthy() }).to_string(),
            "down #handoff is shutting down"
        );
    }

    #[test]
    fn a_zero_capacity_is_no_cap() {
        let view = AgentView { capacity: Some(0), in_flight: 3, ..healthy() };
        assert_eq!(reply(&view), AgentReply::Up { weight_percent: 100, maxconn: None });
    }
}
