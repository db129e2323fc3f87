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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    /// The notifications reach `NOTIFY_SOCKET`. They are sent from a child
    /// process (the test binary again, this test only), so that no other
    /// test sees the variable.
    #[test]
    fn each_notification_reaches_the_service_manager_socket() {
        const CHILD: &str = "HANDOFF_NOTIFY_CHILD";
        if std::env::var_os(CHILD).is_some() {
            super::ready();
            super::reloading();
            super::stopping();
            super::main_pid(77);
            super::ready_as_main();
            return;
        }
        let dir = std::env::temp_dir().join(format!("handoff-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("bind");
        let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "notify::tests::each_notification_reaches_the_service_manager_socket",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("NOTIFY_SOCKET", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the child");
        let pid = child.id();
        let output = child.wait_with_output().expect("wait");
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"));
        // The child is gone: whatever it sent is queued already.
        manager.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0; 256];
        let mut next = || {
            let n = manager.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(next(), "READY=1\nSTATUS=serving\n");
        let reloading = next();
        assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
        assert_eq!(next(), "STOPPING=1\n");
        assert_eq!(next(), "MAINPID=77\nSTATUS=upgraded\n");
        assert_eq!(next(), format!("MAINPID={pid}\nREADY=1\nSTATUS=serving (upgraded)\n"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
