//! The realm's RSA signing key: JWT signing, the JWKS entry, and verification.

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// One RSA-2048 key, generated at start and never persisted: a restarted dev issuer
/// invalidates every token it issued, which is what a dev/test tool should do.
pub(crate) struct SigningKey {
    pair: KeyPair,
    kid: String,
    n: String,
    e: String,
    rng: SystemRandom,
}

impl SigningKey {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("could not generate the RSA-2048 signing key"))?;
        let public = pair.public_key();
        let n_raw = public.modulus().big_endian_without_leading_zero().to_vec();
        let e_raw = public.exponent().big_endian_without_leading_zero().to_vec();
        // Derived from the key so it changes exactly when the key does; clients that
        // cache a JWKS by kid then refetch after an issuer restart.
        let kid = B64.encode(&digest(&SHA256, &n_raw).as_ref()[..16]);
        Ok(SigningKey {
            pair,
            kid,
            n: B64.encode(&n_raw),
            e: B64.encode(&e_raw),
            rng: SystemRandom::new(),
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document served at `…/certs`.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kid": self.kid,
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "n": self.n,
                "e": self.e,
            }]
        })
    }

    /// An RS256 JWS in compact form. Assembled by hand because jsonwebtoken's
    /// `EncodingKey` wants PKCS#1 DER, which aws-lc-rs does not export.
    pub(crate) fn sign_jwt(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let mut jwt = B64.encode(serde_json::to_vec(&header)?);
        jwt.push('.');
        jwt.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut sig)
            .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
        jwt.push('.');
        jwt.push_str(&B64.encode(&sig));
        Ok(jwt)
    }

    /// Verifies a token this key signed: RS256 only, `exp` and `iss` checked.
    /// `aud` is not checked, as Keycloak's userinfo endpoint does not check it either.
    pub(crate) fn verify<T: DeserializeOwned>(&self, token: &str, issuer: &str) -> Option<T> {
        let key = DecodingKey::from_rsa_components(&self.n, &self.e).ok()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        // Keycloak allows no clock skew here; neither do we, so expiry tests are exact.
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, &key, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// Key material is not secret-free, so Debug shows only the public id.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::claims::{unix_now, AccessClaims, Principal};
    use std::time::Duration;

    #[test]
    fn verify_checks_signature_issuer_and_expiry() {
        let key = SigningKey::generate().unwrap();
        let user = Principal::User("alice".into());
        let mut claims = AccessClaims::new("http://iss", &user, "c", None, Duration::from_secs(60));
        let good = key.sign_jwt(&claims).unwrap();
        assert!(key.verify::<AccessClaims>(&good, "http://iss").is_some());
        assert!(key.verify::<AccessClaims>(&good, "http://other").is_none());
        claims.exp = unix_now() - 1;
        let expired = key.sign_jwt(&claims).unwrap();
        assert!(key.verify::<AccessClaims>(&expired, "http://iss").is_none());
        let other_key = SigningKey::generate().unwrap();
        assert!(other_key
            .verify::<AccessClaims>(&good, "http://iss")
            .is_none());
    }
}
