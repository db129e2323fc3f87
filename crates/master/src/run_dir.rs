//! The run directory: where the master's Unix sockets and lock file live.
//!
//! [`RunDir::claim`] creates the directory mode 0700 (or checks that an
//! existing one belongs to us and tightens it), takes an exclusive `flock` on
//! `master.lock` so a second master on the same directory fails with a clear
//! error, and removes sockets a dead master left behind. Dropping the
//! [`RunDir`] removes the sockets and the lock file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use handoff_proto::control::CONTROL_SOCKET_NAME;
use handoff_proto::{MASTER_LOCK_NAME, WORKERS_SOCKET_NAME};
use nix::fcntl::{Flock, FlockArg};

/// Sockets the master creates in its run directory.
const SOCKET_NAMES: &[&str] = &[WORKERS_SOCKET_NAME, CONTROL_SOCKET_NAME];

/// A run directory this master holds the lock on.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl RunDir {
    /// Creates or adopts `path`, locks it, and clears stale sockets.
    pub fn claim(path: &Path) -> Result<RunDir> {
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.is_dir() {
                    bail!("run dir {} exists and is not a directory", path.display());
                }
                let uid = nix::unistd::geteuid().as_raw();
                if meta.uid() != uid {
                    bail!(
                        "run dir {} belongs to uid {}, not to us (uid {uid}); pass --run-dir",
                        path.display(),
                        meta.uid()
                    );
                }
                if meta.mode() & 0o077 != 0 {
                    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("making run dir {} mode 0700", path.display()))?;
                }
            }
            Err(_) => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating run dir {}", path.display()))?,
        }

        let lock_path = path.join(MASTER_LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown".to_owned() } else { holder.into() };
                bail!(
                    "another handoff-master (pid {holder}) is running with run dir {}; \
                     stop it or pass a different --run-dir",
                    path.display()
                );
            }
        };
        lock.set_len(0).context("truncating the lock file")?;
        lock.rewind().context("rewinding the lock file")?;
        writeln!(lock, "{}", std::process::id()).context("writing the lock file")?;

        for name in SOCKET_NAMES {
            let stale = path.join(name);
            if fs::symlink_metadata(&stale).is_ok() {
                fs::remove_file(&stale)
                    .with_context(|| format!("removing stale socket {}", stale.display()))?;
                tracing::info!(path = %stale.display(), "removed a stale socket left by a dead master");
            }
        }
        Ok(RunDir { path: path.to_owned(), _lock: lock })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of a file inside the run directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        for name in SOCKET_NAMES.iter().chain([&MASTER_LOCK_NAME]) {
            let _ = fs::remove_file(self.path.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder_and_a_released_dir_is_reclaimed() {
        let tmp = std::env::temp_dir().join(format!("handoff-rundir-test-{}", std::process::id()));
        let first = RunDir::claim(&tmp).expect("first claim");
        let mode = fs::metadata(&tmp).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        let err = RunDir::claim(&tmp).expect_err("second claim fails").to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        fs::write(tmp.join(WORKERS_SOCKET_NAME), b"stale").expect("plant a stale socket");
        let again = RunDir::claim(&tmp).expect("reclaim after release");
        assert!(!tmp.join(WORKERS_SOCKET_NAME).exists(), "stale socket removed");
        drop(again);
        fs::remove_dir(&tmp).expect("run dir left empty");
    }
}
