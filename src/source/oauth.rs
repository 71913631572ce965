//! An OAuth2 token endpoint: Keycloak's (`refresh_token`, `client_credentials`,
//! RFC 8693 token exchange incl. Keycloak's internal→external form) and Entra
//! ID v2's (`refresh_token` with consent errors). Client authentication by
//! `client_secret` in the form (`client_secret_post`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::sync::lock;
use reqwest::{StatusCode, Url};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::code::{self, CodeLoginConfig, LoginError, Redirect};
use super::http::{
    self, map_send_error, read_body, redact_url, status_error, upstream_text, BuildError,
    HttpSettings,
};
use super::{device, jwt, Issued, Source, SourceError, Subject};
use crate::holder::{self, RefreshLock};
use crate::secret_file::{self, SecretWriter};

/// How many times `timeout` a refresh-token request may take (see `exchange`).
pub const ROTATING_TIMEOUT_FACTOR: u32 = 6;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How the source proves it may get a token.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Trade a (possibly offline) refresh token for an access token.
    RefreshToken {
        /// `None` until consent was given (Entra): the file is watched for it.
        refresh_token: Option<SecretString>,
        /// Where the refresh token came from; re-read when it changes, so a
        /// token written there after a new consent is used without a restart.
        file: Option<PathBuf>,
        /// Where a refresh token rotated by the upstream is saved, so that a
        /// restart does not fall back to one the upstream has revoked.
        rotated_file: Option<PathBuf>,
    },
    /// The client's own token; needs `client_secret`.
    ClientCredentials,
    /// RFC 8693 token exchange of a subject token.
    TokenExchange(Exchange),
}

/// Where an exchange's subject token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectRef {
    /// Another file of this mount (normally `token`), through its cell.
    MountFile(String),
    /// A file on disk, re-read for every exchange.
    Path(PathBuf),
}

/// What to exchange and for what.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub subject: SubjectRef,
    pub subject_token_type: String,
    /// Keycloak's internal→external exchange: the IdP alias (e.g. `azure`).
    pub requested_issuer: Option<String>,
    pub requested_token_type: Option<String>,
    pub audience: Option<String>,
    /// Where the browser comes back after consent.
    pub redirect_uri: Option<String>,
    /// How the consent URL of `not_linked` and `token_expired` is made.
    pub consent: ConsentLink,
}

/// The URL a user opens to link the identity provider (`requested_issuer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentLink {
    /// Keycloak's `account-link-url` from the error answer, with `redirect_uri`
    /// added. Keycloak accepts it only in the browser session that minted the
    /// subject token's (offline) session, and only when the server allows
    /// client-initiated account linking (off by default since Keycloak 26.3).
    AccountLinkUrl,
    /// Keycloak's application-initiated `idp_link` action at the realm's
    /// authorization endpoint: the user logs in (or is already logged in) in
    /// any browser session, confirms, and is sent to the identity provider.
    Action { authorization_url: String },
}

/// One token endpoint and the credentials to use there.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// e.g. `https://kc/realms/DominoRealm/protocol/openid-connect/token`.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// The file `client_secret` was read from: read again before a request once
    /// its mtime changes, so a secret fixed in place is used without a restart.
    pub client_secret_file: Option<PathBuf>,
    pub grant: Grant,
    /// Sent as `scope` when set.
    pub scope: Option<String>,
    /// With a refresh token grant, how a missing or dead refresh token is
    /// replaced: a login the user completes in a browser.
    pub login: Option<Login>,
    pub http: HttpSettings,
}

/// How a file with no usable refresh token gets one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// `login = "device"`: the device authorization endpoint.
    Device { url: String },
    /// `login = "code"`: authorization code with PKCE.
    Code(CodeLoginConfig),
}

/// A [`Source`] backed by an OAuth2 token endpoint. `Debug` shows no secret:
/// every secret field is a [`SecretString`].
#[derive(Debug)]
pub struct OAuthSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: ClientSecret,
    scope: Option<String>,
    http: HttpSettings,
    grant: GrantState,
    /// `login = "device"` (refresh-token grant only).
    device: Option<Device>,
    /// `login = "code"` (refresh-token grant only).
    code: Option<CodeLogin>,
    /// An exchange got a token (or was told the stored one expired) since start.
    had_consent: AtomicBool,
}

#[derive(Debug)]
struct Held {
    token: Option<SecretString>,
    /// mtime of `file` when `token` was taken from it (or at start).
    file_mtime: Option<SystemTime>,
    /// What the rotated file held when last looked at (at start: the token the
    /// config loaded). A change means another process sharing it rotated or
    /// logged in; the same token there is not newer than one held since (e.g.
    /// from `file`, or the dead one a device login replaces).
    rotated_seen: Option<SecretString>,
}

#[derive(Debug)]
enum GrantState {
    RefreshToken {
        /// Held for the whole exchange: two overlapping refreshes with a
        /// rotating token would have the second send a token the first just
        /// made the upstream revoke.
        held: tokio::sync::Mutex<Held>,
        file: Option<PathBuf>,
        saver: Option<Arc<Saver>>,
    },
    ClientCredentials,
    TokenExchange {
        params: Exchange,
        subject: Arc<dyn Subject>,
    },
}

impl std::fmt::Debug for dyn Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl GrantState {
    fn name(&self) -> &'static str {
        match self {
            GrantState::RefreshToken { .. } => "refresh_token",
            GrantState::ClientCredentials => "client_credentials",
            GrantState::TokenExchange { .. } => TOKEN_EXCHANGE,
        }
    }
}

/// The client secret in use, and the file it is re-read from when that changes.
#[derive(Debug)]
struct ClientSecret {
    current: std::sync::Mutex<Option<Arc<SecretString>>>,
    /// The file, and its mtime when `current` was read from it.
    file: Option<(PathBuf, std::sync::Mutex<Option<SystemTime>>)>,
}

impl ClientSecret {
    fn new(secret: Option<SecretString>, file: Option<PathBuf>) -> ClientSecret {
        ClientSecret {
            current: std::sync::Mutex::new(secret.map(Arc::new)),
            file: file.map(|f| {
                let at = mtime(&f);
                (f, std::sync::Mutex::new(at))
            }),
        }
    }

    /// The secret to send now (a clone of the handle, so no lock is held across
    /// a request).
    fn get(&self) -> Option<Arc<SecretString>> {
        lock(&self.current).clone()
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(|(f, _)| f.as_path())
    }

    /// Take the secret written to the file since it was last read. A file that
    /// does not read (mid-edit, or wrong) keeps the secret held, said once per change.
    async fn reload(&self) {
        let Some((file, seen)) = &self.file else {
            return;
        };
        let now = mtime(file);
        if now.is_none() || now == *lock(seen) {
            return;
        }
        *lock(seen) = now;
        let path = file.clone();
        match tokio::task::spawn_blocking(move || secret_file::read_secret_file(&path)).await {
            Ok(Ok(secret)) => {
                tracing::info!(file = %file.display(), "using the client secret written to the file since it was last read");
                *lock(&self.current) = Some(Arc::new(secret));
            }
            Ok(Err(e)) => tracing::warn!("{e}; keeping the client secret held"),
            Err(e) => tracing::warn!("re-reading {} failed: {e}", file.display()),
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl OAuthSource {
    /// A source whose exchange subject, if any, is a file on disk.
    pub fn new(cfg: OAuthConfig) -> Result<Self, BuildError> {
        Self::build(cfg, None)
    }

    /// A token-exchange source whose subject token comes from `subject`
    /// (another file's cell, for [`SubjectRef::MountFile`]).
    pub fn with_subject(cfg: OAuthConfig, subject: Arc<dyn Subject>) -> Result<Self, BuildError> {
        Self::build(cfg, Some(subject))
    }

    fn build(cfg: OAuthConfig, subject: Option<Arc<dyn Subject>>) -> Result<Self, BuildError> {
        let token_url = http::parse_url("token_url", &cfg.token_url)?;
        if cfg.client_id.is_empty() {
            return Err(BuildError::Setting {
                setting: "client_id",
                reason: "must not be empty",
            });
        }
        let grant = match cfg.grant {
            Grant::RefreshToken {
                refresh_token,
                file,
                rotated_file,
            } => {
                if refresh_token.is_none() && file.is_none() && cfg.login.is_none() {
                    return Err(BuildError::Setting {
                        setting: "refresh_token",
                        reason: "needs a token or a file to watch for one",
                    });
                }
                if refresh_token
                    .as_ref()
                    .is_some_and(|t| t.expose_secret().is_empty())
                {
                    return Err(BuildError::Setting {
                        setting: "refresh_token",
                        reason: "must not be empty",
                    });
                }
                let file_mtime = file.as_deref().and_then(mtime);
                GrantState::RefreshToken {
                    held: tokio::sync::Mutex::new(Held {
                        rotated_seen: refresh_token.clone(),
                        token: refresh_token,
                        file_mtime,
                    }),
                    file,
                    saver: rotated_file.map(|path| Arc::new(Saver::new(path))),
                }
            }
            Grant::ClientCredentials | Grant::TokenExchange(_) if cfg.client_secret.is_none() => {
                return Err(BuildError::Setting {
                    setting: "client_secret",
                    reason: "the client_credentials and token-exchange grants need a client secret",
                });
            }
            Grant::ClientCredentials => GrantState::ClientCredentials,
            Grant::TokenExchange(params) => {
                let subject = match (subject, &params.subject) {
                    (Some(subject), _) => subject,
                    (None, SubjectRef::Path(path)) => Arc::new(super::FileSubject(path.clone())),
                    (None, SubjectRef::MountFile(_)) => {
                        return Err(BuildError::Setting {
                            setting: "subject",
                            reason: "a subject that is a file of the mount needs that file's cell",
                        })
                    }
                };
                GrantState::TokenExchange { params, subject }
            }
        };
        if cfg.login.is_some() && !matches!(grant, GrantState::RefreshToken { .. }) {
            return Err(BuildError::Setting {
                setting: "login",
                reason: "a login gets a refresh token: it needs the refresh_token grant",
            });
        }
        let (device, code) = match cfg.login {
            Some(Login::Device { url }) => (
                Some(Device {
                    url: http::parse_url("device_authorization_url", &url)?,
                    state: std::sync::Mutex::new(LoginState::Idle),
                }),
                None,
            ),
            Some(Login::Code(cfg)) => {
                http::parse_url("authorization_url", &cfg.authorization_url)?;
                (
                    None,
                    Some(CodeLogin {
                        cfg,
                        state: std::sync::Mutex::new(LoginState::Idle),
                        used: std::sync::Mutex::new(None),
                    }),
                )
            }
            None => (None, None),
        };
        let inner = Inner {
            client: http::client(&cfg.http)?,
            token_url,
            client_id: cfg.client_id,
            client_secret: ClientSecret::new(cfg.client_secret, cfg.client_secret_file),
            scope: cfg.scope,
            http: cfg.http,
            grant,
            device,
            code,
            had_consent: AtomicBool::new(false),
        };
        Ok(OAuthSource {
            inner: Arc::new(inner),
        })
    }
}

#[async_trait]
impl Source for OAuthSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        // Run on its own task so that a caller giving up (a timeout or
        // shutdown dropping this future) cannot interrupt the exchange
        // between the upstream rotating the refresh token and us saving it.
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.issue().await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(SourceError::Unavailable(format!(
                "the token request was cancelled: {e}"
            ))),
        }
    }

    fn upstream(&self) -> String {
        redact_url(&self.inner.token_url)
    }

    fn unsaved_refresh_token(&self) -> Option<String> {
        self.inner.unsaved_now()
    }

    fn inputs(&self) -> super::Inputs {
        let refresh_token_file = match &self.inner.grant {
            GrantState::RefreshToken { file, .. } => file.as_deref(),
            _ => None,
        };
        super::Inputs::of_files(
            self.inner
                .client_secret
                .path()
                .into_iter()
                .chain(refresh_token_file),
        )
    }

    async fn complete_login(&self, file: &str, redirect: Redirect) -> Result<(), LoginError> {
        // Its own task, as `issue`: between the upstream redeeming the code and
        // us saving the refresh token nothing may interrupt.
        let inner = self.inner.clone();
        let name = file.to_owned();
        match tokio::spawn(async move { inner.complete_login(&name, redirect).await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(LoginError::Redeem {
                file: file.to_owned(),
                reason: format!("the request was cancelled: {e}"),
            }),
        }
    }

    fn login_waits_for(&self, state: &str) -> bool {
        self.inner.code.as_ref().is_some_and(|c| c.waits_for(state))
    }
}

impl Inner {
    fn unsaved_now(&self) -> Option<String> {
        match &self.grant {
            GrantState::RefreshToken {
                saver: Some(saver), ..
            } => saver.unsaved(),
            _ => None,
        }
    }

    /// POST the form and return the parsed 2xx answer and when the request was
    /// sent, or the error the status and body call for.
    async fn exchange(
        &self,
        form: Vec<(&str, &str)>,
    ) -> Result<(TokenResponse, SystemTime), SourceError> {
        self.exchange_as(self.grant.name(), form).await
    }

    /// [`Self::exchange`] with another grant type (a code login's redemption).
    async fn exchange_as(
        &self,
        grant: &str,
        mut form: Vec<(&str, &str)>,
    ) -> Result<(TokenResponse, SystemTime), SourceError> {
        form.insert(0, ("grant_type", grant));
        form.push(("client_id", &self.client_id));
        let secret = self.client_secret.get();
        if let Some(secret) = &secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        // A refresh may rotate the refresh token: the upstream has revoked the one
        // we sent once it answers, so giving up on the answer loses the grant.
        // Readers stop waiting after read_timeout all the same; the request goes on.
        let http = match self.grant {
            GrantState::RefreshToken { .. } => HttpSettings {
                timeout: self.http.timeout * ROTATING_TIMEOUT_FACTOR,
                ..self.http.clone()
            },
            _ => self.http.clone(),
        };
        let sent = SystemTime::now();
        let resp = self
            .client
            .post(self.token_url.clone())
            .timeout(http.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| map_send_error(e, &http))?;
        let status = resp.status();

        if !status.is_success() {
            // The body only explains the failure; if it cannot be read the
            // status alone decides.
            let body = read_body(resp, &http).await.ok();
            let sent: Vec<&str> = form.iter().map(|(_, v)| *v).collect();
            let err = self.error_from_answer(status, body.as_deref(), &sent);
            tracing::debug!(grant, status = status.as_u16(), error = %err, "token request failed");
            return Err(err);
        }
        let mut body = read_body(resp, &http).await?;
        let parsed = parse_token_response(&body, status);
        body.zeroize();
        let answer = parsed?;
        tracing::debug!(
            grant,
            status = status.as_u16(),
            token_type = answer.token_type.as_deref(),
            scope = answer.scope.as_deref(),
            refresh_expires_in = answer.refresh_expires_in,
            "token endpoint answered"
        );
        Ok((answer, sent))
    }

    /// Adopt a rotated refresh token: persist it first, so that a crash
    /// right after cannot lose it, then use it. A failed write does not stop
    /// its use, since the upstream may already have revoked the old one.
    /// `lock` is released once it is saved (see [`Saver::save`]).
    async fn rotate(
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
    fn lock_wait(&self) -> Duration {
        self.http.timeout * (ROTATING_TIMEOUT_FACTOR + 1)
    }

    /// Lock the refresh token against the other processes sharing its rotated
    /// file, and take what they saved there since we last looked: sending the
    /// token we hold after another rotated it would spend a revoked token, which
    /// ends the whole grant at Keycloak and oidc-provider.
    async fn sync(&self, held: &mut Held, saver: &Arc<Saver>) -> Result<TokenLock, SourceError> {
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
    async fn reload(&self, held: &mut Held, file: &std::path::Path) {
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

    /// The consent error for an exchange Keycloak answered `not_linked` or
    /// `token_expired`. Keycloak answers `not_linked` also when a link that
    /// worked was removed, or after it dropped a stored token it could not
    /// refresh (having said `token_expired` once): once this daemon saw the link
    /// work, consent is expired, not missing.
    fn link_needed(&self, x: &Exchange, link: String, expired: bool, subject: &str) -> SourceError {
        if expired {
            self.had_consent.store(true, Ordering::Relaxed);
        }
        let url = match (&x.consent, &x.requested_issuer, &x.redirect_uri) {
            (ConsentLink::Action { authorization_url }, Some(alias), Some(redirect)) => {
                link_action_url(
                    authorization_url,
                    &self.client_id,
                    redirect,
                    alias,
                    jwt::username(subject).as_deref(),
                )
                .unwrap_or(link)
            }
            _ => link,
        };
        SourceError::ConsentRequired {
            url,
            expired: self.had_consent.load(Ordering::Relaxed),
            user_code: None,
        }
    }

    /// One exchange, with the refresh token held locked from request to
    /// rotation.
    async fn issue(self: &Arc<Self>) -> Result<Issued, SourceError> {
        self.client_secret.reload().await;
        let (answer, sent) = match &self.grant {
            GrantState::ClientCredentials => self.exchange(Vec::new()).await?,
            GrantState::TokenExchange { params: x, subject } => {
                let subject = subject.subject_token().await?;
                let mut form = vec![
                    ("subject_token", subject.expose_secret()),
                    ("subject_token_type", x.subject_token_type.as_str()),
                ];
                for (key, value) in [
                    ("requested_issuer", &x.requested_issuer),
                    ("requested_token_type", &x.requested_token_type),
                    ("audience", &x.audience),
                ] {
                    if let Some(v) = value {
                        form.push((key, v));
                    }
                }
                match self.exchange(form).await {
                    Ok(answer) => {
                        self.had_consent.store(true, Ordering::Relaxed);
                        answer
                    }
                    Err(SourceError::ConsentRequired { url, expired, .. }) => {
                        return Err(self.link_needed(x, url, expired, subject.expose_secret()))
                    }
                    Err(e) => return Err(e),
                }
            }
            GrantState::RefreshToken { held, file, saver } => {
                let mut held = held.lock().await;
                if let Some((answer, sent)) = self.take_approved() {
                    // A login's own answer, if still recent (nobody may have
                    // read for a while): its refresh token is held already.
                    if sent.elapsed().unwrap_or_default() < APPROVED_ANSWER_MAX_AGE {
                        return issued_from_answer(answer, sent);
                    }
                }
                if let Some(file) = file {
                    self.reload(&mut held, file).await;
                }
                // Held until the rotation this refresh brings is saved; also before
                // a device login: another process may have logged in already.
                let lock = match saver {
                    Some(saver) => Some(self.sync(&mut held, saver).await?),
                    None => None,
                };
                let Some(token) = held.token.clone() else {
                    drop(lock);
                    drop(held);
                    return Err(self.start_login().await);
                };
                let form = vec![("refresh_token", token.expose_secret())];
                let result = self.exchange(form).await;
                if let Err(e) = &result {
                    if let Some(refused) = refused_for_the_user(e).filter(|_| self.has_login()) {
                        if refused.dead {
                            tracing::warn!("the refresh token is dead ({e}): starting a login");
                            held.token = None;
                        } else {
                            // Fixable without a new token (an admin's consent, a
                            // sign-in elsewhere): kept, and tried again at the next
                            // read, while the login is offered.
                            tracing::debug!(
                                "the refresh token needs the user ({e}): offering a login"
                            );
                        }
                        if refused.had_consent {
                            self.had_consent.store(true, Ordering::Relaxed);
                        }
                        drop(lock);
                        drop(held);
                        return Err(self.start_login().await);
                    }
                }
                let (mut answer, sent) = result?;
                self.had_consent.store(true, Ordering::Relaxed);
                // Before looking at the access token: even an unusable answer
                // may have rotated (and so revoked) the refresh token we hold.
                if let Some(new) = answer.refresh_token.take() {
                    if new.expose_secret() != token.expose_secret() {
                        let lock = lock.and_then(TokenLock::into_lock);
                        self.rotate(&mut held, new, saver.as_ref(), lock).await;
                    }
                }
                (answer, sent)
            }
        };
        // An `expires_in` counts from when the upstream answered, which is after we
        // sent the request: counting from the send errs on the short side.
        issued_from_answer(answer, sent)
    }

    fn has_login(&self) -> bool {
        self.device.is_some() || self.code.is_some()
    }

    fn take_approved(&self) -> Option<(TokenResponse, SystemTime)> {
        match (&self.device, &self.code) {
            (Some(device), _) => take_approved(&device.state),
            (_, Some(code)) => take_approved(&code.state),
            _ => None,
        }
    }

    /// The error a read gets while no refresh token is usable: what the user
    /// must do, a login started here if none is waiting.
    async fn start_login(self: &Arc<Self>) -> SourceError {
        match (&self.device, &self.code) {
            (Some(device), _) => self.device_login(device).await,
            (_, Some(code)) => self.code_login(code).await,
            _ => SourceError::Rejected(
                "no refresh token yet: write one to refresh_token_file, or set login".into(),
            ),
        }
    }

    /// The authorize URL waiting for the user, or a new one after
    /// [`code::MAX_AGE`]. `ENOKEY` before any token, then `EKEYEXPIRED`.
    async fn code_login(&self, login: &CodeLogin) -> SourceError {
        let required = |url: String| SourceError::ConsentRequired {
            url,
            expired: self.had_consent.load(Ordering::Relaxed),
            user_code: None,
        };
        let now = SystemTime::now();
        if let LoginState::Waiting(p) = &*lock(&login.state) {
            if p.is_current(now) {
                return required(p.url.clone());
            }
        }
        let pending = match code::start(&login.cfg, &self.client_id, self.scope.as_deref(), now) {
            Ok(p) => p,
            Err(e) => return SourceError::Rejected(format!("cannot build the login URL: {e}")),
        };
        if let Some(path) = login.cfg.state_file.clone() {
            let doc = code::state_document(&pending, &login.cfg, &self.client_id);
            let written = tokio::task::spawn_blocking(move || {
                secret_file::write_secret_file(&path, &doc).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = written {
                tracing::error!("cannot write consent_state_file: {e}");
            }
        }
        tracing::info!(
            authorization_url = %login.cfg.authorization_url,
            "code login started: waiting for the user to open the file's .consent-url"
        );
        *lock(&login.state) = LoginState::Waiting(pending.clone());
        required(pending.url)
    }

    /// Redeem the code the browser brought back for the login waiting now.
    async fn complete_login(&self, file: &str, redirect: Redirect) -> Result<(), LoginError> {
        let (Some(login), GrantState::RefreshToken { held, saver, .. }) = (&self.code, &self.grant)
        else {
            return Err(LoginError::NoCodeLogin { file: file.into() });
        };
        // Held from the state check to the save: two redirects for one login
        // (two browser tabs) are redeemed one after the other, and the second
        // finds the login used.
        let mut held = held.lock().await;
        let verifier = {
            let state = lock(&login.state);
            let used = lock(&login.used);
            match (&*state, redirect.state()) {
                (LoginState::Waiting(p), Some(s)) if code::same_state(&p.state, s) => {
                    p.verifier.clone()
                }
                (_, Some(s)) if used.as_deref().is_some_and(|u| code::same_state(u, s)) => {
                    return Err(LoginError::AlreadyUsed { file: file.into() })
                }
                _ => return Err(LoginError::StateMismatch { file: file.into() }),
            }
        };
        let used_state = redirect.state().map(str::to_owned);
        let code = match redirect {
            Redirect::Code { code, .. } => code,
            Redirect::Error {
                error, description, ..
            } => {
                // The user (or the upstream) said no: the next read offers a new URL.
                *lock(&login.state) = LoginState::Idle;
                tracing::warn!(%error, "the code login was declined at the upstream");
                return Err(LoginError::Declined {
                    file: file.into(),
                    error,
                    description,
                });
            }
        };
        let form = vec![
            ("code", code.expose_secret()),
            ("redirect_uri", login.cfg.redirect_uri.as_str()),
            ("code_verifier", verifier.expose_secret()),
        ];
        let redeem = |e: SourceError| LoginError::Redeem {
            file: file.into(),
            reason: e.to_string(),
        };
        let (mut answer, sent) = self
            .exchange_as("authorization_code", form)
            .await
            .map_err(redeem)?;
        match answer.refresh_token.take() {
            Some(refresh) => {
                let lock = self.login_lock(saver.as_ref()).await;
                self.rotate(&mut held, refresh, saver.as_ref(), lock).await
            }
            None => tracing::warn!(
                "the code login's answer has no refresh token (is offline_access allowed for \
                 this client?): the user must log in again when this token expires"
            ),
        }
        self.had_consent.store(true, Ordering::Relaxed);
        *lock(&login.used) = used_state;
        *lock(&login.state) = LoginState::Approved(answer, sent);
        tracing::info!("code login completed; the next read is served");
        Ok(())
    }

    /// What the user must do to log in: the code waiting for them, or a new one
    /// (whose poller is started here). `ENOKEY` before any token, then `EKEYEXPIRED`.
    async fn device_login(self: &Arc<Self>, device: &Device) -> SourceError {
        let expired = self.had_consent.load(Ordering::Relaxed);
        let required = |p: &device::Pending| SourceError::ConsentRequired {
            url: p.url.clone(),
            expired,
            user_code: Some(p.user_code.clone()),
        };
        let now = SystemTime::now();
        if let LoginState::Waiting(p) = &*device.lock() {
            if p.expires_at > now {
                return required(p);
            }
        }
        let mut form = vec![("client_id", self.client_id.as_str())];
        let secret = self.client_secret.get();
        if let Some(secret) = &secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.as_str()));
        }
        match device::authorize(&self.client, &device.url, &form, &self.http, now).await {
            Ok(pending) => {
                tracing::info!(
                    url = %pending.url,
                    user_code = %pending.user_code,
                    expires_in_s = pending.expires_at.duration_since(now).unwrap_or_default().as_secs(),
                    "device login started: waiting for the user to approve"
                );
                *device.lock() = LoginState::Waiting(pending.clone());
                tokio::spawn(self.clone().poll_device(pending.clone()));
                required(&pending)
            }
            Err(e) => e,
        }
    }

    /// Poll for the tokens of `pending` at the upstream's interval until the user
    /// approves, declines, or the code expires; a newer code ends this one.
    async fn poll_device(self: Arc<Self>, pending: device::Pending) {
        let Some(device) = &self.device else { return };
        let ours = |state: &LoginState<device::Pending>| {
            matches!(state, LoginState::Waiting(p)
                if p.device_code.expose_secret() == pending.device_code.expose_secret())
        };
        let mut interval = pending.interval;
        loop {
            tokio::time::sleep(interval).await;
            if !ours(&device.lock()) {
                return;
            }
            if SystemTime::now() >= pending.expires_at {
                *device.lock() = LoginState::Idle;
                tracing::info!(
                    "the device login code expired unused; the next read asks for a new one"
                );
                return;
            }
            let secret = self.client_secret.get();
            let form = device::poll_form(&pending, &self.client_id, secret.as_deref());
            match device::poll(&self.client, &self.token_url, &form, &self.http).await {
                device::Poll::Pending => {}
                device::Poll::SlowDown => interval = device::slower(interval),
                device::Poll::Failed(e) => {
                    tracing::debug!(error = %e, "a device login poll failed; trying again")
                }
                device::Poll::Ended(why) => {
                    *device.lock() = LoginState::Idle;
                    tracing::warn!(
                        "the device login ended ({why}); the next read starts a new one"
                    );
                    return;
                }
                device::Poll::Approved(mut body, sent) => {
                    let parsed = parse_token_response(&body, StatusCode::OK);
                    body.zeroize();
                    let GrantState::RefreshToken { held, saver, .. } = &self.grant else {
                        return;
                    };
                    let mut held = held.lock().await;
                    match parsed {
                        Ok(mut answer) => {
                            match answer.refresh_token.take() {
                                Some(refresh) => {
                                    let lock = self.login_lock(saver.as_ref()).await;
                                    self.rotate(&mut held, refresh, saver.as_ref(), lock).await
                                }
                                None => tracing::warn!(
                                    "the device login's answer has no refresh token (is offline_access in scope?): \
                                     the user must log in again when this token expires"
                                ),
                            }
                            self.had_consent.store(true, Ordering::Relaxed);
                            *device.lock() = LoginState::Approved(answer, sent);
                            tracing::info!("device login approved; the next read is served");
                        }
                        Err(e) => {
                            *device.lock() = LoginState::Idle;
                            tracing::warn!("the device login's answer is unusable: {e}");
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The lock for saving a new login's refresh token. Nothing is spent by the
    /// save, so a lock not had in time is no reason to drop the login: the token
    /// is saved all the same (the newest save wins; each is a live grant).
    async fn login_lock(&self, saver: Option<&Arc<Saver>>) -> Option<RefreshLock> {
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

    /// Map a non-2xx answer; see [`error_from_body`].
    fn error_from_answer(
        &self,
        status: StatusCode,
        body: Option<&[u8]>,
        sent: &[&str],
    ) -> SourceError {
        let (token_exchange, redirect_uri) = match &self.grant {
            GrantState::TokenExchange { params, .. } => (true, params.redirect_uri.as_deref()),
            _ => (false, None),
        };
        let ctx = ErrorContext {
            token_url: &self.token_url,
            client_id: &self.client_id,
            token_exchange,
            redirect_uri,
            sent,
        };
        error_from_body(&ctx, status, body)
    }
}

/// A device login in progress, or its answer not yet served.
struct Device {
    url: Url,
    state: std::sync::Mutex<LoginState<device::Pending>>,
}

/// A code login waiting for its redirect, or its answer not yet served.
struct CodeLogin {
    cfg: CodeLoginConfig,
    state: std::sync::Mutex<LoginState<code::Pending>>,
    /// The state of the login last completed, to tell a replayed URL apart.
    used: std::sync::Mutex<Option<String>>,
}

enum LoginState<P> {
    Idle,
    Waiting(P),
    /// The approved login's answer (its refresh token taken out and held), for
    /// the next read.
    Approved(TokenResponse, SystemTime),
}

impl<P> LoginState<P> {
    fn name(&self) -> &'static str {
        match self {
            LoginState::Idle => "idle",
            LoginState::Waiting(_) => "waiting",
            LoginState::Approved(..) => "approved",
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("url", &redact_url(&self.url))
            .field("state", &lock(&self.state).name())
            .finish()
    }
}

impl std::fmt::Debug for CodeLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeLogin")
            .field("authorization_url", &self.cfg.authorization_url)
            .field("state", &lock(&self.state).name())
            .finish()
    }
}

impl Device {
    fn lock(&self) -> std::sync::MutexGuard<'_, LoginState<device::Pending>> {
        lock(&self.state)
    }
}

impl CodeLogin {
    fn waits_for(&self, state: &str) -> bool {
        matches!(&*lock(&self.state), LoginState::Waiting(p) if code::same_state(&p.state, state))
    }
}

fn drop_waiting<P>(m: &std::sync::Mutex<LoginState<P>>) {
    let mut state = lock(m);
    if matches!(*state, LoginState::Waiting(_)) {
        *state = LoginState::Idle;
    }
}

fn take_approved<P>(m: &std::sync::Mutex<LoginState<P>>) -> Option<(TokenResponse, SystemTime)> {
    let mut state = lock(m);
    match std::mem::replace(&mut *state, LoginState::Idle) {
        LoginState::Approved(answer, sent) => Some((answer, sent)),
        other => {
            *state = other;
            None
        }
    }
}

/// How long an approved device login's answer is served from; older, the held
/// refresh token gets a fresh one instead.
const APPROVED_ANSWER_MAX_AGE: Duration = Duration::from_secs(30);

/// A refresh the upstream refused for want of the user, as Keycloak and
/// Entra say it.
struct Refused {
    /// Consent was had (`EKEYEXPIRED`), not never given (`ENOKEY`).
    had_consent: bool,
    /// The refresh token is spent for good (revoked, expired, the offline
    /// session gone: `invalid_grant`), not only waiting on the user (Entra's
    /// `interaction_required`, `consent_required`).
    dead: bool,
}

fn refused_for_the_user(e: &SourceError) -> Option<Refused> {
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
struct Saver {
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
struct Unsaved {
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
struct TokenLock {
    lock: Option<RefreshLock>,
    saver: Arc<Saver>,
}

impl TokenLock {
    fn into_lock(mut self) -> Option<RefreshLock> {
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
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Saver {
    fn new(path: PathBuf) -> Saver {
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

    fn unsaved(&self) -> Option<String> {
        lock(&self.unsaved).as_ref().map(|u| u.why.clone())
    }

    /// The writer, opened again if the last save dropped it.
    fn writer_now<'a>(
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
    fn lock(&self, wait: Duration) -> Result<(RefreshLock, bool), SourceError> {
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
    fn release(&self, lock: RefreshLock) {
        let mut unsaved = crate::sync::lock(&self.unsaved);
        if let Some(u) = unsaved.as_mut() {
            if u.lock.is_none() {
                u.lock = Some(lock);
            }
        }
    }

    /// [`Saver::lock`], then what the file holds now (`None`: nothing yet, or
    /// nothing another process can have written).
    fn lock_and_read(
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
    fn save(&self, token: &SecretString, lock: Option<RefreshLock>) -> Result<(), String> {
        let mut writer = crate::sync::lock(&self.writer);
        self.save_locked(&mut writer, token, lock)
    }

    /// Write the unsaved rotation, if there still is one. Under the writer's lock,
    /// so an older token can never overwrite a newer one saved meanwhile.
    fn save_pending(&self) -> Option<Result<(), String>> {
        let mut writer = lock(&self.writer);
        let token = lock(&self.unsaved).as_ref().map(|u| u.token.clone())?;
        Some(self.save_locked(&mut writer, &token, None))
    }

    fn save_locked(
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

    async fn save_or_retry(self: Arc<Self>, token: SecretString, lock: Option<RefreshLock>) {
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
    async fn retry(self: Arc<Self>) {
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

/// What the mapping of an error answer needs to know about the source. Kept
/// apart from [`Inner`] so the mapping is a pure function the fuzz tests reach.
pub(crate) struct ErrorContext<'a> {
    pub token_url: &'a Url,
    pub client_id: &'a str,
    /// The grant is a token exchange (a 403 then means a missing permission).
    pub token_exchange: bool,
    /// The exchange's `redirect_uri`, added to Keycloak's `account-link-url`.
    pub redirect_uri: Option<&'a str>,
    /// The request form's values, redacted wherever the upstream echoes them.
    pub sent: &'a [&'a str],
}

/// Map a non-2xx answer. The OAuth `error` and `error_description` are not
/// secret and say what to do (e.g. `invalid_grant: Session not active`), so
/// they are passed on; the rest of the body is not.
pub(crate) fn error_from_body(
    ctx: &ErrorContext<'_>,
    status: StatusCode,
    body: Option<&[u8]>,
) -> SourceError {
    let parsed = body
        .filter(|b| is_json_object(b))
        .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
    let code = parsed
        .as_ref()
        .and_then(|e| e.error.as_deref())
        .map(|c| upstream_text(c.trim(), ctx.sent))
        .filter(|c| !c.is_empty());
    // Keycloak's internal→external exchange: the user must link the IdP account.
    if let (Some(code), Some(link)) = (
        code.as_deref(),
        parsed.as_ref().and_then(|e| e.account_link_url.as_deref()),
    ) {
        if let (true, Some(url)) = (
            matches!(code, "not_linked" | "token_expired"),
            link_url(link, ctx.redirect_uri),
        ) {
            return SourceError::ConsentRequired {
                url,
                expired: code == "token_expired",
                user_code: None,
            };
        }
    }
    if status == StatusCode::FORBIDDEN && ctx.token_exchange {
        return SourceError::Rejected(format!(
            "HTTP 403 from {}: client {:?} is not permitted to exchange tokens; \
             grant it the token-exchange permission (for the identity provider) in Keycloak",
            redact_url(ctx.token_url),
            ctx.client_id
        ));
    }
    let detail = code.map(|code| {
        match parsed
            .as_ref()
            .and_then(|e| e.error_description.as_deref())
            .map(str::trim)
        {
            Some(d) if !d.is_empty() => format!("{code}: {}", upstream_text(d, ctx.sent)),
            _ => code,
        }
    });
    match detail {
        Some(d) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            SourceError::Rejected(d)
        }
        d => status_error(status, ctx.token_url, d.as_deref()),
    }
}

/// Keycloak's account-link URL with our `redirect_uri` added; `None` if it
/// is not an http(s) URL, which no user could open. The URL is served as the
/// `.consent-url` file and logged, so it is re-serialized rather than passed
/// on as sent: that percent-encodes or drops control characters (an
/// unparsed link used to carry them through; found by `tests/fuzz.rs`).
fn link_url(link: &str, redirect: Option<&str>) -> Option<String> {
    let mut url = Url::parse(link)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))?;
    if let Some(redirect) = redirect {
        url.query_pairs_mut().append_pair("redirect_uri", redirect);
    }
    Some(url.to_string())
}

/// Keycloak's application-initiated action that links `alias` to the user's
/// account: Keycloak logs the user in (the username prefilled), asks for
/// confirmation, runs the provider's login and consent, and sends the browser
/// to `redirect_uri`. No `state`: nothing redeems the code it brings back.
fn link_action_url(
    authorization_url: &str,
    client_id: &str,
    redirect_uri: &str,
    alias: &str,
    login_hint: Option<&str>,
) -> Option<String> {
    let mut url = Url::parse(authorization_url).ok()?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("kc_action", &format!("idp_link:{alias}"));
    if let Some(hint) = login_hint {
        url.query_pairs_mut().append_pair("login_hint", hint);
    }
    Some(url.into())
}

/// The fields of a token response that matter here. Keycloak also sends
/// `id_token`, `not-before-policy` and `session_state`; they are ignored, as
/// is anything unknown, so the `id_token` is never held.
pub(crate) struct TokenResponse {
    pub access_token: Option<SecretString>,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<SecretString>,
    pub refresh_expires_in: Option<u64>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<serde_json::Value>,
    token_type: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(rename = "account-link-url")]
    account_link_url: Option<String>,
}

pub(crate) fn parse_token_response(
    body: &[u8],
    status: StatusCode,
) -> Result<TokenResponse, SourceError> {
    if body.is_empty() {
        return Err(SourceError::Malformed(format!(
            "the token endpoint answered HTTP {} with an empty body",
            status.as_u16()
        )));
    }
    // serde's message is left out on purpose: for a wrongly typed value it
    // quotes the value, which may be a token.
    let raw: RawTokenResponse = serde_json::from_slice(body).map_err(|e| {
        SourceError::Malformed(format!(
            "the token endpoint answered HTTP {} with a body that is not a JSON token response (at line {} column {})",
            status.as_u16(),
            e.line(),
            e.column()
        ))
    })?;
    if !is_json_object(body) {
        return Err(SourceError::Malformed(format!(
            "the token endpoint answered HTTP {} with JSON that is not an object",
            status.as_u16()
        )));
    }
    let secret = |s: Option<String>| s.filter(|s| !s.is_empty()).map(SecretString::from);
    Ok(TokenResponse {
        access_token: secret(raw.access_token),
        expires_in: raw.expires_in.as_ref().and_then(lenient_u64),
        refresh_token: secret(raw.refresh_token),
        refresh_expires_in: raw.refresh_expires_in.as_ref().and_then(lenient_u64),
        token_type: raw.token_type,
        scope: raw.scope,
    })
}

/// Whether `body` (already known to be JSON, or about to be parsed) is a
/// JSON object, as RFC 6749 §5.1 and §5.2 require of token and error
/// answers. Needed because serde's derived `Deserialize` also takes a JSON
/// array as the fields in order, so `["tok",300]` would pass for an answer
/// (found by `tests/fuzz.rs`).
fn is_json_object(body: &[u8]) -> bool {
    // JSON's whitespace (RFC 8259 §2), which serde_json skips too.
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// The token a 2xx answer carries, once the refresh token was taken out of
/// it: an access token is required, and its expiry must be known and later
/// than its issue (see [`jwt::expiry`]).
pub(crate) fn issued_from_answer(
    answer: TokenResponse,
    now: SystemTime,
) -> Result<Issued, SourceError> {
    let token = answer.access_token.ok_or_else(|| {
        SourceError::Malformed("the token endpoint's answer has no access_token".into())
    })?;
    let (expires_at, issued_at, claims) =
        jwt::expiry(token.expose_secret(), answer.expires_in, now)?;
    Ok(Issued {
        token,
        expires_at,
        issued_at,
        claims,
    })
}

/// Seconds as a JSON number or, as some servers send them, a numeric string.
fn lenient_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
