//! Upstreams that issue tokens. Each kind implements [`Source`]; the cell above
//! knows nothing of HTTP and a source knows nothing of cells or FUSE.

pub mod code;
mod detached;
pub mod device;
pub mod get;
pub mod http;
pub mod jwt;
pub mod oauth;
pub mod verify;

pub use detached::detached;

use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

/// A token as an upstream issued it.
#[derive(Debug)]
pub struct Issued {
    /// The bytes a reader gets (no trailing newline). `SecretString` keeps it out of `Debug`.
    pub token: SecretString,
    /// When the token stops being accepted (JWT `exp`, else now + `expires_in`).
    pub expires_at: SystemTime,
    /// When the upstream says it was issued (JWT `iat`, else when the answer arrived).
    pub issued_at: SystemTime,
    /// Non-secret claims for logs and `.status`.
    pub claims: LogClaims,
}

/// The claims that may be logged: never the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Why an upstream gave no token. Each kind maps to one errno for readers
/// (see `SourceError::errno`), and to one line in the log and `.status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Could not reach the upstream, or it answered with a server error.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream did not answer within the configured timeout.
    #[error("upstream timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The upstream refused the credentials (e.g. `invalid_grant`, 401, 403).
    #[error("upstream rejected the request: {0}")]
    Rejected(String),
    /// The user has to (re-)grant consent in a browser at `url`, entering
    /// `user_code` there when there is one (a device login).
    #[error(
        "{}: open {url} in a browser{}",
        if *.expired { "consent expired or was revoked" } else { "consent required" },
        user_code.as_ref().map(|c| format!(" and confirm the code {c}")).unwrap_or_default()
    )]
    ConsentRequired {
        url: String,
        expired: bool,
        user_code: Option<String>,
    },
    /// The refresh token's lock (shared with other tokenfs processes) could not
    /// be taken: nothing was sent. The text says who holds it or what failed.
    #[error("{0}")]
    Lock(String),
    /// The upstream answered with something that is not a usable token.
    #[error("upstream answered garbage: {0}")]
    Malformed(String),
    /// The upstream issued a token that fails the configured verification
    /// (signature, issuer, audience, times): never served, as a consumer
    /// would refuse it too. The text never carries the token.
    #[error("upstream issued a token that fails verification: {0}")]
    Invalid(String),
}

impl SourceError {
    /// The errno a reader sees when no valid token is cached: the README's
    /// "Errors a reader sees" table, which readers and scripts rely on.
    pub fn errno(&self) -> i32 {
        match self {
            SourceError::Unavailable(_)
            | SourceError::Rejected(_)
            | SourceError::Malformed(_)
            | SourceError::Lock(_)
            | SourceError::Invalid(_) => libc::EIO,
            SourceError::Timeout(_) => libc::ETIMEDOUT,
            SourceError::ConsentRequired { expired: false, .. } => libc::ENOKEY,
            SourceError::ConsentRequired { expired: true, .. } => libc::EKEYEXPIRED,
        }
    }
}

/// Where a token exchange gets its subject token: another file of the mount
/// (through that file's cell, so a stale subject is never sent; `daemon`
/// implements it) or a file on disk ([`FileSubject`]).
#[async_trait::async_trait]
pub trait Subject: Send + Sync {
    async fn subject_token(&self) -> Result<SecretString, SourceError>;
    /// What it is, for errors and `.status` (e.g. `file token`).
    fn describe(&self) -> String;
}

/// A subject token read from a file for each exchange, e.g. a Kubernetes
/// projected service-account token, which the kubelet rewrites in place.
#[derive(Debug)]
pub struct FileSubject(pub std::path::PathBuf);

#[async_trait::async_trait]
impl Subject for FileSubject {
    async fn subject_token(&self) -> Result<SecretString, SourceError> {
        let path = self.0.clone();
        // As any file root reads: no link another user could swap, a regular
        // file (a FIFO cannot hang the read), root's, capped in size.
        let read = tokio::task::spawn_blocking(move || crate::secret_file::read_token_file(&path));
        match read.await {
            Ok(Ok(token)) => {
                let trimmed = token.expose_secret().trim();
                if trimmed.is_empty() {
                    return Err(SourceError::Unavailable(format!(
                        "subject token file {} is empty",
                        self.0.display()
                    )));
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
            Ok(Err(e)) => Err(SourceError::Unavailable(format!("subject token file: {e}"))),
            Err(e) => Err(SourceError::Unavailable(format!(
                "reading the subject token failed: {e}"
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("subject token file {}", self.0.display())
    }
}

/// A stamp of what a source reads from disk before a request (the files' mtimes):
/// when it differs from the stamp of a failed request, someone fixed a file, and
/// a read asks again at once instead of waiting out the backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs(pub Vec<Option<std::time::SystemTime>>);

impl Inputs {
    /// The mtimes of these files (`None` for one that cannot be stat'ed).
    pub fn of_files<'a>(files: impl IntoIterator<Item = &'a std::path::Path>) -> Inputs {
        Inputs(
            files
                .into_iter()
                .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .collect(),
        )
    }
}

/// One upstream kind. `issue` is called by at most one task at a time per file.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// Obtain a new token.
    async fn issue(&self) -> Result<Issued, SourceError>;
    /// Where the token comes from, for `.status` and logs (no secrets, no query strings).
    fn upstream(&self) -> String;
    /// Why the last refresh token the upstream rotated in could not be saved, while
    /// that lasts: requests still work, but the token is lost at the next start.
    fn unsaved_refresh_token(&self) -> Option<String> {
        None
    }
    /// Complete a code login with the URL the browser landed on (`file` names
    /// this source's file in errors).
    async fn complete_login(
        &self,
        file: &str,
        _redirect: code::Redirect,
    ) -> Result<(), code::LoginError> {
        Err(code::LoginError::NoCodeLogin { file: file.into() })
    }
    /// Whether a code login waits for a redirect carrying `state`.
    fn login_waits_for(&self, _state: &str) -> bool {
        false
    }
    /// The stamp of the inputs the next request would read (see [`Inputs`]).
    fn inputs(&self) -> Inputs {
        Inputs::default()
    }
}
