//! Refresh-token handling: saving each rotation before it is used (retried in
//! the background when the disk refuses), the lock shared with the other
//! processes that use the same rotated file, and taking what they saved.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{drop_waiting, mtime, Held, Inner, ROTATING_TIMEOUT_FACTOR};
use crate::holder::{self, RefreshLock};
use crate::secret_file::{self, SecretWriter};
use crate::source::SourceError;
use crate::sync::lock;

impl Inner {
    /// Adopt a rotated refresh token: persist it first, so that a crash
    /// right after cannot lose it, then use it. A failed write does not stop
    /// its use, since the upstream may already have revoked the old one.
    /// `lock` is released once it is saved (see [`Saver::save`]).
    pub(super) async fn rotate(
        &self,
        held: &mut Held,
        new: SecretString,
        saver: Option<&Arc<Saver>>,
        lock: Option<RefreshLock>,
    ) {
        match saver {
            Some(saver) => saver.clone().save_or_retry(new.clone(), lock).await,
            None => tracing::debug!("the upstream rotated the refresh token (kept in memory only)"),
        }
        held.token = Some(new);
    }

    /// How long to wait for another process's use of the refresh token: its
    /// request takes at most the rotating timeout, its read and save a little more.
    pub(super) fn lock_wait(&self) -> Duration {
        self.http.timeout * (ROTATING_TIMEOUT_FACTOR + 1)
    }

    /// Lock the refresh token against the other processes sharing its rotated
    /// file, and take what they saved there since we last looked: sending the
    /// token we hold after another rotated it would spend a revoked token, which
    /// ends the whole grant at Keycloak and oidc-provider.
    pub(super) async fn sync(
        &self,
        held: &mut Held,
        saver: &Arc<Saver>,
    ) -> Result<TokenLock, SourceError> {
        let wait = self.lock_wait();
        let s = saver.clone();
        let (lock, current) = tokio::task::spawn_blocking(move || s.lock_and_read(wait))
            .await
            .map_err(|e| SourceError::Lock(format!("locking the refresh token failed: {e}")))??;
        if let Some(current) = current {
            let same = |t: &Option<SecretString>| {
                t.as_ref()
                    .is_some_and(|t| t.expose_secret() == current.expose_secret())
            };
            if !same(&held.rotated_seen) && !same(&held.token) {
                tracing::info!(
                    file = %saver.path.display(),
                    "using the refresh token another tokenfs saved (it refreshed or logged in)"
                );
                held.token = Some(current.clone());
                // Our own login is not needed any more (a device login's poller stops).
                if let Some(device) = &self.device {
                    drop_waiting(&device.state);
                }
                if let Some(code) = &self.code {
                    drop_waiting(&code.state);
                }
            }
            held.rotated_seen = Some(current);
        }
        Ok(TokenLock {
            lock: Some(lock),
            saver: saver.clone(),
        })
    }

    /// Take a refresh token written to `file` since we last read it: the
    /// result of a new consent, newer than anything we hold.
    pub(super) async fn reload(&self, held: &mut Held, file: &std::path::Path) {
        let now = mtime(file);
        if now.is_none() || now == held.file_mtime {
            return;
        }
        let path = file.to_owned();
        match tokio::task::spawn_blocking(move || secret_file::read_secret_file(&path)).await {
            Ok(Ok(token)) => {
                tracing::info!(file = %file.display(), "using the refresh token written to the file since it was last read");
                held.token = Some(token);
                held.file_mtime = now;
            }
            Ok(Err(e)) => tracing::warn!("{e}; keeping the refresh token held"),
            Err(e) => tracing::warn!("re-reading {} failed: {e}", file.display()),
        }
    }

    /// The lock for saving a new login's refresh token. Nothing is spent by the
    /// save, so a lock not had in time is no reason to drop the login: the token
    /// is saved all the same (the newest save wins; each is a live grant).
    pub(super) async fn login_lock(&self, saver: Option<&Arc<Saver>>) -> Option<RefreshLock> {
        let saver = saver?.clone();
        let wait = self.lock_wait();
        match tokio::task::spawn_blocking(move || saver.lock(wait)).await {
            Ok(Ok((lock, _))) => Some(lock),
            Ok(Err(e)) => {
                tracing::warn!("{e}; saving the login's refresh token without the lock");
                None
            }
            Err(e) => {
                tracing::warn!("locking the refresh token failed: {e}; saving without the lock");
                None
            }
        }
    }
}

/// A refresh the upstream refused for want of the user, as Keycloak and
/// Entra say it.
pub(super) struct Refused {
    /// Consent was had (`EKEYEXPIRED`), not never given (`ENOKEY`).
    pub(super) had_consent: bool,
    /// The refresh token is spent for good (revoked, expired, the offline
    /// session gone: `invalid_grant`), not only waiting on the user (Entra's
    /// `interaction_required`, `consent_required`).
    pub(super) dead: bool,
}

pub(super) fn refused_for_the_user(e: &SourceError) -> Option<Refused> {
    let refused = |had_consent, dead| Some(Refused { had_consent, dead });
    match e {
        SourceError::Rejected(m) if m.starts_with("invalid_grant") => refused(true, true),
        SourceError::Rejected(m) if m.starts_with("interaction_required") => refused(true, false),
        SourceError::Rejected(m) if m.starts_with("consent_required") => refused(false, false),
        SourceError::ConsentRequired { expired, .. } => refused(*expired, true),
        _ => None,
    }
}

/// Saves the rotations of one refresh token. A rotation that cannot be saved
/// (a full disk, no descriptor left) is retried in the background until it is,
/// not only at the next rotation: until then a restart would lose the grant.
#[derive(Debug)]
pub(super) struct Saver {
    path: PathBuf,
    /// Opened at the first save (the config checked it can be).
    writer: std::sync::Mutex<Option<SecretWriter>>,
    /// The newest rotation not saved yet.
    unsaved: std::sync::Mutex<Option<Unsaved>>,
    retrying: AtomicBool,
    /// `<path>.lock`, opened with the writer and kept (see [`holder::LockFile`]).
    lock_file: std::sync::Mutex<Option<Arc<holder::LockFile>>>,
}

#[derive(Debug)]
pub(super) struct Unsaved {
    token: SecretString,
    why: String,
    /// The lock of the refresh that brought the token, kept until it is saved:
    /// released earlier, another process would read the file's token, which the
    /// upstream revoked with that refresh, and send it, ending the whole grant.
    /// `None` while this process's next use of the token holds it.
    lock: Option<RefreshLock>,
}

/// A refresh's lock: handed to the save of the rotation it brings, or, dropped
/// without one, given back to an unsaved earlier rotation that still needs it.
pub(super) struct TokenLock {
    lock: Option<RefreshLock>,
    saver: Arc<Saver>,
}

impl TokenLock {
    pub(super) fn into_lock(mut self) -> Option<RefreshLock> {
        self.lock.take()
    }
}

impl Drop for TokenLock {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.saver.release(lock);
        }
    }
}

/// Waits between attempts to save a rotation that failed to save.
pub(super) const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
pub(super) const SAVE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Saver {
    pub(super) fn new(path: PathBuf) -> Saver {
        let writer = SecretWriter::open(&path).ok();
        let lock_file = writer
            .as_ref()
            .and_then(|w| holder::open(w).ok())
            .map(Arc::new);
        Saver {
            path,
            writer: std::sync::Mutex::new(writer),
            unsaved: std::sync::Mutex::new(None),
            retrying: AtomicBool::new(false),
            lock_file: std::sync::Mutex::new(lock_file),
        }
    }

    pub(super) fn unsaved(&self) -> Option<String> {
        lock(&self.unsaved).as_ref().map(|u| u.why.clone())
    }

    /// The writer, opened again if the last save dropped it.
    pub(super) fn writer_now<'a>(
        &self,
        writer: &'a mut Option<SecretWriter>,
    ) -> Result<&'a mut SecretWriter, secret_file::SecretFileError> {
        if writer.is_none() {
            *writer = Some(SecretWriter::open(&self.path)?);
        }
        Ok(writer.as_mut().expect("just opened"))
    }

    /// Take the lock on the refresh token (blocking, at most `wait`). The lock an
    /// unsaved rotation keeps is this process's already: it passes to the caller
    /// (`true`: the file cannot have changed since, nobody else could write it).
    pub(super) fn lock(&self, wait: Duration) -> Result<(RefreshLock, bool), SourceError> {
        let kept = lock(&self.unsaved).as_mut().and_then(|u| u.lock.take());
        if let Some(lock) = kept {
            return Ok((lock, true));
        }
        let file = {
            // Not held while waiting: a retried save needs the writer meanwhile.
            let mut writer = lock(&self.writer);
            let mut kept = lock(&self.lock_file);
            match &*kept {
                Some(file) => file.clone(),
                None => {
                    let writer = self.writer_now(&mut writer).map_err(|e| {
                        SourceError::Lock(format!("cannot lock the refresh token: {e}"))
                    })?;
                    let file = Arc::new(
                        holder::open(writer).map_err(|e| SourceError::Lock(e.to_string()))?,
                    );
                    *kept = Some(file.clone());
                    file
                }
            }
        };
        let lock = file.wait(wait).map_err(|e| {
            if let holder::HolderError::Io { .. } = e {
                // Opened again next time: the file may be gone or replaced.
                *lock(&self.lock_file) = None;
            }
            SourceError::Lock(e.to_string())
        })?;
        Ok((lock, false))
    }

    /// Release `lock`, unless an unsaved rotation needs it kept.
    pub(super) fn release(&self, lock: RefreshLock) {
        let mut unsaved = crate::sync::lock(&self.unsaved);
        if let Some(u) = unsaved.as_mut() {
            if u.lock.is_none() {
                u.lock = Some(lock);
            }
        }
    }

    /// [`Saver::lock`], then what the file holds now (`None`: nothing yet, or
    /// nothing another process can have written).
    pub(super) fn lock_and_read(
        &self,
        wait: Duration,
    ) -> Result<(RefreshLock, Option<SecretString>), SourceError> {
        let (lock, kept) = self.lock(wait)?;
        if kept {
            return Ok((lock, None));
        }
        let mut writer = crate::sync::lock(&self.writer);
        match self.writer_now(&mut writer).and_then(|w| w.read_current()) {
            Ok(current) => Ok((lock, current)),
            Err(e) => {
                // What an untrusted or broken file holds is never taken; refreshing
                // with the held token keeps a lone daemon working (and its rotation
                // is kept, with this lock, until it can be saved), at the risk of
                // a token another sharer saved there being missed.
                tracing::warn!(
                    "{e}; refreshing with the refresh token held, not one another tokenfs                      may have saved there"
                );
                Ok((lock, None))
            }
        }
    }

    /// Write `token` now (blocking I/O), then release `lock`; on failure it
    /// becomes the unsaved one, and keeps the lock.
    pub(super) fn save(
        &self,
        token: &SecretString,
        lock: Option<RefreshLock>,
    ) -> Result<(), String> {
        let mut writer = crate::sync::lock(&self.writer);
        self.save_locked(&mut writer, token, lock)
    }

    /// Write the unsaved rotation, if there still is one. Under the writer's lock,
    /// so an older token can never overwrite a newer one saved meanwhile.
    pub(super) fn save_pending(&self) -> Option<Result<(), String>> {
        let mut writer = lock(&self.writer);
        let token = lock(&self.unsaved).as_ref().map(|u| u.token.clone())?;
        Some(self.save_locked(&mut writer, &token, None))
    }

    pub(super) fn save_locked(
        &self,
        writer: &mut Option<SecretWriter>,
        token: &SecretString,
        lock: Option<RefreshLock>,
    ) -> Result<(), String> {
        let written = match writer.as_mut() {
            Some(w) => w.write(token),
            None => SecretWriter::open(&self.path).and_then(|mut w| {
                let written = w.write(token);
                *writer = Some(w);
                written
            }),
        };
        let mut unsaved = crate::sync::lock(&self.unsaved);
        match written {
            Ok(()) => {
                // Saved (renamed and synced): now others may read and use it, so
                // the lock goes, the one an earlier unsaved rotation kept too.
                *unsaved = None;
                drop(lock);
                Ok(())
            }
            Err(e) => {
                // The held directory may be gone or changed: the next attempt
                // resolves the path again.
                *writer = None;
                let why = format!(
                    "{e}; the rotated refresh token is kept in memory only (retrying) and is \
                     lost if tokenfs restarts before it is saved"
                );
                let lock = lock.or_else(|| unsaved.take().and_then(|u| u.lock));
                *unsaved = Some(Unsaved {
                    token: token.clone(),
                    why: why.clone(),
                    lock,
                });
                Err(why)
            }
        }
    }

    pub(super) async fn save_or_retry(
        self: Arc<Self>,
        token: SecretString,
        lock: Option<RefreshLock>,
    ) {
        let saver = self.clone();
        match tokio::task::spawn_blocking(move || saver.save(&token, lock)).await {
            Ok(Ok(())) => {
                tracing::debug!(file = %self.path.display(), "saved the rotated refresh token")
            }
            Ok(Err(why)) => {
                tracing::error!("{why}");
                if !self.retrying.swap(true, Ordering::SeqCst) {
                    tokio::spawn(self.retry());
                }
            }
            Err(e) => tracing::error!("saving the rotated refresh token failed: {e}"),
        }
    }

    /// Retry the unsaved rotation (whichever is newest) until one save succeeds.
    pub(super) async fn retry(self: Arc<Self>) {
        let mut wait = SAVE_RETRY_FIRST;
        let mut attempt = 0u32;
        loop {
            if self.unsaved().is_none() {
                // A failure between the look above and here finds `retrying`
                // still set: look once more after clearing it.
                self.retrying.store(false, Ordering::SeqCst);
                if self.unsaved().is_none() || self.retrying.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SAVE_RETRY_MAX);
            attempt += 1;
            let saver = self.clone();
            let saved = tokio::task::spawn_blocking(move || saver.save_pending()).await;
            if let Ok(Some(Ok(()))) = saved {
                tracing::info!(
                    file = %self.path.display(),
                    attempt,
                    "saved the rotated refresh token that could not be saved before"
                );
            }
        }
    }
}
