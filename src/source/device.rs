//! The device authorization grant (RFC 8628), by which a file with no usable
//! refresh token gets one: the daemon asks the upstream for a user code, the
//! user opens the verification URL (shown in `<file>.consent-url`) and
//! approves, and the daemon, polling at the upstream's interval, receives the
//! tokens. Keycloak (`…/protocol/openid-connect/auth/device`) and Entra ID
//! (`…/oauth2/v2.0/devicecode`) both speak it.

use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{
    map_send_error, read_body, redact_url, status_error, upstream_text, Body, HttpSettings,
};
use super::SourceError;

pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.2: the interval when the upstream names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: what `slow_down` adds to the interval.
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// Bounds on what an upstream may ask for: a hostile answer must neither make
/// us poll in a tight loop nor keep a code alive for days.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// A code the user has not used yet. `Debug` shows no device code.
#[derive(Clone)]
pub struct Pending {
    /// Where the user goes: `verification_uri_complete` if given (the code
    /// is in it), else `verification_uri`.
    pub url: String,
    pub user_code: String,
    pub device_code: SecretString,
    pub expires_at: SystemTime,
    pub interval: Duration,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("url", &self.url)
            .field("user_code", &self.user_code)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: Option<String>,
    verification_uri_complete: Option<String>,
    /// Entra before v2 named it `verification_url`.
    verification_url: Option<String>,
    expires_in: serde_json::Value,
    interval: Option<serde_json::Value>,
}

/// POST the device authorization request (`client_id`, the client secret for a
/// confidential client, `scope`).
pub async fn authorize(
    client: &reqwest::Client,
    url: &Url,
    form: &[(&str, &str)],
    http: &HttpSettings,
    now: SystemTime,
) -> Result<Pending, SourceError> {
    let resp = client
        .post(url.clone())
        .timeout(http.timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| map_send_error(e, http))?;
    let status = resp.status();
    let body = read_body(resp, http).await;
    if !status.is_success() {
        let sent: Vec<&str> = form.iter().map(|(_, v)| *v).collect();
        let detail = body
            .ok()
            .and_then(|b| error_code(&b))
            .map(|(code, desc)| match desc {
                Some(d) => format!("{code}: {}", upstream_text(&d, &sent)),
                None => upstream_text(&code, &sent),
            });
        let what = match detail {
            Some(d) => format!("the device login could not start ({d}); enable the OAuth 2.0 Device Authorization Grant for the client"),
            None => return Err(status_error(status, url, None)),
        };
        return Err(if status.is_server_error() {
            SourceError::Unavailable(what)
        } else {
            SourceError::Rejected(what)
        });
    }
    parse_authorization(&body?, now, url)
}

fn parse_authorization(body: &[u8], now: SystemTime, from: &Url) -> Result<Pending, SourceError> {
    let bad = |why: &str| {
        SourceError::Malformed(format!(
            "the device authorization answer of {} {why}",
            redact_url(from)
        ))
    };
    let raw: RawAuthorization =
        serde_json::from_slice(body).map_err(|_| bad("is not the expected JSON"))?;
    let url = raw
        .verification_uri_complete
        .or(raw.verification_uri)
        .or(raw.verification_url)
        .ok_or_else(|| bad("has no verification_uri"))?;
    let url = match Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") => u.to_string(),
        _ => return Err(bad("has a verification_uri that is not an http(s) URL")),
    };
    let printable =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&raw.user_code) || raw.device_code.is_empty() {
        return Err(bad("has no usable user_code or device_code"));
    }
    let seconds = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Duration::from_secs)
    };
    let lifetime = seconds(&raw.expires_in)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad("has no expires_in"))?
        .min(MAX_LIFETIME);
    let interval = raw
        .interval
        .as_ref()
        .and_then(seconds)
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_INTERVAL);
    Ok(Pending {
        url,
        user_code: raw.user_code,
        device_code: SecretString::from(raw.device_code),
        expires_at: now + lifetime,
        interval,
    })
}

/// What one poll of the token endpoint said.
#[derive(Debug)]
pub enum Poll {
    /// The tokens (the 2xx body, still to be parsed) and when they were asked for.
    Approved(Body, SystemTime),
    Pending,
    SlowDown,
    /// The code is dead (expired, denied, or unknown to the upstream): why.
    Ended(String),
    /// The request failed (network, 5xx): try again at the next interval.
    Failed(SourceError),
}

/// POST `grant_type=…:device_code` once.
pub async fn poll(
    client: &reqwest::Client,
    token_url: &Url,
    form: &[(&str, &str)],
    http: &HttpSettings,
) -> Poll {
    let sent = SystemTime::now();
    let resp = match client
        .post(token_url.clone())
        .timeout(http.timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(e) => return Poll::Failed(map_send_error(e, http)),
    };
    let status = resp.status();
    let body = match read_body(resp, http).await {
        Ok(body) => body,
        Err(e) => return Poll::Failed(e),
    };
    if status.is_success() {
        return Poll::Approved(body, sent);
    }
    let values: Vec<&str> = form.iter().map(|(_, v)| *v).collect();
    match error_code(&body) {
        Some((code, _)) if code == "authorization_pending" => Poll::Pending,
        Some((code, _)) if code == "slow_down" => Poll::SlowDown,
        Some((code, desc)) if status == StatusCode::BAD_REQUEST || status.is_client_error() => {
            let why = match code.as_str() {
                "expired_token" => "the code expired unused".to_owned(),
                "access_denied" | "authorization_declined" => "the user declined".to_owned(),
                _ => format!(
                    "{code}{}",
                    desc.map(|d| format!(": {}", upstream_text(&d, &values)))
                        .unwrap_or_default()
                ),
            };
            Poll::Ended(why)
        }
        _ => Poll::Failed(status_error(status, token_url, None)),
    }
}

/// The OAuth `error` (and `error_description`) of an error body.
fn error_code(body: &[u8]) -> Option<(String, Option<String>)> {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        error_description: Option<String>,
    }
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    let code = e.error.trim().to_owned();
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic()))
        .then_some((code, e.error_description))
}

/// `slow_down`: the interval grows by 5 s, up to the bound.
pub fn slower(interval: Duration) -> Duration {
    (interval + SLOW_DOWN).min(MAX_INTERVAL)
}

/// The form of a poll.
pub fn poll_form<'a>(
    pending: &'a Pending,
    client_id: &'a str,
    client_secret: Option<&'a SecretString>,
) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", pending.device_code.expose_secret()),
        ("client_id", client_id),
    ];
    if let Some(secret) = client_secret {
        form.push(("client_secret", secret.expose_secret()));
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Url {
        Url::parse("https://kc.example/realms/R/protocol/openid-connect/auth/device").unwrap()
    }

    #[test]
    fn keycloak_and_entra_answers_parse_and_hostile_ones_are_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let kc = br#"{"device_code":"dc","user_code":"ABCD-EFGH","verification_uri":"https://kc.example/realms/R/device","verification_uri_complete":"https://kc.example/realms/R/device?user_code=ABCD-EFGH","expires_in":600,"interval":5}"#;
        let p = parse_authorization(kc, now, &from()).unwrap();
        assert_eq!(
            p.url,
            "https://kc.example/realms/R/device?user_code=ABCD-EFGH"
        );
        assert_eq!(
            (p.user_code.as_str(), p.interval),
            ("ABCD-EFGH", Duration::from_secs(5))
        );
        assert_eq!(p.expires_at, now + Duration::from_secs(600));
        assert!(!format!("{p:?}").contains("dc\""));

        let entra = br#"{"device_code":"dc","user_code":"F7Z2KQ","verification_uri":"https://microsoft.com/devicelogin","expires_in":"900","interval":"5","message":"To sign in, use a web browser"}"#;
        let p = parse_authorization(entra, now, &from()).unwrap();
        assert_eq!(p.url, "https://microsoft.com/devicelogin");

        let hostile = br#"{"device_code":"dc","user_code":"X","verification_uri":"https://a.example/","expires_in":99999999,"interval":0}"#;
        let p = parse_authorization(hostile, now, &from()).unwrap();
        assert_eq!(p.interval, MIN_INTERVAL);
        assert_eq!(p.expires_at, now + MAX_LIFETIME);
        for bad in [
            &br#"{"device_code":"dc","user_code":"a b","verification_uri":"https://a/","expires_in":5}"#[..],
            br#"{"device_code":"dc","user_code":"X","verification_uri":"javascript:alert(1)","expires_in":5}"#,
            br#"{"device_code":"dc","user_code":"X","expires_in":5}"#,
            br#"{"device_code":"dc","user_code":"X","verification_uri":"https://a/","expires_in":0}"#,
        ] {
            assert!(matches!(parse_authorization(bad, now, &from()), Err(SourceError::Malformed(_))));
        }
        assert_eq!(slower(Duration::from_secs(58)), MAX_INTERVAL);
    }
}
