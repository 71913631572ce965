//! One holder per refresh token. A rotating upstream revokes the token a refresh
//! spends, and some (Keycloak, oidc-provider) end the whole grant when a spent one
//! is sent again: two processes refreshing with one token, a daemon and `tokenfs
//! check` or two daemons on one config, destroy it. So each claims the file its
//! rotations are saved to with an exclusive `flock` on `<file>.lock`, held until it
//! exits (the kernel drops it, also after `kill -9`), and a second claimant is
//! refused before it sends anything.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error(
        "another tokenfs ({holder}) refreshes with this refresh token (it holds {}); \
         a second holder would spend it under the first: stop that one first, or \
         read its files (`tokenfs status`) instead of running `check`",
        lock.display()
    )]
    Held { lock: PathBuf, holder: String },
    #[error("cannot lock {}: {source}", lock.display())]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

/// Locks this process holds, by path: claiming one again is a no-op (a config
/// loaded twice in one process is still one holder).
fn held() -> &'static Mutex<HashMap<PathBuf, File>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Claim `rotated` (the file a refresh token's rotations are saved to) for this
/// process until it exits. Its directory must exist.
pub fn claim(rotated: &Path) -> Result<(), HolderError> {
    let mut name = rotated.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
    if held.contains_key(&lock) {
        return Ok(());
    }
    let io = |source| HolderError::Io {
        lock: lock.clone(),
        source,
    };
    // No symlink is followed: the lock is only ever a file of our own.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let holder = match pid.trim() {
            "" => "pid unknown".to_owned(),
            pid => format!("pid {pid}"),
        };
        return Err(HolderError::Held { lock, holder });
    }
    // Who holds it, for the message a second claimant gets.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    held.insert(lock, file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_locks_the_file_names_the_pid_and_is_idempotent_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let rotated = dir.path().join("offline-token");
        claim(&rotated).unwrap();
        claim(&rotated).unwrap();
        let lock = dir.path().join("offline-token.lock");
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap(),
            std::process::id().to_string()
        );
        // Another open file description (as another process has) cannot take it.
        let other = File::open(&lock).unwrap();
        let got = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(got, -1, "held");
        // A symlink planted where the lock goes is not followed.
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("planted.lock")).unwrap();
        assert!(matches!(claim(&planted), Err(HolderError::Io { .. })));
    }
}
