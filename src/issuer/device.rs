//! The device authorization grant as Keycloak serves it: `POST …/auth/device`
//! hands out a device code and a user code, the token endpoint answers
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code` with Keycloak's
//! errors in Keycloak's order (`expired_token`, then `slow_down` for a poll
//! within the interval, then `access_denied` or `authorization_pending`), and
//! `/realms/{realm}/device` is the page a person opens. The person's "Yes" is
//! the dev-only `POST /dev/device` (`user_code`, `user`, `approve`), which the
//! page's buttons send.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::client::{authenticate_client, TokenForm};
use super::http::{unknown_realm, AppState, OAuthError};
use super::store::{lock, random_secret, token_hash, TokenHash};

pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Pending,
    Approved { user: String },
    Denied,
}

#[derive(Debug)]
struct Code {
    user_code: String,
    client_id: String,
    expires_at: Instant,
    last_poll: Option<Instant>,
    answer: Answer,
}

/// Device codes by the hash of the device code (never kept raw).
#[derive(Debug, Default)]
pub(crate) struct Devices {
    codes: Mutex<HashMap<TokenHash, Code>>,
    pub authorizations: std::sync::atomic::AtomicU64,
    pub slow_downs: std::sync::atomic::AtomicU64,
}

/// Keycloak's user codes: 8 letters, shown as `XXXX-XXXX`.
fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let pick = |_| LETTERS[crate::random::below(LETTERS.len())] as char;
    let code: String = (0..8).map(pick).collect();
    format!("{}-{}", &code[..4], &code[4..])
}

pub(crate) async fn authorize(
    State(st): State<AppState>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    let client_id = match authenticate_client(&st, &headers, &form) {
        Ok((id, _)) => id,
        Err(e) => return e.into_response(),
    };
    let cfg = &st.inner.cfg;
    let (device_code, user_code) = issue(&st, client_id);
    let page = format!("{}/device", st.realm_url);
    Json(serde_json::json!({
        "device_code": device_code.expose_secret(),
        "user_code": user_code,
        "verification_uri": page,
        "verification_uri_complete": format!("{page}?user_code={user_code}"),
        "expires_in": cfg.device_lifespan.as_secs(),
        "interval": cfg.device_interval.as_secs(),
    }))
    .into_response()
}

/// What polling a device code finds, before any protocol's wording.
pub(crate) enum Polled {
    Invalid,
    Expired,
    SlowDown,
    Pending,
    Denied,
    Approved(String),
}

/// Poll a device code (Keycloak's order; `slow_down` only where the protocol has
/// it): an approved code is spent.
pub(crate) fn poll(
    st: &AppState,
    client_id: &str,
    device_code: &SecretString,
    slow_down: bool,
) -> Polled {
    let hash = token_hash(device_code.expose_secret());
    let mut codes = lock(&st.inner.devices.codes);
    let Some(code) = codes.get_mut(&hash).filter(|c| c.client_id == client_id) else {
        return Polled::Invalid;
    };
    let now = Instant::now();
    if now >= code.expires_at {
        return Polled::Expired;
    }
    let too_soon = code
        .last_poll
        .is_some_and(|last| now.duration_since(last) < st.inner.cfg.device_interval);
    let forced = st.inner.cfg.device_slow_down && code.last_poll.is_none();
    code.last_poll = Some(now);
    if slow_down && (too_soon || forced) {
        super::store::Stats::bump(&st.inner.devices.slow_downs);
        return Polled::SlowDown;
    }
    match code.answer.clone() {
        Answer::Pending => Polled::Pending,
        Answer::Denied => Polled::Denied,
        Answer::Approved { user } => {
            codes.remove(&hash);
            Polled::Approved(user)
        }
    }
}

/// The device-code grant at the realm's token endpoint: the approving user, or
/// Keycloak's error.
pub(crate) fn grant(
    st: &AppState,
    client_id: &str,
    device_code: Option<&SecretString>,
) -> Result<String, OAuthError> {
    let device_code = device_code.ok_or(OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Missing parameter: device_code",
    ))?;
    let error = |e, d| Err(OAuthError::new(StatusCode::BAD_REQUEST, e, d));
    match poll(st, client_id, device_code, true) {
        Polled::Invalid => error("invalid_grant", "Device code not valid"),
        Polled::Expired => error("expired_token", "Device code is expired"),
        Polled::SlowDown => error("slow_down", "Slow down"),
        Polled::Pending => error(
            "authorization_pending",
            "The authorization request is still pending",
        ),
        Polled::Denied => error(
            "access_denied",
            "The end user denied the authorization request",
        ),
        Polled::Approved(user) => Ok(user),
    }
}

/// A new code for `client_id`: the device code (returned once, kept hashed),
/// the user code, and its lifetime and interval.
pub(crate) fn issue(st: &AppState, client_id: String) -> (SecretString, String) {
    let device_code = random_secret();
    let user_code = user_code();
    lock(&st.inner.devices.codes).insert(
        token_hash(device_code.expose_secret()),
        Code {
            user_code: user_code.clone(),
            client_id,
            expires_at: Instant::now() + st.inner.cfg.device_lifespan,
            last_poll: None,
            answer: Answer::Pending,
        },
    );
    super::store::Stats::bump(&st.inner.devices.authorizations);
    (device_code, user_code)
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    user_code: Option<String>,
}

/// What a person sees at `verification_uri_complete`: the code, and two buttons.
pub(crate) async fn page(
    State(st): State<AppState>,
    Path(realm): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    let code: String = q
        .user_code
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect();
    Html(format!(
        "<!doctype html><title>Device Login</title><h1>Device Login (development issuer)</h1>\
         <form method=post action=/dev/device><p>Code <b>{code}</b></p>\
         <input type=hidden name=user_code value=\"{code}\">\
         <label>User <input name=user value=\"{user}\"></label>\
         <button name=approve value=true>Yes</button> <button name=approve value=false>No</button></form>",
        user = st.inner.cfg.device_user
    ))
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct Decision {
    user_code: String,
    user: String,
    approve: bool,
}

/// `POST /dev/device`: the person's answer for `user_code` (form or JSON fields
/// `user_code`, `user`, `approve`).
pub(crate) async fn decide(State(st): State<AppState>, Form(d): Form<Decision>) -> Response {
    let mut codes = lock(&st.inner.devices.codes);
    let Some(code) = codes.values_mut().find(|c| c.user_code == d.user_code) else {
        return (StatusCode::NOT_FOUND, "no such user code\n").into_response();
    };
    code.answer = if d.approve {
        Answer::Approved { user: d.user }
    } else {
        Answer::Denied
    };
    let done = if d.approve {
        "Device Login Successful"
    } else {
        "Device Login Failed"
    };
    Html(format!(
        "<!doctype html><title>{done}</title><h1>{done}</h1>"
    ))
    .into_response()
}

/// How long a code lives and how often it may be polled, for [`IssuerConfig`](super::IssuerConfig).
pub const DEFAULT_LIFESPAN: Duration = Duration::from_secs(600);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
