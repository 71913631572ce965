//! End-to-end tests of the Azure half over real HTTP on 127.0.0.1: token exchange,
//! account linking, consent revocation, and the Entra-style endpoints.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::tests::{start, Fixture};
use super::{IssuerConfig, LinkState, DEFAULT_TENANT};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

impl Fixture {
    /// A realm access token for `user`, the subject of an exchange.
    async fn subject_token(&self, user: &str) -> String {
        let offline = self.issuer.mint_offline_token(user, "pub");
        let (status, body) = self.refresh("pub", offline.expose_secret()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn exchange_as(&self, client: &str, secret: &str, subject: &str) -> (StatusCode, Value) {
        let form = [
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("requested_issuer", "azure"),
        ];
        let req = self.http.post(self.running.token_url()).form(&form);
        let resp = req.basic_auth(client, Some(secret)).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn exchange(&self, subject: &str) -> (StatusCode, Value) {
        self.exchange_as("conf", "s3cret", subject).await
    }

    async fn get_text(&self, url: &str) -> (StatusCode, String) {
        let resp = self.http.get(url).send().await.unwrap();
        let status = resp.status();
        if status == StatusCode::OK {
            let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(kind.starts_with("text/plain"), "{kind}");
        }
        (status, resp.text().await.unwrap())
    }

    async fn post_admin(&self, url: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", super::link::percent_encode(v)))
            .collect();
        let url = format!("{url}?{}", query.join("&"));
        let resp = self.http.post(url).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    /// Entra's code flow: authorize (the redirect carries code and state), then
    /// redeem with `verifier` for a challenge made from `challenged`.
    async fn entra_code_login(
        &self,
        hint: Option<&str>,
        challenged: &str,
        verifier: &str,
    ) -> (StatusCode, Value) {
        use base64::Engine as _;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, challenged.as_bytes()),
        );
        let mut url = reqwest::Url::parse(&self.running.entra_authorize_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "azure-app")
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", "http://127.0.0.1:1/cb")
            .append_pair("state", "s1")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(hint) = hint {
            url.query_pairs_mut().append_pair("login_hint", hint);
        }
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = no_redirects.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND);
        let to = reqwest::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
        assert_eq!(q["state"], "s1");
        assert!(!q.contains_key("iss"), "Entra sends no iss");
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", "azure-app"),
            ("code", q["code"].as_str()),
            ("redirect_uri", "http://127.0.0.1:1/cb"),
            ("code_verifier", verifier),
            ("scope", "https://storage.azure.com/.default offline_access"),
        ];
        let url = self.running.entra_token_url();
        let resp = self.http.post(url).form(&form).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn entra_refresh(&self, token: &str) -> (StatusCode, Value) {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", "azure-app"),
            ("refresh_token", token),
            ("scope", "https://storage.azure.com/.default offline_access"),
        ];
        let url = self.running.entra_token_url();
        let resp = self.http.post(url).form(&form).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    /// Verifies an Azure token against the tenant's JWKS; returns its claims.
    async fn verify_azure(&self, jwt: &str) -> Value {
        let jwks: JwkSet =
            serde_json::from_value(self.get_json(&self.running.azure_jwks_url()).await).unwrap();
        let kid = jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
        let jwk = jwks.find(&kid).expect("kid in the Azure JWKS");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[format!("https://sts.windows.net/{DEFAULT_TENANT}/")]);
        validation.set_audience(&["https://storage.azure.com"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let key = DecodingKey::from_jwk(jwk).unwrap();
        jsonwebtoken::decode::<Value>(jwt, &key, &validation)
            .unwrap()
            .claims
    }
}

fn str_of<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
}

#[tokio::test]
async fn consent_flow_link_exchange_revoke_relink() {
    let f = start(IssuerConfig::default()).await;
    let subject = f.subject_token("alice").await;

    let (status, body) = f.exchange(&subject).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "not_linked");
    assert_eq!(body["error_description"], "identity provider is not linked");
    let link_url = str_of(&body, "account-link-url").to_owned();
    let prefix = format!(
        "{}/broker/azure/link?client_id=conf&nonce=",
        f.running.realm_url()
    );
    assert!(link_url.starts_with(&prefix), "{link_url}");
    assert!(link_url.contains("&hash="), "{link_url}");

    // The daemon appends its redirect_uri: listed, not followed.
    let (status, page) = f
        .get_text(&format!(
            "{link_url}&redirect_uri=http%3A%2F%2Flocalhost%2Fcb"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.starts_with("Consent granted: alice is now linked to azure."),
        "{page}"
    );
    assert!(page.contains("http://localhost/cb"), "{page}");

    let (status, body) = f.exchange(&subject).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["account-link-url"], link_url.as_str());
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((3598..=3600).contains(&expires_in), "{expires_in}");
    let azure = str_of(&body, "access_token").to_owned();
    let claims = f.verify_azure(&azure).await;
    assert_eq!(claims["tid"], DEFAULT_TENANT);
    assert_eq!(claims["upn"], "alice@example.com");
    assert_eq!(claims["name"], "alice");
    assert_eq!(claims["appid"], "conf");
    assert_eq!(claims["scp"], "user_impersonation");
    assert_eq!(claims["oid"], super::azure::object_id("alice"));
    assert_ne!(claims["oid"], super::claims::subject_id("alice"));
    assert_eq!(claims["uti"], claims["jti"]);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!((exp - iat, claims["nbf"].as_u64()), (3600, Some(iat)));
    // Signed by the tenant's key, not the realm's.
    let realm_jwks: JwkSet =
        serde_json::from_value(f.get_json(&f.running.jwks_url()).await).unwrap();
    let kid = jsonwebtoken::decode_header(&azure).unwrap().kid.unwrap();
    assert!(realm_jwks.find(&kid).is_none());

    // Keycloak returns the stored token as is while it is valid.
    let (_, again) = f.exchange(&subject).await;
    assert_eq!(again["access_token"], azure.as_str());

    let consent = f.running.consent_admin_url();
    let revoke = [("user", "alice"), ("alias", "azure"), ("state", "revoked")];
    let (status, body) = f.post_admin(&consent, &revoke).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"user": "alice", "alias": "azure", "state": "revoked"})
    );
    let (status, body) = f.exchange(&subject).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "token_expired");
    assert_eq!(body["error_description"], "linked token is expired");
    assert_eq!(body["account-link-url"], link_url.as_str());

    let (status, _) = f.get_text(&link_url).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = f.exchange(&subject).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(
        body["access_token"],
        azure.as_str(),
        "a fresh link mints anew"
    );

    let bad = [("user", "alice"), ("alias", "azure"), ("state", "maybe")];
    assert_eq!(
        f.post_admin(&consent, &bad).await.0,
        StatusCode::BAD_REQUEST
    );
    let bad = [("user", "alice"), ("alias", "gcp"), ("state", "linked")];
    assert_eq!(
        f.post_admin(&consent, &bad).await.0,
        StatusCode::BAD_REQUEST
    );
    let unlink = [("user", "alice"), ("alias", "azure"), ("state", "unlinked")];
    assert_eq!(f.post_admin(&consent, &unlink).await.0, StatusCode::OK);
    let (_, body) = f.exchange(&subject).await;
    assert_eq!(body["error"], "not_linked");
    f.running.shutdown().await;
}

#[tokio::test]
async fn link_page_needs_a_known_nonce_and_alias() {
    let f = start(IssuerConfig::default()).await;
    let base = format!("{}/broker/azure/link", f.running.realm_url());
    let (status, _) = f
        .get_text(&format!("{base}?client_id=conf&nonce=nope"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = f.get_text(&format!("{base}?client_id=conf")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let subject = f.subject_token("bob").await;
    let (_, body) = f.exchange(&subject).await;
    let link_url = str_of(&body, "account-link-url");
    let (status, _) = f.get_text(&link_url.replace("/azure/", "/gcp/")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A nonce may be used again (dev): both visits link.
    assert_eq!(f.get_text(link_url).await.0, StatusCode::OK);
    assert_eq!(f.get_text(link_url).await.0, StatusCode::OK);
    f.running.shutdown().await;
}

#[tokio::test]
async fn exchange_refusals_are_keycloak_shaped() {
    let f = start(IssuerConfig::default()).await;
    f.issuer.add_client("other", Some(SecretString::from("pw")));
    f.issuer.set_exchange_permitted("other", false);
    f.issuer.set_link("alice", "azure", LinkState::Linked);
    let subject = f.subject_token("alice").await;

    let form = [
        ("grant_type", EXCHANGE),
        ("client_id", "pub"),
        ("subject_token", subject.as_str()),
        ("requested_issuer", "azure"),
    ];
    let (status, body) = f.post_token(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized_client"))
    );

    let (status, body) = f.exchange_as("other", "pw", &subject).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        serde_json::json!({"error": "access_denied", "error_description": "Client not allowed to exchange"})
    );
    f.issuer.set_exchange_permitted("other", true);
    assert_eq!(
        f.exchange_as("other", "pw", &subject).await.0,
        StatusCode::OK
    );

    let (status, body) = f.exchange_as("conf", "wrong", &subject).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized_client"))
    );

    let invalid =
        serde_json::json!({"error": "invalid_request", "error_description": "Invalid token"});
    assert_eq!(
        f.exchange("garbage").await,
        (StatusCode::BAD_REQUEST, invalid.clone())
    );
    // A realm-signed token with its payload swapped no longer verifies.
    let mut parts: Vec<&str> = subject.split('.').collect();
    let other = f.subject_token("bob").await;
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(
        f.exchange(&parts.join(".")).await,
        (StatusCode::BAD_REQUEST, invalid)
    );

    let form = [
        ("grant_type", EXCHANGE),
        ("client_id", "conf"),
        ("client_secret", "s3cret"),
        ("subject_token", subject.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("requested_issuer", "gcp"),
    ];
    assert_eq!(
        f.post_token(&form).await,
        (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_request", "error_description": "Invalid issuer"})
        )
    );
    let mut form = form;
    form[5].1 = "azure";
    assert_eq!(f.post_token(&form).await.0, StatusCode::OK);
    form[4].1 = "urn:ietf:params:oauth:token-type:id_token";
    let (status, body) = f.post_token(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn short_azure_lifetime_gives_keycloaks_short_expires_in() {
    let f = start(IssuerConfig {
        azure_lifetime: Duration::from_secs(2),
        ..IssuerConfig::default()
    })
    .await;
    f.issuer.set_link("alice", "azure", LinkState::Linked);
    let subject = f.subject_token("alice").await;
    let (status, body) = f.exchange(&subject).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((1..=2).contains(&expires_in), "{expires_in}");
    let claims = f.verify_azure(str_of(&body, "access_token")).await;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        2
    );
    f.running.shutdown().await;
}

#[tokio::test]
async fn entra_refresh_rotates_and_keeps_old_tokens() {
    let f = start(IssuerConfig::default()).await;
    let t1 = f.issuer.mint_entra_refresh_token("alice");
    let (status, body) = f.entra_refresh(t1.expose_secret()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["scope"],
        "https://storage.azure.com/.default offline_access"
    );
    assert_eq!(
        (body["expires_in"].as_u64(), body["ext_expires_in"].as_u64()),
        (Some(3600), Some(3600))
    );
    let claims = f.verify_azure(str_of(&body, "access_token")).await;
    assert_eq!(claims["appid"], "azure-app");
    assert_eq!(claims["upn"], "alice@example.com");
    let t2 = str_of(&body, "refresh_token").to_owned();
    assert_ne!(t2, t1.expose_secret());

    let (status, body) = f.entra_refresh(&t2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let t3 = str_of(&body, "refresh_token").to_owned();
    assert!(t3 != t2 && t3 != t1.expose_secret());
    assert_eq!(f.entra_refresh(t1.expose_secret()).await.0, StatusCode::OK);
    assert_eq!(f.entra_refresh(&t2).await.0, StatusCode::OK);

    let (status, body) = f.entra_refresh("no-such-token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], serde_json::json!([9002313]));

    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "azure-app"),
        ("refresh_token", t3.as_str()),
    ];
    let resp = f
        .http
        .post(f.running.entra_token_url())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_codes"], serde_json::json!([900144]));

    let other_tenant = f
        .running
        .entra_token_url()
        .replace(DEFAULT_TENANT, "common");
    let resp = f.http.post(other_tenant).form(&form).send().await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_codes"], serde_json::json!([90002]));
    f.running.shutdown().await;
}

#[tokio::test]
async fn entra_failing_states_and_authorize_page() {
    let f = start(IssuerConfig::default()).await;
    let token = f.issuer.mint_entra_refresh_token("alice");
    let token = token.expose_secret();
    let admin = f.running.entra_admin_url();
    for (state, code) in [
        ("invalid_grant", 700082),
        ("interaction_required", 50173),
        ("consent_required", 65001),
    ] {
        let (status, body) = f
            .post_admin(&admin, &[("user", "alice"), ("state", state)])
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"user": "alice", "state": state}));
        let (status, body) = f.entra_refresh(token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], state);
        assert_eq!(body["error_codes"], serde_json::json!([code]));
        let description = str_of(&body, "error_description");
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        let trace = format!(
            "\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            body["trace_id"].as_str().unwrap(),
            body["correlation_id"].as_str().unwrap(),
            body["timestamp"].as_str().unwrap()
        );
        assert!(description.ends_with(&trace), "{description}");

        // The only user with tokens: no login_hint needed. Redeeming the
        // code is the new consent: the user's tokens work again.
        let (status, body) = f.entra_code_login(None, "verifier-1", "verifier-1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["refresh_token"].is_string());
        assert_eq!(f.entra_refresh(token).await.0, StatusCode::OK);
    }
    let (status, _) = f
        .post_admin(&admin, &[("user", "alice"), ("state", "bogus")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Two users hold tokens: the page needs login_hint.
    let bob = f.issuer.mint_entra_refresh_token("bob");
    f.post_admin(&admin, &[("user", "bob"), ("state", "consent_required")])
        .await;
    let authorize = f.running.entra_authorize_url();
    assert_eq!(
        f.get_text(&authorize).await.0,
        StatusCode::BAD_REQUEST,
        "no response_type"
    );
    assert_eq!(
        f.entra_refresh(bob.expose_secret()).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.entra_refresh(token).await.0,
        StatusCode::OK,
        "alice is unaffected"
    );
    // A wrong verifier is refused and spends the code.
    let (status, body) = f.entra_code_login(Some("bob"), "right", "wrong").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_codes"], serde_json::json!([501481]), "{body}");
    let (status, _) = f.entra_code_login(Some("bob"), "right", "right").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.entra_refresh(bob.expose_secret()).await.0, StatusCode::OK);
    f.running.shutdown().await;
}

#[tokio::test]
async fn urls_and_stats() {
    let f = start(IssuerConfig::default()).await;
    let base = f.running.base_url();
    assert_eq!(base, format!("http://127.0.0.1:{}", f.running.addr.port()));
    assert_eq!(f.running.tenant(), DEFAULT_TENANT);
    assert_eq!(
        f.running.entra_token_url(),
        format!("{base}/{DEFAULT_TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(
        f.running.entra_authorize_url(),
        format!("{base}/{DEFAULT_TENANT}/oauth2/v2.0/authorize")
    );
    assert_eq!(
        f.running.azure_jwks_url(),
        format!("{base}/{DEFAULT_TENANT}/discovery/v2.0/keys")
    );
    assert_eq!(f.running.consent_admin_url(), format!("{base}/dev/consent"));

    let subject = f.subject_token("alice").await;
    f.exchange(&subject).await;
    f.issuer.set_link("alice", "azure", LinkState::Linked);
    f.exchange(&subject).await;
    let entra = f.issuer.mint_entra_refresh_token("alice");
    f.entra_refresh(entra.expose_secret()).await;
    let stats = f.get_json(&f.running.stats_url()).await;
    assert_eq!(
        stats,
        serde_json::json!({
            "token_requests": 3, "refresh_token": 1, "client_credentials": 0,
            "token_exchange": 2, "errors": 1, "entra": 1,
            "device_authorizations": 0, "slow_downs": 0,
            "codes_issued": 0, "codes_redeemed": 0
        })
    );
    f.running.shutdown().await;
}
