//! `--pid-file PATH`: the master's pid, written once the listener is up
//! (by a master started by an upgrade: once it is in charge), removed on
//! exit — unless it still holds another pid (a newer master's) or was
//! handed over at an upgrade.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    handed_over: bool,
}

impl PidFile {
    /// Writes our pid to `path` (through a temporary file renamed over it,
    /// so a reader never sees it half written).
    pub fn write(path: &Path) -> Result<PidFile> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing pid file {}", path.display())
        })?;
        Ok(PidFile { path: path.to_owned(), handed_over: false })
    }

    /// A new master took over (and rewrote the file): leave it.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_unless_handed_over() {
        let dir = std::env::temp_dir().join(format!("handoff-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("master.pid");
        let file = PidFile::write(&path).expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        drop(file);
        assert!(!path.exists(), "removed on drop");
        let mut file = PidFile::write(&path).expect("write");
        file.hand_over();
        drop(file);
        assert!(path.exists(), "kept when handed over");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_file_holding_another_pid_is_left_alone() {
        let dir =
            std::env::temp_dir().join(format!("handoff-pidfile-other-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("master.pid");
        let file = PidFile::write(&path).expect("write");
        // A newer master wrote its own pid over ours.
        std::fs::write(&path, "1\n").expect("overwrite");
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "1\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
