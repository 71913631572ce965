//! An OAuth2 token endpoint (Keycloak's, in production and in `--dev`):
//! `refresh_token` and `client_credentials` grants, client authentication by
//! `client_secret` in the form (`client_secret_post`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{
    self, map_send_error, read_body, redact_url, sanitize_upstream_text, status_error, BuildError,
    HttpSettings,
};
use super::{jwt, Issued, Source, SourceError};
use crate::secret_file;

/// How the source proves it may get a token.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Trade a (possibly offline) refresh token for an access token.
    RefreshToken {
        refresh_token: SecretString,
        /// Where a refresh token rotated by the upstream is saved, so that a
        /// restart does not fall back to one the upstream has revoked.
        rotated_file: Option<PathBuf>,
    },
    /// The client's own token; needs `client_secret`.
    ClientCredentials,
}

/// One token endpoint and the credentials to use there.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// e.g. `https://kc/realms/DominoRealm/protocol/openid-connect/token`.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub grant: Grant,
    /// Sent as `scope` when set.
    pub scope: Option<String>,
    pub http: HttpSettings,
}

/// A [`Source`] backed by an OAuth2 token endpoint. `Debug` shows no secret:
/// every secret field is a [`SecretString`].
#[derive(Debug)]
pub struct OAuthSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: Option<SecretString>,
    scope: Option<String>,
    http: HttpSettings,
    grant: GrantState,
}

#[derive(Debug)]
enum GrantState {
    RefreshToken {
        /// Held for the whole exchange: two overlapping refreshes with a
        /// rotating token would have the second send a token the first just
        /// made the upstream revoke.
        current: tokio::sync::Mutex<SecretString>,
        rotated_file: Option<PathBuf>,
    },
    ClientCredentials,
}

impl GrantState {
    fn name(&self) -> &'static str {
        match self {
            GrantState::RefreshToken { .. } => "refresh_token",
            GrantState::ClientCredentials => "client_credentials",
        }
    }
}

impl OAuthSource {
    pub fn new(cfg: OAuthConfig) -> Result<Self, BuildError> {
        let token_url = http::parse_url("token_url", &cfg.token_url)?;
        if cfg.client_id.is_empty() {
            return Err(BuildError::Setting {
                setting: "client_id",
                reason: "must not be empty",
            });
        }
        let grant = match cfg.grant {
            Grant::RefreshToken {
                refresh_token,
                rotated_file,
            } => {
                if refresh_token.expose_secret().is_empty() {
                    return Err(BuildError::Setting {
                        setting: "refresh_token",
                        reason: "must not be empty",
                    });
                }
                GrantState::RefreshToken {
                    current: tokio::sync::Mutex::new(refresh_token),
                    rotated_file,
                }
            }
            Grant::ClientCredentials => {
                if cfg.client_secret.is_none() {
                    return Err(BuildError::Setting {
                        setting: "client_secret",
                        reason: "the client_credentials grant needs a client secret",
                    });
                }
                GrantState::ClientCredentials
            }
        };
        let inner = Inner {
            client: http::client(&cfg.http)?,
            token_url,
            client_id: cfg.client_id,
            client_secret: cfg.client_secret,
            scope: cfg.scope,
            http: cfg.http,
            grant,
        };
        Ok(OAuthSource {
            inner: Arc::new(inner),
        })
    }
}

#[async_trait]
impl Source for OAuthSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        // Run on its own task so that a caller giving up (a timeout or
        // shutdown dropping this future) cannot interrupt the exchange
        // between the upstream rotating the refresh token and us saving it.
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.issue().await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(SourceError::Unavailable(format!(
                "the token request was cancelled: {e}"
            ))),
        }
    }

    fn upstream(&self) -> String {
        redact_url(&self.inner.token_url)
    }
}

impl Inner {
    /// POST the form and return the parsed 2xx answer, or the error the
    /// status and body call for.
    async fn exchange(
        &self,
        grant: &'static str,
        refresh_token: Option<&SecretString>,
    ) -> Result<TokenResponse, SourceError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", grant)];
        if let Some(rt) = refresh_token {
            form.push(("refresh_token", rt.expose_secret()));
        }
        form.push(("client_id", &self.client_id));
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let resp = self
            .client
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| map_send_error(e, &self.http))?;
        let status = resp.status();

        if !status.is_success() {
            // The body only explains the failure; if it cannot be read the
            // status alone decides.
            let body = read_body(resp, &self.http).await.ok();
            let err = error_from_answer(status, &self.token_url, body.as_deref());
            tracing::debug!(grant, status = status.as_u16(), error = %err, "token request failed");
            return Err(err);
        }
        let mut body = read_body(resp, &self.http).await?;
        let parsed = parse_token_response(&body, status);
        body.zeroize();
        let answer = parsed?;
        tracing::debug!(
            grant,
            status = status.as_u16(),
            token_type = answer.token_type.as_deref(),
            scope = answer.scope.as_deref(),
            refresh_expires_in = answer.refresh_expires_in,
            "token endpoint answered"
        );
        Ok(answer)
    }

    /// Adopt a rotated refresh token: persist it first, so that a crash
    /// right after cannot lose it, then use it. A failed write does not stop
    /// its use, since the upstream may already have revoked the old one.
    async fn rotate(
        &self,
        held: &mut SecretString,
        new: SecretString,
        rotated_file: Option<&PathBuf>,
    ) {
        if let Some(path) = rotated_file {
            let (p, secret) = (path.clone(), new.clone());
            let written =
                tokio::task::spawn_blocking(move || secret_file::write_secret_file(&p, &secret))
                    .await;
            match written {
                Ok(Ok(())) => {
                    tracing::debug!(file = %path.display(), "saved the rotated refresh token")
                }
                Ok(Err(e)) => tracing::error!(
                    "{e}; the rotated refresh token is kept in memory only and is lost when tokenfs restarts"
                ),
                Err(e) => tracing::error!(
                    file = %path.display(),
                    "saving the rotated refresh token failed ({e}); it is kept in memory only"
                ),
            }
        } else {
            tracing::debug!("the upstream rotated the refresh token (kept in memory only)");
        }
        *held = new;
    }

    /// One exchange, with the refresh token held locked from request to
    /// rotation.
    async fn issue(&self) -> Result<Issued, SourceError> {
        let answer = match &self.grant {
            GrantState::ClientCredentials => self.exchange(self.grant.name(), None).await?,
            GrantState::RefreshToken {
                current,
                rotated_file,
            } => {
                let mut held = current.lock().await;
                let mut answer = self.exchange(self.grant.name(), Some(&held)).await?;
                // Before looking at the access token: even an unusable answer
                // may have rotated (and so revoked) the refresh token we hold.
                if let Some(new) = answer.refresh_token.take() {
                    if new.expose_secret() != held.expose_secret() {
                        self.rotate(&mut held, new, rotated_file.as_ref()).await;
                    }
                }
                answer
            }
        };
        let grant = self.grant.name();
        let token = answer.access_token.ok_or_else(|| {
            SourceError::Malformed("the token endpoint's answer has no access_token".into())
        })?;
        let (expires_at, issued_at, claims) =
            jwt::expiry(token.expose_secret(), answer.expires_in, SystemTime::now())?;
        tracing::debug!(
            grant,
            sub = claims.sub.as_deref(),
            jti = claims.jti.as_deref(),
            exp = expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "issued a token"
        );
        Ok(Issued {
            token,
            expires_at,
            issued_at,
            claims,
        })
    }
}

/// The fields of a token response that matter here. Keycloak also sends
/// `id_token`, `not-before-policy` and `session_state`; they are ignored, as
/// is anything unknown, so the `id_token` is never held.
struct TokenResponse {
    access_token: Option<SecretString>,
    expires_in: Option<u64>,
    refresh_token: Option<SecretString>,
    refresh_expires_in: Option<u64>,
    token_type: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<serde_json::Value>,
    token_type: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_token_response(body: &[u8], status: StatusCode) -> Result<TokenResponse, SourceError> {
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

/// Seconds as a JSON number or, as some servers send them, a numeric string.
fn lenient_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Map a non-2xx answer. The OAuth `error` and `error_description` are not
/// secret and say what to do (e.g. `invalid_grant: Session not active`), so
/// they are passed on; the rest of the body is not.
fn error_from_answer(status: StatusCode, url: &Url, body: Option<&[u8]>) -> SourceError {
    let detail = body
        .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
        .and_then(|e| {
            let code = sanitize_upstream_text(e.error.as_deref()?.trim());
            if code.is_empty() {
                return None;
            }
            Some(match e.error_description.as_deref().map(str::trim) {
                Some(d) if !d.is_empty() => format!("{code}: {}", sanitize_upstream_text(d)),
                _ => code,
            })
        });
    match detail {
        Some(d) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            SourceError::Rejected(d)
        }
        d => status_error(status, url, d.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::post;
    use axum::{Form, Json, Router};
    use serde_json::json;

    use super::*;
    use crate::source::http::tests::{dead_url, fast, serve};
    use crate::source::jwt::tests::make_jwt;

    type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token endpoint at `/token` answering with `answer(form)`; every form
    /// it receives is recorded.
    async fn endpoint<F>(answer: F) -> (String, Seen)
    where
        F: Fn(&HashMap<String, String>) -> Response + Clone + Send + Sync + 'static,
    {
        let seen: Seen = Arc::default();
        let rec = seen.clone();
        let app = Router::new().route(
            "/token",
            post(move |Form(f): Form<HashMap<String, String>>| async move {
                let r = answer(&f);
                rec.lock().unwrap().push(f);
                r
            }),
        );
        (format!("{}/token", serve(app).await), seen)
    }

    fn refresh_cfg(url: &str, rt: &str, rotated_file: Option<PathBuf>) -> OAuthConfig {
        OAuthConfig {
            token_url: url.into(),
            client_id: "tokenfs".into(),
            client_secret: None,
            grant: Grant::RefreshToken {
                refresh_token: rt.into(),
                rotated_file,
            },
            scope: None,
            http: fast(),
        }
    }

    /// Issue once with a plain refresh-token config and expect an error.
    async fn issue_err(url: &str) -> SourceError {
        OAuthSource::new(refresh_cfg(url, "rt", None))
            .unwrap()
            .issue()
            .await
            .unwrap_err()
    }

    fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
        (status, Json(body)).into_response()
    }

    #[tokio::test]
    async fn refresh_with_jwt_uses_exp() {
        let exp = now_secs() + 300;
        let jwt = make_jwt(&json!({"exp": exp, "iat": exp - 300, "sub": "alice", "jti": "j1"}));
        let access = jwt.clone();
        let (url, seen) = endpoint(move |_| {
            json_answer(
                StatusCode::OK,
                json!({
                    "access_token": access, "expires_in": 9999, "refresh_expires_in": 1800,
                    "refresh_token": "rt-1", "token_type": "Bearer", "id_token": "idt",
                    "not-before-policy": 0, "session_state": "s", "scope": "openid", "extra": [1]
                }),
            )
        })
        .await;
        let src = OAuthSource::new(refresh_cfg(&url, "rt-1", None)).unwrap();
        let issued = src.issue().await.unwrap();
        assert_eq!(issued.token.expose_secret(), jwt);
        assert_eq!(issued.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
        assert_eq!(
            issued.issued_at,
            UNIX_EPOCH + Duration::from_secs(exp - 300)
        );
        assert_eq!(issued.claims.sub.as_deref(), Some("alice"));
        assert_eq!(issued.claims.jti.as_deref(), Some("j1"));

        let f = &seen.lock().unwrap()[0];
        assert_eq!(f["grant_type"], "refresh_token");
        assert_eq!(f["refresh_token"], "rt-1");
        assert_eq!(f["client_id"], "tokenfs");
        assert!(!f.contains_key("client_secret") && !f.contains_key("scope"));
        assert_eq!(src.upstream(), url);
    }

    #[tokio::test]
    async fn client_credentials_sends_secret_and_scope_and_uses_expires_in() {
        let (url, seen) = endpoint(|_| {
            json_answer(
                StatusCode::OK,
                json!({"access_token": "opaque-123", "expires_in": "120", "token_type": "Bearer"}),
            )
        })
        .await;
        let src = OAuthSource::new(OAuthConfig {
            client_secret: Some("cl1ent-s3cret".into()),
            grant: Grant::ClientCredentials,
            scope: Some("openid profile".into()),
            ..refresh_cfg(&url, "unused", None)
        })
        .unwrap();
        let before = SystemTime::now();
        let issued = src.issue().await.unwrap();
        assert_eq!(issued.token.expose_secret(), "opaque-123");
        let lifetime = issued.expires_at.duration_since(issued.issued_at).unwrap();
        assert_eq!(lifetime, Duration::from_secs(120));
        assert!(issued.issued_at >= before);

        let f = &seen.lock().unwrap()[0];
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["client_secret"], "cl1ent-s3cret");
        assert_eq!(f["scope"], "openid profile");
        assert!(!f.contains_key("refresh_token"));
        assert!(!format!("{src:?}").contains("cl1ent-s3cret"));
    }

    #[test]
    fn bad_settings_are_refused_at_build() {
        let cfg = refresh_cfg("http://127.0.0.1:1/token", "rt", None);
        assert!(OAuthSource::new(OAuthConfig {
            grant: Grant::ClientCredentials,
            ..cfg.clone()
        })
        .is_err());
        assert!(OAuthSource::new(refresh_cfg("http://127.0.0.1:1/token", "", None)).is_err());
        assert!(OAuthSource::new(OAuthConfig {
            token_url: "file:///etc/passwd".into(),
            ..cfg.clone()
        })
        .is_err());
        let src = OAuthSource::new(OAuthConfig {
            token_url: "http://u:pw@127.0.0.1:1/token?x=1".into(),
            ..cfg
        })
        .unwrap();
        assert_eq!(src.upstream(), "http://127.0.0.1:1/token");
        assert!(!format!("{src:?}").contains("\"rt\""));
    }

    #[tokio::test]
    async fn keycloak_errors_are_rejected_with_their_text() {
        for (status, code, desc) in [
            (400, "invalid_grant", "Invalid refresh token"),
            (
                401,
                "invalid_client",
                "Invalid client or Invalid client credentials",
            ),
            (400, "unauthorized_client", "Client not allowed"),
            (400, "invalid_scope", "Invalid scopes: x"),
        ] {
            let (url, _) = endpoint(move |_| {
                json_answer(
                    StatusCode::from_u16(status).unwrap(),
                    json!({"error": code, "error_description": desc}),
                )
            })
            .await;
            let err = issue_err(&url).await;
            assert_eq!(err, SourceError::Rejected(format!("{code}: {desc}")));
        }
    }

    #[tokio::test]
    async fn bare_401_403_are_rejected_and_5xx_429_unavailable() {
        for (status, rejected) in [
            (401, true),
            (403, true),
            (404, true),
            (500, false),
            (503, false),
            (429, false),
        ] {
            let (url, _) =
                endpoint(move |_| StatusCode::from_u16(status).unwrap().into_response()).await;
            let err = issue_err(&url).await;
            let want = format!("HTTP {status} from {url}");
            match err {
                SourceError::Rejected(m) if rejected => assert_eq!(m, want),
                SourceError::Unavailable(m) if !rejected => assert_eq!(m, want),
                other => panic!("{status}: {other:?}"),
            }
        }
        // A 503 with an OAuth body stays Unavailable but keeps the text.
        let (url, _) = endpoint(|_| {
            json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable"}),
            )
        })
        .await;
        let err = issue_err(&url).await;
        assert_eq!(
            err,
            SourceError::Unavailable(format!("HTTP 503 from {url}: temporarily_unavailable"))
        );
    }

    #[tokio::test]
    async fn garbage_answers_are_malformed() {
        let answers: Vec<fn() -> Response> = vec![
            || (StatusCode::OK, "not json").into_response(),
            || (StatusCode::OK, "").into_response(),
            || {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    "\"eyJsecret\"",
                )
                    .into_response()
            },
            || json_answer(StatusCode::OK, json!({"expires_in": 60})),
            || {
                json_answer(
                    StatusCode::OK,
                    json!({"access_token": "", "expires_in": 60}),
                )
            },
            || json_answer(StatusCode::OK, json!({"access_token": "opaque-no-expiry"})),
            || {
                json_answer(
                    StatusCode::OK,
                    json!({"access_token": "two words", "expires_in": 60}),
                )
            },
            || {
                json_answer(
                    StatusCode::OK,
                    json!({"access_token": make_jwt(&json!({"sub": "no-exp"})), "expires_in": 60}),
                )
            },
        ];
        for (i, answer) in answers.into_iter().enumerate() {
            let (url, _) = endpoint(move |_| answer()).await;
            let err = issue_err(&url).await;
            assert!(
                matches!(err, SourceError::Malformed(_)),
                "answer {i}: {err:?}"
            );
            assert!(!err.to_string().contains("secret"), "answer {i}: {err}");
        }
    }

    #[tokio::test]
    async fn body_over_cap_is_malformed() {
        let (url, _) = endpoint(|_| {
            json_answer(
                StatusCode::OK,
                json!({"access_token": "x".repeat(5000), "expires_in": 60}),
            )
        })
        .await;
        let err = issue_err(&url).await;
        assert_eq!(
            err,
            SourceError::Malformed("response body over 1024 bytes".into())
        );
    }

    #[tokio::test]
    async fn dead_port_is_unavailable() {
        let url = format!("{}/token", dead_url());
        let err = issue_err(&url).await;
        assert!(
            matches!(&err, SourceError::Unavailable(m) if m.starts_with("cannot connect to 127.0.0.1:")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn hang_past_timeout_is_timeout() {
        let app = Router::new().route(
            "/token",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let url = format!("{}/token", serve(app).await);
        let err = issue_err(&url).await;
        assert_eq!(err, SourceError::Timeout(Duration::from_millis(300)));
    }

    #[tokio::test]
    async fn redirect_is_not_followed() {
        let followed = Arc::new(Mutex::new(false));
        let flag = followed.clone();
        let app = Router::new()
            .route("/token", post(|| async { Redirect::to("/elsewhere") }))
            .route(
                "/elsewhere",
                post(move || async move {
                    *flag.lock().unwrap() = true;
                    Json(json!({"access_token": "stolen", "expires_in": 60}))
                }),
            );
        let url = format!("{}/token", serve(app).await);
        let err = issue_err(&url).await;
        assert!(
            matches!(&err, SourceError::Rejected(m) if m.contains("HTTP 303")),
            "{err:?}"
        );
        assert!(!*followed.lock().unwrap());
    }

    /// Keycloak with refresh-token rotation: each refresh token works once and
    /// the answer carries the next one.
    fn rotating(f: &HashMap<String, String>, valid: &Mutex<String>) -> Response {
        let mut v = valid.lock().unwrap();
        if f.get("refresh_token") != Some(&*v) {
            return json_answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
            );
        }
        let n: u32 = v.trim_start_matches("rt-").parse().unwrap();
        *v = format!("rt-{}", n + 1);
        json_answer(
            StatusCode::OK,
            json!({"access_token": format!("at-{n}"), "expires_in": 300, "refresh_token": *v}),
        )
    }

    #[tokio::test]
    async fn rotated_refresh_token_is_persisted_then_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refresh_token");
        std::fs::write(&file, "rt-1").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

        let valid = Arc::new(Mutex::new("rt-1".to_string()));
        let (url, seen) = endpoint(move |f| rotating(f, &valid)).await;
        let rt = secret_file::read_secret_file(&file).unwrap();
        let src = OAuthSource::new(OAuthConfig {
            grant: Grant::RefreshToken {
                refresh_token: rt,
                rotated_file: Some(file.clone()),
            },
            ..refresh_cfg(&url, "", None)
        })
        .unwrap();

        assert_eq!(src.issue().await.unwrap().token.expose_secret(), "at-1");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "rt-2");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        assert_eq!(src.issue().await.unwrap().token.expose_secret(), "at-2");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "rt-3");
        let sent: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|f| f["refresh_token"].clone())
            .collect();
        assert_eq!(sent, ["rt-1", "rt-2"]);
        assert!(!format!("{src:?}").contains("rt-3"));
    }

    #[tokio::test]
    async fn rotation_completes_when_the_caller_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refresh_token");
        let valid = Arc::new(Mutex::new("rt-1".to_string()));
        let seen: Seen = Arc::default();
        let rec = seen.clone();
        let app = Router::new().route(
            "/token",
            post(move |Form(f): Form<HashMap<String, String>>| async move {
                rec.lock().unwrap().push(f.clone());
                tokio::time::sleep(Duration::from_millis(150)).await;
                rotating(&f, &valid)
            }),
        );
        let url = format!("{}/token", serve(app).await);
        let src = OAuthSource::new(refresh_cfg(&url, "rt-1", Some(file.clone()))).unwrap();

        let gave_up = tokio::time::timeout(Duration::from_millis(50), src.issue()).await;
        assert!(gave_up.is_err());
        // The exchange goes on without the caller and saves the new token.
        for _ in 0..50 {
            if file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "rt-2");
        assert_eq!(src.issue().await.unwrap().token.expose_secret(), "at-2");
        let sent: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|f| f["refresh_token"].clone())
            .collect();
        assert_eq!(sent, ["rt-1", "rt-2"]);
    }

    #[tokio::test]
    async fn rotation_survives_a_failed_write_and_a_bad_access_token() {
        // The answer rotates the refresh token but has no usable access
        // token, and the rotated file cannot be written: the new refresh
        // token must still be used next time.
        let calls = Arc::new(Mutex::new(0));
        let (url, seen) = endpoint(move |_| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 1 {
                json_answer(StatusCode::OK, json!({"refresh_token": "rt-new"}))
            } else {
                json_answer(
                    StatusCode::OK,
                    json!({"access_token": "at", "expires_in": 60}),
                )
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let unwritable = dir.path().join("missing-dir").join("refresh_token");
        let src = OAuthSource::new(refresh_cfg(&url, "rt-old", Some(unwritable.clone()))).unwrap();
        assert!(matches!(src.issue().await, Err(SourceError::Malformed(_))));
        assert!(src.issue().await.is_ok());
        let sent: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|f| f["refresh_token"].clone())
            .collect();
        assert_eq!(sent, ["rt-old", "rt-new"]);
        assert!(!unwritable.exists());
    }
}
