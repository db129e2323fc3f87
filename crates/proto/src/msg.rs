//! The messages of the master↔worker channel.
//!
//! A worker connects to `<run-dir>/workers.sock` (a Unix `SOCK_SEQPACKET`
//! socket, one message per packet), says [`WorkerToMaster::Hello`], and is
//! answered [`MasterToWorker::Welcome`] or [`MasterToWorker::Refused`]. The
//! `Hello` packet carries the worker's own end of the channel: the master
//! keeps it, so that if the worker dies it can take back the connections
//! still queued to it, unread (see ARCHITECTURE.md).
//! After that the master sends [`MasterToWorker::Connection`] packets, each
//! carrying exactly one connected TCP fd as `SCM_RIGHTS` ancillary data, and
//! the worker counts how they ended as the `Welcome` told it
//! ([`Reporting`]): as running totals in counters shared with the master
//! (a sealed memfd, the `Hello` packet's second fd), or by id in
//! [`WorkerToMaster::Finished`] reports.
//!
//! A worker never receives a packet whose fds it has no room for: a packet
//! whose fds do not fit is cut short by the kernel (`MSG_CTRUNC`) and the
//! missing fds are closed. So a worker near its open-file limit says
//! [`WorkerToMaster::OutOfFds`] and stops reading what carries fds; the
//! master offers it nothing more (and, holding the worker's end of the
//! channel, takes back what is already queued to it) until it says
//! [`WorkerToMaster::RoomForFds`]. The master tells each worker, in its
//! `Welcome`, the most fds one of its packets carries.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a worker sends to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerToMaster {
    /// First message on a new channel: who is registering.
    Hello(Hello),
    /// Connections this worker finished since its previous report, by id
    /// ([`Reporting::EachConnection`] only).
    Finished(Finished),
    /// Some handed-off connections finished this turn, so this worker has
    /// room again ([`Reporting::CountersAndWake`]); the counts themselves
    /// are in the shared counters.
    Freed,
    /// The worker's own measurements, sent periodically and when asked.
    Stats(WorkerStats),
    /// Answer to [`MasterToWorker::StopAccepting`]: its listener is closed.
    StoppedAccepting,
    /// The worker wants to leave (it got SIGINT/SIGTERM): send it no more
    /// connections, and end its channel with `Shutdown`.
    Leaving,
    /// The worker is close to its open-file limit: send it no packet with
    /// fds until [`WorkerToMaster::RoomForFds`]. Until then it receives
    /// only while it has room for the largest packet (`Welcome`'s
    /// `max_fds_per_packet`), so what is queued to it may be taken back.
    OutOfFds,
    /// The worker has room for fds again (after [`WorkerToMaster::OutOfFds`]).
    RoomForFds,
}

/// A worker's registration. Its packet carries two fds: the worker's own
/// end of the channel, and the memfd of its shared counters (see
/// [`Totals::to_slots`]). Without the first, connections queued to it are
/// lost if it dies; without the second it is refused unless the master
/// wants reports by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The worker's process id, so the master can tell its own children
    /// from workers started separately.
    pub pid: u32,
    /// The most connections it will hold at once (`--max-conns`); 0 means
    /// no limit. The master sends no more while it holds that many.
    pub capacity: u32,
    /// The protocol it speaks to clients (`--protocol`).
    pub protocol: ClientProtocol,
}

/// The protocol a worker speaks to its clients, as its `Hello` says. The
/// master needs it for one judgement only: after a worker died
/// (`--salvage exact`), whether a connection's reply went out in full can be
/// told from byte counts for the article's protocol (one read, one reply of
/// known length), never for HTTP (keep-alive, pipelining).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientProtocol {
    /// The article's: `server get message: ` and the first chunk read.
    Article,
    /// Minimal HTTP/1.1.
    Http,
}

/// Connections a worker finished since its previous report, by id
/// ([`Reporting::EachConnection`], the master's `--salvage exact`). A worker
/// sends at most one of these per turn of its event loop (split when more
/// than [`MAX_COMPLETIONS_PER_REPORT`] finished), so the master is not woken
/// once per connection. In that mode the master keeps its own copy of each
/// connection's fd until it is reported here, so that it can save or account
/// for it if the worker dies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// One entry per connection, in the order they finished.
    pub conns: Vec<Completion>,
}

/// The `conn_id` a worker gives connections it accepted itself (the
/// master's ids start at 1); they never appear in [`Finished`].
pub const SELF_ACCEPTED: u64 = 0;

/// Completions per [`Finished`] report; keeps a report far below
/// [`crate::MAX_FRAME_LEN`].
pub const MAX_COMPLETIONS_PER_REPORT: usize = 128;

/// How one connection ended in a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The id from its [`Dispatch`] (connections a worker accepted itself
    /// are counted in [`WorkerStats::self_accepted_done`] instead).
    pub conn_id: u64,
    /// What happened.
    pub outcome: Outcome,
    /// Request bytes read.
    pub bytes_in: u32,
    /// Reply bytes written.
    pub bytes_out: u32,
}

/// The ways a connection ends in a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered in full and closed.
    Served,
    /// The client reset it first.
    Reset,
    /// Another I/O error.
    Failed,
    /// The client did not finish its request (and take the reply) within
    /// the worker's `--read-timeout`.
    TimedOut,
    /// A balancer's health check (PROXY v2 `LOCAL`) that ended without a
    /// request: counted apart, not as a reset.
    HealthCheck,
    /// The packet reached the worker but its fd did not (`MSG_CTRUNC`, or a
    /// malformed packet). With [`Reporting::EachConnection`] the master
    /// still holds the connection and hands it to another worker (a bounded
    /// number of times); otherwise nobody holds it any more and the worker
    /// counts it as `Failed` (a worker avoids this by never receiving
    /// without room: see [`WorkerToMaster::OutOfFds`]).
    NotReceived,
}

/// What the master sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterToWorker {
    /// Registration accepted; the worker's id in the master's logs.
    Welcome {
        /// Small integer naming the worker, unique within one master's life.
        worker_id: u32,
        /// How to report finished connections.
        reporting: Reporting,
        /// The most fds one of the master's packets carries (its `--batch`):
        /// the room a worker needs before it receives.
        max_fds_per_packet: u32,
    },
    /// Registration refused; the channel is closed after this message.
    Refused {
        /// Why, in words meant for the worker's log.
        reason: String,
    },
    /// A connection to serve. The packet carries exactly one fd.
    Connection(Dispatch),
    /// Several connections in one packet (`--batch`): one fd per header, in
    /// the same order; at most [`crate::MAX_BATCH`].
    Batch(Vec<Dispatch>),
    /// Finish the connections you hold, then exit. No more fds follow.
    Shutdown,
    /// Send a [`WorkerToMaster::Stats`] report now.
    ReportStats,
    /// Accept connections yourself (`--mode shared` or `reuseport`).
    Listen(ListenMode),
    /// Stop accepting (drain what is queued on your own listener first) and
    /// answer [`WorkerToMaster::StoppedAccepting`]; keep serving.
    StopAccepting,
}

/// How a worker reports the connections the master handed it, chosen by
/// the master from what it needs to know and how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reporting {
    /// Every connection by id, once per turn ([`WorkerToMaster::Finished`]):
    /// the master holds a copy of each fd until then (`--salvage exact`).
    EachConnection,
    /// Running totals in the shared counters, which the master reads when it
    /// wants, with no message at all.
    Counters,
    /// The same, plus [`WorkerToMaster::Freed`] at the end of each turn in
    /// which some finished: a worker with a capacity, whose master must
    /// learn at once that it has room.
    CountersAndWake,
}

/// How a worker gets its own connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenMode {
    /// The packet carries the master's listening socket; every worker
    /// accepts on it (gunicorn and nginx prefork).
    Shared,
    /// Bind a listener of your own with `SO_REUSEPORT` on this address and
    /// let the kernel spread connections (nginx `reuseport`).
    ReusePort {
        /// The address the master bound.
        addr: SocketAddr,
        /// The `listen` backlog.
        backlog: u32,
    },
    /// Accept on the `SO_REUSEPORT` listener this packet carries, which
    /// the master bound and put in `slot` of its kernel balancer (`--mode
    /// reuseport --policy least|pull`). The packet's second fd is the
    /// balancer's load table: release the slot's load by one for each
    /// connection finished, and now and then set it to what is really
    /// held and queued.
    Balanced {
        /// The listener's slot in the balancer.
        slot: u32,
    },
}

/// The header that travels with each connected fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    /// Connection number, unique within one master's life, counting from 1.
    /// (The client's address does not travel: the master accepts without
    /// asking for it, as libuv does, and a worker that logs it asks the
    /// socket, `getpeername`.)
    pub conn_id: u64,
    /// When the master accepted it, in `CLOCK_MONOTONIC` nanoseconds (one
    /// clock for every process on the machine, so the worker can measure
    /// the hand-off latency).
    pub accepted_at_ns: u64,
    /// How many times this connection was handed out before and came back
    /// unreceived (its worker died, or ran out of fds); 0 on its first
    /// hand-off. The master gives up on a connection past a bound.
    pub redispatches: u8,
}

/// How many connections ended, by outcome, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Answered in full.
    pub served: u64,
    /// Reset by the client.
    pub resets: u64,
    /// Closed for another I/O error.
    pub failed: u64,
    /// Closed by the read timeout.
    pub timeouts: u64,
    /// Balancer health checks (PROXY v2 `LOCAL`, no request).
    pub health_checks: u64,
    /// Request bytes read.
    pub bytes_in: u64,
    /// Reply bytes written.
    pub bytes_out: u64,
}

impl Totals {
    /// Counts one completion (`NotReceived` is not one: it is sent again).
    pub fn add(&mut self, completion: &Completion) {
        match completion.outcome {
            Outcome::Served => self.served += 1,
            Outcome::Reset => self.resets += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::TimedOut => self.timeouts += 1,
            Outcome::HealthCheck => self.health_checks += 1,
            Outcome::NotReceived => return,
        }
        self.bytes_in += u64::from(completion.bytes_in);
        self.bytes_out += u64::from(completion.bytes_out);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Totals) {
        self.served += other.served;
        self.resets += other.resets;
        self.failed += other.failed;
        self.timeouts += other.timeouts;
        self.health_checks += other.health_checks;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }

    /// What grew from `earlier` to `self` (both running totals).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            served: self.served.saturating_sub(earlier.served),
            resets: self.resets.saturating_sub(earlier.resets),
            failed: self.failed.saturating_sub(earlier.failed),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            health_checks: self.health_checks.saturating_sub(earlier.health_checks),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
        }
    }

    /// Connections that ended, whatever the outcome (health checks too:
    /// they were handed out like any connection).
    pub fn total(&self) -> u64 {
        self.served + self.resets + self.failed + self.timeouts + self.health_checks
    }

    /// Slots of the shared counters these totals take.
    pub const SLOTS: usize = 7;

    /// The totals as shared-counter slots, in a fixed order.
    pub fn to_slots(&self) -> [u64; Totals::SLOTS] {
        [
            self.served,
            self.resets,
            self.failed,
            self.timeouts,
            self.bytes_in,
            self.bytes_out,
            self.health_checks,
        ]
    }

    /// The inverse of [`Totals::to_slots`].
    pub fn from_slots(slots: &[u64; Totals::SLOTS]) -> Totals {
        let [served, resets, failed, timeouts, bytes_in, bytes_out, health_checks] = *slots;
        Totals { served, resets, failed, timeouts, health_checks, bytes_in, bytes_out }
    }
}

/// What a worker measures about itself. Counts of handed-off connections
/// are in the shared counters (or [`Finished`] reports); this carries what
/// only the worker can see, and the connections it accepted itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Connections it accepted itself and finished (shared and reuseport
    /// modes), running totals. They are counted here, once per report,
    /// rather than in per-turn [`Finished`] reports, so a master that no
    /// longer accepts does no per-connection work at all.
    pub self_accepted_done: Totals,
    /// Connections it accepted itself (shared and reuseport modes), since
    /// it started.
    pub accepted: u64,
    /// Connections the worker holds right now.
    pub in_flight: u32,
    /// CPU time in user mode since the worker started, microseconds.
    pub cpu_user_us: u64,
    /// CPU time in kernel mode since the worker started, microseconds.
    pub cpu_sys_us: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Time from receiving a connection to closing it, median, microseconds
    /// (over the worker's life).
    pub handling_p50_us: u64,
    /// Same, 99th percentile.
    pub handling_p99_us: u64,
    /// Time from the master's accept to the worker receiving the
    /// connection, median, microseconds (over the worker's life).
    pub handoff_p50_us: u64,
    /// Same, 99th percentile.
    pub handoff_p99_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(outcome: Outcome, bytes_in: u32, bytes_out: u32) -> Completion {
        Completion { conn_id: SELF_ACCEPTED, outcome, bytes_in, bytes_out }
    }

    #[test]
    fn totals_count_outcomes_and_differences_of_running_totals() {
        let mut totals = Totals::default();
        totals.add(&completion(Outcome::Served, 5, 25));
        totals.add(&completion(Outcome::TimedOut, 0, 0));
        totals.add(&completion(Outcome::NotReceived, 9, 9));
        assert_eq!((totals.served, totals.timeouts, totals.total()), (1, 1, 2));
        assert_eq!((totals.bytes_in, totals.bytes_out), (5, 25));
        let earlier = totals;
        totals.add(&completion(Outcome::Reset, 0, 0));
        let delta = totals.since(&earlier);
        assert_eq!((delta.resets, delta.total()), (1, 1));
        let mut sum = earlier;
        sum.merge(&delta);
        assert_eq!(sum, totals);
        assert_eq!(earlier.since(&totals), Totals::default(), "never negative");
        assert_eq!(Totals::from_slots(&totals.to_slots()), totals);
        assert_eq!(totals.to_slots()[1], totals.resets);
    }
}

/// The master-upgrade channel (`<run-dir>/upgrade.sock`, one message per
/// packet): the running master hands its sockets to the new master it
/// started, which says when it is ready to take over.
///
/// 1. old → new: [`Upgrade::Handover`], carrying five fds in this order:
///    the client listener, the workers' listener, the control listener,
///    the run directory, the lock file (its `flock` is on the open file
///    description, so the new master holds the lock from then on too);
///    and a sixth, the agent-check listener, when `agent_listener` says so.
/// 2. new → old: [`Upgrade::Ready`], once its workers registered and it
///    accepts on the listener.
/// 3. old → new: [`Upgrade::Committed`]: the old master stopped accepting
///    and is draining; the control socket, run dir and pid file are the new
///    master's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upgrade {
    /// The old master's sockets and run dir, with its generation.
    Handover {
        /// The old master's generation (the first master is 1).
        generation: u64,
        /// The old master's pid.
        pid: u32,
        /// A sixth fd follows: the `--agent-check` listener.
        agent_listener: bool,
        /// An operator asked for `drain`: the new master keeps saying so.
        draining: bool,
        /// Three more fds follow (after the agent-check listener): the
        /// kernel balancer's program, sockarray and load table.
        kernel_balancer: bool,
    },
    /// The new master's workers registered and it accepts connections.
    Ready {
        /// The new master's pid.
        pid: u32,
    },
    /// The old master stopped accepting: the new one is in charge.
    Committed,
    /// The new master cannot take over (its pid file cannot be written):
    /// the old one keeps serving and reports why.
    Failed {
        /// Why, in words meant for `info`'s `upgrade_error`.
        reason: String,
    },
}

/// The number of fds an [`Upgrade::Handover`] packet carries, without the
/// agent-check listener.
pub const HANDOVER_FDS: usize = 5;

/// File name of the upgrade socket inside the run directory (exists only
/// while an upgrade starts).
pub const UPGRADE_SOCKET_NAME: &str = "upgrade.sock";
