//! A minimal Entra ID v2 tenant: the `refresh_token` grant with Entra's answers and
//! AADSTS errors, the tenant's JWKS, a dev consent page at the authorize URL, and
//! `/dev/entra` to put a user's refresh tokens in a failing state.
//!
//! Entra refresh tokens are opaque and rotate: every refresh returns a new one, while
//! the presented one stays valid (Entra does not revoke it at once). A failing state
//! belongs to the user, not to a token, as when an admin revokes sessions or consent:
//! every token of the user fails until the user consents again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use super::azure;
use super::claims::random_uuid;
use super::http::{bad_request, text, AppState};
use super::store::{lock, random_secret, token_hash, Stats, TokenHash};

/// Refresh tokens kept per user. Every refresh adds one and none is revoked, so a
/// long-running dev issuer would otherwise grow without bound; the oldest go first.
const TOKENS_PER_USER: usize = 64;

/// What refreshing a user's tokens currently does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum EntraState {
    #[default]
    Ok,
    InvalidGrant,
    InteractionRequired,
    ConsentRequired,
}

impl EntraState {
    const ALL: [EntraState; 4] = [
        EntraState::Ok,
        EntraState::InvalidGrant,
        EntraState::InteractionRequired,
        EntraState::ConsentRequired,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EntraState::Ok => "ok",
            EntraState::InvalidGrant => "invalid_grant",
            EntraState::InteractionRequired => "interaction_required",
            EntraState::ConsentRequired => "consent_required",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The error a refresh meets in this state; `None` when refreshing works.
    fn error(self, client_id: &str) -> Option<AadError> {
        let (code, text) = match self {
            EntraState::Ok => return None,
            EntraState::InvalidGrant => (
                700082,
                "The refresh token has expired due to inactivity. The token was issued \
                 on a date and was inactive for 90.00:00:00."
                    .to_owned(),
            ),
            EntraState::InteractionRequired => (
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth \
                 token is needed. The user might have changed or reset their password."
                    .to_owned(),
            ),
            EntraState::ConsentRequired => (
                65001,
                format!(
                    "The user or administrator has not consented to use the application \
                     with ID '{client_id}'. Send an interactive authorization request for \
                     this user and resource."
                ),
            ),
        };
        Some(AadError::new(self.as_str(), code, text))
    }
}

#[derive(Default)]
struct UserTokens {
    state: EntraState,
    recent: VecDeque<TokenHash>,
}

#[derive(Default)]
struct Table {
    /// Keyed by the SHA-256 of the token, as the realm's offline sessions are.
    owner: HashMap<TokenHash, String>,
    users: HashMap<String, UserTokens>,
}

#[derive(Default)]
pub(crate) struct EntraStore {
    table: Mutex<Table>,
}

/// Sizes only: the table stands for refresh tokens.
impl std::fmt::Debug for EntraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = lock(&self.table);
        f.debug_struct("EntraStore")
            .field("users", &table.users.len())
            .field("refresh_tokens", &table.owner.len())
            .finish()
    }
}

impl EntraStore {
    pub(crate) fn mint(&self, user: &str) -> SecretString {
        let token = random_secret();
        let hash = token_hash(token.expose_secret());
        let mut table = lock(&self.table);
        let entry = table.users.entry(user.to_owned()).or_default();
        entry.recent.push_back(hash);
        let evicted = (entry.recent.len() > TOKENS_PER_USER)
            .then(|| entry.recent.pop_front())
            .flatten();
        if let Some(old) = evicted {
            table.owner.remove(&old);
        }
        table.owner.insert(hash, user.to_owned());
        token
    }

    /// The user a refresh token belongs to, if the token is known and the user's
    /// state lets it refresh; otherwise the state's error.
    fn check(&self, token: &SecretString, client_id: &str) -> Result<String, AadError> {
        let table = lock(&self.table);
        let user = table
            .owner
            .get(&token_hash(token.expose_secret()))
            .ok_or_else(|| {
                AadError::new(
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.".to_owned(),
                )
            })?;
        let state = table.users.get(user).map(|u| u.state).unwrap_or_default();
        match state.error(client_id) {
            Some(err) => Err(err),
            None => Ok(user.clone()),
        }
    }

    fn set_state(&self, user: &str, state: EntraState) {
        lock(&self.table)
            .users
            .entry(user.to_owned())
            .or_default()
            .state = state;
    }

    /// The user the authorize page applies to without a `login_hint`: the only one
    /// holding refresh tokens, if there is exactly one.
    fn sole_user(&self) -> Option<String> {
        let table = lock(&self.table);
        let mut holders = table.users.iter().filter(|(_, u)| !u.recent.is_empty());
        match (holders.next(), holders.next()) {
            (Some((user, _)), None) => Some(user.clone()),
            _ => None,
        }
    }
}

/// An Entra error answer: always 400, with the AADSTS code in `error_codes` and at the
/// start of the description, followed by trace and correlation ids and a timestamp.
#[derive(Debug)]
struct AadError {
    error: &'static str,
    code: u32,
    text: String,
}

impl AadError {
    fn new(error: &'static str, code: u32, text: String) -> Self {
        AadError { error, code, text }
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let (trace_id, correlation_id) = (random_uuid(), random_uuid());
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.text
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// Entra answers a request for another tenant like this; `None` if it is ours.
fn unknown_tenant(st: &AppState, tenant: &str) -> Option<AadError> {
    (tenant != st.inner.cfg.tenant).then(|| {
        AadError::new(
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
            ),
        )
    })
}

fn missing(parameter: &str) -> AadError {
    AadError::new(
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{parameter}'."),
    )
}

/// `GET /{tenant}/discovery/v2.0/keys`: the JWKS of every Azure token this issuer mints.
pub(crate) async fn keys(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    if let Some(err) = unknown_tenant(&st, &tenant) {
        return err.into_response();
    }
    Json(st.inner.azure_key.jwks()).into_response()
}

/// The refresh form; `client_secret` is accepted and ignored (public clients are the
/// norm for this grant). No `Debug`, so the form cannot be logged.
#[derive(Deserialize)]
pub(crate) struct EntraForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    #[serde(default, deserialize_with = "secret")]
    refresh_token: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    device_code: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    code: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    code_verifier: Option<SecretString>,
    redirect_uri: Option<String>,
    scope: Option<String>,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// A successful refresh. Holds tokens only on its way to the wire; no `Debug`.
#[derive(Serialize)]
struct EntraResponse {
    token_type: &'static str,
    scope: String,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
    refresh_token: String,
}

/// `POST /{tenant}/oauth2/v2.0/token` with `grant_type=refresh_token`.
pub(crate) async fn token(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    form: Result<Form<EntraForm>, FormRejection>,
) -> Response {
    Stats::bump(&st.inner.stats.entra);
    let delay = st.inner.cfg.token_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match refresh(&st, &tenant, form) {
        Ok(answer) => {
            let no_store = [
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::PRAGMA, HeaderValue::from_static("no-cache")),
            ];
            (no_store, answer).into_response()
        }
        Err(err) => {
            tracing::debug!(error = err.error, code = err.code, "entra: refresh refused");
            err.into_response()
        }
    }
}

fn refresh(
    st: &AppState,
    tenant: &str,
    form: Result<Form<EntraForm>, FormRejection>,
) -> Result<Response, AadError> {
    if let Some(err) = unknown_tenant(st, tenant) {
        return Err(err);
    }
    let Ok(Form(form)) = form else {
        // The rejection's text may quote the body: say nothing about it.
        return Err(AadError::new(
            "invalid_request",
            900144,
            "The request body must be application/x-www-form-urlencoded without repeated parameters."
                .to_owned(),
        ));
    };
    let device = match form.grant_type.as_deref() {
        Some("refresh_token") => false,
        Some(super::device::GRANT_TYPE) => true,
        Some("authorization_code") => {
            let client_id = form.client_id.ok_or_else(|| missing("client_id"))?;
            let code = form.code.ok_or_else(|| missing("code"))?;
            let user = super::code::redeem(
                st,
                &client_id,
                &code,
                form.redirect_uri.as_deref(),
                form.code_verifier.as_ref(),
            )
            .map_err(code_refused)?;
            st.inner.entra.set_state(&user, EntraState::Ok);
            let scope = form
                .scope
                .unwrap_or_else(|| "openid offline_access".to_owned());
            return answer(st, &user, &client_id, scope);
        }
        Some(_) => {
            return Err(AadError::new(
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.".to_owned(),
            ))
        }
        None => return Err(missing("grant_type")),
    };
    let client_id = form.client_id.ok_or_else(|| missing("client_id"))?;
    if device {
        let code = form.device_code.ok_or_else(|| missing("device_code"))?;
        let user = device_user(st, &client_id, &code)?;
        // The device flow's scope is the one asked for at /devicecode.
        return answer(st, &user, &client_id, "openid offline_access".to_owned());
    }
    let presented = form.refresh_token.ok_or_else(|| missing("refresh_token"))?;
    let scope = form
        .scope
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| missing("scope"))?;
    let user = st.inner.entra.check(&presented, &client_id)?;
    answer(st, &user, &client_id, scope)
}

/// Entra's answers to a code it will not redeem.
fn code_refused(r: super::code::Refused) -> AadError {
    use super::code::Refused;
    let (code, text) = match r {
        Refused::Invalid => (
            70008,
            "The provided authorization code or refresh token has expired due to inactivity.",
        ),
        Refused::RedirectMismatch => (
            50011,
            "The redirect URI specified in the request does not match the redirect URI the code was issued to.",
        ),
        Refused::MissingVerifier => (50148, "The code_verifier is missing."),
        Refused::VerifierMismatch => (
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        ),
    };
    AadError::new("invalid_grant", code, text.to_owned())
}

/// Entra's answers to a device-code poll: it has no `slow_down`.
fn device_user(st: &AppState, client_id: &str, code: &SecretString) -> Result<String, AadError> {
    use super::device::Polled;
    match super::device::poll(st, client_id, code, false) {
        Polled::Approved(user) => Ok(user),
        Polled::Pending | Polled::SlowDown => Err(AadError::new(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.".to_owned(),
        )),
        Polled::Denied => Err(AadError::new(
            "authorization_declined",
            70000,
            "The end user denied the authorization request.".to_owned(),
        )),
        Polled::Expired => Err(AadError::new(
            "expired_token",
            70019,
            "The device code has expired.".to_owned(),
        )),
        Polled::Invalid => Err(AadError::new(
            "bad_verification_code",
            70000,
            "The device_code is not valid.".to_owned(),
        )),
    }
}

/// Tokens for `user`: an Azure access token and a new refresh token.
fn answer(st: &AppState, user: &str, client_id: &str, scope: String) -> Result<Response, AadError> {
    let (access_token, _exp) = azure::mint(&st.inner, user, client_id).map_err(|e| {
        tracing::error!(error = %e, "dev issuer could not sign an Azure token");
        AadError::new("server_error", 500, "Signing failed.".to_owned())
    })?;
    // A freshly minted token: its whole lifetime is left.
    let lifetime = st.inner.cfg.azure_lifetime.as_secs();
    let refresh_token = st.inner.entra.mint(user);
    tracing::debug!(user, client_id, "entra: refreshed");
    Ok(Json(EntraResponse {
        token_type: "Bearer",
        scope,
        expires_in: lifetime,
        ext_expires_in: lifetime,
        access_token,
        refresh_token: refresh_token.expose_secret().to_owned(),
    })
    .into_response())
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: a device login in Entra's shape (no
/// `verification_uri_complete`: the user types the code), approved at the dev
/// device page.
pub(crate) async fn devicecode(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    form: Result<Form<EntraForm>, FormRejection>,
) -> Response {
    if let Some(err) = unknown_tenant(&st, &tenant) {
        return err.into_response();
    }
    let Ok(Form(form)) = form else {
        return missing("client_id").into_response();
    };
    let Some(client_id) = form.client_id else {
        return missing("client_id").into_response();
    };
    if form.scope.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return missing("scope").into_response();
    }
    let (device_code, user_code) = super::device::issue(&st, client_id);
    let page = format!("{}/device", st.realm_url);
    let cfg = &st.inner.cfg;
    Json(serde_json::json!({
        "device_code": device_code.expose_secret(),
        "user_code": user_code,
        "verification_uri": page,
        "expires_in": cfg.device_lifespan.as_secs(),
        "interval": cfg.device_interval.as_secs(),
        "message": format!("To sign in, use a web browser to open the page {page} and enter the code {user_code} to authenticate."),
    }))
    .into_response()
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the code flow (see `code`), the person
/// being `login_hint`, else the tenant's only user, else the development user.
pub(crate) async fn authorize(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    query: Result<Query<super::code::AuthorizeQuery>, QueryRejection>,
) -> Response {
    if tenant != st.inner.cfg.tenant {
        return text(StatusCode::BAD_REQUEST, "Unknown tenant.\n".into());
    }
    let Ok(Query(query)) = query else {
        return text(
            StatusCode::BAD_REQUEST,
            "Malformed authorize request.\n".into(),
        );
    };
    let user = st
        .inner
        .entra
        .sole_user()
        .unwrap_or_else(|| st.inner.cfg.device_user.clone());
    super::code::authorize(&st, query, &user, None)
}

#[derive(Deserialize)]
pub(crate) struct StateQuery {
    user: Option<String>,
    state: Option<String>,
}

/// `POST /dev/entra?user=U&state=ok|invalid_grant|interaction_required|consent_required`.
pub(crate) async fn state_admin(
    State(st): State<AppState>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("malformed query");
    };
    let Some(user) = query.user.filter(|u| !u.is_empty()) else {
        return bad_request("missing user");
    };
    let Some(state) = query.state.as_deref().and_then(EntraState::parse) else {
        return bad_request(
            "state must be ok, invalid_grant, interaction_required or consent_required",
        );
    };
    st.inner.entra.set_state(&user, state);
    tracing::info!(user, state = state.as_str(), "dev issuer: Entra state set");
    Json(serde_json::json!({ "user": user, "state": state.as_str() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_rotate_without_revocation_and_states_apply_per_user() {
        let store = EntraStore::default();
        let t1 = store.mint("alice");
        let t2 = store.mint("alice");
        assert_eq!(store.check(&t1, "app").unwrap(), "alice");
        assert_eq!(store.check(&t2, "app").unwrap(), "alice");
        assert_eq!(store.sole_user().as_deref(), Some("alice"));
        store.set_state("alice", EntraState::ConsentRequired);
        let err = store.check(&t1, "app").unwrap_err();
        assert_eq!((err.error, err.code), ("consent_required", 65001));
        assert!(err.text.contains("'app'"));
        store.set_state("alice", EntraState::Ok);
        assert!(store.check(&t1, "app").is_ok());
        let err = store.check(&"nope".into(), "app").unwrap_err();
        assert_eq!((err.error, err.code), ("invalid_grant", 9002313));
        store.mint("bob");
        assert_eq!(store.sole_user(), None);
    }

    #[test]
    fn oldest_tokens_are_evicted() {
        let store = EntraStore::default();
        let first = store.mint("alice");
        for _ in 0..TOKENS_PER_USER {
            store.mint("alice");
        }
        assert!(store.check(&first, "app").is_err());
        assert_eq!(lock(&store.table).owner.len(), TOKENS_PER_USER);
    }
}
