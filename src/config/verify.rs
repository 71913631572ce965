//! Validation of `[files.NAME.verify]`: where the issuer's keys are, and what
//! a token must satisfy to be served.

use std::time::Duration;

use super::{invalid, raw::RawVerify, url, ConfigError};
use crate::source::http::HttpSettings;
use crate::source::verify::{
    parse_algorithm, JwksLocation, VerifyConfig, ALLOWED_ALGORITHMS, DEFAULT_LEEWAY,
};
use jsonwebtoken::Algorithm;

/// Beyond this, a "leeway" would accept tokens that expired minutes ago.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) fn verify(
    name: &str,
    v: RawVerify,
    http: HttpSettings,
) -> Result<VerifyConfig, ConfigError> {
    let key = |k: &str| format!("files.{name}.verify.{k}");
    let jwks = match (v.jwks_url, v.discovery_url) {
        (Some(u), None) => JwksLocation::Url(url(key("jwks_url"), Some(u))?),
        (None, Some(u)) => JwksLocation::Discovery(url(key("discovery_url"), Some(u))?),
        _ => {
            return Err(invalid(
                key("jwks_url"),
                "set exactly one of jwks_url (the issuer's JWKS, Keycloak: …/protocol/openid-connect/certs) \
                 or discovery_url (…/.well-known/openid-configuration)",
            ))
        }
    };
    let issuer = match v.issuer {
        Some(i) if !i.trim().is_empty() => i,
        Some(_) => return Err(invalid(key("issuer"), "must not be empty")),
        None => {
            return Err(invalid(
                key("issuer"),
                "missing (the exact iss of the tokens, e.g. https://keycloak.example.com/realms/DominoRealm)",
            ))
        }
    };
    if v.audience.as_deref().is_some_and(|a| a.is_empty()) {
        return Err(invalid(
            key("audience"),
            "must not be empty; leave it out to not check aud",
        ));
    }
    let allowed = || {
        ALLOWED_ALGORITHMS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for name in v.algorithms.unwrap_or_else(|| vec!["RS256".into()]) {
        let alg = parse_algorithm(&name).ok_or_else(|| {
            let why = if name.eq_ignore_ascii_case("none") {
                "unsigned tokens are never accepted"
            } else if name.to_ascii_uppercase().starts_with("HS") {
                "HMAC needs a shared secret, which a JWKS never publishes"
            } else {
                "unknown algorithm"
            };
            invalid(
                key("algorithms"),
                format!("{name:?} is not allowed ({why}); use some of {}", allowed()),
            )
        })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        return Err(invalid(
            key("algorithms"),
            format!("must name at least one of {}", allowed()),
        ));
    }
    let leeway = v.leeway.unwrap_or(DEFAULT_LEEWAY);
    if leeway > MAX_LEEWAY {
        return Err(invalid(key("leeway"), "must be at most 5m"));
    }
    Ok(VerifyConfig {
        jwks,
        issuer,
        audience: v.audience,
        algorithms,
        leeway,
        http,
    })
}
