//! Keeping the spawned workers at their target: respawn with backoff,
//! scaling, rolling restarts, and killing workers that stop reporting. A
//! spawn uses the spare fds (so it works at the fd limit), and one that
//! fails anyway is a spawn failure, retried later, not a worker death.

use std::time::Instant;

use anyhow::Result;
use tracing::{error, info, warn};

use crate::workers::{Origin, WorkerState};

use super::{Master, Phase, HEALTH_CHECK_INTERVAL, HELLO_TIMEOUT};

impl Master {
    /// Asks a registered worker to finish and exit (scale down, rolling
    /// restart, or its own request).
    pub(super) fn retire_worker(&mut self, key: usize) {
        let Some(worker) = self.workers.get_mut(key) else { return };
        if worker.state != WorkerState::Ready {
            return;
        }
        worker.state = WorkerState::Retiring;
        worker.shutdown_pending = true;
        self.shutdowns_owed = true;
        self.spawner.mark_retiring(worker.pid as u32);
        info!(worker = worker.id, pid = worker.pid, "retiring worker");
    }

    pub(super) fn key_of_pid(&self, pid: u32) -> Option<usize> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid as u32 == pid && w.state == WorkerState::Ready)
            .map(|(key, _)| key)
    }

    /// Keeps the spawned workers at the target: respawns (with the
    /// supervisor's backoff), scales up or down, and steps a rolling restart.
    pub(super) fn maintain_workers(&mut self, now: Instant) {
        self.supervisor.settle(now);
        if self.replacement.is_none() {
            while let Some(&old) = self.rolling.front() {
                if self.spawner.owns(old) && !self.spawner.is_retiring(old) {
                    break;
                }
                self.rolling.pop_front();
            }
            if !self.rolling.is_empty() && self.supervisor.may_spawn(now) {
                match self.spawn_worker() {
                    Ok(pid) => {
                        info!(pid, left = self.rolling.len(), "spawned a replacement worker");
                        self.replacement = Some(pid);
                    }
                    Err(err) => self.spawn_failed(now, &err),
                }
            }
        }
        let want = self.supervisor.target + usize::from(self.replacement.is_some());
        let serving = self.spawner.n_serving();
        if serving < want && self.supervisor.may_spawn(now) {
            for _ in serving..want {
                match self.spawn_worker() {
                    Ok(pid) => {
                        self.supervisor.spawned();
                        info!(pid, target = self.supervisor.target, "spawned worker");
                    }
                    Err(err) => {
                        self.spawn_failed(now, &err);
                        break;
                    }
                }
            }
        } else if serving > want {
            let mut newest_first: Vec<(u32, usize)> = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.state == WorkerState::Ready
                        && w.origin == Origin::Spawned
                        && Some(w.pid as u32) != self.replacement
                })
                .map(|(key, w)| (w.id, key))
                .collect();
            newest_first.sort_unstable_by(|a, b| b.cmp(a));
            for (_, key) in newest_first.into_iter().take(serving - want) {
                self.retire_worker(key);
            }
        }
    }

    /// Starts a worker process, with the spare fds let go first so that it
    /// starts even when clients hold every other fd (refilled at the end of
    /// the turn).
    pub(super) fn spawn_worker(&mut self) -> Result<u32> {
        self.fds.spare.release();
        self.spawner.spawn()
    }

    /// A spawn failed: no process ran, so it is no death and no step toward
    /// a crash loop; it is retried after a doubling delay.
    fn spawn_failed(&mut self, now: Instant, err: &anyhow::Error) {
        let retry_in = self.supervisor.spawn_failed(now);
        warn!(
            failures = self.supervisor.spawn_failures,
            ?retry_in,
            "cannot spawn a worker: {err:#}; trying again"
        );
    }

    /// Once a second: kill workers silent for `--timeout`, drop peers that
    /// never said Hello, and log a queue-full state change held back.
    pub(super) fn check_health(&mut self, now: Instant) {
        self.next_health_check = now + HEALTH_CHECK_INTERVAL;
        self.log_queue_state(now);
        let mut silent = Vec::new();
        let mut mute = Vec::new();
        for (key, worker) in self.workers.iter() {
            let quiet_for = now.saturating_duration_since(worker.last_seen());
            match worker.state {
                WorkerState::Ready | WorkerState::Retiring
                    if !worker.killed
                        && self.worker_timeout.is_some_and(|timeout| quiet_for > timeout) =>
                {
                    silent.push((key, quiet_for));
                }
                WorkerState::Registering if quiet_for > HELLO_TIMEOUT => mute.push(key),
                _ => {}
            }
        }
        for (key, quiet_for) in silent {
            let worker = &mut self.workers[key];
            warn!(
                worker = worker.id,
                pid = worker.pid,
                silent_secs = quiet_for.as_secs(),
                "worker stopped reporting: killing it (its connections are salvaged when it is gone)"
            );
            worker.killed = true;
            if worker.state == WorkerState::Ready {
                worker.state = WorkerState::Retiring;
            }
            self.counters.worker_timeouts += 1;
            let pid = nix::unistd::Pid::from_raw(worker.pid);
            if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                warn!(pid = worker.pid, %err, "cannot kill the silent worker");
            }
        }
        for key in mute {
            self.drop_worker(key, "did not say Hello in time");
        }
    }

    pub(super) fn reap_children(&mut self) {
        let now = Instant::now();
        for exited in self.spawner.reap() {
            let (pid, status) = (exited.pid, exited.status);
            if self.replacement == Some(pid) {
                self.replacement = None;
            }
            if exited.planned || self.phase != Phase::Running {
                if status.success() {
                    info!(pid, %status, "worker exited");
                } else {
                    warn!(pid, %status, "worker exited");
                }
                continue;
            }
            warn!(pid, %status, "worker died: replacing it");
            if self.supervisor.record_death(now) {
                error!(
                    deaths = self.supervisor.deaths,
                    "workers keep dying: crash loop, respawns are backed off"
                );
            }
        }
    }

    /// Keeps `target` spawned workers from now on.
    pub(super) fn scale(&mut self, target: usize, reason: &str) {
        let target = target.min(handoff_proto::control::MAX_SCALE as usize);
        if self.phase != Phase::Running {
            warn!(reason, "shutting down: not scaling");
            return;
        }
        info!(reason, from = self.supervisor.target, to = target, "scaling spawned workers");
        self.supervisor.set_target(target);
    }

    /// Replaces every spawned worker, one at a time: a new one is spawned,
    /// and when it has registered one old one is retired (it finishes what
    /// it holds); no connection is refused or lost on the way.
    pub(super) fn begin_rolling_restart(&mut self, reason: &str) {
        if self.phase != Phase::Running {
            return;
        }
        self.rolling = self
            .spawner
            .serving_pids()
            .into_iter()
            .filter(|&pid| Some(pid) != self.replacement)
            .collect();
        if !self.rolling.is_empty() {
            self.reload_notified = true;
            crate::notify::reloading();
        }
        info!(
            reason,
            workers = self.rolling.len(),
            "rolling restart: replacing workers one by one"
        );
    }
}
