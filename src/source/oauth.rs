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
use secrecy::{ExposeSecret, SecretString};

use super::code::{self, CodeLoginConfig, LoginError, Redirect};
use super::http::{self, map_send_error, read_body, redact_url, BuildError, HttpSettings};
use super::{device, jwt, Issued, Source, SourceError, Subject};
use crate::secret_file;

mod parse;
mod refresh;

use parse::*;
// `pub` for `crate::fuzzing` only: the fuzz tests drive the parsers as they are.
#[doc(hidden)]
pub use parse::{
    error_from_body, issued_from_answer, parse_token_response, ErrorContext, TokenResponse,
};
use refresh::*;

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
        Self::build(cfg, None, &http::Clients::default())
    }

    /// [`OAuthSource::new`] sharing the clients of `clients`.
    pub fn new_in(cfg: OAuthConfig, clients: &http::Clients) -> Result<Self, BuildError> {
        Self::build(cfg, None, clients)
    }

    /// A token-exchange source whose subject token comes from `subject`
    /// (another file's cell, for [`SubjectRef::MountFile`]).
    pub fn with_subject(
        cfg: OAuthConfig,
        subject: Arc<dyn Subject>,
        clients: &http::Clients,
    ) -> Result<Self, BuildError> {
        Self::build(cfg, Some(subject), clients)
    }

    fn build(
        cfg: OAuthConfig,
        subject: Option<Arc<dyn Subject>>,
        clients: &http::Clients,
    ) -> Result<Self, BuildError> {
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
            client: clients.client(&cfg.http)?,
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
        super::detached(async move { inner.issue().await })
            .await
            .unwrap_or_else(|e| Err(SourceError::Unavailable(e)))
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
        super::detached(async move { inner.complete_login(&name, redirect).await })
            .await
            .unwrap_or_else(|reason| {
                Err(LoginError::Redeem {
                    file: file.to_owned(),
                    reason,
                })
            })
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
            let err = self.error_from_answer(status, body.as_ref().map(|b| b.as_slice()), &sent);
            tracing::debug!(grant, status = status.as_u16(), error = %err, "token request failed");
            return Err(err);
        }
        let body = read_body(resp, &http).await?;
        let answer = parse_token_response(&body, status);
        drop(body);
        let answer = answer?;
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
                device::Poll::Approved(body, sent) => {
                    let parsed = parse_token_response(&body, StatusCode::OK);
                    drop(body);
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

#[cfg(test)]
mod tests;
