//! Client authentication at the token endpoints, and the form it reads: one
//! module the grants (`token`, `exchange`, `device`) share, so none of them
//! imports another for it.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::http::{AppState, OAuthError};
use super::store::ClientAuthError;

pub(crate) const INVALID_CLIENT: OAuthError = OAuthError::new(
    StatusCode::UNAUTHORIZED,
    "invalid_client",
    "Invalid client or Invalid client credentials",
);

/// The form fields we read; unknown ones (`scope`, …) are ignored like Keycloak does.
/// Secrets go straight into `SecretString`; no `Debug`, so the form cannot be logged.
#[derive(Deserialize)]
pub(crate) struct TokenForm {
    pub(crate) grant_type: Option<String>,
    pub(crate) client_id: Option<String>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) client_secret: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) refresh_token: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) device_code: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) code: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) code_verifier: Option<SecretString>,
    pub(crate) redirect_uri: Option<String>,
    #[serde(default, deserialize_with = "secret")]
    pub(crate) subject_token: Option<SecretString>,
    pub(crate) subject_token_type: Option<String>,
    pub(crate) requested_issuer: Option<String>,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// Authenticate the client of a token request: its id, and whether it is
/// confidential (has a secret). An unknown client is `invalid_client`, a wrong
/// secret `unauthorized_client`, both with Keycloak's one description.
pub(crate) fn authenticate_client(
    st: &AppState,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, bool), OAuthError> {
    let (client_id, secret) = client_credentials(headers, form)?;
    let confidential = st
        .inner
        .store
        .authenticate(&client_id, secret.as_ref())
        .map_err(|e| match e {
            ClientAuthError::Unknown => INVALID_CLIENT,
            ClientAuthError::BadSecret => OAuthError {
                error: "unauthorized_client",
                ..INVALID_CLIENT
            },
        })?;
    Ok((client_id, confidential))
}

/// The client's id and secret, from HTTP Basic (RFC 6749 §2.3.1) or the form.
fn client_credentials(
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, Option<SecretString>), OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(parse_basic(value).ok_or(INVALID_CLIENT)?),
        None => None,
    };
    match (basic, form.client_id.as_deref()) {
        // Two different identities in one request: refuse rather than guess.
        (Some((id, _)), Some(form_id)) if id != form_id => Err(INVALID_CLIENT),
        (Some((id, secret)), _) => Ok((id, Some(secret))),
        (None, Some(id)) => Ok((id.to_owned(), form.client_secret.clone())),
        (None, None) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Missing client_id parameter",
        )),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Option<(String, SecretString)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let secret = SecretString::from(form_decode(secret)?);
    Some((form_decode(id)?, secret))
}

/// application/x-www-form-urlencoded decoding (`+` is a space, `%XX` a byte),
/// refusing a `%` not followed by two hex digits rather than keeping it as
/// text: a mangled credential is the client's mistake to hear about.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%2Bb+c%3a").as_deref(), Some("a+b c:"));
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("a%"), None);
        assert_eq!(form_decode("%ff"), None, "not UTF-8");
        assert_eq!(form_decode("%C3%A9+%25").as_deref(), Some("é %"));
    }

    #[test]
    fn basic_header() {
        let value =
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("my%3Aapp:p%40ss:x")))
                .unwrap();
        let (id, secret) = parse_basic(&value).unwrap();
        assert_eq!((id.as_str(), secret.expose_secret()), ("my:app", "p@ss:x"));
        assert!(parse_basic(&HeaderValue::from_static("Bearer abc")).is_none());
    }
}
