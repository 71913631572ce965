//! What every handler of the issuer shares, and nothing else: the state a
//! handler sees and the answers they all give (OAuth errors, plain text,
//! `invalid_request`). A leaf: handlers import it, it imports no handler.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Inner;

/// What every handler sees: the realm, and the URL it is reachable at through this binding.
#[derive(Clone)]
pub(crate) struct AppState {
    pub inner: Arc<Inner>,
    pub realm_url: Arc<str>,
}

/// An error body in the OAuth/Keycloak shape: `{"error", "error_description"}`, plus
/// `account-link-url` for the token exchange's consent errors.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: &'static str,
    pub account_link_url: Option<String>,
}

impl OAuthError {
    pub(crate) const fn new(
        status: StatusCode,
        error: &'static str,
        description: &'static str,
    ) -> Self {
        OAuthError {
            status,
            error,
            description,
            account_link_url: None,
        }
    }

    pub(crate) fn with_account_link_url(mut self, url: String) -> Self {
        self.account_link_url = Some(url);
        self
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut body =
            serde_json::json!({ "error": self.error, "error_description": self.description });
        if let Some(url) = self.account_link_url {
            body["account-link-url"] = url.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// Keycloak's answer when `realm` is not the one this issuer serves; `None` if it is.
pub(crate) fn unknown_realm(state: &AppState, realm: &str) -> Option<Response> {
    (realm != state.inner.cfg.realm).then(|| {
        let body = serde_json::json!({ "error": "Realm does not exist" });
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    })
}

/// A plain-text page; `nosniff` keeps a browser from rendering echoed input as HTML.
pub(crate) fn text(status: StatusCode, body: String) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (status, headers, body).into_response()
}

pub(crate) fn bad_request(description: &str) -> Response {
    let body = serde_json::json!({ "error": "invalid_request", "error_description": description });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Signing failed: a bug or a broken crypto library, never the client's fault.
pub(crate) fn signing_failed(e: &anyhow::Error) -> OAuthError {
    tracing::error!(error = %e, "dev issuer could not sign a token");
    OAuthError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "Signing failed",
    )
}
