//! Resolving a path the way root must in a tree other users write: one component
//! at a time from `/`, each opened `O_PATH | O_NOFOLLOW` relative to the last, so
//! what is checked is what is used. A symbolic link is followed only when no
//! other user can swap it: its directory is writable by root alone, or it is
//! root's own link in a sticky directory (a Kubernetes secret volume's `..data`).
//! A link in a user's home is refused instead.
//!
//! `openat2(RESOLVE_NO_SYMLINKS)` would refuse every link, also the harmless
//! root-owned ones distributions ship (`/var/run`, a `/home` on another disk);
//! no crate walks with a per-directory trust rule, hence this walk.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags, CWD};

/// Linux's own limit on links in one resolution (`ELOOP` beyond it).
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{link} is a symbolic link in {dir}, a directory other users can write: tokenfs follows no \
         link another user could swap; give the real path"
    )]
    UntrustedLink { link: PathBuf, dir: PathBuf },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl ResolveError {
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            ResolveError::UntrustedLink { .. } => std::io::ErrorKind::InvalidInput,
            ResolveError::Io(_, e) => e.kind(),
        }
    }

    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            ResolveError::UntrustedLink { .. } => None,
            ResolveError::Io(_, e) => e.raw_os_error(),
        }
    }
}

/// A path resolved down to its parent directory, and its last component if it exists.
#[derive(Debug)]
pub struct Resolved {
    /// The path as given, made absolute (for messages only: never resolved again).
    pub path: PathBuf,
    /// The directory holding the last component.
    pub parent: OwnedFd,
    /// The last component's name in `parent`.
    pub name: OsString,
    /// The last component (`O_PATH`, the topmost mount on it), `None` if it does not exist.
    pub leaf: Option<OwnedFd>,
}

/// Resolve `path` (absolute) by the rule above. A last component that is a link
/// is followed by the same rule; a missing one is `leaf: None`.
pub fn resolve(path: &Path) -> Result<Resolved, ResolveError> {
    let io = |e: rustix::io::Errno| ResolveError::Io(path.to_owned(), e.into());
    let mut todo: VecDeque<OsString> = components(path);
    let mut cur = open_root().map_err(io)?;
    let mut shown = PathBuf::from("/");
    let mut links = 0;
    loop {
        let Some(name) = todo.pop_front() else {
            return Err(ResolveError::Io(
                path.to_owned(),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "names no directory entry"),
            ));
        };
        if name == ".." {
            cur = rustix::fs::openat(&cur, "..", path_flags(), Mode::empty()).map_err(io)?;
            shown.pop();
            continue;
        }
        let last = todo.is_empty();
        let fd = match rustix::fs::openat(&cur, name.as_os_str(), path_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if last => {
                return Ok(Resolved {
                    path: path.to_owned(),
                    parent: cur,
                    name,
                    leaf: None,
                })
            }
            Err(e) => return Err(io(e)),
        };
        match file_type(&fd) {
            Ok(FileType::Symlink) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io(rustix::io::Errno::LOOP));
                }
                if !link_is_safe(&cur, &fd).map_err(io)? {
                    return Err(ResolveError::UntrustedLink {
                        link: shown.join(&name),
                        dir: shown,
                    });
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(io)?;
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
                if target.is_absolute() {
                    cur = open_root().map_err(io)?;
                    shown = PathBuf::from("/");
                }
            }
            Ok(_) | Err(_) if last => {
                return Ok(Resolved {
                    path: path.to_owned(),
                    parent: cur,
                    name,
                    leaf: Some(fd),
                })
            }
            Ok(FileType::Directory) => {
                shown.push(&name);
                cur = fd;
            }
            Ok(_) => return Err(io(rustix::io::Errno::NOTDIR)),
            Err(e) => return Err(io(e)),
        }
    }
}

/// Open an existing directory by the rule above (`O_PATH`).
pub fn open_dir(path: &Path) -> Result<OwnedFd, ResolveError> {
    let resolved = resolve(path)?;
    resolved.leaf.ok_or_else(|| {
        ResolveError::Io(
            path.to_owned(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// `path`'s components after the root, `.` dropped, `..` kept for the walk.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn open_root() -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The type of what `fd` names, from cached attributes: a dead FUSE mount's root
/// still answers (asking its daemon would fail with `ENOTCONN`).
pub fn file_type(fd: impl AsFd) -> rustix::io::Result<FileType> {
    let st = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE,
    )?;
    Ok(FileType::from_raw_mode(st.stx_mode.into()))
}

fn is_ours(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Whether only root (or this process's user) can change the directory's entries.
pub fn only_root_writes(dir: impl AsFd) -> rustix::io::Result<bool> {
    let st = rustix::fs::fstat(dir)?;
    Ok(is_ours(st.st_uid) && st.st_mode & 0o022 == 0)
}

/// Whether the link `link` in `dir` is beyond other users' reach: `dir` is
/// only root's to write, or sticky (entries only their owner may rename or
/// remove) with `link` root's own.
fn link_is_safe(dir: impl AsFd, link: impl AsFd) -> rustix::io::Result<bool> {
    let d = rustix::fs::fstat(dir)?;
    if is_ours(d.st_uid) && d.st_mode & 0o022 == 0 {
        return Ok(true);
    }
    let sticky = d.st_mode & 0o1000 != 0;
    Ok(sticky && is_ours(rustix::fs::fstat(link)?.st_uid))
}

/// The owner of what `fd` names.
pub fn owner(fd: impl AsFd) -> rustix::io::Result<u32> {
    Ok(rustix::fs::fstat(fd)?.st_uid)
}

/// Whether `uid` is root or this process's user.
pub fn trusted_uid(uid: u32) -> bool {
    is_ours(uid)
}

/// Create `name` in `parent` as a directory (mode 0755, root's) and open it;
/// `true` if this call made it (not someone else in a race).
pub fn create_dir(parent: impl AsFd, name: &OsStr) -> rustix::io::Result<(OwnedFd, bool)> {
    let parent = parent.as_fd();
    let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e),
    };
    let fd = rustix::fs::openat(parent, name, path_flags(), Mode::empty())?;
    match file_type(&fd)? {
        FileType::Directory => Ok((fd, made)),
        _ => Err(rustix::io::Errno::NOTDIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn follows_links_only_in_directories_only_root_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("trusted");
        let real = root_dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::set_permissions(&root_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("real", root_dir.join("link")).unwrap();
        let via = resolve(&root_dir.join("link")).unwrap();
        assert!(via.leaf.is_some());
        assert_eq!(via.name, "real");

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&real, open.join("link")).unwrap();
        let err = resolve(&open.join("link").join("x")).unwrap_err();
        assert!(
            matches!(err, ResolveError::UntrustedLink { ref link, .. } if link.ends_with("open/link")),
            "{err}"
        );

        let missing = resolve(&real.join("new")).unwrap();
        assert!(missing.leaf.is_none());
        assert_eq!(missing.name, "new");
        let (made, created) = create_dir(&missing.parent, &missing.name).unwrap();
        assert!(created);
        assert_eq!(file_type(&made).unwrap(), FileType::Directory);
        assert!(real.join("new").is_dir());

        let dots = resolve(&real.join("new/../new")).unwrap();
        assert!(dots.leaf.is_some());
    }
}
