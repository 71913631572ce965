//! Optional verification of the JWTs an upstream issues, before they are served.
//!
//! [`VerifyingSource`] wraps any [`Source`]: it lets the inner source issue a
//! token, then checks it as a resource server would (signature against the
//! issuer's JWKS, `alg` allow-list, `iss`, `aud`, `exp`/`nbf`/`iat`). A token
//! that fails is never handed to the cell, so it is never served; the cell keeps
//! serving a still-valid cached token and backs off, as for any upstream error.
//!
//! Why verify at all when the consumers verify too: a misconfigured or
//! compromised upstream (wrong realm, a proxy answering for the IdP, a token for
//! another audience) then shows up here, as `EIO` with a reason in `.status`,
//! instead of as a mysterious 401 from whatever the user called with it.
//!
//! The JWKS is fetched on first use and cached. An unknown `kid` usually means
//! the IdP rotated its key, so it triggers a refetch, but at most once per
//! [`DEFAULT_REFETCH_INTERVAL`]: a stream of tokens with made-up kids must not
//! turn into a stream of requests to the IdP.
//!
//! Error texts end up in logs and `.status`: they never carry the token, and
//! header or claim values taken from it are sanitized and cut short.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::http::{self, redact_url, sanitize_upstream_text, BuildError, HttpSettings};
use super::{Issued, Source, SourceError};

/// Clock-skew allowance for `exp`, `nbf` and `iat` when none is configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Least time between two JWKS fetches caused by an unknown `kid`.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a fetched JWKS is used before it is fetched again, so a key the
/// IdP withdrew (e.g. after a compromise) stops being trusted within this time.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

/// A JWKS with certificate chains (`x5c`) is a few KiB per key; a file's
/// `max_body` is sized for token answers, so JWKS reads get at least this.
const MIN_JWKS_BODY: usize = 256 * 1024;

/// Longest header or claim value quoted in an error.
const MAX_QUOTED: usize = 80;

/// The algorithms that may be configured, by their JWS names. Asymmetric only:
/// an HMAC key is a shared secret, which a JWKS never publishes, and accepting
/// `HS*` is how "verify HS256 with the RSA public key as the secret" attacks
/// work. `none` is not an algorithm here at all.
pub const ALLOWED_ALGORITHMS: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The allowed algorithm called `name`, or `None` (`none`, `HS*`, unknown).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    ALLOWED_ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    ALLOWED_ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

/// Where the issuer's keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// The JWKS document (Keycloak: `…/realms/R/protocol/openid-connect/certs`).
    Url(String),
    /// An OpenID discovery document whose `jwks_uri` names the JWKS.
    Discovery(String),
}

/// What a token must satisfy to be served (`[files.NAME.verify]`).
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub jwks: JwksLocation,
    /// The exact `iss` required.
    pub issuer: String,
    /// When set, `aud` (a string or an array) must contain it.
    pub audience: Option<String>,
    /// Header `alg`s accepted; a subset of [`ALLOWED_ALGORITHMS`].
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` (whole seconds count).
    pub leeway: Duration,
    /// Timeouts and CA for the JWKS and discovery requests (the file's own).
    pub http: HttpSettings,
}

/// Why a token failed verification. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("header alg {0:?} is not allowed")]
    AlgNotAllowed(String),
    #[error("no key with kid {0:?} in the issuer's JWKS")]
    UnknownKid(String),
    /// The JWKS entry for the kid is not a key for the header's algorithm
    /// (another key type or curve, another `alg`, or an encryption key).
    #[error("the JWKS key {kid:?} is not a signing key for {alg}")]
    KeyMismatch { kid: String, alg: &'static str },
    #[error("the JWKS key {0:?} cannot be used")]
    UnusableKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("expired (exp is in the past, beyond the leeway)")]
    Expired,
    #[error("not yet valid (nbf is in the future, beyond the leeway)")]
    NotYetValid,
    #[error("issued in the future (iat is ahead of this clock by more than the leeway)")]
    IssuedInFuture,
    #[error("iss is {found}, expected {expected:?}")]
    WrongIssuer { found: String, expected: String },
    #[error("aud does not contain {0:?}")]
    WrongAudience(String),
    #[error("{0}")]
    JwksUnavailable(String),
}

impl From<VerifyError> for SourceError {
    /// A JWKS that cannot be fetched is the upstream's trouble (retry), not a
    /// verdict on the token.
    fn from(e: VerifyError) -> SourceError {
        match e {
            VerifyError::JwksUnavailable(why) => {
                SourceError::Unavailable(format!("cannot verify the token: {why}"))
            }
            other => SourceError::Invalid(other.to_string()),
        }
    }
}

/// A value taken from the token, fit for an error text.
fn quote(s: &str) -> String {
    let mut out = sanitize_upstream_text(s);
    if out.chars().count() > MAX_QUOTED {
        out = out.chars().take(MAX_QUOTED).collect::<String>() + "…";
    }
    out
}

/// Checks tokens against one issuer's keys and claims. Cheap to share.
pub struct Verifier {
    cfg: VerifyConfig,
    http: HttpSettings,
    client: reqwest::Client,
    /// The configured URL (JWKS or discovery), parsed.
    location: Url,
    /// Least time between two fetches caused by an unknown kid or an old set.
    refetch_interval: Duration,
    /// Age at which a cached JWKS is fetched again before use.
    max_age: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("location", &redact_url(&self.location))
            .field("issuer", &self.cfg.issuer)
            .field("audience", &self.cfg.audience)
            .field("algorithms", &self.cfg.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(cfg: VerifyConfig) -> Result<Verifier, BuildError> {
        Verifier::new_in(cfg, &http::Clients::default())
    }

    /// [`Verifier::new`] sharing the clients of `clients`.
    pub fn new_in(cfg: VerifyConfig, clients: &http::Clients) -> Result<Verifier, BuildError> {
        let (setting, url) = match &cfg.jwks {
            JwksLocation::Url(u) => ("verify.jwks_url", u),
            JwksLocation::Discovery(u) => ("verify.discovery_url", u),
        };
        let location = http::parse_url(setting, url)?;
        if cfg.algorithms.is_empty() {
            return Err(BuildError::Setting {
                setting: "verify.algorithms",
                reason: "must name at least one algorithm",
            });
        }
        let http = HttpSettings {
            max_body: cfg.http.max_body.max(MIN_JWKS_BODY),
            ..cfg.http.clone()
        };
        let client = clients.client(&http)?;
        let jwks_url = match cfg.jwks {
            JwksLocation::Url(_) => Some(location.clone()),
            JwksLocation::Discovery(_) => None,
        };
        Ok(Verifier {
            cfg,
            http,
            client,
            location,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            max_age: DEFAULT_MAX_AGE,
            cache: tokio::sync::Mutex::new(Cache::new(jwks_url)),
        })
    }

    /// Sets the least time between two JWKS fetches caused by an unknown kid
    /// (default [`DEFAULT_REFETCH_INTERVAL`]).
    pub fn with_refetch_interval(mut self, interval: Duration) -> Verifier {
        self.refetch_interval = interval;
        self
    }

    /// Sets the age at which a cached JWKS is fetched again (default [`DEFAULT_MAX_AGE`]).
    pub fn with_max_age(mut self, max_age: Duration) -> Verifier {
        self.max_age = max_age;
        self
    }

    /// Check `token`: `Ok` when it may be served.
    pub async fn verify(&self, token: &str) -> Result<(), VerifyError> {
        let header = Header::parse(token)?;
        let alg = parse_algorithm(&header.alg)
            .filter(|a| self.cfg.algorithms.contains(a))
            .ok_or_else(|| VerifyError::AlgNotAllowed(quote(&header.alg)))?;
        // Keycloak, Entra and every JWKS-publishing IdP put a kid in the
        // header; without one there is no sound way to pick a key.
        let kid = header
            .kid
            .ok_or_else(|| VerifyError::Malformed("the header has no kid".into()))?;
        let jwk = self.key_for(&kid).await?;
        if !key_fits(&jwk, alg) {
            return Err(VerifyError::KeyMismatch {
                kid: quote(&kid),
                alg: algorithm_name(alg),
            });
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| VerifyError::UnusableKey(quote(&kid)))?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.cfg.issuer]);
        // jsonwebtoken checks `iss` and `aud` only when present unless they are
        // required; `iat` it does not know, so it is checked below.
        let mut required = vec!["exp", "iss"];
        match &self.cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| self.map_jwt_error(e.into_kind(), token))?;
        let claims = data.claims;

        // Exact match: jsonwebtoken also accepts an `iss` array that merely
        // contains the issuer.
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.cfg.issuer => {}
            other => return Err(self.wrong_issuer(other)),
        }
        let iat = claims
            .get("iat")
            .ok_or_else(|| VerifyError::Malformed("no iat claim".into()))?
            .as_f64()
            .filter(|s| s.is_finite())
            .ok_or_else(|| VerifyError::Malformed("the iat claim is not a number".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if iat > now + self.cfg.leeway.as_secs_f64() {
            return Err(VerifyError::IssuedInFuture);
        }
        Ok(())
    }

    fn wrong_issuer(&self, found: Option<&Value>) -> VerifyError {
        let found = match found {
            Some(Value::String(s)) => format!("{:?}", quote(s)),
            None => "missing".into(),
            Some(_) => "not a single string".into(),
        };
        VerifyError::WrongIssuer {
            found,
            expected: self.cfg.issuer.clone(),
        }
    }

    fn map_jwt_error(&self, kind: ErrorKind, token: &str) -> VerifyError {
        match kind {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            // Claims are checked after the signature, so this `iss` is the
            // signer's and fit to quote.
            ErrorKind::InvalidIssuer => {
                let claims =
                    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                        .ok();
                self.wrong_issuer(claims.as_ref().and_then(|c| c.get("iss")))
            }
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => self.wrong_issuer(None),
            ErrorKind::InvalidAudience => {
                VerifyError::WrongAudience(self.cfg.audience.clone().unwrap_or_default())
            }
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                VerifyError::WrongAudience(self.cfg.audience.clone().unwrap_or_default())
            }
            ErrorKind::MissingRequiredClaim(c) => VerifyError::Malformed(format!("no {c} claim")),
            ErrorKind::InvalidClaimFormat(c) => {
                VerifyError::Malformed(format!("the {c} claim is not valid"))
            }
            ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => VerifyError::BadSignature,
            // Fixed texts: serde's and base64's messages may quote parts of the token.
            ErrorKind::Json(_) => {
                VerifyError::Malformed("the header or claims are not valid JSON".into())
            }
            ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                VerifyError::Malformed("a part is not base64url-encoded UTF-8".into())
            }
            _ => VerifyError::Malformed("the JWT library refused it".into()),
        }
    }
}

/// Whether `jwk` may verify a signature made with `alg`: a signing key of the
/// algorithm's type and curve, whose own `alg`, when it names one, is `alg`.
/// This is what stops a header from picking how a key is used (an RSA key as
/// an HMAC secret, an ES384 key for ES256).
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return false;
    }
    if let Some(key_alg) = jwk.common.key_algorithm {
        if Algorithm::try_from(key_alg).ok() != Some(alg) {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// The parts of the JOSE header that are checked before any key is chosen.
/// Parsed here rather than by jsonwebtoken, which refuses an unknown `alg`
/// (such as `none`) as a mere parse error.
struct Header {
    alg: String,
    kid: Option<String>,
}

impl Header {
    fn parse(token: &str) -> Result<Header, VerifyError> {
        let malformed = |why: &str| VerifyError::Malformed(why.into());
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let bytes = B64
            .decode(header)
            .map_err(|_| malformed("the header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|_| malformed("the header is not a JSON object"))?;
        // RFC 7515 §4.1.11: a `crit` extension that is not understood must be
        // refused; none is understood here. (`jku`, `jwk`, `x5u` are ignored:
        // keys come only from the configured JWKS, never from the token.)
        if header.contains_key("crit") {
            return Err(malformed("the header has crit extensions, none supported"));
        }
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            _ => return Err(malformed("the header has no alg")),
        };
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(malformed("the header kid is not a string")),
        };
        Ok(Header { alg, kid })
    }
}

/// A [`Source`] whose tokens are verified before they are passed on.
pub struct VerifyingSource {
    inner: Arc<dyn Source>,
    verifier: Verifier,
}

impl VerifyingSource {
    pub fn new(inner: Arc<dyn Source>, cfg: VerifyConfig) -> Result<VerifyingSource, BuildError> {
        Ok(VerifyingSource::with_verifier(inner, Verifier::new(cfg)?))
    }

    /// [`VerifyingSource::new`] sharing the clients of `clients`.
    pub fn new_in(
        inner: Arc<dyn Source>,
        cfg: VerifyConfig,
        clients: &http::Clients,
    ) -> Result<VerifyingSource, BuildError> {
        Ok(VerifyingSource::with_verifier(
            inner,
            Verifier::new_in(cfg, clients)?,
        ))
    }

    /// Wrap `inner` with an already built (e.g. tuned) [`Verifier`].
    pub fn with_verifier(inner: Arc<dyn Source>, verifier: Verifier) -> VerifyingSource {
        VerifyingSource { inner, verifier }
    }
}

impl std::fmt::Debug for VerifyingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingSource")
            .field("upstream", &self.inner.upstream())
            .field("verifier", &self.verifier)
            .finish()
    }
}

#[async_trait::async_trait]
impl Source for VerifyingSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let issued = self.inner.issue().await?;
        self.verifier
            .verify(issued.token.expose_secret())
            .await
            .map_err(SourceError::from)?;
        Ok(issued)
    }

    fn upstream(&self) -> String {
        self.inner.upstream()
    }

    fn unsaved_refresh_token(&self) -> Option<String> {
        self.inner.unsaved_refresh_token()
    }

    fn inputs(&self) -> super::Inputs {
        self.inner.inputs()
    }
}

mod jwks;

use jwks::Cache;

#[cfg(test)]
mod tests;
