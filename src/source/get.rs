//! A plain HTTP GET whose body is the token, as the platform's API proxy
//! serves it (`GET $DOMINO_API_PROXY/access-token` → raw JWT).
//!
//! There is no `expires_in` here, so only a JWT with `exp` is accepted.

use std::time::SystemTime;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

use super::http::{
    self, map_send_error, read_body, redact_url, status_error, Body, BuildError, HttpSettings,
};
use super::{jwt, Issued, Source, SourceError};

/// One GET endpoint and the headers to send (e.g. an `Authorization` the
/// proxy expects). Header values are secrets: they are kept out of `Debug`.
#[derive(Debug, Clone)]
pub struct GetConfig {
    pub url: String,
    pub headers: Vec<(String, SecretString)>,
    pub http: HttpSettings,
}

/// A [`Source`] that GETs a URL and serves the body.
#[derive(Debug)]
pub struct GetSource {
    client: reqwest::Client,
    url: Url,
    /// Values are marked sensitive, which also keeps them out of `Debug`.
    headers: HeaderMap,
    http: HttpSettings,
}

impl GetSource {
    pub fn new(cfg: GetConfig) -> Result<Self, BuildError> {
        GetSource::new_in(cfg, &http::Clients::default())
    }

    /// [`GetSource::new`] sharing the clients of `clients`.
    pub fn new_in(cfg: GetConfig, clients: &http::Clients) -> Result<Self, BuildError> {
        let url = http::parse_url("url", &cfg.url)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let invalid = |reason| BuildError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("not a valid header name"))?;
            let mut value = HeaderValue::from_str(value.expose_secret())
                .map_err(|_| invalid("the value has characters a header cannot carry"))?;
            // Keeps the value out of reqwest's and hyper's Debug output, and
            // out of HTTP/2 header compression tables.
            value.set_sensitive(true);
            headers.append(name, value);
        }
        Ok(GetSource {
            client: clients.client(&cfg.http)?,
            url,
            headers,
            http: cfg.http,
        })
    }
}

#[async_trait]
impl Source for GetSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let resp = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| map_send_error(e, &self.http))?;
        let status = resp.status();
        if !status.is_success() {
            // The body of an error is not read: nothing says it is safe to log.
            let err = status_error(status, &self.url, None);
            tracing::debug!(status = status.as_u16(), error = %err, "token GET failed");
            return Err(err);
        }
        let body = read_body(resp, &self.http).await?;
        issued_from_body(body, SystemTime::now())
    }

    fn upstream(&self) -> String {
        redact_url(&self.url)
    }
}

/// The token in a 2xx body: UTF-8 text holding a JWT with an `exp` claim,
/// surrounding whitespace trimmed. Pure, so the fuzz tests reach it.
pub fn issued_from_body(mut body: Body, now: SystemTime) -> Result<Issued, SourceError> {
    // Moved out, not copied: the text becomes a `SecretString`, wiped in turn.
    let text = match String::from_utf8(std::mem::take(&mut *body)) {
        Ok(text) => text,
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(SourceError::Malformed(
                "the response body is not UTF-8 text".into(),
            ));
        }
    };
    let text = SecretString::from(text);
    // A trailing newline is common in plain-text answers; readers must
    // get the bare token.
    let token = text.expose_secret().trim_ascii();
    let (expires_at, issued_at, claims) = jwt::expiry(token, None, now).map_err(|e| match e {
        SourceError::Malformed(m) => SourceError::Malformed(format!(
            "{m} (a GET source needs a JWT with an exp claim as the body)"
        )),
        other => other,
    })?;
    Ok(Issued {
        token: SecretString::from(token),
        expires_at,
        issued_at,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    use axum::Router;
    use serde_json::json;

    use super::*;
    use crate::source::http::tests::{dead_url, fast, serve};
    use crate::source::jwt::tests::make_jwt;

    fn cfg(url: String) -> GetConfig {
        GetConfig {
            url,
            headers: vec![],
            http: fast(),
        }
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn serves_the_jwt_body_and_sends_headers() {
        let exp = now_secs() + 300;
        let jwt = make_jwt(&json!({"exp": exp, "sub": "alice"}));
        let body = format!("{jwt}\n");
        let seen = Arc::new(Mutex::new(None));
        let rec = seen.clone();
        let app = Router::new().route(
            "/access-token",
            get(move |h: AxumHeaders| async move {
                *rec.lock().unwrap() = h
                    .get("x-proxy-auth")
                    .map(|v| v.to_str().unwrap().to_string());
                body
            }),
        );
        let url = format!("{}/access-token", serve(app).await);
        let src = GetSource::new(GetConfig {
            headers: vec![("X-Proxy-Auth".into(), "h3ader-s3cret".into())],
            ..cfg(format!("{url}?q=1"))
        })
        .unwrap();
        let issued = src.issue().await.unwrap();
        assert_eq!(issued.token.expose_secret(), jwt);
        assert_eq!(issued.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
        assert_eq!(issued.claims.sub.as_deref(), Some("alice"));
        assert_eq!(seen.lock().unwrap().as_deref(), Some("h3ader-s3cret"));
        assert_eq!(src.upstream(), url);
        assert!(!format!("{src:?}").contains("h3ader-s3cret"));
    }

    #[tokio::test]
    async fn status_codes_map_to_errors() {
        for (status, rejected) in [
            (401, true),
            (403, true),
            (404, true),
            (500, false),
            (503, false),
            (429, false),
        ] {
            let app = Router::new().route(
                "/t",
                get(move || async move { StatusCode::from_u16(status).unwrap() }),
            );
            let url = format!("{}/t", serve(app).await);
            let err = GetSource::new(cfg(url.clone()))
                .unwrap()
                .issue()
                .await
                .unwrap_err();
            let want = format!("HTTP {status} from {url}");
            match err {
                SourceError::Rejected(m) if rejected => assert_eq!(m, want),
                SourceError::Unavailable(m) if !rejected => assert_eq!(m, want),
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn garbage_bodies_are_malformed() {
        let no_exp = make_jwt(&json!({"sub": "alice"}));
        for body in [
            "".to_string(),
            "\n".into(),
            "opaque-token".into(),
            no_exp,
            "two tokens".into(),
            "x".repeat(2000),
        ] {
            let app = Router::new().route("/t", get(move || async move { body }));
            let url = format!("{}/t", serve(app).await);
            let err = GetSource::new(cfg(url)).unwrap().issue().await.unwrap_err();
            assert!(matches!(err, SourceError::Malformed(_)), "{err:?}");
        }
        let app = Router::new().route("/t", get(|| async { vec![0xffu8, 0xfe] }));
        let url = format!("{}/t", serve(app).await);
        let err = GetSource::new(cfg(url)).unwrap().issue().await.unwrap_err();
        assert!(matches!(err, SourceError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn redirect_dead_port_and_hang() {
        let app = Router::new()
            .route(
                "/t",
                get(|| async { Redirect::temporary("/u").into_response() }),
            )
            .route(
                "/u",
                get(|| async { make_jwt(&json!({"exp": now_secs() + 60})) }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let base = serve(app).await;
        let err = GetSource::new(cfg(format!("{base}/t")))
            .unwrap()
            .issue()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SourceError::Rejected(m) if m.contains("HTTP 307")),
            "{err:?}"
        );

        let err = GetSource::new(cfg(format!("{base}/slow")))
            .unwrap()
            .issue()
            .await
            .unwrap_err();
        assert_eq!(err, SourceError::Timeout(Duration::from_millis(300)));

        let err = GetSource::new(cfg(format!("{}/t", dead_url())))
            .unwrap()
            .issue()
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn invalid_headers_are_refused_without_echoing_the_value() {
        for (name, value) in [("bad name", "v"), ("X-Ok", "line\nbreak-s3cret")] {
            let err = GetSource::new(GetConfig {
                headers: vec![(name.into(), value.into())],
                ..cfg("http://127.0.0.1:1/t".into())
            })
            .unwrap_err();
            assert!(matches!(err, BuildError::InvalidHeader { .. }));
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
