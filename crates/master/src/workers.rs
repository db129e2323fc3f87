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
use handoff_fdpass::Channel;
use std::time::Instant;

use handoff_proto::control::WorkerRow;
use handoff_proto::{Finished, WorkerStats};

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
    /// Its channel failed; removed at the end of this loop turn.
    Broken,
    /// Refused at connect (another uid); kept only until it has read why.
    Refused,
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
    /// False after a send hit a full channel, until a writable event.
    pub writable: bool,
    /// Connections handed over and not yet reported finished.
    pub in_flight: u64,
    pub dispatched: u64,
    /// Sum of the worker's `Finished` reports.
    pub finished: FinishedTotals,
    /// The master owes this worker a `Shutdown` it could not send yet.
    pub shutdown_pending: bool,
    /// The worker's latest stats report and when it came.
    pub stats: Option<(WorkerStats, Instant)>,
    /// CPU % of one core between the last two reports.
    pub cpu_percent: Option<f64>,
    /// When it was refused, for [`WorkerState::Refused`] peers.
    pub refused_at: Option<Instant>,
}

/// Running sums of a worker's [`Finished`] reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct FinishedTotals {
    pub served: u64,
    pub resets: u64,
    pub failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl FinishedTotals {
    pub fn add(&mut self, report: &Finished) {
        self.served += u64::from(report.served);
        self.resets += u64::from(report.resets);
        self.failed += u64::from(report.failed);
        self.bytes_in += report.bytes_in;
        self.bytes_out += report.bytes_out;
    }
}

impl WorkerSlot {
    pub fn new(chan: Channel, pid: i32) -> WorkerSlot {
        WorkerSlot {
            chan,
            state: WorkerState::Registering,
            id: 0,
            pid,
            origin: Origin::External,
            writable: true,
            in_flight: 0,
            dispatched: 0,
            finished: FinishedTotals::default(),
            shutdown_pending: false,
            stats: None,
            cpu_percent: None,
            refused_at: None,
        }
    }

    /// Takes a stats report, computing CPU % against the previous one.
    pub fn record_stats(&mut self, stats: WorkerStats, now: Instant) {
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
                WorkerState::Ready => "ready",
                WorkerState::Retiring => "retiring",
                WorkerState::Broken => "broken",
                WorkerState::Refused => "refused",
            }
            .to_owned(),
            dispatched: self.dispatched,
            completed: self.finished.served + self.finished.resets + self.finished.failed,
            in_flight: self.in_flight,
            served: self.finished.served,
            resets: self.finished.resets,
            failed: self.finished.failed,
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
        }
    }

    /// Can this worker be handed a connection right now?
    pub fn takes_work(&self) -> bool {
        self.state == WorkerState::Ready && self.writable
    }
}

/// Starts worker processes and reaps them.
#[derive(Debug)]
pub struct Spawner {
    worker_bin: PathBuf,
    run_dir: PathBuf,
    children: Vec<Child>,
}

impl Spawner {
    pub fn new(worker_bin: PathBuf, run_dir: &Path) -> Spawner {
        Spawner { worker_bin, run_dir: run_dir.to_owned(), children: Vec::new() }
    }

    /// Starts one worker that will register at the run dir's socket.
    pub fn spawn(&mut self) -> Result<u32> {
        let child = Command::new(&self.worker_bin)
            .arg("--run-dir")
            .arg(&self.run_dir)
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

    /// Collects children that exited, without blocking.
    pub fn reap(&mut self) -> Vec<(u32, ExitStatus)> {
        let mut exited = Vec::new();
        self.children.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                exited.push((child.id(), status));
                false
            }
            Ok(None) => true,
            Err(err) => {
                tracing::warn!(pid = child.id(), %err, "cannot wait for worker; forgetting it");
                false
            }
        });
        exited
    }

    /// Children not yet reaped.
    pub fn n_alive(&self) -> usize {
        self.children.len()
    }

    /// SIGKILLs every child and reaps it.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}
