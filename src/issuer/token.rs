//! The token endpoint: client authentication and the `refresh_token` and
//! `client_credentials` grants, with Keycloak's answers and error codes. The
//! token-exchange grant shares the endpoint and lives in `exchange`.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::claims::{AccessClaims, Principal};
use super::client::{authenticate_client, TokenForm};
use super::exchange;
use super::http::{signing_failed, unknown_realm, AppState, OAuthError};
use super::store::{RefreshError, Stats};

/// A successful answer. Holds tokens only on its way to the wire; no `Debug`.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    refresh_expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    token_type: &'static str,
    #[serde(rename = "not-before-policy")]
    not_before_policy: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_state: Option<String>,
    scope: &'static str,
}

pub(crate) async fn token(
    State(st): State<AppState>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let stats = &st.inner.stats;
    // Counted on arrival so a test can see a request that is still sleeping in `token_delay`.
    Stats::bump(&stats.token_requests);
    let grant = form.as_ref().ok().and_then(|f| f.grant_type.clone());
    match grant.as_deref() {
        Some("refresh_token") => Stats::bump(&stats.refresh_token),
        Some("client_credentials") => Stats::bump(&stats.client_credentials),
        Some(exchange::GRANT_TYPE) => Stats::bump(&stats.token_exchange),
        _ => {}
    }
    if let Some(resp) = unknown_realm(&st, &realm) {
        Stats::bump(&stats.errors);
        return resp;
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            Stats::bump(&stats.errors);
            // The rejection's text may quote the body; log only its status.
            tracing::debug!(status = %rejection.status(), "token request: unreadable form");
            return OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Expected an application/x-www-form-urlencoded body without duplicated parameters",
            )
            .into_response();
        }
    };
    let outcome = if grant.as_deref() == Some(exchange::GRANT_TYPE) {
        exchange::exchange(&st, &headers, &form)
    } else {
        grant_token(&st, &headers, &form)
            .map(|(client_id, answer)| (client_id, Json(answer).into_response()))
    };
    // After the grant took effect (a rotation included), as when the server has
    // committed and its answer is slow to arrive: a client that gives up on it
    // has lost what it carried.
    let delay = st.inner.cfg.token_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match outcome {
        Ok((client_id, answer)) => {
            tracing::debug!(client_id, grant = grant.as_deref(), "token issued");
            // RFC 6749 §5.1: token answers must not be cached.
            let no_store = [
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::PRAGMA, HeaderValue::from_static("no-cache")),
            ];
            (no_store, answer).into_response()
        }
        Err(err) => {
            Stats::bump(&stats.errors);
            tracing::debug!(
                grant = grant.as_deref(),
                error = err.error,
                "token request refused"
            );
            err.into_response()
        }
    }
}

/// Keycloak's order: grant type, then client authentication, then the grant itself.
fn grant_token(
    st: &AppState,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, TokenResponse), OAuthError> {
    let grant = form.grant_type.as_deref().ok_or(OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Missing form parameter: grant_type",
    ))?;
    if !matches!(
        grant,
        "refresh_token" | "client_credentials" | "authorization_code" | super::device::GRANT_TYPE
    ) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        ));
    }
    let (client_id, confidential) = authenticate_client(st, headers, form)?;
    let answer = if grant == "refresh_token" {
        refresh_grant(st, &client_id, form)?
    } else if grant == super::device::GRANT_TYPE {
        let user = super::device::grant(st, &client_id, form.device_code.as_ref())?;
        new_offline_session(st, &client_id, &user)?
    } else if grant == "authorization_code" {
        let code = form.code.as_ref().ok_or(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing parameter: code",
        ))?;
        let user = super::code::redeem(
            st,
            &client_id,
            code,
            form.redirect_uri.as_deref(),
            form.code_verifier.as_ref(),
        )
        .map_err(|r| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", r.keycloak()))?;
        new_offline_session(st, &client_id, &user)?
    } else {
        client_credentials_grant(st, &client_id, confidential)?
    };
    Ok((client_id, answer))
}

fn refresh_grant(
    st: &AppState,
    client_id: &str,
    form: &TokenForm,
) -> Result<TokenResponse, OAuthError> {
    let presented = form.refresh_token.as_ref().ok_or(OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Missing form parameter: refresh_token",
    ))?;
    let rotate = st.inner.cfg.rotate_refresh_tokens;
    let (session, rotated) = st
        .inner
        .store
        .refresh(presented, client_id, rotate)
        .map_err(|e| {
            let description = match e {
                RefreshError::Unknown => "Invalid refresh token",
                RefreshError::OtherClient => {
                    "Invalid refresh token. Token client and authorized client don't match"
                }
                RefreshError::Reused => "Maximum allowed refresh token reuse exceeded",
                RefreshError::Detached => "Session doesn't have required client",
            };
            OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
        })?;
    let principal = Principal::User(session.username);
    let refresh = rotated.as_ref().unwrap_or(presented);
    let mut answer = access_token(st, &principal, client_id, Some(&session.id))?;
    answer.refresh_token = Some(refresh.expose_secret().to_owned());
    answer.session_state = Some(session.id);
    Ok(answer)
}

/// An approved login (device or code): a new offline session for its user.
fn new_offline_session(
    st: &AppState,
    client_id: &str,
    user: &str,
) -> Result<TokenResponse, OAuthError> {
    let offline = st.inner.store.mint(user, client_id);
    let (session, _) = st
        .inner
        .store
        .refresh(&offline, client_id, false)
        .map_err(|_| {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Session not active",
            )
        })?;
    let principal = Principal::User(session.username);
    let mut answer = access_token(st, &principal, client_id, Some(&session.id))?;
    answer.refresh_token = Some(offline.expose_secret().to_owned());
    answer.session_state = Some(session.id);
    Ok(answer)
}

fn client_credentials_grant(
    st: &AppState,
    client_id: &str,
    confidential: bool,
) -> Result<TokenResponse, OAuthError> {
    if !confidential {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Public client not allowed to retrieve service account",
        ));
    }
    let principal = Principal::ServiceAccount {
        client_id: client_id.to_owned(),
    };
    // Keycloak (12+) gives client_credentials no refresh token and no session.
    access_token(st, &principal, client_id, None)
}

fn access_token(
    st: &AppState,
    principal: &Principal,
    client_id: &str,
    session_id: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let lifetime = st.inner.cfg.lifetime;
    let claims = AccessClaims::new(&st.realm_url, principal, client_id, session_id, lifetime);
    let access_token = st
        .inner
        .key
        .sign_jwt(&claims)
        .map_err(|e| signing_failed(&e))?;
    Ok(TokenResponse {
        access_token,
        expires_in: claims.exp - claims.iat,
        refresh_expires_in: 0,
        refresh_token: None,
        token_type: "Bearer",
        not_before_policy: 0,
        session_state: None,
        scope: principal.scope(),
    })
}
