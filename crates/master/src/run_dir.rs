//! The run directory: where the master's Unix sockets and lock file live,
//! and the proof that it is still ours.
//!
//! [`RunDir::claim`] creates the directory with a plain `mkdir` (mode 0700;
//! an existing one is not taken on trust), opens it `O_DIRECTORY |
//! O_NOFOLLOW` and checks the *opened* directory with `fstat`: it must
//! belong to our effective uid and no other user may be able to write into
//! it (a group/other-writable directory is refused, never tightened, since
//! files may already have been planted in it). Every file in it is then
//! reached relative to that directory fd, with `O_NOFOLLOW`: the exclusive
//! `flock` on `master.lock` (a symlink or a hard link there is refused, so
//! the master never writes through one), and the removal of sockets a dead
//! master left behind (unless one still answers).
//!
//! The master keeps the directory fd for its whole life. [`RunDir::check`]
//! (once a second, from the health-check tick) compares the path with the
//! held fd and the lock file and sockets with the ones it made, and says
//! what changed when the directory was removed, renamed or replaced.
//! Dropping the [`RunDir`] removes the sockets and the lock file — only
//! those entries of the held directory that are still the ones it made, so
//! a master whose directory was replaced never deletes another's files.

use std::fs::{DirBuilder, File};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use handoff_proto::control::CONTROL_SOCKET_NAME;
use handoff_proto::{MASTER_LOCK_NAME, WORKERS_SOCKET_NAME};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Sockets the master creates in its run directory, with their types.
const SOCKETS: &[(&str, SockType)] =
    &[(WORKERS_SOCKET_NAME, SockType::SeqPacket), (CONTROL_SOCKET_NAME, SockType::Stream)];

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    // `dev_t` and `ino_t` are u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    fn of(stat: &FileStat) -> Identity {
        Identity { dev: stat.st_dev as u64, ino: stat.st_ino as u64 }
    }
}

/// How the lock file is held.
#[derive(Debug)]
enum Lock {
    /// We took the `flock` (unlocked when dropped).
    Taken(Flock<File>),
    /// A master upgrade handed us a descriptor of the old master's locked
    /// open file description: the lock is on it, and stays while any copy
    /// is open.
    Inherited(File),
}

impl Lock {
    fn file(&mut self) -> &mut File {
        match self {
            Lock::Taken(flock) => flock,
            Lock::Inherited(file) => file,
        }
    }
}

/// A run directory this master holds (open) and holds the lock on.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    dir: OwnedFd,
    dir_id: Identity,
    /// The lock is ours until this closes, after `drop`. `None` once the
    /// run dir was handed over to a new master (the lock then lives on in
    /// its copy of the same open file description).
    lock: Option<Lock>,
    /// Handed over to a new master: dropping removes nothing.
    handed_over: bool,
    lock_id: Identity,
    /// The sockets' identities, learned at the first [`RunDir::check`]
    /// (right after they are bound) and expected from then on.
    sockets: [Option<Identity>; 2],
    /// What went wrong, once [`RunDir::check`] found it.
    lost: Option<String>,
}

impl RunDir {
    /// Creates or adopts `path`, checks it is ours and private, locks it,
    /// and clears stale sockets.
    pub fn claim(path: &Path) -> Result<RunDir> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        // A plain mkdir: EEXIST only means someone made it, maybe not us;
        // what we open is checked below either way.
        match nix::unistd::mkdir(path, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => bail!("creating run dir {shown}: {err}; pass --run-dir to use another"),
        }
        let dir = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| match err {
            // With O_DIRECTORY a symlink may say ENOTDIR rather than ELOOP.
            Errno::ELOOP | Errno::ENOTDIR if path.is_symlink() => anyhow::anyhow!(
                "run dir {shown} is a symbolic link: refusing to follow it; \
                 pass --run-dir with a real directory"
            ),
            Errno::ENOTDIR => anyhow::anyhow!(
                "run dir {shown} exists and is not a directory; pass --run-dir to use another"
            ),
            err => anyhow::anyhow!("opening run dir {shown}: {err}"),
        })?;
        let stat = fstat(dir.as_fd()).with_context(|| format!("checking run dir {shown}"))?;
        let euid = nix::unistd::geteuid().as_raw();
        if stat.st_uid != euid {
            bail!(
                "run dir {shown} belongs to uid {}, not to us (uid {euid}): its owner could \
                 replace our sockets; pass --run-dir with a directory of our own",
                stat.st_uid
            );
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            bail!(
                "run dir {shown} is mode {mode:04o}: other users can write into it, so files \
                 may already have been planted there; refusing it (not tightening it). Check \
                 and remove it, or pass --run-dir with a private directory"
            );
        }
        if mode & 0o077 != 0 {
            // Readable by others but writable only by us: nothing can have
            // been planted, so making it private is safe.
            nix::sys::stat::fchmod(dir.as_fd(), Mode::S_IRWXU)
                .with_context(|| format!("making run dir {shown} mode 0700"))?;
            tracing::info!(run_dir = %shown, from = format!("{mode:04o}"), "run dir made mode 0700");
        }

        let lock_file = nix::fcntl::openat(
            dir.as_fd(),
            MASTER_LOCK_NAME,
            OFlag::O_RDWR
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY
                | OFlag::O_NONBLOCK,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|err| match err {
            Errno::ELOOP => anyhow::anyhow!(
                "{shown}/{MASTER_LOCK_NAME} is a symbolic link: refusing to write through it \
                 (someone may want the master to overwrite the file it points to); remove it, \
                 or pass --run-dir"
            ),
            err => anyhow::anyhow!("opening {shown}/{MASTER_LOCK_NAME}: {err}"),
        })?;
        let lock_stat = fstat(lock_file.as_fd())
            .with_context(|| format!("checking {shown}/{MASTER_LOCK_NAME}"))?;
        let kind = SFlag::from_bits_truncate(lock_stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG || lock_stat.st_uid != euid || lock_stat.st_nlink != 1 {
            bail!(
                "{shown}/{MASTER_LOCK_NAME} is not a plain file of ours (type {:o}, uid {}, \
                 {} links): refusing to write to it; remove it, or pass --run-dir",
                kind.bits(),
                lock_stat.st_uid,
                lock_stat.st_nlink
            );
        }
        let lock_id = Identity::of(&lock_stat);
        let mut lock = match Flock::lock(File::from(lock_file), FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, _)) => {
                let mut holder = String::new();
                let _ = file.take(64).read_to_string(&mut holder);
                let holder: String = holder.trim().chars().take(32).collect();
                let holder = if holder.is_empty() { "unknown".to_owned() } else { holder };
                bail!(
                    "another handoff-master (pid {holder}) is running with run dir {shown}; \
                     stop it or pass a different --run-dir (with make: `make run \
                     RUN_DIR=DIR`)"
                );
            }
        };
        lock.set_len(0).context("truncating the lock file")?;
        lock.rewind().context("rewinding the lock file")?;
        writeln!(lock, "{}", std::process::id()).context("writing the lock file")?;

        for &(name, kind) in SOCKETS {
            let Ok(found) = fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let is_socket =
                SFlag::from_bits_truncate(found.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK;
            if is_socket && socket_answers(&path.join(name), kind) {
                bail!(
                    "a process still listens on {shown}/{name} although {MASTER_LOCK_NAME} was \
                     free (was the lock file removed under a running master?); stop it or pass \
                     a different --run-dir"
                );
            }
            nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .with_context(|| format!("removing stale socket {shown}/{name}"))?;
            tracing::info!(path = %path.join(name).display(), "removed a stale socket left by a dead master");
        }
        Ok(RunDir {
            path: path.to_owned(),
            dir,
            dir_id: Identity::of(&stat),
            lock: Some(Lock::Taken(lock)),
            handed_over: false,
            lock_id,
            sockets: [None; 2],
            lost: None,
        })
    }

    /// Takes over the run dir `path` from the master that started us (a
    /// master upgrade): `dir` and `lock` are its open directory and locked
    /// lock file. Checked as [`RunDir::claim`] checks them (ours, private,
    /// the path still leads to that directory, the lock file a plain file
    /// of ours); nothing is created or removed.
    pub fn inherit(path: &Path, dir: OwnedFd, lock: OwnedFd) -> Result<RunDir> {
        let shown = path.display();
        let stat = fstat(dir.as_fd()).with_context(|| format!("checking run dir {shown}"))?;
        let euid = nix::unistd::geteuid().as_raw();
        if stat.st_uid != euid || stat.st_mode & 0o022 != 0 {
            bail!("inherited run dir {shown} is not ours or not private");
        }
        match nix::sys::stat::lstat(path) {
            Ok(at_path) if Identity::of(&at_path) == Identity::of(&stat) => {}
            _ => bail!("run dir {shown} is no longer the directory the old master holds"),
        }
        let lock_stat = fstat(lock.as_fd()).context("checking the inherited lock file")?;
        let kind = SFlag::from_bits_truncate(lock_stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG || lock_stat.st_uid != euid {
            bail!("the inherited {MASTER_LOCK_NAME} is not a plain file of ours");
        }
        Ok(RunDir {
            path: path.to_owned(),
            dir,
            dir_id: Identity::of(&stat),
            lock: Some(Lock::Inherited(File::from(lock))),
            handed_over: false,
            lock_id: Identity::of(&lock_stat),
            sockets: [None; 2],
            lost: None,
        })
    }

    /// The open directory (handed to a new master at an upgrade).
    pub fn dir_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The locked lock file (handed to a new master at an upgrade).
    pub fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.lock.as_ref().map(|lock| match lock {
            Lock::Taken(flock) => flock.as_fd(),
            Lock::Inherited(file) => file.as_fd(),
        })
    }

    /// Writes our pid into the lock file (a new master, once in charge).
    pub fn write_pid(&mut self) -> Result<()> {
        let Some(lock) = self.lock.as_mut() else { return Ok(()) };
        let file = lock.file();
        file.set_len(0).context("truncating the lock file")?;
        file.rewind().context("rewinding the lock file")?;
        writeln!(file, "{}", std::process::id()).context("writing the lock file")?;
        Ok(())
    }

    /// The run dir now belongs to the new master we handed it to: stop
    /// checking it, and remove nothing and unlock nothing on the way out.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
        // The new master's copy of the open file description keeps the
        // lock; a `Flock` would unlock it when dropped.
        if let Some(Lock::Taken(flock)) = self.lock.take() {
            std::mem::forget(flock);
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of a file inside the run directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Is the run directory still the one we hold, with our lock file and
    /// sockets in it? `Err` says what changed, once (later calls return
    /// `Ok`: the caller has acted on it). Four `stat` calls.
    pub fn check(&mut self) -> Result<(), String> {
        if self.lost.is_some() || self.handed_over {
            return Ok(());
        }
        let problem = self.find_problem();
        if let Some(problem) = &problem {
            self.lost = Some(format!("run dir {} {problem}", self.path.display()));
        }
        match &self.lost {
            Some(lost) => Err(lost.clone()),
            None => Ok(()),
        }
    }

    /// What [`RunDir::check`] found, if it found something.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    fn find_problem(&mut self) -> Option<String> {
        match fstat(self.dir.as_fd()) {
            Ok(stat) if stat.st_nlink == 0 => return Some("was removed".into()),
            Ok(_) => {}
            Err(err) => return Some(format!("cannot be checked any more ({err})")),
        }
        match nix::sys::stat::lstat(&self.path) {
            Ok(stat) if Identity::of(&stat) == self.dir_id => {}
            Ok(_) => return Some("was replaced by another file or directory".into()),
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                return Some("was removed or renamed (the path no longer leads to it)".into())
            }
            // An ancestor we can no longer search, say: the directory
            // itself is unchanged as far as we can tell.
            Err(_) => {}
        }
        let at = |name: &str| {
            fstatat(self.dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .map(|stat| Identity::of(&stat))
        };
        if at(MASTER_LOCK_NAME) != Some(self.lock_id) {
            return Some(format!(
                "lost its lock file {MASTER_LOCK_NAME} (removed or replaced): a second master \
                 could start there"
            ));
        }
        for (i, &(name, _)) in SOCKETS.iter().enumerate() {
            match (at(name), self.sockets[i]) {
                (None, _) => return Some(format!("lost the socket {name} (removed)")),
                (Some(now), Some(ours)) if now != ours => {
                    return Some(format!("lost the socket {name} (replaced by another file)"))
                }
                (Some(now), _) => self.sockets[i] = Some(now),
            }
        }
        None
    }
}

/// Does something accept connections on the Unix socket at `path`?
/// (A non-blocking connect: a full backlog still says yes.)
fn socket_answers(path: &Path, kind: SockType) -> bool {
    let Ok(addr) = UnixAddr::new(path) else { return false };
    let Ok(fd) = socket::socket(
        AddressFamily::Unix,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    matches!(
        socket::connect(fd.as_raw_fd(), &addr),
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS)
    )
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let at = |name: &str| {
            fstatat(self.dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .map(|stat| Identity::of(&stat))
        };
        let ours = SOCKETS
            .iter()
            .zip(self.sockets)
            .map(|(&(name, _), id)| (name, id))
            .chain([(MASTER_LOCK_NAME, Some(self.lock_id))]);
        for (name, id) in ours {
            // A socket never checked (a master stopping in its first turn)
            // is ours if it is there: the lock kept everyone else away.
            if id.is_none() || at(name) == id {
                let _ = nix::unistd::unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
            }
        }
        // The lock is released when `self.lock` closes, after the unlinks,
        // so a new master never finds our sockets behind a free lock.
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// `RunDir::claim`, tried again while the lock a test released is still
    /// held elsewhere: a child that another test forked meanwhile holds a
    /// copy of the lock's fd until it execs.
    fn claim(path: &Path) -> Result<RunDir> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match RunDir::claim(path) {
                Err(err)
                    if err.to_string().contains("another handoff-master")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                result => return result,
            }
        }
    }

    /// A socket file nobody answers on, as a dead master leaves (bound, not
    /// listening, so no copy of its fd in a forked child can answer).
    fn stale_socket(path: &Path) {
        drop(std::os::unix::net::UnixDatagram::bind(path).expect("bind"));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("handoff-rundir-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_claim_names_the_holder_and_a_released_dir_is_reclaimed() {
        let tmp = scratch("reclaim");
        let first = claim(&tmp).expect("first claim");
        let mode = std::fs::metadata(&tmp).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        let err = RunDir::claim(&tmp).expect_err("second claim fails").to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        std::fs::write(tmp.join(WORKERS_SOCKET_NAME), b"stale").expect("plant a stale socket");
        let again = claim(&tmp).expect("reclaim after release");
        assert!(!tmp.join(WORKERS_SOCKET_NAME).exists(), "stale socket removed");
        drop(again);
        std::fs::remove_dir(&tmp).expect("run dir left empty");
    }

    #[test]
    fn a_loose_dir_is_refused_and_a_merely_readable_one_is_made_private() {
        let tmp = scratch("modes");
        std::fs::create_dir(&tmp).expect("mkdir");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = RunDir::claim(&tmp).expect_err("0777 refused").to_string();
        assert!(err.contains("mode 1777") && err.contains("--run-dir"), "{err}");
        assert_eq!(std::fs::metadata(&tmp).expect("stat").mode() & 0o7777, 0o1777, "not touched");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = claim(&tmp).expect("0755 adopted");
        assert_eq!(std::fs::metadata(&tmp).expect("stat").mode() & 0o777, 0o700);
        drop(dir);
        // A private one is left as it is (here, sticky).
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1700)).expect("chmod");
        let dir = claim(&tmp).expect("private");
        assert_eq!(std::fs::metadata(&tmp).expect("stat").mode() & 0o7777, 0o1700, "untouched");
        drop(dir);
        std::fs::remove_dir(&tmp).expect("cleanup");
    }

    #[test]
    fn a_symlinked_lock_file_or_run_dir_is_never_followed() {
        let tmp = scratch("symlink");
        std::fs::create_dir(&tmp).expect("mkdir");
        let victim = tmp.with_extension("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, tmp.join(MASTER_LOCK_NAME)).expect("plant");
        let err = RunDir::claim(&tmp).expect_err("symlinked lock refused").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        std::fs::remove_file(tmp.join(MASTER_LOCK_NAME)).expect("unplant");

        let link = tmp.with_extension("link");
        std::os::unix::fs::symlink(&tmp, &link).expect("dir symlink");
        let err = RunDir::claim(&link).expect_err("symlinked dir refused").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        for path in [&link, &victim] {
            std::fs::remove_file(path).expect("cleanup");
        }
        std::fs::remove_dir(&tmp).expect("cleanup");
    }

    #[test]
    fn check_notices_a_removed_or_replaced_dir_and_drop_spares_the_new_one() {
        let tmp = scratch("check");
        let mut dir = claim(&tmp).expect("claim");
        for (name, _) in SOCKETS {
            std::fs::write(tmp.join(name), b"").expect("stand-in socket");
        }
        assert_eq!(dir.check(), Ok(()));
        let moved = tmp.with_extension("moved");
        std::fs::rename(&tmp, &moved).expect("rename");
        std::fs::create_dir(&tmp).expect("a new dir at the path");
        std::fs::write(tmp.join(MASTER_LOCK_NAME), b"someone else").expect("their lock");
        let err = dir.check().expect_err("replaced");
        assert!(err.contains("was replaced") && err.contains(&tmp.display().to_string()), "{err}");
        assert_eq!(dir.check(), Ok(()), "said once");
        assert!(dir.lost().is_some());
        drop(dir);
        assert!(tmp.join(MASTER_LOCK_NAME).exists(), "the new dir's files are not ours");
        assert_eq!(std::fs::read_dir(&moved).expect("moved").count(), 0, "ours removed");
        std::fs::remove_dir_all(&tmp).expect("cleanup");
        std::fs::remove_dir(&moved).expect("cleanup");

        let mut dir = claim(&tmp).expect("claim");
        std::fs::remove_file(tmp.join(MASTER_LOCK_NAME)).expect("rm lock");
        let err = dir.check().expect_err("lock gone");
        assert!(err.contains("lock file"), "{err}");
        drop(dir);
        std::fs::remove_dir(&tmp).expect("cleanup");
    }

    /// A fresh private directory.
    fn made(name: &str) -> PathBuf {
        let dir = scratch(name);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn fd_flags(fd: std::os::fd::BorrowedFd<'_>) -> (bool, OFlag) {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let fd_flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD"));
        let status = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL"));
        (fd_flags.contains(FdFlag::FD_CLOEXEC), status)
    }

    #[test]
    fn a_claim_makes_the_missing_parents_and_holds_private_close_on_exec_fds() {
        let tmp = scratch("parents");
        let path = tmp.join("a/b/run");
        let mut dir = claim(&path).expect("claim");
        assert_eq!(std::fs::metadata(tmp.join("a/b")).expect("parent").mode() & 0o777, 0o700);
        assert_eq!((dir.path(), dir.join("x")), (path.as_path(), path.join("x")));
        let lock_path = path.join(MASTER_LOCK_NAME);
        let lock_meta = std::fs::symlink_metadata(&lock_path).expect("lock");
        assert_eq!(lock_meta.mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&lock_path).expect("read"),
            format!("{}\n", std::process::id())
        );
        let (cloexec, status) = fd_flags(dir.dir_fd());
        assert!(cloexec, "the dir fd is close-on-exec");
        assert_eq!(status & OFlag::O_ACCMODE, OFlag::O_RDONLY);
        let dir_stat = fstat(dir.dir_fd()).expect("fstat");
        assert_eq!(
            Identity::of(&dir_stat),
            Identity::of(&nix::sys::stat::lstat(&path).expect("lstat"))
        );
        let lock_fd = dir.lock_fd().expect("a lock");
        let (cloexec, status) = fd_flags(lock_fd);
        assert!(cloexec, "the lock fd is close-on-exec");
        assert_eq!(status & OFlag::O_ACCMODE, OFlag::O_RDWR);
        assert!(status.contains(OFlag::O_NONBLOCK), "{status:?}");
        assert_eq!(
            Identity::of(&fstat(lock_fd).expect("fstat")),
            Identity::of(&nix::sys::stat::lstat(&lock_path).expect("lstat"))
        );
        // The lock file is rewritten, not appended to.
        std::fs::write(&lock_path, "a much longer text than a pid\n").expect("scribble");
        dir.write_pid().expect("write pid");
        assert_eq!(
            std::fs::read_to_string(&lock_path).expect("read"),
            format!("{}\n", std::process::id())
        );
        assert_eq!(
            dir.check(),
            Err(format!(
                "run dir {} lost the socket {WORKERS_SOCKET_NAME} (removed)",
                path.display()
            ))
        );
        drop(dir);
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn a_file_at_the_run_dir_path_or_an_odd_lock_file_is_refused() {
        let tmp = made("odd");
        let file = tmp.join("file");
        std::fs::write(&file, b"").expect("file");
        let err = RunDir::claim(&file).expect_err("a file").to_string();
        assert!(err.contains("exists and is not a directory"), "{err}");
        // A hard link to the lock file.
        let run = tmp.join("run");
        std::fs::create_dir(&run).expect("mkdir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(tmp.join("elsewhere"), b"x").expect("file");
        std::fs::hard_link(tmp.join("elsewhere"), run.join(MASTER_LOCK_NAME)).expect("link");
        let err = RunDir::claim(&run).expect_err("a hard link").to_string();
        assert!(err.contains("2 links"), "{err}");
        assert_eq!(std::fs::read(tmp.join("elsewhere")).expect("read"), b"x", "not written");
        std::fs::remove_file(run.join(MASTER_LOCK_NAME)).expect("rm");
        // A FIFO there.
        nix::unistd::mkfifo(&run.join(MASTER_LOCK_NAME), Mode::S_IRWXU).expect("mkfifo");
        let err = RunDir::claim(&run).expect_err("a fifo").to_string();
        assert!(err.contains("not a plain file of ours"), "{err}");
        std::fs::remove_file(run.join(MASTER_LOCK_NAME)).expect("rm");
        if is_root() {
            // Someone else's lock file, and someone else's directory.
            let other = Some(nix::unistd::Uid::from_raw(4321));
            std::fs::write(run.join(MASTER_LOCK_NAME), b"").expect("lock");
            nix::unistd::chown(&run.join(MASTER_LOCK_NAME), other, None).expect("chown");
            let err = RunDir::claim(&run).expect_err("their lock").to_string();
            assert!(err.contains("uid 4321"), "{err}");
            std::fs::remove_file(run.join(MASTER_LOCK_NAME)).expect("rm");
            nix::unistd::chown(&run, other, None).expect("chown");
            let err = RunDir::claim(&run).expect_err("their dir").to_string();
            assert!(err.contains("belongs to uid 4321"), "{err}");
        }
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn a_live_socket_is_refused_and_a_dead_one_removed() {
        let tmp = made("sockets");
        let live =
            std::os::unix::net::UnixListener::bind(tmp.join(CONTROL_SOCKET_NAME)).expect("bind");
        let err = RunDir::claim(&tmp).expect_err("someone listens").to_string();
        assert!(err.contains("still listens") && err.contains(CONTROL_SOCKET_NAME), "{err}");
        assert!(tmp.join(CONTROL_SOCKET_NAME).exists(), "theirs kept");
        drop(live);
        for (name, _) in SOCKETS {
            let _ = std::fs::remove_file(tmp.join(name));
            stale_socket(&tmp.join(name));
        }
        let dir = claim(&tmp).expect("only stale sockets");
        assert!(!tmp.join(CONTROL_SOCKET_NAME).exists());
        assert!(!tmp.join(WORKERS_SOCKET_NAME).exists());
        drop(dir);
        std::fs::remove_dir(&tmp).expect("left empty");
    }

    #[test]
    fn a_listener_with_a_full_backlog_still_answers() {
        use std::os::fd::AsRawFd;
        let tmp = made("backlog");
        let path = tmp.join(CONTROL_SOCKET_NAME);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        socket::listen(&listener, socket::Backlog::new(0).expect("backlog")).expect("listen");
        let addr = UnixAddr::new(&path).expect("addr");
        let mut clients = Vec::new();
        loop {
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            match socket::connect(fd.as_raw_fd(), &addr) {
                Ok(()) => clients.push(fd),
                Err(Errno::EAGAIN) => break,
                Err(err) => panic!("{err}"),
            }
            assert!(clients.len() < 100, "the backlog never filled");
        }
        assert!(socket_answers(&path, SockType::Stream), "a full backlog still says yes");
        assert!(!socket_answers(&path, SockType::SeqPacket), "another type does not answer");
        assert!(!socket_answers(&tmp.join("nothing"), SockType::Stream));
        drop(listener);
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn check_names_a_removed_dir_a_moved_one_and_lost_or_replaced_sockets() {
        let tmp = scratch("check-more");
        let sockets = |dir: &Path| {
            for (name, _) in SOCKETS {
                std::fs::write(dir.join(name), b"").expect("stand-in socket");
            }
        };
        let mut dir = claim(&tmp).expect("claim");
        sockets(&tmp);
        assert_eq!(dir.check(), Ok(()));
        assert_eq!(dir.check(), Ok(()), "still fine: the sockets it learned are there");
        assert_eq!(dir.lost(), None);
        // Made while the old one exists, so it is another inode.
        std::fs::write(tmp.join("new"), b"").expect("another file");
        std::fs::rename(tmp.join("new"), tmp.join(CONTROL_SOCKET_NAME)).expect("replace");
        let err = dir.check().expect_err("replaced");
        assert_eq!(
            err,
            format!(
                "run dir {} lost the socket {CONTROL_SOCKET_NAME} (replaced by another file)",
                tmp.display()
            )
        );
        assert_eq!(dir.lost(), Some(err.as_str()));
        drop(dir);
        assert!(tmp.join(CONTROL_SOCKET_NAME).exists(), "not the one it made: kept");
        assert!(!tmp.join(WORKERS_SOCKET_NAME).exists(), "its own removed");
        assert!(!tmp.join(MASTER_LOCK_NAME).exists());
        std::fs::remove_file(tmp.join(CONTROL_SOCKET_NAME)).expect("rm");

        // Never checked: whatever is there is its own.
        let dir = claim(&tmp).expect("claim");
        sockets(&tmp);
        drop(dir);
        assert_eq!(std::fs::read_dir(&tmp).expect("read").count(), 0, "all removed");

        let mut dir = claim(&tmp).expect("claim");
        sockets(&tmp);
        let moved = tmp.with_extension("moved");
        std::fs::rename(&tmp, &moved).expect("rename");
        let err = dir.check().expect_err("moved");
        assert!(err.contains("was removed or renamed"), "{err}");
        drop(dir);
        std::fs::remove_dir_all(&moved).expect("cleanup");

        let mut dir = claim(&tmp).expect("claim");
        sockets(&tmp);
        std::fs::remove_dir_all(&tmp).expect("rm -r");
        let err = dir.check().expect_err("removed");
        assert_eq!(err, format!("run dir {} was removed", tmp.display()));
    }

    #[test]
    fn a_run_dir_handed_over_is_neither_checked_nor_cleaned_and_the_new_master_inherits_it() {
        let tmp = scratch("handover");
        let mut old = claim(&tmp).expect("claim");
        for (name, _) in SOCKETS {
            std::fs::write(tmp.join(name), b"").expect("stand-in socket");
        }
        let dir_fd = old.dir_fd().try_clone_to_owned().expect("dup");
        let lock_fd = old.lock_fd().expect("lock").try_clone_to_owned().expect("dup");
        old.hand_over();
        assert!(old.lock_fd().is_none());
        let mut new = RunDir::inherit(&tmp, dir_fd, lock_fd).expect("inherit");
        std::fs::remove_file(tmp.join(CONTROL_SOCKET_NAME)).expect("rm");
        assert_eq!(old.check(), Ok(()), "not ours to check any more");
        drop(old);
        assert!(tmp.join(WORKERS_SOCKET_NAME).exists() && tmp.join(MASTER_LOCK_NAME).exists());
        // The lock lives on in the new master's copy.
        let err = RunDir::claim(&tmp).expect_err("still locked").to_string();
        assert!(err.contains("another handoff-master"), "{err}");
        std::fs::write(tmp.join(MASTER_LOCK_NAME), b"old pid, longer than ours\n").expect("write");
        new.write_pid().expect("write pid");
        assert_eq!(
            std::fs::read_to_string(tmp.join(MASTER_LOCK_NAME)).expect("read"),
            format!("{}\n", std::process::id())
        );
        assert!(new.lock_fd().is_some());
        assert_eq!(new.path(), tmp.as_path());
        let err = new.check().expect_err("control.sock was removed");
        assert!(err.contains(CONTROL_SOCKET_NAME), "{err}");
        drop(new);
        assert_eq!(std::fs::read_dir(&tmp).expect("read").count(), 0, "the new master cleans up");
        std::fs::remove_dir(&tmp).expect("cleanup");
    }

    #[test]
    fn an_inherited_run_dir_must_still_be_at_its_path_private_and_ours() {
        let tmp = scratch("inherit");
        let dir = claim(&tmp).expect("claim");
        let fds = || {
            (
                dir.dir_fd().try_clone_to_owned().expect("dup"),
                dir.lock_fd().expect("lock").try_clone_to_owned().expect("dup"),
            )
        };
        let (dir_fd, _) = fds();
        let (_, lock_fd) = fds();
        let err =
            RunDir::inherit(&tmp, fds().0, dir_fd).expect_err("a dir as the lock").to_string();
        assert!(err.contains("not a plain file"), "{err}");
        let other = made("inherit-other");
        let err = RunDir::inherit(&other, fds().0, lock_fd).expect_err("another path").to_string();
        assert!(err.contains("no longer the directory"), "{err}");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        let (dir_fd, lock_fd) = fds();
        let err = RunDir::inherit(&tmp, dir_fd, lock_fd).expect_err("group-writable").to_string();
        assert!(err.contains("not ours or not private"), "{err}");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        if is_root() {
            let them = Some(nix::unistd::Uid::from_raw(4321));
            nix::unistd::chown(&tmp.join(MASTER_LOCK_NAME), them, None).expect("chown");
            let (dir_fd, lock_fd) = fds();
            let err = RunDir::inherit(&tmp, dir_fd, lock_fd).expect_err("their lock").to_string();
            assert!(err.contains("not a plain file of ours"), "{err}");
            nix::unistd::chown(&tmp.join(MASTER_LOCK_NAME), Some(nix::unistd::geteuid()), None)
                .expect("chown");
            nix::unistd::chown(&tmp, them, None).expect("chown");
            let (dir_fd, lock_fd) = fds();
            let err = RunDir::inherit(&tmp, dir_fd, lock_fd).expect_err("their dir").to_string();
            assert!(err.contains("not ours or not private"), "{err}");
            nix::unistd::chown(&tmp, Some(nix::unistd::geteuid()), None).expect("chown");
        }
        let (dir_fd, lock_fd) = fds();
        RunDir::inherit(&tmp, dir_fd, lock_fd).expect("all good").hand_over();
        drop(dir);
        std::fs::remove_dir(&tmp).expect("cleanup");
        std::fs::remove_dir(&other).expect("cleanup");
    }
}
