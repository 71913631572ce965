//! The authorization code grant with PKCE, as Keycloak's realm endpoints and
//! Entra's serve it. There is no login page here: the person is `login_hint`
//! (else the development user) and is taken to say yes, so the authorize
//! endpoint redirects at once to `redirect_uri` with `code` and `state`
//! (`dev_deny=1` in the query makes it `error=access_denied` instead). The
//! token endpoint redeems a code once, within [`LIFESPAN`], for the client
//! and `redirect_uri` it was issued to, with the verifier of its S256
//! challenge.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{text, AppState};
use super::store::{lock, random_secret, token_hash, Stats, TokenHash};

/// Keycloak's default for how long a code may wait to be redeemed.
pub(crate) const LIFESPAN: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    user: String,
    expires_at: Instant,
}

/// Codes by their hash (never kept raw), and counts for `/dev/stats`.
#[derive(Debug, Default)]
pub(crate) struct Codes {
    codes: Mutex<HashMap<TokenHash, Code>>,
    pub issued: std::sync::atomic::AtomicU64,
    pub redeemed: std::sync::atomic::AtomicU64,
}

/// The authorize query. Unknown parameters (`scope`, `response_mode`, …) are
/// ignored, as the servers do.
#[derive(Deserialize)]
pub(crate) struct AuthorizeQuery {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub login_hint: Option<String>,
    pub dev_deny: Option<String>,
}

/// The redirect (302) to `redirect_uri`, or a page saying what is wrong with
/// the request (the servers do not redirect to a URI they could not check).
/// `iss` (RFC 9207) goes into the redirect where the server sends it (Keycloak).
pub(crate) fn authorize(
    st: &AppState,
    q: AuthorizeQuery,
    default_user: &str,
    iss: Option<&str>,
) -> Response {
    let bad = |why: &str| text(StatusCode::BAD_REQUEST, format!("{why}\n"));
    if q.response_type.as_deref() != Some("code") {
        return bad(
            "Invalid parameter: response_type (the development issuer serves response_type=code)",
        );
    }
    let Some(client_id) = q.client_id.filter(|c| !c.is_empty()) else {
        return bad("Missing parameter: client_id");
    };
    let Some(redirect) = q
        .redirect_uri
        .as_deref()
        .and_then(|r| reqwest::Url::parse(r).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
    else {
        return bad("Invalid parameter: redirect_uri");
    };
    if q.code_challenge.is_some() && q.code_challenge_method.as_deref() != Some("S256") {
        return bad("Invalid parameter: code_challenge_method (S256 only)");
    }
    let mut to = redirect.clone();
    {
        let mut query = to.query_pairs_mut();
        if q.dev_deny.is_some() {
            query
                .append_pair("error", "access_denied")
                .append_pair("error_description", "The user denied the request");
        } else {
            let user = q
                .login_hint
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| default_user.to_owned());
            let code = issue(
                st,
                client_id,
                redirect.as_str().to_owned(),
                q.code_challenge,
                user,
            );
            query.append_pair("code", code.expose_secret());
        }
        if let Some(state) = &q.state {
            query.append_pair("state", state);
        }
        if let Some(iss) = iss {
            query.append_pair("iss", iss);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())], "").into_response()
}

fn issue(
    st: &AppState,
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    user: String,
) -> SecretString {
    let code = random_secret();
    lock(&st.inner.codes.codes).insert(
        token_hash(code.expose_secret()),
        Code {
            client_id,
            redirect_uri,
            challenge,
            user,
            expires_at: Instant::now() + LIFESPAN,
        },
    );
    Stats::bump(&st.inner.codes.issued);
    code
}

/// Why a code was not redeemed, before any protocol's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Unknown, already used, expired or another client's.
    Invalid,
    RedirectMismatch,
    MissingVerifier,
    VerifierMismatch,
}

impl Refused {
    /// Keycloak's `invalid_grant` descriptions.
    pub(crate) fn keycloak(self) -> &'static str {
        match self {
            Refused::Invalid => "Code not valid",
            Refused::RedirectMismatch => "Incorrect redirect_uri",
            Refused::MissingVerifier => "PKCE code verifier not specified",
            Refused::VerifierMismatch => "PKCE verification failed: Code mismatch",
        }
    }
}

/// Redeem `code` for its user: spent whatever the outcome, as the servers do
/// (a code sent twice is an interception).
pub(crate) fn redeem(
    st: &AppState,
    client_id: &str,
    code: &SecretString,
    redirect_uri: Option<&str>,
    verifier: Option<&SecretString>,
) -> Result<String, Refused> {
    let entry = lock(&st.inner.codes.codes).remove(&token_hash(code.expose_secret()));
    let Some(entry) = entry.filter(|c| c.client_id == client_id && Instant::now() < c.expires_at)
    else {
        return Err(Refused::Invalid);
    };
    let same_redirect = redirect_uri
        .and_then(|r| reqwest::Url::parse(r).ok())
        .is_some_and(|r| r.as_str() == entry.redirect_uri);
    if !same_redirect {
        return Err(Refused::RedirectMismatch);
    }
    if let Some(challenge) = &entry.challenge {
        let verifier = verifier.ok_or(Refused::MissingVerifier)?;
        let computed =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                verifier.expose_secret().as_bytes(),
            ));
        if &computed != challenge {
            return Err(Refused::VerifierMismatch);
        }
    }
    Stats::bump(&st.inner.codes.redeemed);
    Ok(entry.user)
}
