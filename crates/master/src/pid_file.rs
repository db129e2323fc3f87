//! `--pid-file PATH`: the master's pid, written once the listener is up
//! (by a master started by an upgrade: once it is in charge), removed on
//! exit — unless it still holds another pid (a newer master's) or was
//! handed over at an upgrade.
//!
//! A root master writes into a directory somebody else may control, so the
//! file is written the careful way: the directory is checked at start
//! ([`check_dir`]: ours or root's, not writable by group or others), the
//! temporary file has a name nobody can guess and is created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` inside the directory's fd (a symlink
//! planted at any name is never followed), then renamed over the pid file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    handed_over: bool,
}

/// The pid file's directory and name: `foo.pid` is `(".", "foo.pid")`.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .with_context(|| format!("--pid-file {}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("opening the pid file's directory {}", dir.display()))
}

/// Refuses a pid file whose directory another user could write into: they
/// could plant a link where the file goes (the same rule as the run dir's).
/// Checked at start, before anything is bound.
pub fn check_dir(path: &Path) -> Result<()> {
    let (dir, _) = split(path)?;
    let fd = open_dir(dir)?;
    let stat = nix::sys::stat::fstat(fd.as_fd())
        .with_context(|| format!("checking the pid file's directory {}", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if stat.st_uid != euid && stat.st_uid != 0 {
        bail!(
            "--pid-file {}: its directory {} belongs to uid {}, not to us (uid {euid}) or root; \
             its owner could replace the file. Put the pid file in a directory of our own \
             (e.g. /run/handoff)",
            path.display(),
            dir.display(),
            stat.st_uid
        );
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "--pid-file {}: its directory {} is mode {mode:04o}, writable by other users, who \
             could plant a link where the file goes; refusing it. Put the pid file in a \
             directory only its owner can write (e.g. /run/handoff, mode 0755)",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A name nobody can predict: 64 bits from the kernel's random pool.
fn unguessable_suffix() -> Result<String> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the pid file's temporary name")?;
    Ok(format!("{:016x}", u64::from_ne_bytes(bytes)))
}

impl PidFile {
    /// Writes our pid to `path` through a new temporary file renamed over
    /// it, so a reader never sees it half written (see the module docs).
    pub fn write(path: &Path) -> Result<PidFile> {
        let (dir, name) = split(path)?;
        let dir_fd = open_dir(dir)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}", unguessable_suffix()?));
        let tmp_name = PathBuf::from(tmp_name);
        let tmp_fd = nix::fcntl::openat(
            dir_fd.as_fd(),
            &tmp_name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(0o644),
        )
        .with_context(|| format!("creating the pid file's temporary file in {}", dir.display()))?;
        // 0644 whatever the umask, like other daemons' pid files.
        let written = nix::sys::stat::fchmod(tmp_fd.as_fd(), Mode::from_bits_truncate(0o644))
            .context("setting the pid file's mode")
            .and_then(|()| {
                File::from(tmp_fd)
                    .write_all(format!("{}\n", std::process::id()).as_bytes())
                    .with_context(|| format!("writing pid file {}", path.display()))
            })
            .and_then(|()| {
                nix::fcntl::renameat(dir_fd.as_fd(), &tmp_name, dir_fd.as_fd(), name)
                    .with_context(|| format!("writing pid file {}", path.display()))
            });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                dir_fd.as_fd(),
                &tmp_name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written?;
        Ok(PidFile { path: path.to_owned(), handed_over: false })
    }

    /// A new master took over (and rewrote the file): leave it.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }

    /// Whether the file (not a link planted in its place) holds our pid.
    fn holds_our_pid(&self) -> bool {
        let mut text = String::new();
        nix::fcntl::open(
            &self.path,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()
        .map(File::from)
        .is_some_and(|mut file| {
            file.read_to_string(&mut text).is_ok() && text.trim() == std::process::id().to_string()
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if !self.handed_over && self.holds_our_pid() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("handoff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn written_then_removed_unless_handed_over() {
        let dir = scratch("pidfile");
        let path = dir.join("master.pid");
        let file = PidFile::write(&path).expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "readable by all, like other daemons' pid files");
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 1, "no temporary file left");
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
        let dir = scratch("pidfile-other");
        let path = dir.join("master.pid");
        let file = PidFile::write(&path).expect("write");
        // A newer master wrote its own pid over ours.
        std::fs::write(&path, "1\n").expect("overwrite");
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "1\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_link_at_the_pid_files_name_is_replaced_not_followed() {
        let dir = scratch("pidfile-link");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        let path = dir.join("master.pid");
        std::os::unix::fs::symlink(&victim, &path).expect("plant");
        let file = PidFile::write(&path).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
        assert!(!std::fs::symlink_metadata(&path).expect("stat").file_type().is_symlink());
        drop(file);
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn temporary_names_differ_every_time() {
        let a = unguessable_suffix().expect("random");
        let b = unguessable_suffix().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = scratch("pidfile-dir");
        let path = dir.join("master.pid");
        check_dir(&path).expect("0755 is fine");
        for mode in [0o777, 0o1777, 0o775, 0o757] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = check_dir(&path).expect_err("refused").to_string();
            assert!(err.contains("writable by other users"), "{mode:o}: {err}");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
