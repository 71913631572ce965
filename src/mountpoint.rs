//! The mountpoint before and after a mount: preflight checks (privileges,
//! `/dev/fuse`), recovery of a stale mount left by a dead daemon, refusal of a
//! second daemon, and unmounting. No FUSE session here: only paths, syscalls
//! and `/proc/self/mountinfo`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The source (and subtype) a tokenfs mount shows in `/proc/self/mountinfo`:
/// `fuse tokenfs` when mounted by mount(2) as root, `fuse.tokenfs tokenfs`
/// when mounted through fusermount.
pub const FSNAME: &str = "tokenfs";
/// How long a probe of an existing mount may take before it counts as hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// `CAP_SYS_ADMIN`, as numbered in `linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;

#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error(
        "/dev/fuse does not exist: add the device (docker run --device /dev/fuse; \
         Kubernetes: a FUSE device plugin resource, or a privileged container)"
    )]
    NoFuseDevice,
    #[error(
        "cannot open /dev/fuse ({0}): allow the device (systemd: DeviceAllow=/dev/fuse rw; \
         docker: --device /dev/fuse; Kubernetes: a FUSE device plugin resource)"
    )]
    FuseDeviceDenied(std::io::Error),
    #[error(
        "mounting needs CAP_SYS_ADMIN, which this process lacks: run as root with \
         CAP_SYS_ADMIN (docker: --cap-add SYS_ADMIN; Kubernetes: \
         securityContext.capabilities.add: [SYS_ADMIN])"
    )]
    NoPrivilege,
    #[error("mountpoint {0} is not a directory: point tokenfs at a directory (or a path that does not exist yet)")]
    NotADirectory(PathBuf),
    #[error("mountpoint {0} is not empty: tokenfs would hide its files; empty it or choose another path")]
    NotEmpty(PathBuf),
    #[error("another tokenfs already serves {0}: stop it first (or run `tokenfs unmount {0}`)")]
    AlreadyMounted(PathBuf),
    #[error(
        "the tokenfs mounted on {0} does not answer (is its daemon stopped?): \
         end that daemon or run `tokenfs unmount {0}`"
    )]
    NotAnswering(PathBuf),
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("{path} is a {fstype} mount, not tokenfs: not touching it")]
    NotTokenfs { path: PathBuf, fstype: String },
    #[error("cannot use mountpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MountpointError + '_ {
    move |source| MountpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What mounting needs from the machine: `/dev/fuse` openable and `CAP_SYS_ADMIN`.
pub fn check_privileges() -> Result<(), MountpointError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(MountpointError::NoFuseDevice),
        Err(e) => return Err(MountpointError::FuseDeviceDenied(e)),
    }
    if !has_cap_sys_admin() {
        return Err(MountpointError::NoPrivilege);
    }
    Ok(())
}

/// Whether `CAP_SYS_ADMIN` is in the effective set (`CapEff` of /proc/self/status).
fn has_cap_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // No procfs to ask: let mount(2) decide.
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// `path` made absolute without touching its last component (which may be a
/// dead mount that cannot be resolved).
pub fn absolute(path: &Path) -> Result<PathBuf, MountpointError> {
    let abs = std::path::absolute(path).map_err(io(path))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => Ok(parent.join(name)),
            Err(e) => Err(MountpointError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    e.kind(),
                    format!("its parent {} is unusable: {e}", parent.display()),
                ),
            }),
        },
        _ => Ok(abs),
    }
}

/// A mount as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    pub fn is_tokenfs(&self) -> bool {
        (self.fstype == "fuse" || self.fstype == "fuse.tokenfs") && self.source == FSNAME
    }
}

/// The topmost mount at `path`, from /proc/self/mountinfo.
pub fn mounted(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo_entry(&info, path)
}

/// Whether a tokenfs is the topmost mount at `path`.
pub fn tokenfs_mounted(path: &Path) -> bool {
    mounted(path).is_some_and(|m| m.is_tokenfs())
}

/// The last (topmost) entry of `mountinfo` for `path`.
fn mountinfo_entry(mountinfo: &str, path: &Path) -> Option<MountEntry> {
    let target = escape_mountinfo(&path.to_string_lossy());
    mountinfo
        .lines()
        .rev()
        .filter(|line| line.split(' ').nth(4) == Some(target.as_str()))
        .filter_map(|line| {
            // Optional fields end with "-"; then fstype, source, super options.
            let mut rest = line.split(' ').skip_while(|f| *f != "-");
            rest.next()?;
            Some(MountEntry {
                fstype: rest.next()?.to_owned(),
                source: rest.next()?.to_owned(),
            })
        })
        .next()
}

fn escape_mountinfo(path: &str) -> String {
    path.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// What `.status` of an existing mount answered.
#[derive(Debug)]
pub enum Probe {
    /// It answered: a live daemon serves the mount.
    Alive,
    /// `ENOTCONN`: the daemon is dead.
    Dead,
    /// Another error.
    Error(std::io::Error),
    /// No answer within the probe timeout.
    Hung,
}

/// Read `<mountpoint>/.status` on a helper thread, so a hung daemon cannot hang us.
pub fn probe_status(mountpoint: &Path) -> Probe {
    let path = mountpoint.join(crate::fs::STATUS_NAME);
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("tokenfs-probe".into())
        .spawn(move || {
            let _ = tx.send(std::fs::read(&path));
        });
    if spawned.is_err() {
        return Probe::Hung;
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(_)) => Probe::Alive,
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Probe::Dead,
        Ok(Err(e)) => Probe::Error(e),
        Err(_) => Probe::Hung,
    }
}

/// The mountpoint as an absolute path to an empty directory, ready to mount on:
/// created if missing, a stale mount (dead daemon) detached first; refused if a
/// live tokenfs serves it, or if it is not an empty directory.
pub fn prepare(path: &Path) -> Result<PathBuf, MountpointError> {
    let path = absolute(path)?;
    // Mounts may be stacked: peel off every stale one (bounded, to never spin).
    for _ in 0..8 {
        if tokenfs_mounted(&path) {
            match probe_status(&path) {
                Probe::Alive => return Err(MountpointError::AlreadyMounted(path)),
                Probe::Hung => return Err(MountpointError::NotAnswering(path)),
                Probe::Dead => {
                    detach_stale(&path)?;
                    continue;
                }
                // Neither alive nor surely dead: leave it alone.
                Probe::Error(e) => {
                    return Err(MountpointError::Io {
                        path,
                        source: std::io::Error::new(
                            e.kind(),
                            format!("a tokenfs is mounted there and its .status fails ({e}); run `tokenfs unmount` on it first"),
                        ),
                    })
                }
            }
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(MountpointError::NotADirectory(path)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(io(&path))?;
            }
            // Some other dead FUSE mount (or one this namespace's mountinfo lacks).
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                detach_stale(&path)?;
                continue;
            }
            Err(e) => return Err(io(&path)(e)),
        }
        let mut entries = std::fs::read_dir(&path).map_err(io(&path))?;
        if entries.next().is_some() {
            return Err(MountpointError::NotEmpty(path));
        }
        return Ok(path);
    }
    Err(io(&path)(std::io::Error::other(
        "still a dead mount after detaching 8 of them",
    )))
}

fn detach_stale(path: &Path) -> Result<(), MountpointError> {
    tracing::warn!(
        mountpoint = %path.display(),
        "found a stale mount (its daemon died; readers got 'Transport endpoint is not connected'): detaching it lazily"
    );
    umount(path, libc::MNT_DETACH)
}

/// `umount2(path, flags)`.
pub fn umount(path: &Path, flags: libc::c_int) -> Result<(), MountpointError> {
    let err = |source| MountpointError::Unmount {
        path: path.to_owned(),
        source,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::Error::from(ErrorKind::InvalidInput)))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How `unmount` went.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// Busy: detached; the kernel ends it once the last holder closes its file.
    Lazily,
}

/// `tokenfs unmount`: unmount the tokenfs at `path`, lazily if it is busy.
pub fn unmount(path: &Path) -> Result<Unmounted, MountpointError> {
    let path = absolute(path)?;
    match mounted(&path) {
        None => return Err(MountpointError::NotMounted(path)),
        Some(m) if !m.is_tokenfs() => {
            return Err(MountpointError::NotTokenfs {
                path,
                fstype: m.fstype,
            });
        }
        Some(_) => {}
    }
    match umount(&path, 0) {
        Ok(()) => Ok(Unmounted::Clean),
        Err(MountpointError::Unmount { source, .. })
            if source.raw_os_error() == Some(libc::EBUSY) =>
        {
            umount(&path, libc::MNT_DETACH)?;
            Ok(Unmounted::Lazily)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /tmp/a\\040b rw,nosuid - fuse tokenfs ro,user_id=0
91 22 0:51 / /tmp/x rw shared:5 master:2 - tmpfs tmpfs rw
92 91 0:52 / /tmp/x rw - fuse.tokenfs tokenfs ro
93 22 0:53 / /tmp/s rw - fuse.sshfs host: rw
";

    #[test]
    fn finds_the_topmost_fstype_with_escapes_and_optional_fields() {
        let at = |p: &str| mountinfo_entry(INFO, Path::new(p));
        assert!(at("/tmp/a b").unwrap().is_tokenfs());
        assert_eq!(at("/tmp/x").unwrap().fstype, "fuse.tokenfs");
        assert!(at("/tmp/x").unwrap().is_tokenfs());
        assert!(!at("/tmp/s").unwrap().is_tokenfs());
        assert_eq!(at("/").unwrap().fstype, "ext4");
        assert_eq!(at("/tmp"), None);
    }

    #[test]
    fn refuses_a_file_and_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            prepare(&file),
            Err(MountpointError::NotADirectory(_))
        ));
        assert!(matches!(
            prepare(dir.path()),
            Err(MountpointError::NotEmpty(_))
        ));
        let fresh = dir.path().join("new");
        assert_eq!(
            prepare(&fresh).unwrap(),
            dir.path().canonicalize().unwrap().join("new")
        );
        assert!(fresh.is_dir());
    }
}
