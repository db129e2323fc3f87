//! Master upgrade (SIGUSR2, `upgrade`): the running master starts a new
//! master from the executable now on disk, with its own arguments, and
//! hands it the client listener, the workers' and control listeners, the
//! run directory and its locked lock file over `<run-dir>/upgrade.sock`
//! (SCM_RIGHTS). No socket is ever closed or re-bound, so no connection is
//! refused: until the old master stops accepting, both accept on the same
//! socket, and what neither has accepted yet waits in the kernel backlog.
//!
//! The old master's side ([`Succession`]):
//! 1. `start_upgrade`: bind `upgrade.sock`, spawn the new master with
//!    `--upgrade-from PATH` (stdout and stderr inherited).
//! 2. `accept_successor`: the peer must be that child (`SO_PEERCRED`);
//!    send `Handover` with the fds, stop accepting workers (the new
//!    master's workers register through the same socket) and stop
//!    spawning.
//! 3. `Ready` from the new master (its workers registered, it accepts) →
//!    `commit`: send `Committed`, stop serving the control socket, leave
//!    the run dir to it (nothing removed, the lock kept alive through its
//!    copy), then stop gracefully as on SIGTERM and exit 0.
//!
//! Anything else — the child exits, closes the channel, sends garbage, or
//! is not ready within `--upgrade-timeout` — fails the upgrade: the child
//! is killed (its workers follow when their channel closes), the workers'
//! socket is taken back, and this master keeps serving; `info` says why.
//!
//! The new master's side ([`Predecessor`]): `receive_handover` (before the
//! loop starts), then, once its workers registered, it starts accepting and
//! says `Ready`; on `Committed` (or the old master gone) it serves the
//! control socket, writes its pid into the lock file and the pid file, and
//! tells systemd it is the main process now.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff_fdpass::{Channel, Received, SeqpacketListener};
use handoff_proto::{codec, Upgrade, HANDOVER_FDS, UPGRADE_SOCKET_NAME};
use mio::unix::SourceFd;
use mio::Interest;
use tracing::{error, info, warn};

use crate::cli::Mode;
use crate::workers::{Origin, WorkerState};

use super::{Master, Phase, CONTROL_LISTENER, LISTENER, PREDECESSOR, SUCCESSOR, WORKER_LISTENER};

/// How long the new master waits for the old one's `Handover`.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What this master knows of a new master it started (the old side).
#[derive(Debug, Default)]
pub(super) enum Succession {
    #[default]
    None,
    /// Spawned; waiting for it to connect to `upgrade.sock`.
    Starting { child: Child, listener: SeqpacketListener, deadline: Instant },
    /// Sockets handed over; waiting for `Ready`.
    HandedOver { child: Child, link: Channel, deadline: Instant },
    /// The new master is in charge; this one drains and exits.
    Committed,
}

/// The new master's link to the master that started it.
#[derive(Debug)]
pub(super) struct Predecessor {
    link: Channel,
    pid: u32,
    /// `Ready` sent: waiting for `Committed`.
    ready_sent: bool,
}

/// What the old master handed over, before the loop starts.
pub(super) struct Inherited {
    pub listener: OwnedFd,
    pub worker_listener: OwnedFd,
    pub control_listener: OwnedFd,
    /// `--agent-check`'s listener, if the old master had one.
    pub agent_listener: Option<OwnedFd>,
    /// An operator had asked the old master to `drain`.
    pub draining: bool,
    /// The old master's kernel balancer (reuseport with a program).
    pub kernel_balancer: Option<handoff_fdpass::reuseport::KernelBalancer>,
    pub dir: OwnedFd,
    pub lock: OwnedFd,
    pub generation: u64,
    pub predecessor: Predecessor,
}

/// How this process was started, for the next upgrade: the executable's
/// path (the file now there is the one started) and the arguments, less
/// `--upgrade-from`.
#[derive(Debug, Clone)]
pub(super) struct Invocation {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Invocation {
    pub fn of_self() -> Result<Invocation> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut args = Vec::new();
        let mut skip_next = false;
        for arg in std::env::args_os().skip(1) {
            if skip_next {
                skip_next = false;
                continue;
            }
            if arg == "--upgrade-from" {
                skip_next = true;
                continue;
            }
            if arg.to_str().is_some_and(|a| a.starts_with("--upgrade-from=")) {
                continue;
            }
            args.push(arg);
        }
        Ok(Invocation { exe, args })
    }
}

/// The new master: connects to the old one's upgrade socket and receives
/// its sockets and run dir.
pub(super) fn receive_handover(path: &Path) -> Result<Inherited> {
    let link = Channel::connect(path)
        .with_context(|| format!("connecting to the old master at {}", path.display()))?;
    link.set_read_timeout(HANDOVER_TIMEOUT).context("setting a read timeout")?;
    let mut buf = [0u8; 256];
    let mut fds = Vec::with_capacity(HANDOVER_FDS + 4);
    let len = match link.recv(&mut buf, &mut fds) {
        Ok(Received::Packet(len)) => len,
        Ok(Received::Closed) => bail!("the old master closed the upgrade socket"),
        Err(err) => bail!("receiving the old master's sockets: {err}"),
    };
    let Ok(Upgrade::Handover { generation, pid, agent_listener, draining, kernel_balancer }) =
        codec::decode(&buf[..len])
    else {
        bail!("the old master sent something else than its sockets");
    };
    let expected = HANDOVER_FDS + usize::from(agent_listener) + 3 * usize::from(kernel_balancer);
    if fds.len() != expected {
        bail!("the old master sent {} fds, not {expected}", fds.len());
    }
    link.set_nonblocking(true).context("making the upgrade channel non-blocking")?;
    let mut fds = fds.into_iter();
    let mut next = || fds.next().context("missing fd");
    Ok(Inherited {
        listener: next()?,
        worker_listener: next()?,
        control_listener: next()?,
        dir: next()?,
        lock: next()?,
        agent_listener: if agent_listener { Some(next()?) } else { None },
        kernel_balancer: if kernel_balancer {
            let (prog, sockarray, table) = (next()?, next()?, next()?);
            Some(
                handoff_fdpass::reuseport::KernelBalancer::inherit(prog, sockarray, table)
                    .context("mapping the old master's kernel balancer table")?,
            )
        } else {
            None
        },
        draining,
        generation: generation.saturating_add(1),
        predecessor: Predecessor { link, pid, ready_sent: false },
    })
}

impl Master {
    /// Spawned workers of ours that registered (and still take work or
    /// finish it).
    fn registered_spawned(&self) -> usize {
        self.workers
            .iter()
            .filter(|(_, w)| {
                w.origin == Origin::Spawned
                    && matches!(w.state, WorkerState::Ready | WorkerState::Retiring)
            })
            .count()
    }

    /// Every worker this master spawned has registered with it. Until then
    /// it keeps the workers' socket: a worker of ours registering with the
    /// new master would be served by the wrong master, and this one would
    /// wait for its child for ever.
    fn own_workers_settled(&self) -> bool {
        self.registered_spawned() == self.spawner.n_alive()
    }

    /// Registers the inherited predecessor link with the loop.
    pub(super) fn watch_predecessor(&mut self) -> Result<()> {
        if let Some(pred) = &self.predecessor {
            self.poll
                .registry()
                .register(&mut SourceFd(&pred.link.as_raw_fd()), PREDECESSOR, Interest::READABLE)
                .context("registering the upgrade channel")?;
        }
        Ok(())
    }

    /// `info`'s `upgrade` field.
    pub(super) fn upgrade_state(&self) -> &'static str {
        match (&self.succession, &self.upgrade_error) {
            (Succession::Committed, _) => "handed over",
            (Succession::Starting { .. } | Succession::HandedOver { .. }, _) => "in progress",
            (Succession::None, _) if self.predecessor.is_some() => "taking over",
            (Succession::None, Some(_)) => "failed",
            (Succession::None, None) => "none",
        }
    }

    /// SIGUSR2 or `upgrade`: starts a new master. `Ok` says what started,
    /// `Err` why not.
    pub(super) fn start_upgrade(&mut self, reason: &str) -> Result<String, String> {
        let refuse = |why: String| {
            warn!(reason, "cannot upgrade: {why}");
            Err(why)
        };
        if self.phase != Phase::Running {
            return refuse("shutting down".into());
        }
        // SIGTERM or `stop` with --drain-secs: the stop wins (a new master
        // would serve on and the stop would be lost).
        if let Some((at, why)) = self.balancer.stop_at {
            let left = at.saturating_duration_since(Instant::now()).as_secs_f64();
            let why = format!(
                "a stop ({why}) is in progress: the listener closes in {left:.1} s; upgrade \
                 after a restart instead"
            );
            self.upgrade_error = Some(why.clone());
            return refuse(why);
        }
        if let Succession::Starting { child, .. } | Succession::HandedOver { child, .. } =
            &self.succession
        {
            return refuse(format!("an upgrade is in progress (new master pid {})", child.id()));
        }
        if self.predecessor.is_some() {
            return refuse("this master is still taking over from the previous one".into());
        }
        if self.listener.is_none() {
            return refuse("no listening socket to hand over".into());
        }
        let path = self._run_dir.join(UPGRADE_SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = match SeqpacketListener::bind(&path) {
            Ok(listener) => listener,
            Err(err) => {
                let why = format!("binding {}: {err}", path.display());
                self.upgrade_error = Some(why.clone());
                return refuse(why);
            }
        };
        if let Err(err) = self.poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            SUCCESSOR,
            Interest::READABLE,
        ) {
            let _ = std::fs::remove_file(&path);
            let why = format!("watching the upgrade socket: {err}");
            self.upgrade_error = Some(why.clone());
            return refuse(why);
        }
        self.fds.spare.release();
        let spawned = Command::new(&self.invocation.exe)
            .args(&self.invocation.args)
            .arg("--upgrade-from")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                let _ = std::fs::remove_file(&path);
                let why = format!("cannot start {}: {err}", self.invocation.exe.display());
                self.upgrade_error = Some(why.clone());
                return refuse(why);
            }
        };
        let pid = child.id();
        info!(reason, pid, exe = %self.invocation.exe.display(), "upgrade: started a new master");
        self.succession = Succession::Starting {
            child,
            listener,
            deadline: Instant::now() + self.upgrade_timeout,
        };
        Ok(format!("upgrade started: new master pid {pid}"))
    }

    /// The new master connected to `upgrade.sock`: hand it our sockets.
    pub(super) fn accept_successor(&mut self) {
        if !self.own_workers_settled() {
            // Retried every turn (upgrade_turn) until they are.
            return;
        }
        let Succession::Starting { child, listener, deadline } =
            std::mem::take(&mut self.succession)
        else {
            return;
        };
        let link = match listener.accept() {
            Ok(link) => link,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.succession = Succession::Starting { child, listener, deadline };
                return;
            }
            Err(err) => {
                self.succession = Succession::Starting { child, listener, deadline };
                self.fail_upgrade(format!("accepting on the upgrade socket: {err}"));
                return;
            }
        };
        let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
        let _ = std::fs::remove_file(listener.path());
        drop(listener);
        self.succession = Succession::HandedOver { child, link, deadline };
        let Succession::HandedOver { child, link, .. } = &self.succession else { return };
        match link.peer_credentials() {
            Ok(cred) if cred.pid as u32 == child.id() => {}
            Ok(cred) => {
                return self.fail_upgrade(format!(
                    "pid {} connected to the upgrade socket, not the new master (pid {})",
                    cred.pid,
                    child.id()
                ))
            }
            Err(err) => return self.fail_upgrade(format!("reading the new master's pid: {err}")),
        }
        let (Some(tcp), Some(lock)) = (self.listener.as_ref(), self._run_dir.lock_fd()) else {
            return self.fail_upgrade("nothing to hand over".into());
        };
        let mut fds = vec![
            tcp.as_fd(),
            self.worker_listener.as_fd(),
            self.control_listener.as_fd(),
            self._run_dir.dir_fd(),
            lock,
        ];
        if let Some((agent, _)) = &self.balancer.listener {
            fds.push(agent.as_fd());
        }
        if let Some(kernel) = &self.kernel_balancer {
            fds.extend(kernel.fds());
        }
        let msg = Upgrade::Handover {
            generation: self.generation,
            pid: std::process::id(),
            agent_listener: self.balancer.listener.is_some(),
            draining: self.balancer.drain_asked,
            kernel_balancer: self.kernel_balancer.is_some(),
        };
        let mut frame = [0u8; 64];
        let sent = codec::encode(&msg, &mut frame)
            .map_err(|err| err.to_string())
            .and_then(|len| link.send(&frame[..len], &fds).map_err(|err| err.to_string()));
        if let Err(err) = sent {
            return self.fail_upgrade(format!("handing the sockets over: {err}"));
        }
        if let Err(err) = self.poll.registry().register(
            &mut SourceFd(&link.as_raw_fd()),
            SUCCESSOR,
            Interest::READABLE,
        ) {
            return self.fail_upgrade(format!("watching the upgrade channel: {err}"));
        }
        // From now on workers register with the new master.
        let _ = self.poll.registry().deregister(&mut SourceFd(&self.worker_listener.as_raw_fd()));
        info!(
            pid = child.id(),
            "upgrade: sockets handed over; waiting for the new master's workers"
        );
    }

    /// The new master's channel is readable.
    pub(super) fn successor_event(&mut self) {
        match &self.succession {
            Succession::Starting { .. } => self.accept_successor(),
            Succession::HandedOver { .. } => self.read_successor(),
            _ => {}
        }
    }

    fn read_successor(&mut self) {
        let Succession::HandedOver { link, .. } = &self.succession else { return };
        let mut buf = [0u8; 512];
        let mut fds = Vec::new();
        match link.recv_nowait(&mut buf, &mut fds) {
            Ok(Received::Packet(len)) => match codec::decode::<Upgrade>(&buf[..len]) {
                Ok(Upgrade::Ready { pid }) => self.commit_upgrade(pid),
                Ok(Upgrade::Failed { reason }) => {
                    self.fail_upgrade(format!("the new master cannot take over: {reason}"))
                }
                _ => self.fail_upgrade("the new master sent an unexpected message".into()),
            },
            Ok(Received::Closed) => self.fail_upgrade(
                "the new master closed the upgrade channel before it was ready".into(),
            ),
            Err(err) if err.is_would_block() => {}
            Err(err) => self.fail_upgrade(format!("reading the upgrade channel: {err}")),
        }
    }

    /// The new master is ready: it takes over, this master drains.
    fn commit_upgrade(&mut self, new_pid: u32) {
        let Succession::HandedOver { link, .. } = std::mem::take(&mut self.succession) else {
            return;
        };
        // systemd first: the new master notifies as the main pid as soon
        // as it reads `Committed`, which systemd accepts only after this.
        crate::notify::main_pid(new_pid);
        let mut frame = [0u8; 16];
        if let Ok(len) = codec::encode(&Upgrade::Committed, &mut frame) {
            let _ = link.send(&frame[..len], &[]);
        }
        let _ = self.poll.registry().deregister(&mut SourceFd(&link.as_raw_fd()));
        let _ = self.poll.registry().deregister(&mut self.control_listener);
        self.stop_answering_agent_checks();
        self._run_dir.hand_over();
        if let Some(pid_file) = self.pid_file.as_mut() {
            pid_file.hand_over();
        }
        self.succession = Succession::Committed;
        info!(new_pid, "upgrade: the new master took over; this one stops accepting and drains");
        self.begin_shutdown("upgrade");
    }

    /// The upgrade failed: kill the new master, keep serving.
    pub(super) fn fail_upgrade(&mut self, why: String) {
        let (mut child, worker_listener_handed) = match std::mem::take(&mut self.succession) {
            Succession::Starting { child, listener, .. } => {
                let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                let _ = std::fs::remove_file(listener.path());
                (child, false)
            }
            Succession::HandedOver { child, link, .. } => {
                let _ = self.poll.registry().deregister(&mut SourceFd(&link.as_raw_fd()));
                (child, true)
            }
            other => {
                self.succession = other;
                return;
            }
        };
        // SIGKILL and reap: it never accepted a client (it says Ready
        // first), and its workers exit when their channel closes.
        let _ = child.kill();
        let _ = child.wait();
        if worker_listener_handed {
            if let Err(err) = self.poll.registry().register(
                &mut SourceFd(&self.worker_listener.as_raw_fd()),
                WORKER_LISTENER,
                Interest::READABLE,
            ) {
                error!(%err, "cannot watch the workers' socket again");
            }
            // Edge-triggered: take what waits now.
            self.accept_workers();
        }
        error!("upgrade failed: {why}; this master keeps serving");
        self.upgrade_error = Some(why);
    }

    /// Once a turn: the old side's deadline and child, the new side's
    /// readiness.
    pub(super) fn upgrade_turn(&mut self, now: Instant) {
        if matches!(self.succession, Succession::Starting { .. }) && self.own_workers_settled() {
            // The listener is edge-triggered: a new master that connected
            // while our workers were registering sent no new event.
            self.accept_successor();
        }
        match &mut self.succession {
            Succession::Starting { child, deadline, .. }
            | Succession::HandedOver { child, deadline, .. } => {
                let deadline = *deadline;
                let exited = child.try_wait().ok().flatten();
                if exited.is_some() || now >= deadline {
                    // A Ready sent just before counts.
                    self.read_successor();
                }
                if !matches!(
                    self.succession,
                    Succession::Starting { .. } | Succession::HandedOver { .. }
                ) {
                    return;
                }
                match exited {
                    Some(status) => self.fail_upgrade(format!(
                        "the new master exited ({status}) before it was ready"
                    )),
                    None if now >= deadline => {
                        let why = if matches!(self.succession, Succession::Starting { .. }) {
                            "this master's own workers were still registering, or the new \
                             master never connected"
                        } else {
                            "its workers did not register"
                        };
                        self.fail_upgrade(format!(
                            "the new master was not ready within {:?} (--upgrade-timeout): {why}",
                            self.upgrade_timeout
                        ))
                    }
                    None => {}
                }
            }
            _ => {}
        }
        self.predecessor_turn();
    }

    /// The new side: once its workers registered, accept and say `Ready`.
    fn predecessor_turn(&mut self) {
        let Some(pred) = &self.predecessor else { return };
        if pred.ready_sent || self.phase != Phase::Running {
            return;
        }
        if self.registered_spawned() < self.supervisor.target || self.upgrade_error.is_some() {
            return;
        }
        // The pid file first, before we accept anything: an upgrade that
        // cannot rewrite it (a full disk) fails, and the old master, still
        // named there, serves on.
        if let Some(path) = self.pid_file_path.clone() {
            match crate::pid_file::PidFile::write(&path) {
                Ok(file) => self.pid_file = Some(file),
                Err(err) => return self.abandon_upgrade(format!("{err:#}")),
            }
        }
        if self.mode == Mode::Dispatch {
            if let Some(listener) = &mut self.listener {
                if let Err(err) =
                    self.poll.registry().register(listener, LISTENER, Interest::READABLE)
                {
                    error!(%err, "cannot watch the inherited listener");
                    return;
                }
            }
        }
        let mut frame = [0u8; 16];
        let pid = std::process::id();
        let sent = codec::encode(&Upgrade::Ready { pid }, &mut frame)
            .ok()
            .is_some_and(|len| pred.link.send(&frame[..len], &[]).is_ok());
        if let Some(pred) = &mut self.predecessor {
            pred.ready_sent = true;
        }
        info!(workers = self.registered_spawned(), "upgrade: workers registered; accepting");
        if self.mode == Mode::Dispatch {
            // Edge-triggered: take what waits already.
            self.accept_connections();
        }
        if !sent {
            // The old master is gone: we are in charge.
            self.take_over();
        }
    }

    /// The new side: we cannot take over. Tell the old master why (it
    /// keeps serving and says so in `info`), and stop.
    /// We accept nothing meanwhile; the old master kills us. If it is gone
    /// already, we hold every socket: serve on without the pid file.
    fn abandon_upgrade(&mut self, reason: String) {
        let Some(pred) = &self.predecessor else { return };
        let mut frame = [0u8; 512];
        let short: String = reason.chars().take(400).collect();
        let told = codec::encode(&Upgrade::Failed { reason: short }, &mut frame)
            .ok()
            .is_some_and(|len| pred.link.send(&frame[..len], &[]).is_ok());
        if told {
            error!(reason, "upgrade: cannot take over; the old master keeps serving");
            self.upgrade_error = Some(reason);
        } else {
            error!(reason, "upgrade: the old master is gone; serving on without the pid file");
            self.pid_file_path = None;
            self.predecessor_turn();
        }
    }

    /// The new side: the old master's channel is readable.
    pub(super) fn predecessor_event(&mut self) {
        let Some(pred) = &self.predecessor else { return };
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        match pred.link.recv_nowait(&mut buf, &mut fds) {
            Err(err) if err.is_would_block() => {}
            Ok(Received::Packet(len))
                if matches!(codec::decode::<Upgrade>(&buf[..len]), Ok(Upgrade::Committed)) =>
            {
                self.take_over()
            }
            Ok(Received::Closed) if !pred.ready_sent => {
                // The old master died (kill -9) before we were ready. We
                // hold every socket it had: carry on as the master (as
                // nginx's new master survives its parent), accepting into
                // our queue until our workers register. (An old master
                // that fails the upgrade on purpose kills us instead.)
                warn!("the old master is gone before we were ready: taking over");
                self.take_over_early();
            }
            _ => self.take_over(),
        }
    }

    /// The new side: the old master stopped accepting (or is gone).
    /// The old master died before we said `Ready`: start accepting now
    /// (dispatch mode; self-accepting workers get their listener as they
    /// register), then take over.
    fn take_over_early(&mut self) {
        if self.mode == Mode::Dispatch {
            if let Some(listener) = &mut self.listener {
                if let Err(err) =
                    self.poll.registry().register(listener, LISTENER, Interest::READABLE)
                {
                    error!(%err, "cannot watch the inherited listener");
                }
            }
        }
        self.take_over();
        if self.mode == Mode::Dispatch {
            // Edge-triggered: take what waits already.
            self.accept_connections();
        }
    }

    fn take_over(&mut self) {
        let Some(pred) = self.predecessor.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&pred.link.as_raw_fd()));
        if let Err(err) = self.poll.registry().register(
            &mut self.control_listener,
            CONTROL_LISTENER,
            Interest::READABLE,
        ) {
            error!(%err, "cannot watch the inherited control socket");
        }
        self.accept_control_clients();
        self.watch_agent_listener();
        if let Err(err) = self._run_dir.write_pid() {
            warn!(%err, "cannot write our pid into the lock file");
        }
        // (The pid file was written before `Ready`; an old master that
        // died first never got that far.)
        if self.pid_file.is_none() {
            self.write_pid_file();
        }
        crate::notify::ready_as_main();
        info!(
            old_pid = pred.pid,
            generation = self.generation,
            "upgrade complete: this master is in charge"
        );
    }
}
