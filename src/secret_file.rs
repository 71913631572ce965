//! Long-lived secrets on disk: client secrets and refresh tokens that the
//! daemon reads at start and, when an upstream rotates them, writes back.
//!
//! Reading refuses files that other users could read (the rule is
//! [`crate::secret_mode`]'s), because a refresh token there would let them mint
//! the owner's access tokens. Writing is crash-safe:
//! a rotated refresh token replaces one the upstream may already have revoked,
//! so a torn or lost write would lose the user's access.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

use crate::fs::Owner;
use crate::resolve;
use crate::secret_mode::{self, Refusal};

/// Largest secret file accepted. Refresh tokens are a few KiB; anything far
/// bigger is the wrong file, and reading it whole would waste memory.
pub const MAX_SECRET_FILE: usize = 64 * 1024;

/// Why a secret file could not be read or written. Messages name the file and
/// say how to fix it; they never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot open {}: {error}; check that it exists and tokenfs may read it", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{} is not a regular file; point the setting at a file that holds only the secret", path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "{} is writable by its group or open to others (mode {mode:04o}); run: chmod 600 {} \
         (in a Kubernetes secret volume: defaultMode: 0400)",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{} is readable by its group {gid} (mode {mode:04o}), which the files' owner \
         {}:{} holds, so the workload could read the secret: in Kubernetes set the pod's \
         securityContext.fsGroup to a group the workload is not in (its gid is {}); \
         elsewhere run: chmod 600 {}",
        path.display(),
        owner.uid,
        owner.gid,
        owner.gid,
        path.display()
    )]
    WorkloadGroup {
        path: PathBuf,
        mode: u32,
        gid: u32,
        owner: Owner,
    },
    #[error(
        "{} is readable by its group {gid} (mode {mode:04o}), and no files' owner is known \
         here to tell that it is not in that group: pass --owner UID:GID (or set \
         TOKENFS_USER), or run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    GroupOwnerUnknown { path: PathBuf, mode: u32, gid: u32 },
    #[error("{} is larger than {max} bytes; it should hold only the secret", path.display())]
    TooLarge { path: PathBuf, max: usize },
    #[error("{} is not valid UTF-8; it should hold only the secret as text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{} is empty; write the secret into it", path.display())]
    Empty { path: PathBuf },
    #[error(
        "the secret in {} has {stray}: secrets hold no whitespace; rewrite the file with the \
         secret alone (printf '%s' \"$SECRET\" > {})",
        path.display(),
        path.display()
    )]
    Whitespace {
        path: PathBuf,
        stray: StrayWhitespace,
    },
    #[error("cannot write {}: {error}; check that its directory exists and tokenfs may write there", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("{} belongs to uid {uid}: a file root trusts must be root's; run: chown root {}", path.display(), path.display())]
    NotRoots { path: PathBuf, uid: u32 },
    #[error(
        "the directory of {} is writable by users other than root, who could swap the file: \
         keep it in a directory only root writes (chmod go-w; chown root)",
        path.display()
    )]
    UntrustedDir { path: PathBuf },
    #[error(transparent)]
    Untrusted(resolve::ResolveError),
}

/// Read a secret from `path`, refusing files others or the owner's groups could
/// read ([`check_private_mode`]), empty
/// files and files over [`MAX_SECRET_FILE`] (see [`open_checked`] for the
/// rest). One trailing `"\n"` or `"\r\n"` (what editors and `echo` add) is
/// removed; anything else is kept as is.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretFileError> {
    read_checked(path, true)
}

/// Read a token another service writes and others may read (a Kubernetes
/// projected service-account token is 0644): as [`read_secret_file`] but
/// without the mode check.
pub fn read_token_file(path: &Path) -> Result<SecretString, SecretFileError> {
    read_checked(path, false)
}

fn read_checked(path: &Path, private: bool) -> Result<SecretString, SecretFileError> {
    let secret = read_opened(open_checked(path)?, path, private)?;
    // Here, when the config is checked, not later as the upstream's
    // `invalid_client`: no secret or token holds whitespace, so a stray space or
    // a second newline is a mistake in writing the file.
    if let Some(stray) = stray_whitespace(secret.expose_secret()) {
        return Err(SecretFileError::Whitespace {
            path: path.to_owned(),
            stray,
        });
    }
    Ok(secret)
}

/// Where whitespace sits in a secret, and which: for a message that tells what to
/// remove without showing the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayWhitespace {
    what: String,
    place: String,
}

impl std::fmt::Display for StrayWhitespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.what, self.place)
    }
}

fn stray_whitespace(secret: &str) -> Option<StrayWhitespace> {
    let chars: Vec<char> = secret.chars().collect();
    let (at, c) = chars.iter().enumerate().find(|(_, c)| c.is_whitespace())?;
    let what = match c {
        ' ' => "a space".to_owned(),
        '\t' => "a tab".to_owned(),
        '\n' => "a line break (\\n)".to_owned(),
        '\r' => "a carriage return (\\r)".to_owned(),
        other => format!("a whitespace character (U+{:04X})", *other as u32),
    };
    let place = if at == 0 {
        "at its start".to_owned()
    } else if chars[at..].iter().all(|c| c.is_whitespace()) {
        "at its end (only one final line break is removed)".to_owned()
    } else {
        format!("inside it, after character {at} of {}", chars.len())
    };
    Some(StrayWhitespace { what, place })
}

/// Read the secret `file` (opened from `path`) holds; see [`read_secret_file`].
fn read_opened(file: File, path: &Path, private: bool) -> Result<SecretString, SecretFileError> {
    let err_path = || path.to_path_buf();
    // Check the opened file, not the path, so that a swap between the check
    // and the read cannot slip a different file in.
    let meta = file.metadata().map_err(|source| SecretFileError::Read {
        path: err_path(),
        error: source,
    })?;
    if !meta.is_file() {
        return Err(SecretFileError::NotRegular { path: err_path() });
    }
    if !resolve::trusted_uid(meta.uid()) {
        return Err(SecretFileError::NotRoots {
            path: err_path(),
            uid: meta.uid(),
        });
    }
    if private {
        check_private_mode(path, &meta)?;
    }

    let mut buf = Vec::new();
    // One byte over the cap tells "exactly at the cap" from "over it".
    let read = file.take(MAX_SECRET_FILE as u64 + 1).read_to_end(&mut buf);
    if let Err(source) = read {
        buf.zeroize();
        return Err(SecretFileError::Read {
            path: err_path(),
            error: source,
        });
    }
    if buf.len() > MAX_SECRET_FILE {
        buf.zeroize();
        return Err(SecretFileError::TooLarge {
            path: err_path(),
            max: MAX_SECRET_FILE,
        });
    }
    let mut text = match String::from_utf8(buf) {
        Ok(text) => text,
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(SecretFileError::NotUtf8 { path: err_path() });
        }
    };
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    let secret = SecretString::from(text);
    if secret.expose_secret().is_empty() {
        return Err(SecretFileError::Empty { path: err_path() });
    }
    Ok(secret)
}

/// The rule of [`secret_mode::judge`] for `meta` (of the file at `path`), against
/// the owner recorded for this process.
pub fn check_private_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretFileError> {
    let mode = meta.permissions().mode() & 0o7777;
    judge_for(path, mode, meta.gid(), secret_mode::workload())
}

fn judge_for(
    path: &Path,
    mode: u32,
    gid: u32,
    workload: Option<&secret_mode::Workload>,
) -> Result<(), SecretFileError> {
    secret_mode::judge(mode, gid, workload).map_err(|refusal| {
        let path = path.to_path_buf();
        match (refusal, workload) {
            (Refusal::WorkloadGroup, Some(w)) => SecretFileError::WorkloadGroup {
                path,
                mode,
                gid,
                owner: w.owner,
            },
            (Refusal::GroupOwnerUnknown, _) => {
                SecretFileError::GroupOwnerUnknown { path, mode, gid }
            }
            _ => SecretFileError::TooOpen { path, mode },
        }
    })
}

/// Open `path` for reading as root must among files users control: resolved by
/// [`resolve`] (a link is followed only where no other user could swap it, so
/// Kubernetes secret volumes, links into `..data/`, work), in a directory only
/// root writes, the last step `O_NOFOLLOW`, and `O_NONBLOCK` so that a FIFO
/// cannot hang the daemon in open() (it is then refused as not a regular file).
fn open_checked(path: &Path) -> Result<File, SecretFileError> {
    let open_err = |source| SecretFileError::Open {
        path: path.to_path_buf(),
        error: source,
    };
    let resolved = resolve::resolve(path).map_err(|e| match e {
        resolve::ResolveError::Io(_, source) => open_err(source),
        untrusted => SecretFileError::Untrusted(untrusted),
    })?;
    if resolved.leaf.is_none() {
        return Err(open_err(io::Error::from(io::ErrorKind::NotFound)));
    }
    let dir = trusted_dir(path, &resolved.parent)?;
    let fd = rustix::fs::openat(
        dir,
        &resolved.name,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_err(e.into()))?;
    Ok(File::from(fd))
}

/// `dir` (the directory holding `path`), if only root can change its entries:
/// elsewhere a secret could be swapped for another file or link under us.
fn trusted_dir<'a>(path: &Path, dir: &'a OwnedFd) -> Result<&'a OwnedFd, SecretFileError> {
    match resolve::only_root_writes(dir) {
        Ok(true) => Ok(dir),
        Ok(false) => Err(SecretFileError::UntrustedDir {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(SecretFileError::Open {
            path: path.to_path_buf(),
            error: e.into(),
        }),
    }
}

/// Replace `path` with `secret` once (see [`SecretWriter::write`]).
pub fn write_secret_file(path: &Path, secret: &SecretString) -> Result<(), SecretFileError> {
    SecretWriter::open(path)?.write(secret)
}

/// Make sure `path` can be written when the time comes: its directory is created
/// (mode 0700, parents too) if missing and must be root's alone, and a temp file
/// is created in it and removed. Called at start, so that a rotated refresh
/// token is never received with nowhere to keep it.
pub fn ensure_writable(path: &Path) -> Result<(), SecretFileError> {
    SecretWriter::open(path).map(drop)
}

/// Where one secret is saved: its directory, resolved once and held open (only
/// root may write it), and a temp file created ahead, so that a save needs no
/// new descriptor: a process out of descriptors still saves a rotated refresh
/// token. Writes are crash-safe: after a crash the file holds either the old or
/// the new secret, never a mix or nothing.
pub struct SecretWriter {
    path: PathBuf,
    dir: OwnedFd,
    name: OsString,
    spare: Option<(OsString, File)>,
}

impl std::fmt::Debug for SecretWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SecretWriter {
    pub fn open(path: &Path) -> Result<SecretWriter, SecretFileError> {
        let write_err = |source| SecretFileError::Write {
            path: path.to_path_buf(),
            error: source,
        };
        let (dir_path, name) = dir_and_name(path).map_err(write_err)?;
        let dir_path = std::path::absolute(dir_path).map_err(write_err)?;
        let dir = ensure_dir(&dir_path, 16).map_err(|e| match e {
            resolve::ResolveError::Io(_, source) => write_err(source),
            untrusted => SecretFileError::Untrusted(untrusted),
        })?;
        trusted_dir(path, &dir)?;
        let dir = rustix::fs::openat(
            &dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| write_err(e.into()))?;
        let mut writer = SecretWriter {
            path: path.to_path_buf(),
            dir,
            name: name.to_owned(),
            spare: None,
        };
        writer.spare = Some(writer.create_temp().map_err(write_err)?);
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secret the file holds now (`None`: no file yet), read through the held
    /// directory as [`read_secret_file`] reads: another process may have replaced it.
    pub fn read_current(&self) -> Result<Option<SecretString>, SecretFileError> {
        trusted_dir(&self.path, &self.dir)?;
        match rustix::fs::openat(
            &self.dir,
            &self.name,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => read_opened(File::from(fd), &self.path, true).map(Some),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(SecretFileError::Open {
                path: self.path.clone(),
                error: e.into(),
            }),
        }
    }

    /// Open (created 0600 if missing) the file named after this one plus `suffix`,
    /// through the held directory, never through a link, and only if it is a
    /// regular file of root's open to nobody else: e.g. its `.lock`.
    pub fn open_beside(&self, suffix: &str) -> Result<(PathBuf, File), SecretFileError> {
        let mut name = self.name.clone();
        name.push(suffix);
        let path = self.path.with_file_name(&name);
        trusted_dir(&self.path, &self.dir)?;
        let fd = rustix::fs::openat(
            &self.dir,
            &name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SecretFileError::Open {
            path: path.clone(),
            error: e.into(),
        })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| SecretFileError::Read {
            path: path.clone(),
            error: source,
        })?;
        if !meta.is_file() {
            return Err(SecretFileError::NotRegular { path });
        }
        if !resolve::trusted_uid(meta.uid()) {
            return Err(SecretFileError::NotRoots {
                path,
                uid: meta.uid(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen { path, mode });
        }
        Ok((path, file))
    }

    /// Replace the file with `secret` (exact bytes, no newline added): the temp
    /// file (0600, created exclusively) is written and synced, renamed over the
    /// file, and the directory synced so the rename survives a power loss.
    pub fn write(&mut self, secret: &SecretString) -> Result<(), SecretFileError> {
        let write_err = |source| SecretFileError::Write {
            path: self.path.clone(),
            error: source,
        };
        // Checked again at each save: a directory opened up since would let
        // another user swap what we write.
        trusted_dir(&self.path, &self.dir)?;
        let (tmp_name, mut tmp) = match self.spare.take() {
            Some(spare) => spare,
            None => self.create_temp().map_err(write_err)?,
        };
        let written = tmp
            .write_all(secret.expose_secret().as_bytes())
            .and_then(|()| tmp.sync_all())
            .and_then(|()| {
                drop(tmp);
                rustix::fs::renameat(&self.dir, &tmp_name, &self.dir, &self.name)
                    .map_err(io::Error::from)
            })
            .and_then(|()| rustix::fs::fsync(&self.dir).map_err(io::Error::from));
        if let Err(e) = written {
            // A leftover temp file holds a live secret.
            let _ = rustix::fs::unlinkat(&self.dir, &tmp_name, rustix::fs::AtFlags::empty());
            return Err(write_err(e));
        }
        // For the next save; if it cannot be made now, that save makes it.
        self.spare = self.create_temp().ok();
        Ok(())
    }

    /// Create `.<name>.tmp.<random>` with `O_EXCL | O_NOFOLLOW`, so an existing
    /// file or a link planted at that name is never written through.
    fn create_temp(&self) -> io::Result<(OsString, File)> {
        let mut last_err = None;
        for _ in 0..8 {
            let mut tmp = OsString::from(".");
            tmp.push(&self.name);
            tmp.push(format!(".tmp.{:016x}", crate::random::u64()));
            match rustix::fs::openat(
                &self.dir,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    // Marks it live for another process's `remove_stale_temps`
                    // (daemons sharing the directory); the kernel drops it with
                    // the descriptor, also after a kill.
                    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared)?;
                    return Ok((tmp, File::from(fd)));
                }
                Err(rustix::io::Errno::EXIST) => {
                    last_err = Some(io::Error::from(rustix::io::Errno::EXIST))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not create a temp file")))
    }

    /// Remove temp files a killed run left beside the file: each holds a live
    /// secret. Called at start. A temp file still open in a live process (another
    /// daemon's spare, or a save under way) is locked by it and kept: removing it
    /// would fail that save. (One created in the instant before its lock is taken
    /// may still go; that save then fails and is retried.)
    pub fn remove_stale_temps(&self) {
        let mut prefix = OsString::from(".");
        prefix.push(&self.name);
        prefix.push(".tmp.");
        let ours = self.spare.as_ref().map(|(n, _)| n.clone());
        let Ok(fd) = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(entries) = rustix::fs::Dir::new(fd) else {
            return;
        };
        for entry in entries.flatten() {
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
            if !name.as_bytes().starts_with(prefix.as_bytes()) || Some(&name) == ours.as_ref() {
                continue;
            }
            let shown = self.path.with_file_name(&name);
            let Ok(tmp) = rustix::fs::openat(
                &self.dir,
                &name,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            if rustix::fs::flock(&tmp, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            match rustix::fs::unlinkat(&self.dir, &name, rustix::fs::AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(file = %shown.display(), "removed a temp file left by an interrupted write")
                }
                Err(e) => {
                    tracing::warn!(file = %shown.display(), "cannot remove a leftover temp file: {e}")
                }
            }
        }
    }
}

impl Drop for SecretWriter {
    fn drop(&mut self) {
        if let Some((name, _)) = self.spare.take() {
            let _ = rustix::fs::unlinkat(&self.dir, &name, rustix::fs::AtFlags::empty());
        }
    }
}

/// Remove temp files a killed run of a write left beside `path` (see
/// [`SecretWriter::remove_stale_temps`]).
pub fn remove_stale_temps(path: &Path) {
    if let Ok(writer) = SecretWriter::open(path) {
        writer.remove_stale_temps();
    }
}

/// The directory `dir` resolved by [`resolve`], created (0700) with its missing
/// parents, each through its parent's descriptor.
fn ensure_dir(dir: &Path, depth: usize) -> Result<OwnedFd, resolve::ResolveError> {
    let resolved = match resolve::resolve(dir) {
        Err(resolve::ResolveError::Io(_, e))
            if e.kind() == io::ErrorKind::NotFound && depth > 0 =>
        {
            let parent = dir
                .parent()
                .ok_or(resolve::ResolveError::Io(dir.to_owned(), e))?;
            drop(ensure_dir(parent, depth - 1)?);
            resolve::resolve(dir)?
        }
        other => other?,
    };
    match resolved.leaf {
        Some(fd) => Ok(fd),
        None => {
            match rustix::fs::mkdirat(&resolved.parent, &resolved.name, Mode::from_raw_mode(0o700))
            {
                Ok(()) | Err(rustix::io::Errno::EXIST) => resolve::open_dir(dir),
                Err(e) => Err(resolve::ResolveError::Io(dir.to_owned(), e.into())),
            }
        }
    }
}

/// The directory a file is in (`.` for a bare name) and its name.
fn dir_and_name(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_with_mode(path: &Path, content: &[u8], mode: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_with_mode(&p, b"s3cr3t\n", 0o644);
        let err = read_secret_file(&p).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o644, .. }));
        assert!(msg.contains("mode 0644"), "{msg}");
        assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
        assert!(!msg.contains("s3cr3t"));

        // No owner recorded in this process: no group can be ruled out.
        write_with_mode(&p, b"s3cr3t\n", 0o640);
        let err = read_secret_file(&p).unwrap_err();
        assert!(
            matches!(err, SecretFileError::GroupOwnerUnknown { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--owner"), "{err}");
    }

    #[test]
    fn group_readable_refusals_say_what_and_what_to_do() {
        use secret_mode::Workload;
        let p = Path::new("/etc/tokenfs/client-secret");
        let owner = Owner {
            uid: 12574,
            gid: 12574,
        };
        let w = Workload::with_groups(owner, &[]);
        assert!(judge_for(p, 0o440, 2000, Some(&w)).is_ok());
        let err = judge_for(p, 0o440, 12574, Some(&w)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            SecretFileError::WorkloadGroup { gid: 12574, .. }
        ));
        for part in [
            "/etc/tokenfs/client-secret is readable by its group 12574 (mode 0440)",
            "owner 12574:12574",
            "securityContext.fsGroup",
            "chmod 600 /etc/tokenfs/client-secret",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let err = judge_for(p, 0o444, 2000, Some(&w)).unwrap_err();
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o444, .. }));
        assert!(err.to_string().contains("defaultMode: 0400"), "{err}");
    }

    #[test]
    fn accepts_0600_and_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        for (content, want) in [
            (&b"s3cr3t"[..], "s3cr3t"),
            (b"s3cr3t\n", "s3cr3t"),
            (b"s3cr3t\r\n", "s3cr3t"),
        ] {
            write_with_mode(&p, content, 0o600);
            assert_eq!(read_secret_file(&p).unwrap().expose_secret(), want);
        }
    }

    #[test]
    fn refuses_stray_whitespace_saying_where_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        for (content, says) in [
            (&b"s3cr3t\n\n"[..], "a line break (\\n) at its end"),
            (b"s3cr3t \n", "a space at its end"),
            (b"s3cr3t\r\r\n", "a carriage return (\\r) at its end"),
            (b" s3cr3t", "a space at its start"),
            (b"\ts3cr3t", "a tab at its start"),
            (b"s3c r3t", "a space inside it, after character 3 of 7"),
            (
                b"s3c\nr3t\n",
                "a line break (\\n) inside it, after character 3 of 7",
            ),
        ] {
            write_with_mode(&p, content, 0o600);
            let err = read_secret_file(&p).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SecretFileError::Whitespace { .. }), "{msg}");
            assert!(msg.contains(says), "{msg}");
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            for part in ["s3cr3t", "s3c", "r3t"] {
                assert!(!msg.contains(part), "{msg}");
                assert!(!format!("{err:?}").contains(part), "{err:?}");
            }
        }
        write_with_mode(&p, b"s3cr3t", 0o400);
        assert_eq!(read_secret_file(&p).unwrap().expose_secret(), "s3cr3t");
    }

    #[test]
    fn refuses_empty_large_missing_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_with_mode(&p, b"", 0o600);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::Empty { .. })
        ));
        write_with_mode(&p, b"\n", 0o600);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::Empty { .. })
        ));

        write_with_mode(&p, &vec![b'a'; MAX_SECRET_FILE], 0o600);
        assert_eq!(
            read_secret_file(&p).unwrap().expose_secret().len(),
            MAX_SECRET_FILE
        );
        write_with_mode(&p, &vec![b'a'; MAX_SECRET_FILE + 1], 0o600);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::TooLarge { .. })
        ));

        write_with_mode(&p, b"\xff\xfe", 0o600);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::NotUtf8 { .. })
        ));

        let missing = dir.path().join("missing");
        let err = read_secret_file(&missing).unwrap_err();
        assert!(matches!(err, SecretFileError::Open { .. }));
        assert!(err.to_string().contains("missing"));

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            read_secret_file(&sub),
            Err(SecretFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn refuses_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn write_is_0600_atomic_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("refresh_token");
        write_with_mode(&p, b"old", 0o644);

        write_secret_file(&p, &SecretString::from("new-token")).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"new-token");
        assert_eq!(read_secret_file(&p).unwrap().expose_secret(), "new-token");

        // Writing into a fresh path works too.
        let q = dir.path().join("other");
        write_secret_file(&q, &SecretString::from("x")).unwrap();

        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["other", "refresh_token"]);
    }

    #[test]
    fn write_creates_missing_directories_0700_and_refuses_open_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/refresh_token");
        write_secret_file(&p, &SecretString::from("s3cr3t")).unwrap();
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(read_secret_file(&p).unwrap().expose_secret(), "s3cr3t");

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = write_secret_file(&open.join("t"), &SecretString::from("s3cr3t")).unwrap_err();
        assert!(matches!(err, SecretFileError::UntrustedDir { .. }), "{err}");
        assert!(!err.to_string().contains("s3cr3t"));
        // Reading from such a directory is refused too.
        write_with_mode(&open.join("r"), b"s3cr3t", 0o600);
        assert!(matches!(
            read_secret_file(&open.join("r")),
            Err(SecretFileError::UntrustedDir { .. })
        ));
    }

    #[test]
    fn refuses_a_file_of_another_owner_and_a_link_another_user_could_swap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_with_mode(&p, b"s3cr3t", 0o600);
        if !resolve::trusted_uid(4242) {
            std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
            let err = read_secret_file(&p).unwrap_err();
            assert!(
                matches!(err, SecretFileError::NotRoots { uid: 4242, .. }),
                "{err}"
            );
            std::os::unix::fs::chown(&p, Some(0), None).unwrap();
        }
        // A link in a root-only directory is followed (Kubernetes secret volumes).
        std::os::unix::fs::symlink("secret", dir.path().join("link")).unwrap();
        assert_eq!(
            read_secret_file(&dir.path().join("link"))
                .unwrap()
                .expose_secret(),
            "s3cr3t"
        );
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&p, open.join("link")).unwrap();
        assert!(matches!(
            read_secret_file(&open.join("link")),
            Err(SecretFileError::Untrusted(_))
        ));
    }

    #[test]
    fn stale_temp_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("rotated");
        for name in [
            ".rotated.tmp.0123456789abcdef",
            ".rotated.tmp.x",
            ".other.tmp.1",
            "rotated",
        ] {
            std::fs::write(dir.path().join(name), "s").unwrap();
        }
        remove_stale_temps(&target);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".other.tmp.1", "rotated"]);

        // Another writer's spare temp file (live, locked by it) is kept.
        let other = SecretWriter::open(&target).unwrap();
        remove_stale_temps(&target);
        let spare = other.spare.as_ref().unwrap().0.clone();
        assert!(dir.path().join(&spare).exists(), "a live spare kept");
    }
}
