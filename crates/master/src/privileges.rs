//! `--user`/`--group`: the master binds its listener and prepares its run
//! dir as root, then it (and so every worker it spawns) runs as that user,
//! supplementary groups cleared. And the guard against serving a
//! non-local address as root by accident.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Group, Uid, User};

/// Who to become.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolves `--user` and `--group` (default: the user's primary group).
/// `None` without `--user`, and for a master already running as that user
/// (one started by an upgrade: the old master dropped privileges before
/// starting it).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>> {
    let Some(name) = user else {
        if group.is_some() {
            bail!("--group needs --user");
        }
        return Ok(None);
    };
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    }
    .with_context(|| format!("looking up user {name}"))?;
    let Some(found) = found else { bail!("--user {name}: no such user") };
    let gid = match group {
        None => found.gid,
        Some(group) => {
            let entry = match group.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(group),
            }
            .with_context(|| format!("looking up group {group}"))?;
            entry.with_context(|| format!("--group {group}: no such group"))?.gid
        }
    };
    let euid = nix::unistd::geteuid();
    if euid == found.uid && nix::unistd::getegid() == gid {
        return Ok(None);
    }
    if !euid.is_root() {
        bail!(
            "--user {name} needs root (to bind, then become {name}); this master runs as uid {euid}"
        );
    }
    Ok(Some(Target { name: found.name, uid: found.uid, gid }))
}

/// Creates the run dir as root for `target` (mode 0700, owned by it), or
/// hands over one root made earlier (0700, nobody else could have put
/// anything in it). Anything else is left for `RunDir::claim` to judge.
pub fn prepare_run_dir(path: &Path, target: &Target) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("checking run dir {}", path.display()))?;
            if !(meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o077 == 0) {
                return Ok(());
            }
        }
        Err(err) => bail!("creating run dir {}: {err}", path.display()),
    }
    nix::unistd::chown(path, Some(target.uid), Some(target.gid))
        .with_context(|| format!("giving run dir {} to {}", path.display(), target.name))?;
    Ok(())
}

/// Becomes `target` for good: no supplementary groups, its gid, its uid.
pub fn drop_to(target: &Target) -> Result<()> {
    nix::unistd::setgroups(&[]).context("clearing supplementary groups")?;
    nix::unistd::setgid(target.gid).with_context(|| format!("setgid({})", target.gid))?;
    nix::unistd::setuid(target.uid).with_context(|| format!("setuid({})", target.uid))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() && !target.uid.is_root() {
        bail!("could become root again after dropping to {}", target.name);
    }
    tracing::info!(user = %target.name, uid = %target.uid, gid = %target.gid, "dropped privileges");
    Ok(())
}

/// As root without `--user`, a non-local address is refused unless the
/// operator says so (`--allow-root`).
pub fn check_exposure(addr: SocketAddr, allow_root: bool) -> Result<()> {
    if nix::unistd::geteuid().is_root() && !allow_root && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve {addr} as root: pass --user NAME to drop privileges once the \
             port is bound, listen on a loopback address (--listen 127.0.0.1:PORT), or pass \
             --allow-root to run as root anyway"
        );
    }
    Ok(())
}
