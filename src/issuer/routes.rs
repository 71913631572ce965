//! The HTTP surface: Keycloak 17+ paths (no `/auth` prefix), Entra ID v2 paths under
//! `/{tenant}/…`, and the dev-only admin endpoints under `/dev/`.
//!
//! `/dev/stats` answers `{"token_requests", "refresh_token", "client_credentials",
//! "token_exchange", "errors", "entra"}`: requests to the realm token endpoint (counted
//! on arrival, so an in-flight request under `token_delay` already shows), per grant,
//! and failed ones; `entra` counts requests to the Entra token endpoint.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::claims::AccessClaims;
use super::http::{unknown_realm, AppState, OAuthError};
use super::{device, entra, exchange, link, token, Inner};

pub(crate) fn router(inner: Arc<Inner>, realm_url: String) -> Router {
    let state = AppState {
        inner,
        realm_url: realm_url.into(),
    };
    let oidc = "/realms/{realm}/protocol/openid-connect";
    Router::new()
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(discovery),
        )
        .route(&format!("{oidc}/certs"), get(certs))
        .route(&format!("{oidc}/token"), post(token::token))
        .route(&format!("{oidc}/userinfo"), get(userinfo).post(userinfo))
        .route(&format!("{oidc}/auth"), get(link::link_action))
        .route(&format!("{oidc}/auth/device"), post(device::authorize))
        .route("/realms/{realm}/device", get(device::page))
        .route("/realms/{realm}/broker/{alias}/link", get(link::link_page))
        // Static segments win over `{tenant}`, so these never shadow `/realms` or `/dev`.
        .route("/{tenant}/discovery/v2.0/keys", get(entra::keys))
        .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
        .route("/{tenant}/oauth2/v2.0/authorize", get(entra::authorize))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(entra::devicecode))
        .route("/dev/stats", get(stats))
        .route("/dev/consent", post(link::consent_admin))
        .route("/dev/entra", post(entra::state_admin))
        .route("/dev/device", post(device::decide))
        .with_state(state)
}

async fn discovery(State(st): State<AppState>, Path(realm): Path<String>) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    let base = &*st.realm_url;
    let oidc = format!("{base}/protocol/openid-connect");
    // No authorization endpoint: users never log in here; offline tokens are minted
    // out of band (`Issuer::mint_offline_token`, `--offline-token-file`).
    Json(serde_json::json!({
        "issuer": base,
        "token_endpoint": format!("{oidc}/token"),
        "jwks_uri": format!("{oidc}/certs"),
        "userinfo_endpoint": format!("{oidc}/userinfo"),
        "grant_types_supported": ["refresh_token", "client_credentials", exchange::GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "azp", "name", "preferred_username",
            "email", "email_verified"
        ],
    }))
    .into_response()
}

async fn certs(State(st): State<AppState>, Path(realm): Path<String>) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    Json(st.inner.key.jwks()).into_response()
}

async fn stats(State(st): State<AppState>) -> Json<serde_json::Value> {
    let mut stats = st.inner.stats.snapshot();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    stats["device_authorizations"] = count(&st.inner.devices.authorizations).into();
    stats["slow_downs"] = count(&st.inner.devices.slow_downs).into();
    stats["codes_issued"] = count(&st.inner.codes.issued).into();
    stats["codes_redeemed"] = count(&st.inner.codes.redeemed).into();
    Json(stats)
}

#[derive(Serialize)]
struct UserInfo {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    preferred_username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

async fn userinfo(
    State(st): State<AppState>,
    Path(realm): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    let claims = bearer_token(&headers)
        .and_then(|token| st.inner.key.verify::<AccessClaims>(token, &st.realm_url))
        // Refresh or ID tokens must not open userinfo, as in Keycloak.
        .filter(|claims| claims.typ == "Bearer");
    let Some(claims) = claims else {
        tracing::debug!("userinfo: token rejected");
        return invalid_token(&st.inner.cfg.realm);
    };
    Json(UserInfo {
        sub: claims.sub,
        name: claims.name,
        preferred_username: claims.preferred_username,
        email: claims.email,
        email_verified: claims.email_verified,
    })
    .into_response()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// RFC 6750 §3 challenge; Keycloak answers every userinfo failure like this.
fn invalid_token(realm: &str) -> Response {
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"Token verification failed\", realm=\"{realm}\""
    );
    let mut resp = OAuthError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "Token verification failed",
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    resp
}
