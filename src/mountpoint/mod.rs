//! The mountpoint before and after a mount: preflight checks (privileges,
//! `/dev/fuse`), recovery of a stale mount left by a dead daemon, refusal of a
//! second daemon, and unmounting. No FUSE session here: only descriptors,
//! syscalls and `/proc/self/mountinfo`. A path is resolved once (`resolve`);
//! everything after acts on the descriptor that resolution gave.

use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

pub mod kernel;
use crate::resolve;

pub use kernel::MountId;

/// The source (and subtype) a tokenfs mount shows in `/proc/self/mountinfo`:
/// `fuse.tokenfs tokenfs` (`fuse tokenfs` from versions that mounted with
/// mount(2) and no subtype, still recognised as stale mounts).
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
        "mounting needs root (CAP_SYS_ADMIN), which this process lacks: run it as root \
         with CAP_SYS_ADMIN (sudo; docker: --cap-add SYS_ADMIN; Kubernetes: \
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
    // The io::Error is in the message and deliberately not a `source`: `{:#}`
    // at the edge prints every source after the message, so it would say it twice.
    #[error("cannot use mountpoint {path}: {}", io_hint(.error))]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Untrusted(resolve::ResolveError),
    #[error("cannot unmount {path}: {error}")]
    Unmount {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What went wrong with a mountpoint's path and what to do about it.
fn io_hint(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => {
            format!("{e}: its parent directory must exist; create it first (mkdir -p)")
        }
        ErrorKind::NotADirectory => {
            format!("{e}: a component of the path is a file; give a path through directories")
        }
        ErrorKind::PermissionDenied => format!("{e}: run tokenfs as root"),
        _ => e.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MountpointError + '_ {
    move |error| MountpointError::Io {
        path: path.to_owned(),
        error,
    }
}

/// What mounting needs from the machine: `/dev/fuse` openable and `CAP_SYS_ADMIN`.
pub fn check_privileges() -> Result<(), MountpointError> {
    // The capability first: without it (a user's shell, not root) /dev/fuse may
    // also be closed to us, and "allow the device" would send one to the wrong fix.
    if !has_cap_sys_admin() {
        return Err(MountpointError::NoPrivilege);
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(MountpointError::NoFuseDevice),
        Err(e) => return Err(MountpointError::FuseDeviceDenied(e)),
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

/// `path` made absolute, lexically: nothing is resolved here (see `resolve`).
pub fn absolute(path: &Path) -> Result<PathBuf, MountpointError> {
    std::path::absolute(path).map_err(io(path))
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

/// The entry of `mountinfo` whose mount ID (first field) is `id`.
fn mountinfo_entry(mountinfo: &str, id: u64) -> Option<MountEntry> {
    let id = id.to_string();
    mountinfo
        .lines()
        .filter(|line| line.split(' ').next() == Some(id.as_str()))
        .find_map(|line| {
            // Optional fields end with "-"; then fstype, source, super options.
            let mut rest = line.split(' ').skip_while(|f| *f != "-");
            rest.next()?;
            Some(MountEntry {
                fstype: rest.next()?.to_owned(),
                source: rest.next()?.to_owned(),
            })
        })
}

/// Why `.status` of an existing mount gave no answer.
#[derive(Debug)]
pub enum Unanswered {
    /// `ENOTCONN`: the daemon is dead.
    Dead,
    /// Another error.
    Error(std::io::Error),
    /// No answer within the probe timeout.
    Hung,
}

/// What `.status` of an existing mount answered.
#[derive(Debug)]
pub enum Probe {
    /// It answered: a live daemon serves the mount.
    Alive,
    Unanswered(Unanswered),
}

/// A mount found at a path: the topmost one whose root the path names.
#[derive(Debug)]
pub struct Existing {
    pub path: PathBuf,
    /// `O_PATH` on the mount's root: everything below acts through it.
    root: OwnedFd,
    pub id: MountId,
    pub entry: Option<MountEntry>,
}

impl Existing {
    pub fn is_tokenfs(&self) -> bool {
        self.entry.as_ref().is_some_and(MountEntry::is_tokenfs)
    }

    /// `.status` of this very mount, read on a helper thread so a hung daemon
    /// cannot hang us.
    pub fn read_status(&self) -> Result<Vec<u8>, Unanswered> {
        read_status(self.root.try_clone().map_err(Unanswered::Error)?)
    }

    /// Read a file of this very mount (not following a link there).
    pub fn read_file(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let fd = rustix::fs::openat(
            &self.root,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut buf = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut buf)?;
        Ok(buf)
    }

    pub fn probe(&self) -> Probe {
        match self.read_status() {
            Ok(_) => Probe::Alive,
            Err(u) => Probe::Unanswered(u),
        }
    }

    /// Detach this very mount (see `kernel::detach`).
    pub fn detach(&self) -> Result<(), MountpointError> {
        kernel::detach(&self.root).map_err(|error| MountpointError::Unmount {
            path: self.path.clone(),
            error,
        })
    }
}

/// Read `.status` under the directory `root` (not following a link there).
pub fn read_status(root: OwnedFd) -> Result<Vec<u8>, Unanswered> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("tokenfs-probe".into())
        .spawn(move || {
            let read = rustix::fs::openat(
                &root,
                crate::fs::STATUS_NAME,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                let mut buf = Vec::new();
                std::fs::File::from(fd).read_to_end(&mut buf)?;
                Ok(buf)
            });
            let _ = tx.send(read);
        });
    if let Err(e) = spawned {
        return Err(Unanswered::Error(e));
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(Unanswered::Dead),
        Ok(Err(e)) => Err(Unanswered::Error(e)),
        Err(_) => Err(Unanswered::Hung),
    }
}

fn resolve_error(path: &Path) -> impl FnOnce(resolve::ResolveError) -> MountpointError + '_ {
    move |e| match e {
        resolve::ResolveError::Io(_, error) => MountpointError::Io {
            path: path.to_owned(),
            error,
        },
        untrusted => MountpointError::Untrusted(untrusted),
    }
}

/// The mount whose root `path` names (resolved by `resolve`), if any.
pub fn find(path: &Path) -> Result<Option<Existing>, MountpointError> {
    let path = absolute(path)?;
    let Some(root) = resolve::resolve(&path).map_err(resolve_error(&path))?.leaf else {
        return Ok(None);
    };
    existing(path, root)
}

fn existing(path: PathBuf, root: OwnedFd) -> Result<Option<Existing>, MountpointError> {
    let (id, is_root) = kernel::mount_of(&root).map_err(|e| io(&path)(e.into()))?;
    if !is_root {
        return Ok(None);
    }
    let entry = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| mountinfo_entry(&info, id.listed));
    Ok(Some(Existing {
        path,
        root,
        id,
        entry,
    }))
}

/// An empty directory, checked and held open, to mount onto.
#[derive(Debug)]
pub struct Prepared {
    pub path: PathBuf,
    /// The directory holding the mountpoint (`O_PATH`).
    pub parent: OwnedFd,
    pub dir: OwnedFd,
    /// Set if `prepare` made the directory: a start that fails before mounting
    /// removes it again, so a failed start leaves the tree as it found it.
    created: Option<Created>,
}

impl Prepared {
    /// Mounted on: the directory stays, whatever happens next.
    pub fn keep(&mut self) {
        if let Some(created) = &mut self.created {
            created.armed = false;
        }
    }
}

/// A directory `prepare` made, removed on drop while `armed`. Acts through the
/// parent's descriptor and checks the name still names the very directory made
/// (device and inode): the parent may be the user's, who may have renamed it
/// and put something else there meanwhile.
#[derive(Debug)]
struct Created {
    parent: OwnedFd,
    name: std::ffi::OsString,
    dev: u64,
    ino: u64,
    armed: bool,
}

impl Created {
    fn new(parent: &OwnedFd, name: &std::ffi::OsStr, dir: &OwnedFd) -> std::io::Result<Created> {
        let st = rustix::fs::fstat(dir)?;
        Ok(Created {
            parent: parent.try_clone()?,
            name: name.to_owned(),
            dev: st.st_dev,
            ino: st.st_ino,
            armed: true,
        })
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let same = rustix::fs::statat(
            &self.parent,
            self.name.as_os_str(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| {
            st.st_dev == self.dev
                && st.st_ino == self.ino
                && rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
        });
        if !same {
            return;
        }
        // rmdir refuses a directory that is not empty (or is a mountpoint), so
        // whatever someone put in it meanwhile stays, and so does the directory.
        if let Err(e) = rustix::fs::unlinkat(
            &self.parent,
            self.name.as_os_str(),
            rustix::fs::AtFlags::REMOVEDIR,
        ) {
            tracing::debug!("kept the mountpoint directory made for this start: {e}");
        }
    }
}

/// The mountpoint, resolved once (`resolve`) and held as a descriptor to an
/// empty directory: created (0755, root's) if missing, a stale mount (dead
/// daemon) detached first; refused if a live tokenfs serves it, or if it is
/// not an empty directory.
pub fn prepare(path: &Path) -> Result<Prepared, MountpointError> {
    let path = absolute(path)?;
    // Dropped on every error return below: a directory made here goes again.
    let mut created = None;
    // Mounts may be stacked: peel off every stale one (bounded, to never spin).
    for _ in 0..8 {
        let resolved = resolve::resolve(&path).map_err(resolve_error(&path))?;
        let dir = match resolved.leaf {
            Some(fd) => fd,
            None => {
                let (dir, made) = resolve::create_dir(&resolved.parent, &resolved.name)
                    .map_err(|e| io(&path)(e.into()))?;
                if made {
                    created = Some(
                        Created::new(&resolved.parent, &resolved.name, &dir).map_err(io(&path))?,
                    );
                }
                dir
            }
        };
        if let Some(mount) = existing(path.clone(), dir.try_clone().map_err(io(&path))?)? {
            match mount.read_status() {
                Ok(_) if mount.is_tokenfs() => return Err(MountpointError::AlreadyMounted(path)),
                Err(Unanswered::Hung) if mount.is_tokenfs() => {
                    return Err(MountpointError::NotAnswering(path))
                }
                // A dead FUSE mount (also one this namespace's mountinfo lacks).
                Err(Unanswered::Dead) => {
                    detach_stale(&mount)?;
                    continue;
                }
                Err(Unanswered::Error(e)) if mount.is_tokenfs() => {
                    return Err(MountpointError::Io {
                        path,
                        error: std::io::Error::new(
                            e.kind(),
                            format!("a tokenfs is mounted there and its .status fails ({e}); run `tokenfs unmount` on it first"),
                        ),
                    })
                }
                // Another filesystem: judged as any directory below.
                _ => {}
            }
        }
        match resolve::file_type(&dir) {
            Ok(rustix::fs::FileType::Directory) => {}
            Ok(_) => return Err(MountpointError::NotADirectory(path)),
            Err(e) => return Err(io(&path)(e.into())),
        }
        if !is_empty(&dir).map_err(io(&path))? {
            return Err(MountpointError::NotEmpty(path));
        }
        return Ok(Prepared {
            path,
            parent: resolved.parent,
            dir,
            created,
        });
    }
    Err(io(&path)(std::io::Error::other(
        "still a dead mount after detaching 8 of them",
    )))
}

/// Whether the directory `dir` holds no entry (read through the descriptor).
fn is_empty(dir: &OwnedFd) -> std::io::Result<bool> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in rustix::fs::Dir::new(fd)? {
        let name = entry?.file_name().to_bytes().to_owned();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

fn detach_stale(mount: &Existing) -> Result<(), MountpointError> {
    tracing::warn!(
        mountpoint = %mount.path.display(),
        "found a stale mount (its daemon died; readers got 'Transport endpoint is not connected'): detaching it lazily"
    );
    mount.detach()
}

/// What the daemon's own mount is known by, to unmount it and nothing else.
#[derive(Debug, Clone)]
pub struct Ours {
    pub path: PathBuf,
    pub id: MountId,
}

/// How unmounting our own mount went.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    Detached,
    /// What `path` names now is not our mount (moved or replaced): nothing touched.
    NotOurs,
}

/// Detach the daemon's own mount, found again at its path and recognised by ID.
pub fn unmount_ours(ours: &Ours) -> Result<Unmounted, MountpointError> {
    match find(&ours.path) {
        Ok(Some(m)) if m.id == ours.id => {
            m.detach()?;
            Ok(Unmounted::Detached)
        }
        Ok(_) | Err(MountpointError::Untrusted(_)) => Ok(Unmounted::NotOurs),
        Err(e) => Err(e),
    }
}

/// `tokenfs unmount`: detach the tokenfs at `path`.
pub fn unmount(path: &Path) -> Result<PathBuf, MountpointError> {
    let path = absolute(path)?;
    match find(&path)? {
        None => Err(MountpointError::NotMounted(path)),
        Some(m) if !m.is_tokenfs() => Err(MountpointError::NotTokenfs {
            path,
            fstype: m.entry.map_or_else(|| "unlisted".to_owned(), |e| e.fstype),
        }),
        Some(m) => {
            m.detach()?;
            Ok(path)
        }
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
    fn finds_the_entry_by_mount_id_with_optional_fields() {
        let by = |id| mountinfo_entry(INFO, id);
        assert!(by(90).unwrap().is_tokenfs());
        assert_eq!(by(92).unwrap().fstype, "fuse.tokenfs");
        assert!(by(92).unwrap().is_tokenfs());
        assert_eq!(by(91).unwrap().fstype, "tmpfs");
        assert!(!by(93).unwrap().is_tokenfs());
        assert_eq!(by(22).unwrap().fstype, "ext4");
        assert_eq!(by(9), None);
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
        let mut prepared = prepare(&fresh).unwrap();
        assert_eq!(prepared.path, fresh);
        assert!(fresh.is_dir());
        prepared.keep();
        drop(prepared);
        assert!(fresh.is_dir(), "kept once mounted on");
    }

    #[test]
    fn a_directory_made_for_a_start_that_fails_goes_again() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new");
        drop(prepare(&fresh).unwrap());
        assert!(!fresh.exists(), "made, not mounted on: removed");

        // One that was there before stays.
        std::fs::create_dir(&fresh).unwrap();
        drop(prepare(&fresh).unwrap());
        assert!(fresh.is_dir());
        std::fs::remove_dir(&fresh).unwrap();

        // Renamed away and replaced meanwhile: neither is touched.
        let prepared = prepare(&fresh).unwrap();
        std::fs::rename(&fresh, dir.path().join("moved")).unwrap();
        std::fs::create_dir(&fresh).unwrap();
        drop(prepared);
        assert!(fresh.is_dir() && dir.path().join("moved").is_dir());

        // Something put into it meanwhile keeps it.
        let other = dir.path().join("other");
        let prepared = prepare(&other).unwrap();
        std::fs::write(other.join("f"), "x").unwrap();
        drop(prepared);
        assert!(other.join("f").exists());
    }
}
