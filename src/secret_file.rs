//! Long-lived secrets on disk: client secrets and refresh tokens that the
//! daemon reads at start and, when an upstream rotates them, writes back.
//!
//! Reading refuses files that other users could read, because a refresh token
//! there would let them mint the owner's access tokens. Writing is crash-safe:
//! a rotated refresh token replaces one the upstream may already have revoked,
//! so a torn or lost write would lose the user's access.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

/// Largest secret file accepted. Refresh tokens are a few KiB; anything far
/// bigger is the wrong file, and reading it whole would waste memory.
pub const MAX_SECRET_FILE: usize = 64 * 1024;

/// Why a secret file could not be read or written. Messages name the file and
/// say how to fix it; they never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot open {}: {source}; check that it exists and tokenfs may read it", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a regular file; point the setting at a file that holds only the secret", path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "{} is readable or writable by group or others (mode {mode:04o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{} is larger than {max} bytes; it should hold only the secret", path.display())]
    TooLarge { path: PathBuf, max: usize },
    #[error("{} is not valid UTF-8; it should hold only the secret as text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{} is empty; write the secret into it", path.display())]
    Empty { path: PathBuf },
    #[error("cannot write {}: {source}; check that its directory exists and tokenfs may write there", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Read a secret from `path`, refusing files open to group or others, empty
/// files and files over [`MAX_SECRET_FILE`]. One trailing `"\n"` or `"\r\n"`
/// (what editors and `echo` add) is removed; anything else is kept as is.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretFileError> {
    let err_path = || path.to_path_buf();
    // O_NONBLOCK so that a FIFO at this path cannot hang the daemon in open();
    // it is then refused as not a regular file. Symlinks are followed on
    // purpose: Kubernetes secret volumes are symlinks into `..data/`.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| SecretFileError::Open {
            path: err_path(),
            source,
        })?;
    // Check the opened file, not the path, so that a swap between the check
    // and the read cannot slip a different file in.
    let meta = file.metadata().map_err(|source| SecretFileError::Read {
        path: err_path(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SecretFileError::NotRegular { path: err_path() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: err_path(),
            mode,
        });
    }

    let mut buf = Vec::new();
    // One byte over the cap tells "exactly at the cap" from "over it".
    let read = file.take(MAX_SECRET_FILE as u64 + 1).read_to_end(&mut buf);
    if let Err(source) = read {
        buf.zeroize();
        return Err(SecretFileError::Read {
            path: err_path(),
            source,
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

/// Replace `path` with `secret` (exact bytes, no newline added) so that after a
/// crash the file holds either the old or the new secret, never a mix or
/// nothing: a temp file in the same directory (created exclusively, mode
/// 0600) is written and synced, renamed over `path`, and the directory synced
/// so the rename itself survives a power loss.
pub fn write_secret_file(path: &Path, secret: &SecretString) -> Result<(), SecretFileError> {
    let write_err = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (dir, file_name) = dir_and_name(path).map_err(write_err)?;

    let (tmp_path, mut tmp) = create_temp(dir, file_name).map_err(write_err)?;
    let written = tmp
        .write_all(secret.expose_secret().as_bytes())
        .and_then(|()| tmp.sync_all())
        .and_then(|()| {
            drop(tmp);
            std::fs::rename(&tmp_path, path)
        });
    if let Err(e) = written {
        // Best effort: a leftover temp file holds a live secret.
        let _ = std::fs::remove_file(&tmp_path);
        return Err(write_err(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)
}

/// Make sure [`write_secret_file`] can write `path` when the time comes: its
/// directory is created (mode 0700, parents too) if missing, and a temp file is
/// created in it and removed. Called at start, so that a rotated refresh token
/// is never received with nowhere to keep it.
pub fn ensure_writable(path: &Path) -> Result<(), SecretFileError> {
    let write_err = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (dir, file_name) = dir_and_name(path).map_err(write_err)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err)?;
    let (tmp_path, tmp) = create_temp(dir, file_name).map_err(write_err)?;
    drop(tmp);
    std::fs::remove_file(&tmp_path).map_err(write_err)
}

/// The directory a file is in (`.` for a bare name) and its name.
fn dir_and_name(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Remove temp files a killed run of [`write_secret_file`] left beside `path`:
/// each holds a live secret. Called at start, before anything writes `path`.
pub fn remove_stale_temps(path: &Path) {
    let Ok((dir, name)) = dir_and_name(path) else {
        return;
    };
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temp file left by an interrupted write")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "cannot remove a leftover temp file: {e}")
                }
            }
        }
    }
}

/// Create `.<name>.tmp.<random>` in `dir` with O_EXCL, so an existing file or a
/// symlink planted at that name is never written through.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr) -> io::Result<(PathBuf, File)> {
    let mut last_err = None;
    for _ in 0..8 {
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp.{:016x}", rand::random::<u64>()));
        let tmp_path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp_path)
        {
            Ok(f) => return Ok((tmp_path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not create a temp file")))
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

        write_with_mode(&p, b"s3cr3t\n", 0o640);
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretFileError::TooOpen { .. })
        ));
    }

    #[test]
    fn accepts_0600_and_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        for (content, want) in [
            (&b"s3cr3t"[..], "s3cr3t"),
            (b"s3cr3t\n", "s3cr3t"),
            (b"s3cr3t\r\n", "s3cr3t"),
            (b"s3cr3t\n\n", "s3cr3t\n"),
            (b" s3cr3t \n", " s3cr3t "),
        ] {
            write_with_mode(&p, content, 0o600);
            assert_eq!(read_secret_file(&p).unwrap().expose_secret(), want);
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
    fn write_into_missing_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("refresh_token");
        let err = write_secret_file(&p, &SecretString::from("s3cr3t")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope/refresh_token"), "{msg}");
        assert!(!msg.contains("s3cr3t"));
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
    }
}
