//! The master's view of its workers: one [`WorkerSlot`] per registered (or
//! registering) channel, and the [`Spawner`] that starts and reaps the
//! worker processes this master owns.
//!
//! A worker is known by its channel, not by how it started: spawned workers
//! and workers started by hand register the same way, and the master tells
//! them apart by matching the pid in `Hello` with its children.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result};
use handoff_fdpass::{Channel, SharedCounters};
use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::time::Instant;

use handoff_proto::control::WorkerRow;
use handoff_proto::{ClientProtocol, Dispatch, Reporting, Totals, WorkerStats};

/// A connection the master accepted and still owns a copy of: queued for a
/// worker, or (`--salvage exact`) handed to one and not yet reported
/// finished.
#[derive(Debug)]
pub struct AcceptedConn {
    pub fd: OwnedFd,
    pub header: Dispatch,
}

/// Where a worker came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Started by this master (`--workers N`).
    Spawned,
    /// Started separately and joined (`handoff-worker --run-dir DIR`).
    External,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Spawned => "spawned",
            Origin::External => "external",
        }
    }
}

/// Where a worker is in its life, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Connected, `Hello` not yet received.
    Registering,
    /// Registered and taking connections.
    Ready,
    /// Told to finish and exit (`Shutdown` sent); takes no more connections.
    Retiring,
    /// It broke the protocol (it may still be alive); removed at the end
    /// of this loop turn, without touching what it holds.
    Broken,
    /// Its channel is closed (it died); what it held is salvaged at the end
    /// of this loop turn.
    Dead,
    /// Refused at connect (another uid); kept only until it has read why.
    Refused,
}

/// Whether a worker's channel has room for a hand-off, and whether its
/// registration asks epoll to say when it has room again.
///
/// The watch is taken off as soon as the channel has room, however the
/// master learns it (a writable event, or the retry timer): the
/// registration is edge-triggered, so a watch left on would wake the
/// master for nothing each time the worker reads a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRoom {
    has_room: bool,
    watched: bool,
}

impl Default for ChannelRoom {
    fn default() -> ChannelRoom {
        ChannelRoom { has_room: true, watched: false }
    }
}

impl ChannelRoom {
    /// May a hand-off be tried?
    pub fn has_room(self) -> bool {
        self.has_room
    }

    /// A send found the channel full. Returns whether to start watching it
    /// for room (it was not watched yet).
    #[must_use]
    pub fn full(&mut self) -> bool {
        self.has_room = false;
        !std::mem::replace(&mut self.watched, true)
    }

    /// No hand-off until the retry timer (too many fds in flight, a full
    /// channel for a control frame), without a watch.
    pub fn full_unwatched(&mut self) {
        self.has_room = false;
    }

    /// The channel has room again. Returns whether to stop watching it.
    #[must_use]
    pub fn room(&mut self) -> bool {
        self.has_room = true;
        std::mem::replace(&mut self.watched, false)
    }

    /// The channel is no longer registered (a failed watch, or a dead
    /// worker's channel taken out of the poll): nothing to take off.
    pub fn unregistered(&mut self) {
        self.watched = false;
    }
}

/// One worker channel and its counters.
#[derive(Debug)]
pub struct WorkerSlot {
    pub chan: Channel,
    pub state: WorkerState,
    /// Small id assigned at registration (0 while registering).
    pub id: u32,
    /// Pid from SO_PEERCRED at connect time.
    pub pid: i32,
    pub origin: Origin,
    /// Whether its channel has room for a hand-off, and whether the master
    /// watches it for room.
    pub room: ChannelRoom,
    /// How it reports finished connections (set at registration).
    pub reporting: Reporting,
    /// `--salvage exact`: connections handed over and not yet reported
    /// finished, in hand-off order, with the master's copy of each fd (see
    /// ARCHITECTURE.md). Empty otherwise.
    pub held: VecDeque<AcceptedConn>,
    /// A duplicate of the worker's own end of the channel (sent with its
    /// Hello): after its death, what it never received is read from here.
    pub worker_end: Option<Channel>,
    /// Readable when the worker process exits (with `worker_end` held, the
    /// channel itself never reports the death).
    pub pidfd: Option<OwnedFd>,
    /// The worker's running totals of handed-off connections finished.
    pub counters: Option<SharedCounters>,
    /// `counters` as last merged into `finished`.
    pub handed_done_merged: Totals,
    /// Connections taken back from its channel after it died.
    pub taken_back: u64,
    /// Connections the master counted lost with it (it died or was dropped
    /// holding them).
    pub written_off: u64,
    /// Most connections it takes at once (0 = no limit), from its Hello.
    pub capacity: u32,
    pub dispatched: u64,
    /// Sum of the worker's `Finished` reports.
    pub finished: Totals,
    /// The master owes this worker a `Shutdown` it could not send yet.
    pub shutdown_pending: bool,
    /// The worker's latest stats report and when it came.
    pub stats: Option<(WorkerStats, Instant)>,
    /// CPU % of one core between the last two reports.
    pub cpu_percent: Option<f64>,
    /// When it was refused, for [`WorkerState::Refused`] peers.
    pub refused_at: Option<Instant>,
    /// When its channel was accepted.
    pub connected_at: Instant,
    /// The master SIGKILLed it (`--timeout`); its channel closes soon.
    pub killed: bool,
    /// It accepts connections itself (shared/reuseport mode) and has not
    /// yet confirmed it stopped.
    pub listening: bool,
    /// It said it is out of fds (`OutOfFds`) and has not said it has room
    /// again: it is offered no connection meanwhile.
    pub out_of_fds: bool,
    /// It died with more queued to it than the master had fds for: its
    /// slot and end of the channel stay until the rest is read back.
    pub take_back_owed: bool,
    /// The protocol it speaks to clients, from its Hello.
    pub protocol: ClientProtocol,
    /// Its listener's slot in the kernel balancer (reuseport with a
    /// program), from its `Listen` until it is gone.
    pub kernel_slot: Option<u32>,
}

impl WorkerSlot {
    pub fn new(chan: Channel, pid: i32) -> WorkerSlot {
        WorkerSlot {
            chan,
            state: WorkerState::Registering,
            id: 0,
            pid,
            origin: Origin::External,
            room: ChannelRoom::default(),
            reporting: Reporting::EachConnection,
            held: VecDeque::new(),
            worker_end: None,
            pidfd: None,
            counters: None,
            handed_done_merged: Totals::default(),
            taken_back: 0,
            written_off: 0,
            capacity: 0,
            dispatched: 0,
            finished: Totals::default(),
            shutdown_pending: false,
            stats: None,
            cpu_percent: None,
            refused_at: None,
            connected_at: Instant::now(),
            killed: false,
            listening: false,
            out_of_fds: false,
            take_back_owed: false,
            protocol: ClientProtocol::Article,
            kernel_slot: None,
        }
    }

    /// When it last showed signs of life: its latest report, else its
    /// connection.
    pub fn last_seen(&self) -> Instant {
        self.stats.map_or(self.connected_at, |(_, at)| at)
    }

    /// Takes a stats report, computing CPU % against the previous one, and
    /// returns the connections it accepted itself and finished since then.
    pub fn record_stats(&mut self, stats: WorkerStats, now: Instant) -> Totals {
        let previous_done = self.stats.map(|(s, _)| s.self_accepted_done).unwrap_or_default();
        let new_done = stats.self_accepted_done.since(&previous_done);
        self.finished.merge(&new_done);
        if let Some((previous, at)) = &self.stats {
            let elapsed = now.duration_since(*at).as_secs_f64();
            let cpu_us = (stats.cpu_user_us + stats.cpu_sys_us)
                .saturating_sub(previous.cpu_user_us + previous.cpu_sys_us);
            // Reports asked for back to back say little about a rate.
            if elapsed >= 0.05 {
                self.cpu_percent = Some(cpu_us as f64 / 1e6 / elapsed * 100.0);
            }
        }
        self.stats = Some((stats, now));
        new_done
    }

    /// This worker as a row of the `workers` answer.
    pub fn row(&self, now: Instant) -> WorkerRow {
        let stats = self.stats.map(|(stats, _)| stats);
        WorkerRow {
            id: self.id,
            pid: self.pid,
            origin: self.origin.as_str().to_owned(),
            state: match self.state {
                WorkerState::Registering => "registering",
                WorkerState::Ready if self.out_of_fds => "out_of_fds",
                WorkerState::Ready => "ready",
                WorkerState::Retiring => "retiring",
                WorkerState::Broken => "broken",
                WorkerState::Dead => "dead",
                WorkerState::Refused => "refused",
            }
            .to_owned(),
            dispatched: self.dispatched,
            completed: self.finished.total(),
            in_flight: self.in_flight(),
            capacity: self.capacity,
            served: self.finished.served,
            resets: self.finished.resets,
            failed: self.finished.failed,
            timeouts: self.finished.timeouts,
            health_checks: self.finished.health_checks,
            bytes_in: self.finished.bytes_in,
            bytes_out: self.finished.bytes_out,
            cpu_user_secs: stats.map(|s| s.cpu_user_us as f64 / 1e6),
            cpu_sys_secs: stats.map(|s| s.cpu_sys_us as f64 / 1e6),
            cpu_percent: self.cpu_percent,
            rss_bytes: stats.map(|s| s.rss_bytes),
            handling_p50_us: stats.map(|s| s.handling_p50_us),
            handling_p99_us: stats.map(|s| s.handling_p99_us),
            handoff_p50_us: stats.map(|s| s.handoff_p50_us),
            handoff_p99_us: stats.map(|s| s.handoff_p99_us),
            last_report_age_secs: self.stats.map(|(_, at)| now.duration_since(at).as_secs_f64()),
            accepted: stats.map(|s| s.accepted),
            kernel_load: None,
            kernel_slot: self.kernel_slot,
        }
    }

    /// Can this worker be handed a connection right now?
    pub fn takes_work(&self) -> bool {
        self.state == WorkerState::Ready
            && self.room.has_room()
            && !self.out_of_fds
            && (self.capacity == 0 || self.in_flight() < u64::from(self.capacity))
    }

    /// Its running totals of handed-off connections finished, read from the
    /// shared counters now.
    pub fn handed_done(&self) -> Totals {
        self.counters.as_ref().map_or(Totals::default(), |counters| {
            let slots = counters.load();
            let mut totals = [0; Totals::SLOTS];
            totals.copy_from_slice(&slots[..Totals::SLOTS]);
            Totals::from_slots(&totals)
        })
    }

    /// Connections handed over and not yet finished (or taken back, or
    /// written off).
    pub fn in_flight(&self) -> u64 {
        match self.reporting {
            Reporting::EachConnection => self.held.len() as u64,
            Reporting::Counters | Reporting::CountersAndWake => self
                .dispatched
                .saturating_sub(self.taken_back + self.written_off + self.handed_done().total()),
        }
    }

    /// Brings `finished` up to the shared counters; returns what was new,
    /// for the master's totals.
    pub fn merge_handed_done(&mut self) -> Totals {
        if self.reporting == Reporting::EachConnection {
            return Totals::default();
        }
        let now = self.handed_done();
        let new = now.since(&self.handed_done_merged);
        self.handed_done_merged = now;
        self.finished.merge(&new);
        new
    }

    /// Takes the held connection `conn_id` out (its fd closes when dropped).
    /// Workers finish connections roughly in hand-off order, so the search
    /// starts at the front.
    pub fn take_held(&mut self, conn_id: u64) -> Option<AcceptedConn> {
        let position = self.held.iter().position(|conn| conn.header.conn_id == conn_id)?;
        self.held.remove(position)
    }
}

/// Starts worker processes and reaps them.
#[derive(Debug)]
pub struct Spawner {
    worker_bin: PathBuf,
    run_dir: PathBuf,
    /// Options passed on to every spawned worker.
    worker_args: Vec<OsString>,
    children: Vec<Child>,
    /// Children asked to exit: their exit is not a death.
    retiring: HashSet<u32>,
}

/// A child that exited.
#[derive(Debug)]
pub struct Exited {
    pub pid: u32,
    pub status: ExitStatus,
    /// It had been asked to exit (retired, scaled down, replaced).
    pub planned: bool,
}

impl Spawner {
    pub fn new(worker_bin: PathBuf, run_dir: &Path, worker_args: Vec<OsString>) -> Spawner {
        Spawner {
            worker_bin,
            run_dir: run_dir.to_owned(),
            worker_args,
            children: Vec::new(),
            retiring: HashSet::new(),
        }
    }

    /// Starts one worker that will register at the run dir's socket.
    pub fn spawn(&mut self) -> Result<u32> {
        let child = Command::new(&self.worker_bin)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(&self.worker_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches the master
            // only, which then drains the workers in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting worker {}", self.worker_bin.display()))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Is `pid` one of our children still running?
    pub fn owns(&self, pid: u32) -> bool {
        self.children.iter().any(|child| child.id() == pid)
    }

    /// Notes that `pid` was asked to exit.
    pub fn mark_retiring(&mut self, pid: u32) {
        if self.owns(pid) {
            self.retiring.insert(pid);
        }
    }

    /// Is `pid` a child that was asked to exit?
    pub fn is_retiring(&self, pid: u32) -> bool {
        self.retiring.contains(&pid)
    }

    /// Collects children that exited, without blocking.
    pub fn reap(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        let retiring = &mut self.retiring;
        self.children.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                let pid = child.id();
                exited.push(Exited { pid, status, planned: retiring.remove(&pid) });
                false
            }
            Ok(None) => true,
            Err(err) => {
                tracing::warn!(pid = child.id(), %err, "cannot wait for worker; forgetting it");
                retiring.remove(&child.id());
                false
            }
        });
        exited
    }

    /// Children not yet reaped.
    pub fn n_alive(&self) -> usize {
        self.children.len()
    }

    /// Children alive and not asked to exit: the ones that count toward
    /// the target.
    pub fn n_serving(&self) -> usize {
        self.children.iter().filter(|child| !self.retiring.contains(&child.id())).count()
    }

    /// Pids of the children alive and not asked to exit, oldest first.
    pub fn serving_pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).filter(|pid| !self.retiring.contains(pid)).collect()
    }

    /// SIGKILLs every child and reaps it.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        self.retiring.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use handoff_fdpass::COUNTER_SLOTS;

    use super::*;

    /// A registered slot on one end of a socketpair, counting through
    /// shared counters like a worker of the default mode; returns the
    /// worker's (writable) side of the counters too.
    fn slot(capacity: u32) -> (WorkerSlot, SharedCounters) {
        let (ours, _theirs) = Channel::pair().expect("socketpair");
        let mut slot = WorkerSlot::new(ours, 42);
        let worker_side = SharedCounters::create().expect("counters");
        let fd = worker_side.fd().try_clone_to_owned().expect("dup");
        slot.counters = Some(SharedCounters::open(fd).expect("open"));
        slot.reporting = Reporting::Counters;
        slot.state = WorkerState::Ready;
        slot.capacity = capacity;
        (slot, worker_side)
    }

    fn store(counters: &SharedCounters, totals: Totals) {
        let mut slots = [0; COUNTER_SLOTS];
        slots[..Totals::SLOTS].copy_from_slice(&totals.to_slots());
        counters.store(&slots);
    }

    fn totals(served: u64, failed: u64, bytes_in: u64) -> Totals {
        Totals { served, failed, bytes_in, ..Totals::default() }
    }

    #[test]
    fn in_flight_is_what_was_handed_over_and_not_finished_taken_back_or_written_off() {
        let (mut slot, worker) = slot(0);
        slot.dispatched = 10;
        assert_eq!(slot.in_flight(), 10);
        store(&worker, totals(3, 1, 40));
        assert_eq!(slot.in_flight(), 6, "read live from the shared counters");
        slot.taken_back = 2;
        slot.written_off = 1;
        assert_eq!(slot.in_flight(), 3);
        slot.written_off = 100;
        assert_eq!(slot.in_flight(), 0, "never below zero");
        slot.reporting = Reporting::EachConnection;
        assert_eq!(slot.in_flight(), 0, "exact mode counts held copies");
    }

    #[test]
    fn merging_the_counters_adds_only_what_is_new() {
        let (mut slot, worker) = slot(0);
        store(&worker, totals(3, 1, 40));
        assert_eq!(slot.merge_handed_done(), totals(3, 1, 40));
        assert_eq!(slot.merge_handed_done(), Totals::default(), "nothing new");
        store(&worker, totals(5, 1, 70));
        assert_eq!(slot.merge_handed_done(), totals(2, 0, 30));
        assert_eq!(slot.finished, totals(5, 1, 70));
        slot.reporting = Reporting::EachConnection;
        store(&worker, totals(9, 9, 99));
        assert_eq!(slot.merge_handed_done(), Totals::default(), "exact mode: reports only");
    }

    #[test]
    fn a_full_channel_is_watched_once_and_unwatched_as_soon_as_it_has_room() {
        let mut room = ChannelRoom::default();
        assert!(room.has_room());
        assert!(!room.room(), "never watched: nothing to take off");
        assert!(room.full(), "first full send: watch for room");
        assert!(!room.has_room());
        assert!(!room.full(), "full again while watched: already watching");
        assert!(room.room(), "room again: the watch comes off");
        assert!(room.has_room());
        assert!(!room.room(), "and only once");
    }

    #[test]
    fn room_found_by_the_retry_timer_also_takes_the_watch_off() {
        // The regression: the retry timer gave the worker work again but left
        // the channel watched for room, so every packet the worker read woke
        // the master for nothing (edge-triggered), until the next full send.
        let mut room = ChannelRoom::default();
        assert!(room.full());
        room.full_unwatched(); // too many fds in flight meanwhile
        assert!(room.room(), "the timer's room() must say to unwatch");
        assert!(room.full(), "so the next full send watches again");
    }

    #[test]
    fn a_channel_full_without_a_watch_needs_no_unwatching() {
        let mut room = ChannelRoom::default();
        room.full_unwatched();
        assert!(!room.has_room());
        assert!(!room.room());
        assert!(room.has_room());
        assert!(room.full());
        room.unregistered();
        assert!(!room.room(), "an unregistered channel is not re-registered");
    }

    #[test]
    fn a_worker_takes_work_while_ready_writable_with_fds_and_under_its_capacity() {
        let (mut slot, worker) = slot(2);
        assert!(slot.takes_work());
        slot.dispatched = 1;
        assert!(slot.takes_work(), "one in flight, capacity two");
        slot.dispatched = 2;
        assert!(!slot.takes_work(), "at capacity");
        store(&worker, totals(1, 0, 0));
        assert!(slot.takes_work(), "one finished: room again");
        for (state, takes) in [
            (WorkerState::Registering, false),
            (WorkerState::Retiring, false),
            (WorkerState::Dead, false),
            (WorkerState::Ready, true),
        ] {
            slot.state = state;
            assert_eq!(slot.takes_work(), takes, "{state:?}");
        }
        slot.room.full_unwatched();
        assert!(!slot.takes_work(), "channel full");
        let _ = slot.room.room();
        slot.out_of_fds = true;
        assert!(!slot.takes_work(), "out of fds");
        assert_eq!(slot.row(Instant::now()).state, "out_of_fds");
        slot.out_of_fds = false;
        assert_eq!(slot.row(Instant::now()).state, "ready");
        slot.capacity = 0;
        slot.dispatched = 1_000;
        assert!(slot.takes_work(), "no capacity: no limit");
    }

    #[test]
    fn stats_give_cpu_percent_and_self_accepted_connections_once() {
        let (mut slot, _worker) = slot(0);
        let at = Instant::now();
        let stats = |cpu_user_us, cpu_sys_us, served| WorkerStats {
            self_accepted_done: totals(served, 0, 0),
            cpu_user_us,
            cpu_sys_us,
            rss_bytes: 4096,
            ..WorkerStats::default()
        };
        assert_eq!(slot.record_stats(stats(100, 100, 2), at), totals(2, 0, 0));
        assert_eq!(slot.cpu_percent, None, "one report is no rate");
        // 0.3 s of CPU (user + sys) in 2 s: 15 %.
        let later = at + Duration::from_secs(2);
        assert_eq!(slot.record_stats(stats(200_100, 100_100, 5), later), totals(3, 0, 0));
        let percent = slot.cpu_percent.expect("a rate");
        assert!((percent - 15.0).abs() < 1e-9, "{percent}");
        // Back to back (< 50 ms): the rate is kept, not recomputed.
        let soon = later + Duration::from_millis(10);
        slot.record_stats(stats(900_000, 900_000, 5), soon);
        assert_eq!(slot.cpu_percent, Some(percent));
        assert_eq!(slot.finished.served, 5);
        let row = slot.row(soon);
        assert_eq!(row.cpu_user_secs, Some(0.9));
        assert_eq!(row.cpu_sys_secs, Some(0.9));
        assert_eq!((row.origin.as_str(), row.completed), ("external", 5));
        assert_eq!(Origin::Spawned.as_str(), "spawned");
        assert_eq!(slot.last_seen(), soon);
    }

    #[test]
    fn exact_mode_counts_and_releases_the_held_copies_by_connection_id() {
        let (mut slot, _worker) = slot(2);
        slot.reporting = Reporting::EachConnection;
        let held = |conn_id| AcceptedConn {
            fd: std::fs::File::open("/dev/null").expect("an fd").into(),
            header: Dispatch { conn_id, accepted_at_ns: 0, redispatches: 0 },
        };
        slot.held.extend([held(5), held(6), held(7)]);
        assert_eq!(slot.in_flight(), 3);
        assert!(!slot.takes_work(), "over its capacity");
        let taken = slot.take_held(6).expect("held");
        assert_eq!(taken.header.conn_id, 6);
        assert!(slot.take_held(6).is_none(), "taken once");
        assert!(slot.take_held(99).is_none(), "never held");
        let left: Vec<u64> = slot.held.iter().map(|conn| conn.header.conn_id).collect();
        assert_eq!(left, [5, 7], "the others, in order");
        assert_eq!(slot.row(Instant::now()).in_flight, 2);
    }

    /// A scratch dir with a worker stand-in: a shell script with `body`.
    fn fake_worker(name: &str, body: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("handoff-spawner-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let bin = dir.join("worker.sh");
        std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, bin)
    }

    /// `spawner.spawn()`, again while the script is busy: another test's
    /// child, forked while the script was being written, may still hold it
    /// open for writing until it execs (ETXTBSY).
    fn spawn(spawner: &mut Spawner) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawner.spawn() {
                Ok(pid) => return pid,
                Err(err)
                    if Instant::now() < deadline
                        && err
                            .root_cause()
                            .downcast_ref::<std::io::Error>()
                            .and_then(std::io::Error::raw_os_error)
                            == Some(nix::libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("spawn: {err:#}"),
            }
        }
    }

    /// Waits (at most 10 s) until process `pid` exited, through its pidfd.
    fn wait_exit(pid: u32) {
        assert!(pid > 1, "not a child's pid: {pid}");
        use mio::unix::SourceFd;
        use std::os::fd::AsRawFd;
        let pidfd = handoff_fdpass::pidfd_open(pid as i32).expect("pidfd");
        let mut poll = mio::Poll::new().expect("poll");
        poll.registry()
            .register(&mut SourceFd(&pidfd.as_raw_fd()), mio::Token(0), mio::Interest::READABLE)
            .expect("register");
        let mut events = mio::Events::with_capacity(1);
        crate::test_support::poll_through_eintr(&mut poll, &mut events, Duration::from_secs(10));
        assert!(!events.is_empty(), "process {pid} did not exit within 10 s");
    }

    #[test]
    fn spawned_children_are_counted_until_reaped_and_a_retired_ones_exit_is_planned() {
        use std::os::unix::process::ExitStatusExt;
        let (dir, bin) = fake_worker(
            "life",
            // The first one exits 3 at once; the next ones wait to be killed.
            "if [ -e \"$2/first\" ]; then exec sleep 60; fi; : > \"$2/first\"; exit 3",
        );
        let mut spawner = Spawner::new(bin, &dir, Vec::new());
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (0, 0));
        let quick = spawn(&mut spawner);
        wait_exit(quick);
        let a = spawn(&mut spawner);
        let b = spawn(&mut spawner);
        assert!(quick != a && a != b && quick > 1 && a > 1 && b > 1);
        for pid in [quick, a, b] {
            assert!(spawner.owns(pid), "{pid}");
        }
        assert!(!spawner.owns(std::process::id()), "not a child");
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (3, 3), "not reaped yet");
        assert_eq!(spawner.serving_pids(), [quick, a, b], "oldest first");

        let exited = spawner.reap();
        assert_eq!(exited.len(), 1, "{exited:?}");
        assert_eq!(
            (exited[0].pid, exited[0].status.code(), exited[0].planned),
            (quick, Some(3), false)
        );
        assert!(!spawner.owns(quick));
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (2, 2));
        assert!(spawner.reap().is_empty(), "the others still run");

        spawner.mark_retiring(a);
        spawner.mark_retiring(std::process::id());
        assert!(spawner.is_retiring(a));
        assert!(!spawner.is_retiring(b));
        assert!(!spawner.is_retiring(std::process::id()), "only our children");
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (2, 1));
        assert_eq!(spawner.serving_pids(), [b]);

        nix::sys::signal::kill(nix::unistd::Pid::from_raw(a as i32), nix::sys::signal::SIGTERM)
            .expect("kill");
        wait_exit(a);
        let exited = spawner.reap();
        assert_eq!(exited.len(), 1, "{exited:?}");
        assert_eq!(exited[0].pid, a);
        assert_eq!(exited[0].status.signal(), Some(nix::libc::SIGTERM));
        assert!(exited[0].planned, "asked to exit");
        assert!(!spawner.is_retiring(a), "forgotten once reaped");
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (1, 1));

        spawner.mark_retiring(b);
        spawner.kill_all();
        assert_eq!((spawner.n_alive(), spawner.n_serving()), (0, 0));
        assert!(!spawner.is_retiring(b));
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(b as i32), None);
        assert_eq!(gone, Err(nix::errno::Errno::ESRCH), "killed and reaped");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_worker_is_started_with_the_run_dir_and_the_options_in_its_own_group() {
        let (dir, bin) = fake_worker("args", "echo \"$@\" > \"$2/args.tmp\"; cut -d' ' -f5 /proc/$$/stat >> \"$2/args.tmp\"; mv \"$2/args.tmp\" \"$2/args\"");
        let options = vec![OsString::from("--max-conns"), OsString::from("7")];
        let mut spawner = Spawner::new(bin, &dir, options);
        let pid = spawn(&mut spawner);
        wait_exit(pid);
        let text = std::fs::read_to_string(dir.join("args")).expect("the worker wrote its args");
        assert_eq!(text, format!("--run-dir {} --max-conns 7\n{pid}\n", dir.display()));
        let exited = spawner.reap();
        assert_eq!(exited.len(), 1);
        assert!(exited[0].status.success());

        let mut missing = Spawner::new(dir.join("no-such-worker"), &dir, Vec::new());
        let err = format!("{:#}", missing.spawn().expect_err("no such file"));
        assert!(err.contains("starting worker") && err.contains("no-such-worker"), "{err}");
        assert_eq!(missing.n_alive(), 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_child_reaped_behind_the_spawners_back_is_forgotten() {
        let (dir, bin) = fake_worker("stolen", "exec sleep 60");
        let mut spawner = Spawner::new(bin, &dir, Vec::new());
        let pid = spawn(&mut spawner);
        // Never signal a process group or init.
        assert!(pid > 1 && spawner.owns(pid), "not a child's pid: {pid}");
        spawner.mark_retiring(pid);
        let nix_pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(nix_pid, nix::sys::signal::SIGKILL).expect("kill");
        nix::sys::wait::waitpid(nix_pid, None).expect("reaped here");
        assert!(spawner.reap().is_empty(), "its status is gone");
        assert_eq!(spawner.n_alive(), 0);
        assert!(!spawner.is_retiring(pid));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
