//! End-to-end tests over real HTTP on 127.0.0.1.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{Issuer, IssuerConfig, RunningIssuer};

pub(super) struct Fixture {
    pub issuer: Issuer,
    pub running: RunningIssuer,
    pub http: reqwest::Client,
}

pub(super) async fn start(cfg: IssuerConfig) -> Fixture {
    let issuer = Issuer::new(cfg).unwrap();
    issuer.add_client("pub", None);
    issuer.add_client("conf", Some(SecretString::from("s3cret")));
    let running = issuer
        .clone()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Fixture {
        issuer,
        running,
        http: reqwest::Client::new(),
    }
}

impl Fixture {
    pub async fn post_token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.running.token_url())
            .form(form)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    pub async fn refresh(&self, client: &str, token: &str) -> (StatusCode, Value) {
        self.post_token(&[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", token),
        ])
        .await
    }

    async fn refresh_with(&self, extra: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = vec![("grant_type", "refresh_token"), ("client_id", "conf")];
        form.extend_from_slice(extra);
        let req = self.http.post(self.running.token_url()).form(&form);
        let resp = req.basic_auth("conf", Some("s3cret")).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    pub async fn get_json(&self, url: &str) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn userinfo(&self, token: &str) -> reqwest::Response {
        self.http
            .get(self.running.userinfo_url())
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn refresh_grant_issues_a_jwt_that_verifies_against_the_jwks() {
    let f = start(IssuerConfig {
        lifetime: Duration::from_secs(120),
        ..IssuerConfig::default()
    })
    .await;
    let offline = f.issuer.mint_offline_token("alice", "pub");
    let (status, body) = f.refresh("pub", offline.expose_secret()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["refresh_expires_in"], 0);
    assert_eq!(body["not-before-policy"], 0);
    assert_eq!(body["scope"], "openid profile email offline_access");
    assert!(body["session_state"].is_string());
    // Without rotation the offline token stays the same.
    assert_eq!(body["refresh_token"], offline.expose_secret());

    let access = body["access_token"].as_str().unwrap();
    let jwks: JwkSet = serde_json::from_value(f.get_json(&f.running.jwks_url()).await).unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[f.running.realm_url()]);
    validation.set_audience(&["account"]);
    let claims =
        jsonwebtoken::decode::<Value>(access, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["name"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["azp"], "pub");
    assert_eq!(claims["typ"], "Bearer");
    assert_eq!(claims["sub"], super::claims::subject_id("alice"));
    assert_eq!(claims["sid"], body["session_state"]);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
    f.running.shutdown().await;
}

#[tokio::test]
async fn rotation_returns_a_new_token_and_revokes_the_old_one() {
    let f = start(IssuerConfig {
        rotate_refresh_tokens: true,
        ..IssuerConfig::default()
    })
    .await;
    let t1 = f.issuer.mint_offline_token("alice", "pub");
    let (status, body) = f.refresh("pub", t1.expose_secret()).await;
    assert_eq!(status, StatusCode::OK);
    let t2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(t2, t1.expose_secret());

    let (status, body) = f.refresh("pub", &t2).await;
    assert_eq!(status, StatusCode::OK);
    let t3 = body["refresh_token"].as_str().unwrap().to_owned();

    // As Keycloak with "Revoke Refresh Token" and no reuse: the spent token is
    // refused and ends the session, so the newest one fails too.
    let (status, body) = f.refresh("pub", t1.expose_secret()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        serde_json::json!({"error": "invalid_grant", "error_description": "Maximum allowed refresh token reuse exceeded"})
    );
    let (status, body) = f.refresh("pub", &t3).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "Session doesn't have required client"
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn client_and_grant_errors_are_keycloak_shaped() {
    let f = start(IssuerConfig::default()).await;
    let offline = f.issuer.mint_offline_token("alice", "conf");
    let token = offline.expose_secret();

    // Confidential client: right secret via Basic, wrong secret via form, no secret.
    let ok = f
        .http
        .post(f.running.token_url())
        .basic_auth("conf", Some("s3cret"));
    let resp = ok
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "conf"),
        ("client_secret", "nope"),
        ("refresh_token", token),
    ];
    // As Keycloak: a wrong secret is unauthorized_client, an unknown client invalid_client.
    let (status, body) = f.post_token(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized_client"))
    );
    assert_eq!(
        body["error_description"],
        "Invalid client or Invalid client credentials"
    );
    let (status, _) = f.refresh("conf", token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f.refresh("nobody", token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = f.refresh("pub", "no-such-token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        serde_json::json!({"error": "invalid_grant", "error_description": "Invalid refresh token"})
    );
    // A token minted for another client is not valid for this one.
    let (status, body) = f.refresh("pub", token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (status, body) = f
        .post_token(&[("grant_type", "password"), ("client_id", "pub")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    let (status, body) = f.post_token(&[("client_id", "pub")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = f
        .post_token(&[("grant_type", "refresh_token"), ("client_id", "pub")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    // Duplicated parameters are refused, as Keycloak does, rather than picking one.
    let (status, body) = f
        .refresh_with(&[("refresh_token", token), ("refresh_token", "x")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn client_credentials_only_for_confidential_clients() {
    let f = start(IssuerConfig::default()).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "conf"),
        ("client_secret", "s3cret"),
    ];
    let (status, body) = f.post_token(&form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none());
    let info: Value = f
        .userinfo(body["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["preferred_username"], "service-account-conf");

    let (status, body) = f
        .post_token(&[("grant_type", "client_credentials"), ("client_id", "pub")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized_client"))
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn userinfo_accepts_fresh_tokens_and_rejects_tampered_ones() {
    let f = start(IssuerConfig::default()).await;
    let offline = f.issuer.mint_offline_token("bob", "pub");
    let (_, body) = f.refresh("pub", offline.expose_secret()).await;
    let access = body["access_token"].as_str().unwrap();

    let resp = f.userinfo(access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let info: Value = resp.json().await.unwrap();
    assert_eq!(info["preferred_username"], "bob");
    assert_eq!(info["email"], "bob@example.com");
    assert_eq!(info["email_verified"], true);
    assert_eq!(info["sub"], super::claims::subject_id("bob"));

    // Swap in claims for another user, keeping bob's signature.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(base64::Engine::decode(&b64, &parts[1]).unwrap()).unwrap();
    parts[1] = base64::Engine::encode(&b64, payload.replace("\"bob\"", "\"mallory\""));
    for token in [parts.join("."), "garbage".to_owned()] {
        let resp = f.userinfo(&token).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
    let resp = f.http.get(f.running.userinfo_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    f.running.shutdown().await;
}

#[tokio::test]
async fn discovery_advertises_absolute_urls_of_this_binding() {
    let f = start(IssuerConfig::default()).await;
    let realm_url = f.running.realm_url();
    assert_eq!(
        realm_url,
        format!(
            "http://127.0.0.1:{}/realms/DominoRealm",
            f.running.addr.port()
        )
    );
    let doc = f
        .get_json(&format!("{realm_url}/.well-known/openid-configuration"))
        .await;
    assert_eq!(doc["issuer"], realm_url);
    assert_eq!(doc["token_endpoint"], f.running.token_url());
    assert_eq!(doc["jwks_uri"], f.running.jwks_url());
    assert_eq!(doc["userinfo_endpoint"], f.running.userinfo_url());
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        f.running.token_url(),
        format!("{realm_url}/protocol/openid-connect/token")
    );

    let jwks = f.get_json(&f.running.jwks_url()).await;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    assert_eq!(key["e"], "AQAB");

    let other = f
        .http
        .get(f.running.jwks_url().replace("DominoRealm", "Other"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    f.running.shutdown().await;
}

#[tokio::test]
async fn stats_count_token_requests_per_grant() {
    let f = start(IssuerConfig {
        token_delay: Duration::from_millis(20),
        ..IssuerConfig::default()
    })
    .await;
    let offline = f.issuer.mint_offline_token("alice", "pub");
    f.refresh("pub", offline.expose_secret()).await;
    f.refresh("pub", "bogus").await;
    f.post_token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "conf"),
        ("client_secret", "s3cret"),
    ])
    .await;
    f.post_token(&[("grant_type", "password"), ("client_id", "pub")])
        .await;
    let stats = f.get_json(&f.running.stats_url()).await;
    assert_eq!(
        stats,
        serde_json::json!({
            "token_requests": 4, "refresh_token": 2, "client_credentials": 1,
            "token_exchange": 0, "errors": 2, "entra": 0,
            "device_authorizations": 0, "slow_downs": 0,
            "codes_issued": 0, "codes_redeemed": 0
        })
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let f = start(IssuerConfig::default()).await;
    let url = f.running.jwks_url();
    f.running.shutdown().await;
    assert!(reqwest::Client::new().get(url).send().await.is_err());
}

#[test]
fn config_is_validated() {
    let bad_realm = IssuerConfig {
        realm: "a/b".into(),
        ..IssuerConfig::default()
    };
    assert!(Issuer::new(bad_realm).is_err());
    let zero = IssuerConfig {
        lifetime: Duration::ZERO,
        ..IssuerConfig::default()
    };
    assert!(Issuer::new(zero).is_err());
}
