//! Watching the run directory: once a second (from the health-check tick)
//! the master checks that the directory it holds open is still at its path
//! with its lock file and sockets in it ([`RunDir::check`]).
//!
//! If not — removed (`rm -rf`, a tmp cleaner, `$XDG_RUNTIME_DIR` going away
//! at logout), renamed, replaced, or the lock file or a socket removed —
//! the master can no longer be reached (`handoff-ctl`, workers registering,
//! respawns) and its lock no longer keeps a second master off that path.
//! It says so in an error line and stops gracefully, as on SIGTERM: every
//! accepted client is still answered. It then exits with a failure status
//! and the reason, so a supervisor restarts it on a fresh run dir
//! (PostgreSQL's postmaster does the same when its lock file goes).
//!
//! [`RunDir::check`]: crate::run_dir::RunDir::check

use anyhow::{anyhow, Result};
use tracing::error;

use super::{Exit, Master, Phase};

impl Master {
    pub(super) fn check_run_dir(&mut self) {
        let Err(problem) = self._run_dir.check() else { return };
        error!(
            "{problem}: the master can no longer be reached there, workers cannot register \
             and another master could start on that path; stopping gracefully (every accepted \
             client is still answered). Start it again (or pass --run-dir)"
        );
        if self.phase == Phase::Running {
            self.begin_shutdown("run dir lost");
        }
    }

    /// How the loop ends: an error naming the run dir if it was lost.
    pub(super) fn finish(&self, exit: Exit) -> Result<Exit> {
        match self._run_dir.lost() {
            Some(problem) => Err(anyhow!(
                "{problem}; stopped {} (start the master again)",
                if exit == Exit::Clean { "gracefully" } else { "after the graceful timeout" }
            )),
            None => Ok(exit),
        }
    }
}
