//! One refresh at a time per refresh token, across processes. A rotating upstream
//! revokes the token a refresh spends, and some (Keycloak, oidc-provider) end the
//! whole grant when a spent one is sent again. Daemons (and `tokenfs check` or
//! `login`) that share the file rotations are saved to share the grant: each use
//! of the token takes an exclusive `flock` on `<file>.lock` and re-reads the file
//! under it, so it sends the newest token, never one another process just spent.
//! The kernel drops the lock when its holder exits, also after `kill -9`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::secret_file::{SecretFileError, SecretWriter};

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error(
        "another tokenfs ({holder}) has been refreshing with this refresh token for over \
         {}s (it holds {}); read again later, and if this lasts, see that one's log: a \
         rotation it could not save keeps the lock until it is saved",
        waited.as_secs(),
        lock.display()
    )]
    Busy {
        lock: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("cannot lock {}: {error}", lock.display())]
    Io {
        lock: PathBuf,
        error: std::io::Error,
    },
    // Not `#[from]`: that would also make it the `source`, which `{:#}` prints again.
    #[error("cannot open the refresh token's lock: {0}")]
    Open(SecretFileError),
}

impl From<SecretFileError> for HolderError {
    fn from(e: SecretFileError) -> Self {
        HolderError::Open(e)
    }
}

/// The lock on one refresh token, held until dropped.
#[derive(Debug)]
pub struct RefreshLock {
    file: Arc<LockFile>,
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor the Arc keeps open.
        unsafe { libc::flock(self.file.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Longest sleep between two attempts while another process holds the lock.
const POLL_MAX: Duration = Duration::from_millis(50);

/// Take the lock on the refresh token saved by `writer`, waiting at most `wait`
/// for another process to release it. Blocks: call it off the async runtime.
pub fn lock(writer: &SecretWriter, wait: Duration) -> Result<RefreshLock, HolderError> {
    Arc::new(open(writer)?).wait(wait)
}

/// The lock file, opened (created 0600) through the writer's trusted directory.
pub fn open(writer: &SecretWriter) -> Result<LockFile, HolderError> {
    let (path, file) = writer.open_beside(".lock")?;
    Ok(LockFile { path, file })
}

/// The lock file of one refresh token, kept open so that each lock needs no new
/// descriptor (a process out of them still refreshes). Within one process only
/// one [`RefreshLock`] of it may exist at a time: the lock is its open file
/// description's, so a second would not wait, and dropping either unlocks both.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    file: File,
}

impl LockFile {
    /// Lock it, waiting at most `wait` (blocking).
    pub fn wait(self: &Arc<Self>, wait: Duration) -> Result<RefreshLock, HolderError> {
        let io = |source| HolderError::Io {
            lock: self.path.clone(),
            error: source,
        };
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(HolderError::Busy {
                    lock: self.path.clone(),
                    holder: self.holder(),
                    waited,
                });
            }
            std::thread::sleep(pause.min(wait - waited));
            pause = (pause * 2).min(POLL_MAX);
        }
        let lock = RefreshLock { file: self.clone() };
        // Who holds it, for the message a process that waits too long gets.
        self.file.set_len(0).map_err(io)?;
        self.file
            .write_all_at(std::process::id().to_string().as_bytes(), 0)
            .map_err(io)?;
        Ok(lock)
    }

    fn holder(&self) -> String {
        let mut pid = [0u8; 16];
        let n = self.file.read_at(&mut pid, 0).unwrap_or(0);
        match std::str::from_utf8(&pid[..n]).map(str::trim) {
            Ok(pid) if !pid.is_empty() => format!("pid {pid}"),
            _ => "pid unknown".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &tempfile::TempDir) -> SecretWriter {
        SecretWriter::open(&dir.path().join("offline-token")).unwrap()
    }

    fn try_flock(file: &File) -> bool {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[test]
    fn the_lock_excludes_another_file_description_and_names_the_pid_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir);
        let held = lock(&w, Duration::ZERO).unwrap();
        let path = dir.path().join("offline-token.lock");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another open file description (as another process has) cannot take it.
        let second = Arc::new(open(&w).unwrap());
        assert!(matches!(
            second.wait(Duration::ZERO),
            Err(HolderError::Busy { .. })
        ));
        drop(held);
        // Released on drop; the kept file locks again, and excludes others.
        let again = second.wait(Duration::ZERO).unwrap();
        let other = File::open(&path).unwrap();
        assert!(!try_flock(&other), "held");
        drop(again);
        assert!(try_flock(&other), "released");
    }

    #[test]
    fn a_held_lock_is_waited_for_within_the_bound_then_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir);
        // Another process's lock: a description of its own, with its pid written.
        use std::os::unix::fs::OpenOptionsExt;
        let other = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.path().join("offline-token.lock"))
            .unwrap();
        assert!(try_flock(&other));
        std::io::Write::write_all(&mut &other, b"4242").unwrap();
        let err = lock(&w, Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(&err, HolderError::Busy { holder, waited, .. }
                if holder == "pid 4242" && *waited >= Duration::from_millis(100)),
            "{err}"
        );
        assert!(
            err.to_string().contains("another tokenfs (pid 4242)"),
            "{err}"
        );

        // Released while waited for: taken.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(other);
        });
        let got = lock(&w, Duration::from_secs(30));
        release.join().unwrap();
        assert!(got.is_ok(), "{got:?}");
    }

    #[test]
    fn a_symlink_or_a_file_open_to_others_where_the_lock_goes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("offline-token.lock")).unwrap();
        let err = lock(&w, Duration::ZERO).unwrap_err();
        assert!(
            matches!(&err, HolderError::Open(SecretFileError::Open { .. })),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("offline-token.lock")).unwrap();
        let open = File::create(dir.path().join("offline-token.lock")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        open.set_permissions(std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = lock(&w, Duration::ZERO).unwrap_err();
        assert!(
            matches!(&err, HolderError::Open(SecretFileError::TooOpen { .. })),
            "{err}"
        );
    }
}
