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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn nobody() -> Target {
        let user = User::from_name("nobody").expect("lookup").expect("a user nobody");
        Target { name: user.name, uid: user.uid, gid: user.gid }
    }

    fn scratch(name: &str) -> PathBuf {
        crate::test_support::scratch_dir("priv", name)
    }

    #[test]
    fn users_and_groups_resolve_by_name_or_number_and_ourselves_is_nothing_to_do() {
        assert!(resolve(None, None).expect("no --user").is_none());
        let err = resolve(None, Some("nogroup")).expect_err("--group alone").to_string();
        assert!(err.contains("--group needs --user"), "{err}");
        let err = resolve(Some("no-such-user-for-handoff"), None).expect_err("unknown").to_string();
        assert!(err.contains("no such user"), "{err}");
        let me = User::from_uid(nix::unistd::geteuid()).expect("lookup").expect("ourselves");
        let my_group = nix::unistd::getegid();
        assert!(resolve(Some(&me.name), None).expect("ourselves").is_none(), "already that user");
        let uid = me.uid.to_string();
        let gid = my_group.to_string();
        assert!(resolve(Some(&uid), Some(&gid)).expect("by number").is_none());
        let err = resolve(Some(&uid), Some("no-such-group-for-handoff")).expect_err("no group");
        assert!(err.to_string().contains("no such group"), "{err}");
        let nobody = nobody();
        if !is_root() {
            let err = resolve(Some("root"), None).expect_err("not root").to_string();
            assert!(err.contains("needs root"), "{err}");
            return;
        }
        let target = resolve(Some("nobody"), None).expect("resolve").expect("a target");
        assert_eq!(
            (target.name.as_str(), target.uid, target.gid),
            ("nobody", nobody.uid, nobody.gid)
        );
        let target =
            resolve(Some(&nobody.uid.to_string()), Some("0")).expect("resolve").expect("a target");
        assert_eq!(
            (target.name.as_str(), target.uid, target.gid),
            ("nobody", nobody.uid, Gid::from_raw(0))
        );
        // Root with another group is a change too.
        let target = resolve(Some("root"), Some(&nobody.gid.to_string()))
            .expect("resolve")
            .expect("another group");
        assert_eq!((target.uid, target.gid), (Uid::from_raw(0), nobody.gid));
        let target =
            resolve(Some(&uid), Some("nogroup")).expect("resolve").expect("a group by name");
        assert_eq!(target.gid, Group::from_name("nogroup").expect("lookup").expect("nogroup").gid);
    }

    #[test]
    fn the_run_dir_is_made_for_the_target_and_only_a_private_root_one_is_handed_over() {
        if !is_root() {
            return; // chown needs root
        }
        let target = nobody();
        let tmp = scratch("prepare");
        let owner = |path: &Path| {
            let meta = std::fs::symlink_metadata(path).expect("stat");
            (meta.uid(), meta.gid(), meta.mode() & 0o7777)
        };
        let made = (target.uid.as_raw(), target.gid.as_raw(), 0o700);
        // Made, with the missing parents (mode 0755, root's).
        let fresh = tmp.join("a/b/run");
        prepare_run_dir(&fresh, &target).expect("prepare");
        assert_eq!(owner(&fresh), made);
        assert_eq!(owner(&tmp.join("a/b")), (0, 0, 0o755));
        // Root's, private: handed over.
        let private = tmp.join("private");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        prepare_run_dir(&private, &target).expect("prepare");
        assert_eq!(owner(&private), made);
        // Anything else is left as it is, for RunDir::claim to judge.
        let loose = tmp.join("loose");
        std::fs::create_dir(&loose).expect("mkdir");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        prepare_run_dir(&loose, &target).expect("prepare");
        assert_eq!(owner(&loose), (0, 0, 0o750));
        let theirs = tmp.join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        nix::unistd::chown(&theirs, Some(Uid::from_raw(4321)), Some(Gid::from_raw(4321)))
            .expect("chown");
        prepare_run_dir(&theirs, &target).expect("prepare");
        assert_eq!(owner(&theirs), (4321, 4321, 0o700));
        let file = tmp.join("file");
        std::fs::write(&file, b"").expect("file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        prepare_run_dir(&file, &target).expect("prepare");
        assert_eq!(owner(&file), (0, 0, 0o600));
        // Another error is not taken for "it exists".
        let err = prepare_run_dir(&file.join("run"), &target).expect_err("under a file");
        assert!(format!("{err:#}").contains("creating run dir"), "{err:#}");
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn as_root_only_a_loopback_address_is_served_without_allow_root() {
        let public: SocketAddr = "0.0.0.0:6001".parse().expect("addr");
        let loopback: SocketAddr = "127.0.0.1:6001".parse().expect("addr");
        let v6_loopback: SocketAddr = "[::1]:6001".parse().expect("addr");
        assert!(check_exposure(loopback, false).is_ok());
        assert!(check_exposure(v6_loopback, false).is_ok());
        assert!(check_exposure(public, true).is_ok());
        assert!(check_exposure(loopback, true).is_ok());
        if is_root() {
            let err = check_exposure(public, false).expect_err("refused").to_string();
            assert!(err.contains("refusing to serve 0.0.0.0:6001 as root"), "{err}");
        } else {
            assert!(check_exposure(public, false).is_ok(), "not root: nothing to guard");
        }
    }

    /// Runs in a child process of its own (the test binary again, this
    /// test only), which it turns into `nobody` for good.
    #[test]
    fn dropping_privileges_is_for_good() {
        if !is_root() {
            return;
        }
        if !crate::test_support::is_child() {
            return crate::test_support::run_alone(
                "privileges::tests::dropping_privileges_is_for_good",
                |_| {},
            );
        }
        let root = Target { name: "root".into(), uid: Uid::from_raw(0), gid: Gid::from_raw(0) };
        drop_to(&root).expect("root may stay root");
        assert!(
            nix::unistd::getgroups().expect("groups").is_empty(),
            "supplementary groups cleared"
        );
        let target = nobody();
        drop_to(&target).expect("drop");
        assert_eq!((nix::unistd::getuid(), nix::unistd::geteuid()), (target.uid, target.uid));
        assert_eq!((nix::unistd::getgid(), nix::unistd::getegid()), (target.gid, target.gid));
        assert!(nix::unistd::setuid(Uid::from_raw(0)).is_err(), "no way back");
        let err = resolve(Some("root"), None).expect_err("not root any more").to_string();
        assert!(
            err.contains("needs root") && err.contains(&format!("uid {}", target.uid)),
            "{err}"
        );
        assert!(check_exposure("0.0.0.0:1".parse().expect("addr"), false).is_ok());
    }
}
