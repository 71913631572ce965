//! The token endpoint's answers, parsed: a 2xx body into a [`TokenResponse`]
//! and the token served, an error body into a [`SourceError`]. Pure functions
//! of the bytes (no I/O, no source state), which is what the fuzz tests drive.

use std::time::SystemTime;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::super::http::{redact_url, status_error, upstream_text};
use super::super::{jwt, Issued, SourceError};

/// What the mapping of an error answer needs to know about the source. Kept
/// apart from [`Inner`] so the mapping is a pure function the fuzz tests reach.
pub struct ErrorContext<'a> {
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
pub fn error_from_body(
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
pub(super) fn link_url(link: &str, redirect: Option<&str>) -> Option<String> {
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
pub(super) fn link_action_url(
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
pub struct TokenResponse {
    pub access_token: Option<SecretString>,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<SecretString>,
    pub refresh_expires_in: Option<u64>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawTokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<serde_json::Value>,
    token_type: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(rename = "account-link-url")]
    account_link_url: Option<String>,
}

pub fn parse_token_response(body: &[u8], status: StatusCode) -> Result<TokenResponse, SourceError> {
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
pub(super) fn is_json_object(body: &[u8]) -> bool {
    // JSON's whitespace (RFC 8259 §2), which serde_json skips too.
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// The token a 2xx answer carries, once the refresh token was taken out of
/// it: an access token is required, and its expiry must be known and later
/// than its issue (see [`jwt::expiry`]).
pub fn issued_from_answer(answer: TokenResponse, now: SystemTime) -> Result<Issued, SourceError> {
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
pub(super) fn lenient_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
