use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::json;

use super::*;
use crate::issuer::{Issuer, IssuerConfig, RunningIssuer};
use crate::source::http::tests::{dead_url, fast, serve};
use crate::source::oauth::{Grant, OAuthConfig, OAuthSource};
use crate::source::LogClaims;

const ISS: &str = "https://idp.example/realms/R";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RSA key that signs hand-made tokens with any header and claims.
struct TestKey {
    pair: KeyPair,
    kid: String,
}

impl TestKey {
    fn new(kid: &str) -> TestKey {
        TestKey {
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
            kid: kid.into(),
        }
    }

    fn n(&self) -> Vec<u8> {
        let public = self.pair.public_key();
        public.modulus().big_endian_without_leading_zero().to_vec()
    }

    fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kid": self.kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": B64.encode(self.n()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let mut jwt = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .unwrap();
        jwt.push('.');
        jwt.push_str(&B64.encode(&sig));
        jwt
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

/// Claims that pass: right issuer, issued now, valid for 5 minutes.
fn good_claims() -> Value {
    let t = now();
    json!({"iss": ISS, "sub": "alice", "aud": "account", "iat": t, "exp": t + 300})
}

fn with(claims: Value, changes: Value) -> Value {
    let mut c = claims;
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// A JWKS endpoint whose content the test switches, counting its requests;
/// `null` content answers 500.
#[derive(Clone)]
struct Jwks {
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

impl Jwks {
    async fn serve(keys: Vec<Value>) -> Jwks {
        let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let app = Router::new().route(
            "/certs",
            get(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
                let doc = d.lock().unwrap().clone();
                if doc.is_null() {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    Json(doc).into_response()
                }
            }),
        );
        let url = format!("{}/certs", serve(app).await);
        Jwks { doc, hits, url }
    }

    fn set(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn config(jwks: JwksLocation) -> VerifyConfig {
    VerifyConfig {
        jwks,
        issuer: ISS.into(),
        audience: None,
        algorithms: vec![Algorithm::RS256],
        leeway: DEFAULT_LEEWAY,
        http: fast(),
    }
}

fn verifier(url: &str) -> Verifier {
    Verifier::new(config(JwksLocation::Url(url.into()))).unwrap()
}

/// `verify` must fail with `want`, and the error text must not carry the token.
async fn rejects(v: &Verifier, token: &str, want: VerifyError) {
    let err = v.verify(token).await.unwrap_err();
    assert_eq!(err, want);
    let text = SourceError::from(err).to_string();
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "{text}");
    }
}

#[tokio::test]
async fn good_token_passes_and_the_jwks_is_fetched_once() {
    let (key, jwks, v) = one_key().await;
    for _ in 0..3 {
        v.verify(&key.sign(&good_claims())).await.unwrap();
    }
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn alg_none_and_hmac_are_refused_before_any_key_is_used() {
    let (key, jwks, v) = one_key().await;
    let payload = B64.encode(good_claims().to_string());

    let none = format!(
        "{}.{payload}.",
        B64.encode(json!({"alg": "none", "kid": "k1"}).to_string())
    );
    rejects(&v, &none, VerifyError::AlgNotAllowed("none".into())).await;

    // The classic confusion: HS256 "signed" with the RSA public key as the
    // HMAC secret, which a verifier that lets the header choose would accept.
    let header = B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}).to_string());
    let input = format!("{header}.{payload}");
    for secret in [key.n(), key.jwk().to_string().into_bytes()] {
        let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&hmac_key, input.as_bytes());
        let forged = format!("{input}.{}", B64.encode(tag.as_ref()));
        rejects(&v, &forged, VerifyError::AlgNotAllowed("HS256".into())).await;
    }
    // Neither reached the JWKS.
    assert_eq!(jwks.hits(), 0);

    // An allowed algorithm that is not configured is refused too.
    let rs384 = key.sign_with_header(&json!({"alg": "RS384", "kid": "k1"}), &good_claims());
    rejects(&v, &rs384, VerifyError::AlgNotAllowed("RS384".into())).await;
}

#[tokio::test]
async fn a_key_is_used_only_for_its_own_algorithm_and_type() {
    let key = TestKey::new("k1");
    let mut oct = json!({"kid": "sym", "kty": "oct", "k": B64.encode(b"shared-secret")});
    let ec = json!({"kid": "ec", "kty": "EC", "crv": "P-256",
        "x": B64.encode([1u8; 32]), "y": B64.encode([2u8; 32])});
    let mut enc = key.jwk();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let mut rs512 = key.jwk();
    rs512["kid"] = json!("rs512");
    rs512["alg"] = json!("RS512");
    let jwks = Jwks::serve(vec![key.jwk(), oct.clone(), ec, enc, rs512]).await;
    let mut cfg = config(JwksLocation::Url(jwks.url.clone()));
    cfg.algorithms = vec![Algorithm::RS256, Algorithm::ES256];
    let v = Verifier::new(cfg).unwrap();
    for kid in ["sym", "ec", "enc", "rs512"] {
        let t = key.sign_with_header(&json!({"alg": "RS256", "kid": kid}), &good_claims());
        rejects(
            &v,
            &t,
            VerifyError::KeyMismatch {
                kid: kid.into(),
                alg: "RS256",
            },
        )
        .await;
    }
    // ES256 named in the header does not make the RSA key an EC key.
    let t = key.sign_with_header(&json!({"alg": "ES256", "kid": "k1"}), &good_claims());
    rejects(
        &v,
        &t,
        VerifyError::KeyMismatch {
            kid: "k1".into(),
            alg: "ES256",
        },
    )
    .await;
    oct["alg"] = json!("HS256");
    assert!(!key_fits(
        &serde_json::from_value(oct).unwrap(),
        Algorithm::RS256
    ));
}

#[tokio::test]
async fn tampered_or_foreign_signatures_fail() {
    let (key, _jwks, v) = one_key().await;
    let good = key.sign(&good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let evil = B64.encode(with(good_claims(), json!({"sub": "admin"})).to_string());
    let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
    rejects(&v, &tampered, VerifyError::BadSignature).await;

    // Signed by another key that claims the known kid.
    let impostor = TestKey::new("k1");
    rejects(
        &v,
        &impostor.sign(&good_claims()),
        VerifyError::BadSignature,
    )
    .await;

    for bad in ["opaque-token", "a.b", "a.b.c.d", "!!.e30.sig"] {
        assert!(
            matches!(v.verify(bad).await, Err(VerifyError::Malformed(_))),
            "{bad}"
        );
    }
    let no_kid = key.sign_with_header(&json!({"alg": "RS256"}), &good_claims());
    rejects(
        &v,
        &no_kid,
        VerifyError::Malformed("the header has no kid".into()),
    )
    .await;
    let crit = key.sign_with_header(
        &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        &good_claims(),
    );
    assert!(matches!(
        v.verify(&crit).await,
        Err(VerifyError::Malformed(_))
    ));
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let old = TestKey::new("old");
    let new = TestKey::new("new");
    let jwks = Jwks::serve(vec![old.jwk()]).await;
    let interval = Duration::from_millis(400);
    let v = verifier(&jwks.url).with_refetch_interval(interval);
    v.verify(&old.sign(&good_claims())).await.unwrap();
    assert_eq!(jwks.hits(), 1);

    // A stream of made-up kids right after a fetch costs nothing upstream.
    for i in 0..5 {
        let t = old.sign_with_header(
            &json!({"alg": "RS256", "kid": format!("x{i}")}),
            &good_claims(),
        );
        rejects(&v, &t, VerifyError::UnknownKid(format!("x{i}"))).await;
    }
    assert_eq!(jwks.hits(), 1);

    // The IdP rotates; once the interval has passed, one unknown kid refetches.
    tokio::time::sleep(interval).await;
    jwks.set(json!({ "keys": [old.jwk(), new.jwk()] }));
    v.verify(&new.sign(&good_claims())).await.unwrap();
    assert_eq!(jwks.hits(), 2);
    v.verify(&new.sign(&good_claims())).await.unwrap();
    assert_eq!(jwks.hits(), 2);

    // Rotated again, now to a key not yet published: refused, and the refetch
    // it caused blocks the next one until the interval is over.
    tokio::time::sleep(interval).await;
    let newer = TestKey::new("newer");
    rejects(
        &v,
        &newer.sign(&good_claims()),
        VerifyError::UnknownKid("newer".into()),
    )
    .await;
    assert_eq!(jwks.hits(), 3);
    jwks.set(json!({ "keys": [new.jwk(), newer.jwk()] }));
    rejects(
        &v,
        &newer.sign(&good_claims()),
        VerifyError::UnknownKid("newer".into()),
    )
    .await;
    assert_eq!(jwks.hits(), 3);
    tokio::time::sleep(interval).await;
    v.verify(&newer.sign(&good_claims())).await.unwrap();
    assert_eq!(jwks.hits(), 4);
}

#[tokio::test]
async fn times_are_checked_with_the_leeway() {
    let (key, _jwks, v) = one_key().await;
    let t = now();
    let ok = |changes: Value| key.sign(&with(good_claims(), changes));

    // Within the 30 s leeway: accepted.
    v.verify(&ok(json!({"exp": t - 10, "iat": t - 310})))
        .await
        .unwrap();
    v.verify(&ok(json!({"nbf": t + 10}))).await.unwrap();
    v.verify(&ok(json!({"iat": t + 10}))).await.unwrap();

    // Beyond it: refused.
    rejects(
        &v,
        &ok(json!({"exp": t - 60, "iat": t - 360})),
        VerifyError::Expired,
    )
    .await;
    rejects(&v, &ok(json!({"nbf": t + 120})), VerifyError::NotYetValid).await;
    rejects(
        &v,
        &ok(json!({"iat": t + 120})),
        VerifyError::IssuedInFuture,
    )
    .await;

    // exp and iat are required.
    rejects(
        &v,
        &ok(json!({"exp": null})),
        VerifyError::Malformed("no exp claim".into()),
    )
    .await;
    rejects(
        &v,
        &ok(json!({"iat": null})),
        VerifyError::Malformed("no iat claim".into()),
    )
    .await;
}

#[tokio::test]
async fn issuer_must_match_exactly() {
    let (key, _jwks, v) = one_key().await;
    let claims = |iss: Value| key.sign(&with(good_claims(), json!({ "iss": iss })));
    let wrong = |found: &str| VerifyError::WrongIssuer {
        found: found.into(),
        expected: ISS.into(),
    };
    rejects(
        &v,
        &claims(json!("https://evil.example/realms/R")),
        wrong("\"https://evil.example/realms/R\""),
    )
    .await;
    rejects(
        &v,
        &claims(json!(format!("{ISS}/"))),
        wrong(&format!("{:?}", format!("{ISS}/"))),
    )
    .await;
    // An array that contains the issuer is not "exactly" it.
    assert!(matches!(
        v.verify(&claims(json!([ISS, "other"]))).await,
        Err(VerifyError::WrongIssuer { .. })
    ));
    rejects(
        &v,
        &key.sign(&with(good_claims(), json!({"iss": null}))),
        wrong("missing"),
    )
    .await;
}

#[tokio::test]
async fn audience_is_checked_only_when_configured() {
    let key = TestKey::new("k1");
    let jwks = Jwks::serve(vec![key.jwk()]).await;
    let unchecked = verifier(&jwks.url);
    let mut cfg = config(JwksLocation::Url(jwks.url.clone()));
    cfg.audience = Some("account".into());
    let checked = Verifier::new(cfg).unwrap();
    let token = |aud: Value| key.sign(&with(good_claims(), json!({ "aud": aud })));

    for aud in [json!("account"), json!(["other", "account"])] {
        checked.verify(&token(aud.clone())).await.unwrap();
        unchecked.verify(&token(aud)).await.unwrap();
    }
    for aud in [json!("other"), json!(["a", "b"]), Value::Null] {
        rejects(
            &checked,
            &token(aud.clone()),
            VerifyError::WrongAudience("account".into()),
        )
        .await;
        unchecked.verify(&token(aud)).await.unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_invalid() {
    let key = TestKey::new("k1");
    let token = key.sign(&good_claims());

    let v = verifier(&format!("{}/certs", dead_url()));
    let err = SourceError::from(v.verify(&token).await.unwrap_err());
    assert!(
        matches!(&err, SourceError::Unavailable(m) if m.contains("cannot connect")),
        "{err}"
    );

    let jwks = Jwks::serve(vec![]).await;
    jwks.set(Value::Null);
    let v = verifier(&jwks.url);
    let err = SourceError::from(v.verify(&token).await.unwrap_err());
    assert!(
        matches!(&err, SourceError::Unavailable(m) if m.contains("HTTP 500")),
        "{err}"
    );
    // Without keys, each attempt may fetch (the cell's backoff spaces them).
    let _ = v.verify(&token).await;
    assert_eq!(jwks.hits(), 2);

    for doc in [
        json!({"keys": []}),
        json!({"nope": 1}),
        json!({"keys": [{"kty": "RSA"}]}),
    ] {
        jwks.set(doc.clone());
        let err = SourceError::from(v.verify(&token).await.unwrap_err());
        assert!(matches!(err, SourceError::Unavailable(_)), "{doc}: {err}");
    }
}

#[tokio::test]
async fn old_keys_are_refreshed_but_kept_while_the_idp_is_down() {
    let key = TestKey::new("k1");
    let jwks = Jwks::serve(vec![key.jwk()]).await;
    let v = verifier(&jwks.url)
        .with_refetch_interval(Duration::ZERO)
        .with_max_age(Duration::ZERO);
    v.verify(&key.sign(&good_claims())).await.unwrap();
    jwks.set(Value::Null);
    v.verify(&key.sign(&good_claims())).await.unwrap();
    assert_eq!(jwks.hits(), 2);
    // A key the IdP withdrew stops being trusted at the next refresh.
    let other = TestKey::new("k2");
    jwks.set(json!({ "keys": [other.jwk()] }));
    rejects(
        &v,
        &key.sign(&good_claims()),
        VerifyError::UnknownKid("k1".into()),
    )
    .await;
}

/// A source that answers one fixed token.
struct Fixed(String);

#[async_trait::async_trait]
impl Source for Fixed {
    async fn issue(&self) -> Result<Issued, SourceError> {
        Ok(Issued {
            token: SecretString::from(self.0.clone()),
            expires_at: SystemTime::now() + Duration::from_secs(300),
            issued_at: SystemTime::now(),
            claims: LogClaims::default(),
        })
    }
    fn upstream(&self) -> String {
        "fixed".into()
    }
}

#[tokio::test]
async fn verifying_source_passes_good_tokens_and_turns_bad_ones_into_invalid() {
    let key = TestKey::new("k1");
    let jwks = Jwks::serve(vec![key.jwk()]).await;
    let cfg = config(JwksLocation::Url(jwks.url.clone()));
    let good = key.sign(&good_claims());
    let s = VerifyingSource::new(Arc::new(Fixed(good.clone())), cfg.clone()).unwrap();
    assert_eq!(s.upstream(), "fixed");
    assert_eq!(s.issue().await.unwrap().token.expose_secret(), good);

    let bad = TestKey::new("k1").sign(&good_claims());
    let s = VerifyingSource::new(Arc::new(Fixed(bad.clone())), cfg).unwrap();
    let err = s.issue().await.unwrap_err();
    assert_eq!(err, SourceError::Invalid("bad signature".into()), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        err.to_string(),
        "upstream issued a token that fails verification: bad signature"
    );
    assert!(!format!("{s:?}").contains(&bad));
}

/// The embedded issuer with one confidential client and an offline token.
async fn issuer() -> (RunningIssuer, OAuthSource) {
    let issuer = Issuer::new(IssuerConfig::default()).unwrap();
    let secret = SecretString::from("client-secret");
    issuer.add_client("tokenfs", Some(secret.clone()));
    let offline = issuer.mint_offline_token("alice", "tokenfs");
    let running = issuer.bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let source = OAuthSource::new(OAuthConfig {
        token_url: running.token_url(),
        client_id: "tokenfs".into(),
        client_secret: Some(secret),
        client_secret_file: None,
        grant: Grant::RefreshToken {
            refresh_token: Some(offline),
            file: None,
            rotated_file: None,
        },
        scope: None,
        login: None,
        http: HttpSettings {
            max_body: 64 * 1024,
            ..fast()
        },
    })
    .unwrap();
    (running, source)
}

#[tokio::test]
async fn tokens_from_the_embedded_issuer_verify_by_jwks_url_and_by_discovery() {
    let (running, source) = issuer().await;
    let source: Arc<dyn Source> = Arc::new(source);
    let cfg = |jwks| VerifyConfig {
        issuer: running.realm_url(),
        audience: Some("account".into()),
        ..config(jwks)
    };
    for jwks in [
        JwksLocation::Url(running.jwks_url()),
        JwksLocation::Discovery(running.discovery_url()),
    ] {
        let s = VerifyingSource::new(source.clone(), cfg(jwks)).unwrap();
        assert_eq!(s.upstream(), source.upstream());
        let issued = s.issue().await.unwrap();
        assert!(issued.expires_at > SystemTime::now());
    }

    // The wrong realm, audience or algorithm: the issuer's own tokens are refused.
    let wrong_iss = VerifyConfig {
        issuer: format!("{}x", running.realm_url()),
        ..cfg(JwksLocation::Url(running.jwks_url()))
    };
    let err = rejected(&source, wrong_iss).await;
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("iss is")),
        "{err}"
    );

    let wrong_aud = VerifyConfig {
        audience: Some("storage".into()),
        ..cfg(JwksLocation::Url(running.jwks_url()))
    };
    let err = rejected(&source, wrong_aud).await;
    assert_eq!(
        err,
        SourceError::Invalid(VerifyError::WrongAudience("storage".into()).to_string())
    );

    let only_es = VerifyConfig {
        algorithms: vec![Algorithm::ES256],
        ..cfg(JwksLocation::Url(running.jwks_url()))
    };
    let err = rejected(&source, only_es).await;
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("RS256")),
        "{err}"
    );

    // Azure tokens are signed by the tenant's key, not the realm's.
    let azure_keys = VerifyConfig {
        audience: None,
        ..cfg(JwksLocation::Url(running.azure_jwks_url()))
    };
    let err = rejected(&source, azure_keys).await;
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("kid")),
        "{err}"
    );

    // A discovery document for another issuer is a configuration problem.
    let other = VerifyConfig {
        issuer: "https://elsewhere.example".into(),
        ..cfg(JwksLocation::Discovery(running.discovery_url()))
    };
    let err = rejected(&source, other).await;
    assert!(
        matches!(&err, SourceError::Unavailable(m) if m.contains("issuer")),
        "{err}"
    );

    running.shutdown().await;
}

/// Issue through a verifier with `cfg`, expecting a refusal.
async fn rejected(source: &Arc<dyn Source>, cfg: VerifyConfig) -> SourceError {
    VerifyingSource::new(source.clone(), cfg)
        .unwrap()
        .issue()
        .await
        .unwrap_err()
}

/// A key `k1`, a JWKS server holding it, and a verifier pointed at that server.
async fn one_key() -> (TestKey, Jwks, Verifier) {
    let key = TestKey::new("k1");
    let jwks = Jwks::serve(vec![key.jwk()]).await;
    let v = verifier(&jwks.url);
    (key, jwks, v)
}
