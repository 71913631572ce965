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
        client_secret_file: None,
        grant: Grant::RefreshToken {
            refresh_token: Some(rt.into()),
            file: None,
            rotated_file,
        },
        scope: None,
        login: None,
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

/// A token endpoint that always issues a JWT valid for `lifetime` seconds.
async fn good_endpoint(lifetime: u64) -> (String, Seen) {
    let jwt = make_jwt(&json!({"exp": now_secs() + lifetime}));
    endpoint(move |_| {
        json_answer(
            StatusCode::OK,
            json!({"access_token": jwt, "expires_in": lifetime}),
        )
    })
    .await
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
        client_secret_file: None,
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
    // Credentials in the URL are refused (as the config does), not shown.
    let err = OAuthSource::new(OAuthConfig {
        token_url: "http://u:pw@127.0.0.1:1/token?x=1".into(),
        ..cfg.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("credentials") && !err.contains("pw"), "{err}");
    let src = OAuthSource::new(OAuthConfig {
        token_url: "http://127.0.0.1:1/token?x=1".into(),
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
    // A refresh may rotate: it is given ROTATING_TIMEOUT_FACTOR times `timeout`.
    assert_eq!(
        err,
        SourceError::Timeout(Duration::from_millis(300) * ROTATING_TIMEOUT_FACTOR)
    );
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
            refresh_token: Some(rt),
            file: None,
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
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let mode = {
        let open = open.clone();
        move |m| std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(m))
    };
    let calls = Arc::new(Mutex::new(0));
    let opened = mode.clone();
    let (url, seen) = endpoint(move |_| {
        let mut n = calls.lock().unwrap();
        *n += 1;
        if *n == 1 {
            // Others may write the directory now (after the refresh token was
            // locked and the file read): saving into it is refused.
            opened(0o777).unwrap();
            json_answer(StatusCode::OK, json!({"refresh_token": "rt-new"}))
        } else {
            json_answer(
                StatusCode::OK,
                json!({"access_token": "at", "expires_in": 60}),
            )
        }
    })
    .await;
    let unwritable = open.join("refresh_token");
    let src = OAuthSource::new(refresh_cfg(&url, "rt-old", Some(unwritable.clone()))).unwrap();
    assert!(matches!(src.issue().await, Err(SourceError::Malformed(_))));
    let why = src.unsaved_refresh_token().unwrap();
    assert!(why.contains("writable by users other than root"), "{why}");
    // The unsaved rotation keeps the lock: another process cannot take it (and
    // read the stale file), while this one's next refresh goes on under it.
    let lock = open.join("refresh_token.lock");
    let other = std::fs::File::open(&lock).unwrap();
    use std::os::fd::AsRawFd;
    let flock = |f: &std::fs::File| unsafe {
        libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
    };
    assert!(!flock(&other), "kept while unsaved");
    assert!(src.issue().await.is_ok());
    assert!(!flock(&other), "still kept while unsaved");
    let sent: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|f| f["refresh_token"].clone())
        .collect();
    assert_eq!(sent, ["rt-old", "rt-new"]);
    assert!(!unwritable.exists());

    // Once the directory is fixed the rotation is saved without another one.
    mode(0o700).unwrap();
    for _ in 0..100 {
        if src.unsaved_refresh_token().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(src.unsaved_refresh_token(), None);
    assert_eq!(std::fs::read_to_string(&unwritable).unwrap(), "rt-new");
    assert_eq!(seen.lock().unwrap().len(), 2, "saved without a request");
    assert!(flock(&other), "released once saved");
}

// ---- token exchange (Keycloak internal→external) and Entra consent ----

struct FixedSubject(&'static str);

#[async_trait::async_trait]
impl Subject for FixedSubject {
    async fn subject_token(&self) -> Result<SecretString, SourceError> {
        Ok(SecretString::from(self.0))
    }
    fn describe(&self) -> String {
        "fixed".into()
    }
}

fn exchange_cfg(url: &str, subject: SubjectRef) -> OAuthConfig {
    OAuthConfig {
        token_url: url.into(),
        client_id: "tokenfs".into(),
        client_secret: Some("s3cret".into()),
        client_secret_file: None,
        grant: Grant::TokenExchange(Exchange {
            subject,
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            requested_issuer: Some("azure".into()),
            requested_token_type: None,
            audience: None,
            redirect_uri: Some("https://domino.example.com/linked".into()),
            consent: ConsentLink::AccountLinkUrl,
        }),
        scope: None,
        login: None,
        http: fast(),
    }
}

async fn exchange_with(url: &str) -> Result<Issued, SourceError> {
    let cfg = exchange_cfg(url, SubjectRef::MountFile("token".into()));
    OAuthSource::with_subject(
        cfg,
        Arc::new(FixedSubject("platform-jwt")),
        &Default::default(),
    )
    .unwrap()
    .issue()
    .await
}

#[tokio::test]
async fn keycloak_exchange_sends_the_subject_and_requested_issuer() {
    let jwt = make_jwt(&json!({"sub": "u", "exp": now_secs() + 3600}));
    let answer = jwt.clone();
    let (url, seen) = endpoint(move |_| {
        json_answer(StatusCode::OK, json!({"access_token": answer, "expires_in": 3600, "account-link-url": "http://kc/link"}))
    })
    .await;
    let issued = exchange_with(&url).await.unwrap();
    assert_eq!(issued.token.expose_secret(), jwt);
    let form = seen.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], TOKEN_EXCHANGE);
    assert_eq!(form["subject_token"], "platform-jwt");
    assert_eq!(form["subject_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(form["requested_issuer"], "azure");
    assert_eq!(form["client_secret"], "s3cret");
}

#[tokio::test]
async fn not_linked_and_token_expired_mean_consent_with_redirect_uri() {
    for (error, expired) in [("not_linked", false), ("token_expired", true)] {
        let (url, _) = endpoint(move |_| {
            json_answer(
                StatusCode::BAD_REQUEST,
                json!({"error": error, "error_description": "x", "account-link-url": "http://kc/realms/R/broker/azure/link?nonce=n1"}),
            )
        })
        .await;
        match exchange_with(&url).await.unwrap_err() {
            SourceError::ConsentRequired {
                url, expired: e, ..
            } => {
                assert_eq!(e, expired, "{error}");
                assert_eq!(
                    url,
                    "http://kc/realms/R/broker/azure/link?nonce=n1&redirect_uri=https%3A%2F%2Fdomino.example.com%2Flinked"
                );
            }
            other => panic!("{error}: {other:?}"),
        }
    }
}

/// Keycloak's `idp_link` action, as `consent_link = "kc_action"` (the default)
/// makes it: the realm's authorization endpoint, the client, the redirect, the
/// alias, and the subject's username to prefill the login form.
#[tokio::test]
async fn kc_action_consent_url_links_the_alias_for_the_subjects_user() {
    let (url, _) = endpoint(|_| {
        json_answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "not_linked", "account-link-url": "http://kc/realms/R/broker/azure/link?nonce=n1"}),
        )
    })
    .await;
    let mut cfg = exchange_cfg(&url, SubjectRef::MountFile("token".into()));
    if let Grant::TokenExchange(x) = &mut cfg.grant {
        x.consent = ConsentLink::Action {
            authorization_url: "http://kc/realms/R/protocol/openid-connect/auth".into(),
        };
    }
    let subject = make_jwt(&json!({"exp": now_secs() + 60, "preferred_username": "alice"}));
    let subject: &'static str = Box::leak(subject.into_boxed_str());
    let source =
        OAuthSource::with_subject(cfg, Arc::new(FixedSubject(subject)), &Default::default())
            .unwrap();
    match source.issue().await.unwrap_err() {
        SourceError::ConsentRequired { url, expired, .. } => {
            assert!(!expired);
            assert_eq!(
                url,
                "http://kc/realms/R/protocol/openid-connect/auth?client_id=tokenfs&response_type=code\
                 &scope=openid&redirect_uri=https%3A%2F%2Fdomino.example.com%2Flinked\
                 &kc_action=idp_link%3Aazure&login_hint=alice"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Keycloak answers `not_linked` also when a link that worked was removed (or
/// after it dropped a stored token it could not refresh): consent expired.
#[tokio::test]
async fn not_linked_after_a_token_was_exchanged_is_consent_expired() {
    let jwt = make_jwt(&json!({"sub": "u", "exp": now_secs() + 3600}));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (url, _) = endpoint(move |_| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            json_answer(
                StatusCode::OK,
                json!({"access_token": jwt, "expires_in": 3600}),
            )
        } else {
            json_answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "not_linked", "account-link-url": "http://kc/link"}),
            )
        }
    })
    .await;
    let cfg = exchange_cfg(&url, SubjectRef::MountFile("token".into()));
    let source = OAuthSource::with_subject(
        cfg,
        Arc::new(FixedSubject("platform-jwt")),
        &Default::default(),
    )
    .unwrap();
    source.issue().await.unwrap();
    match source.issue().await.unwrap_err() {
        SourceError::ConsentRequired { expired, .. } => assert!(expired, "after a link worked"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn forbidden_exchange_is_a_configuration_error_that_says_so() {
    let (url, _) =
        endpoint(|_| json_answer(StatusCode::FORBIDDEN, json!({"error": "access_denied"}))).await;
    match exchange_with(&url).await.unwrap_err() {
        SourceError::Rejected(m) => assert!(m.contains("not permitted to exchange"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exchange_subject_from_a_file_is_read_for_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sa-token");
    std::fs::write(&path, "k8s-1\n").unwrap();
    let (url, seen) = good_endpoint(600).await;
    let source = OAuthSource::new(exchange_cfg(&url, SubjectRef::Path(path.clone()))).unwrap();
    source.issue().await.unwrap();
    std::fs::write(&path, "k8s-2").unwrap();
    source.issue().await.unwrap();
    let subjects: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|f| f["subject_token"].clone())
        .collect();
    assert_eq!(subjects, ["k8s-1", "k8s-2"]);
    assert!(OAuthSource::new(exchange_cfg(&url, SubjectRef::MountFile("token".into()))).is_err());
}

fn entra_cfg(url: &str, refresh_token: Option<&str>, file: Option<PathBuf>) -> OAuthConfig {
    OAuthConfig {
        token_url: url.into(),
        client_id: "app".into(),
        client_secret: None,
        client_secret_file: None,
        grant: Grant::RefreshToken {
            refresh_token: refresh_token.map(SecretString::from),
            file,
            rotated_file: None,
        },
        scope: Some("https://storage.azure.com/.default".into()),
        login: Some(Login::Code(CodeLoginConfig {
            authorization_url: "https://login.example/authorize".into(),
            redirect_uri: "http://127.0.0.1:8400/callback".into(),
            login_hint: None,
            state_file: None,
            redirect_listen: None,
        })),
        http: fast(),
    }
}

#[tokio::test]
async fn entra_consent_errors_map_to_consent_and_others_do_not() {
    for (error, code, consent) in [
        ("invalid_grant", 700082, Some(true)),
        ("interaction_required", 50173, Some(true)),
        ("consent_required", 65001, Some(false)),
        ("invalid_client", 7000215, None),
    ] {
        let (url, _) = endpoint(move |_| {
            json_answer(
                StatusCode::BAD_REQUEST,
                json!({"error": error, "error_description": format!("AADSTS{code}: text"), "error_codes": [code]}),
            )
        })
        .await;
        let err = OAuthSource::new(entra_cfg(&url, Some("rt"), None))
            .unwrap()
            .issue()
            .await
            .unwrap_err();
        match (err, consent) {
            (SourceError::ConsentRequired { url, expired, .. }, Some(e)) => {
                assert_eq!(expired, e, "{error}");
                assert!(
                    url.starts_with(
                        "https://login.example/authorize?client_id=app&response_type=code"
                    ),
                    "{url}"
                );
            }
            (SourceError::Rejected(m), None) => assert!(m.contains("AADSTS7000215"), "{m}"),
            (other, _) => panic!("{error}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_refresh_token_written_to_its_file_later_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entra-rt");
    let (url, seen) = good_endpoint(3600).await;
    let source = OAuthSource::new(entra_cfg(&url, None, Some(path.clone()))).unwrap();
    // No consent yet: no request at all, consent needed.
    match source.issue().await.unwrap_err() {
        SourceError::ConsentRequired { expired: false, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty());
    // Consent completed elsewhere writes the file: the next issue uses it.
    std::fs::write(&path, "rt-after-consent").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    source.issue().await.unwrap();
    assert_eq!(seen.lock().unwrap()[0]["refresh_token"], "rt-after-consent");
}

/// Two sources (as two daemons) sharing a rotated file take turns with one
/// rotating refresh token: each refresh locks it and sends the newest, also
/// when both refresh at once; a spent one is never sent again.
#[tokio::test]
async fn sources_sharing_a_rotated_file_never_send_a_spent_refresh_token() {
    let valid = Arc::new(Mutex::new(0u32));
    let jwt = make_jwt(&json!({"exp": now_secs() + 300}));
    let (url, seen) = endpoint(move |f| {
        let mut n = valid.lock().unwrap();
        if f["refresh_token"] != format!("rt-{n}") {
            return json_answer(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
        }
        *n += 1;
        json_answer(
            StatusCode::OK,
            json!({"access_token": jwt, "expires_in": 300, "refresh_token": format!("rt-{n}")}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("rotated");
    let a = OAuthSource::new(refresh_cfg(&url, "rt-0", Some(rotated.clone()))).unwrap();
    let b = OAuthSource::new(refresh_cfg(&url, "rt-0", Some(rotated.clone()))).unwrap();
    for src in [&a, &b, &a, &b] {
        src.issue().await.unwrap();
    }
    let (x, y) = tokio::join!(a.issue(), b.issue());
    x.unwrap();
    y.unwrap();
    let sent: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|f| f["refresh_token"].clone())
        .collect();
    assert_eq!(sent, ["rt-0", "rt-1", "rt-2", "rt-3", "rt-4", "rt-5"]);
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "rt-6");
}

/// A token written to `refresh_token_file` (a new consent) wins over the older
/// one in the rotated file: that one is not newer, only what another process
/// saved since it was last looked at is.
#[tokio::test]
async fn a_new_token_in_the_file_is_not_replaced_by_the_older_rotated_one() {
    let jwt = make_jwt(&json!({"exp": now_secs() + 300}));
    let (url, seen) = endpoint(move |f| {
        if f["refresh_token"] != "rt-new" {
            return json_answer(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
        }
        json_answer(
            StatusCode::OK,
            json!({"access_token": jwt, "expires_in": 300}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (file, rotated) = (dir.path().join("file"), dir.path().join("rotated"));
    crate::secret_file::write_secret_file(&file, &"rt-0".into()).unwrap();
    crate::secret_file::write_secret_file(&rotated, &"rt-1".into()).unwrap();
    let mut cfg = refresh_cfg(&url, "rt-1", Some(rotated));
    cfg.grant = match cfg.grant {
        Grant::RefreshToken {
            refresh_token,
            rotated_file,
            ..
        } => Grant::RefreshToken {
            refresh_token,
            file: Some(file.clone()),
            rotated_file,
        },
        other => other,
    };
    let src = OAuthSource::new(cfg).unwrap();
    // Written later than the start (a coarse mtime may not have changed yet).
    let later = SystemTime::now() + Duration::from_secs(5);
    crate::secret_file::write_secret_file(&file, &"rt-new".into()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    src.issue().await.unwrap();
    assert_eq!(seen.lock().unwrap()[0]["refresh_token"], "rt-new");
}
