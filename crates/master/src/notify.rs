//! systemd readiness notifications (`sd_notify(3)`), through the
//! `sd-notify` crate: nothing happens unless `NOTIFY_SOCKET` is set. The
//! variable is left in the environment, so a master started by an upgrade
//! can notify too (it becomes the main process with `MAINPID=`). A failed
//! notification is logged, never fatal: the service manager then times
//! the start out, which says more than the master could.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!(%err, "cannot notify the service manager");
    }
}

/// The workers registered: the master serves.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A rolling restart (SIGHUP, `reload`) started.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The graceful stop started.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The old master, at an upgrade's commit: `pid` is the main process now.
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid), NotifyState::Status("upgraded")]);
}

/// The new master, once in charge after an upgrade.
pub fn ready_as_main() {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status("serving (upgraded)"),
    ]);
}
