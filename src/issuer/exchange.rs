//! Keycloak's internal→external token exchange: a confidential client trades a user's
//! realm access token for the token Keycloak stores for the user's link to an
//! identity provider (here the Azure one), or learns where the user must consent.
//!
//! Checks run in Keycloak's order: client authentication, confidential client, subject
//! token, requested issuer, exchange permission, then the user's link.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::azure;
use super::claims::{unix_now, AccessClaims};
use super::client::{authenticate_client, TokenForm};
use super::http::{signing_failed, AppState, OAuthError};
use super::link::{account_link_url, Lookup};

pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A successful exchange. Holds a token only on its way to the wire; no `Debug`.
#[derive(Serialize)]
struct ExchangeResponse {
    access_token: String,
    expires_in: u64,
    token_type: &'static str,
    /// Required by RFC 8693; Keycloak sends it too.
    issued_token_type: &'static str,
    /// Keycloak sends 0: the provider's refresh token stays with Keycloak.
    refresh_expires_in: u64,
    #[serde(rename = "account-link-url")]
    account_link_url: String,
}

const fn bad_request(error: &'static str, description: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, error, description)
}

/// Runs the exchange; on success, the client id and the answer.
pub(crate) fn exchange(
    st: &AppState,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, Response), OAuthError> {
    let (client_id, confidential) = authenticate_client(st, headers, form)?;
    if !confidential {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Public client is not allowed to exchange token",
        ));
    }
    let subject = form.subject_token.as_ref().ok_or(bad_request(
        "invalid_request",
        "subject_token parameter required",
    ))?;
    if !matches!(
        form.subject_token_type.as_deref(),
        None | Some(ACCESS_TOKEN_TYPE)
    ) {
        return Err(bad_request(
            "invalid_request",
            "Invalid token type, must be access token",
        ));
    }
    let claims = st
        .inner
        .key
        .verify::<AccessClaims>(subject.expose_secret(), &st.realm_url)
        // Refresh and ID tokens are not subject tokens, as in Keycloak.
        .filter(|claims| claims.typ == "Bearer")
        .ok_or(bad_request("invalid_request", "Invalid token"))?;
    let alias = &st.inner.cfg.idp_alias;
    // Internal→internal exchange (no requested_issuer) is not what this realm is for.
    match form.requested_issuer.as_deref() {
        Some(issuer) if issuer == alias => {}
        Some(_) => return Err(bad_request("invalid_request", "Invalid issuer")),
        None => {
            return Err(bad_request(
                "invalid_request",
                "requested_issuer parameter required: the dev issuer only exchanges to an identity provider",
            ))
        }
    }
    if !st.inner.store.exchange_permitted(&client_id) {
        return Err(OAuthError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "Client not allowed to exchange",
        ));
    }

    let user = claims.preferred_username;
    let link_url = account_link_url(st, &user, &client_id);
    let now = unix_now();
    let lookup = st
        .inner
        .links
        .exchange(
            &user,
            alias,
            now,
            st.inner.cfg.azure_min_validity.as_secs(),
            || azure::mint(&st.inner, &user, &client_id),
        )
        .map_err(|e| signing_failed(&e))?;
    let (token, exp) = match lookup {
        Lookup::Linked(token, exp) => (token, exp),
        Lookup::Unlinked => {
            tracing::debug!(user, alias, "token exchange: user not linked");
            let err = bad_request("not_linked", "identity provider is not linked");
            return Err(err.with_account_link_url(link_url));
        }
        Lookup::Revoked => {
            tracing::debug!(user, alias, "token exchange: link revoked");
            let err = bad_request("token_expired", "linked token is expired");
            return Err(err.with_account_link_url(link_url));
        }
    };
    let answer = ExchangeResponse {
        access_token: token.expose_secret().to_owned(),
        // `Links::exchange` returns only unexpired tokens, so this is at least 1.
        expires_in: exp.saturating_sub(now),
        token_type: "Bearer",
        issued_token_type: ACCESS_TOKEN_TYPE,
        refresh_expires_in: 0,
        account_link_url: link_url,
    };
    Ok((client_id, Json(answer).into_response()))
}
