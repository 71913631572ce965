//! Azure-shaped access tokens: the claims Entra ID puts in a v1 (`sts.windows.net`)
//! user token for a resource such as Azure Storage, signed with the dev tenant's own key.
//!
//! Both the Keycloak broker (token exchange) and the Entra-style token endpoint hand
//! these out, so a consumer sees one issuer and one JWKS whichever path it takes.

use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::claims::{name_uuid, random_uuid, unix_now};
use super::Inner;

/// The delegated permission Azure Storage (and most resources) grant a user token.
pub(crate) const SCOPE: &str = "user_impersonation";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AzureClaims {
    pub aud: String,
    pub iss: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub appid: String,
    pub name: String,
    pub oid: String,
    pub scp: String,
    pub sub: String,
    pub tid: String,
    pub upn: String,
    /// Entra's own token id claim.
    pub uti: String,
    /// The registered claim, for consumers that key replay caches on it.
    pub jti: String,
    pub ver: String,
}

impl AzureClaims {
    pub(crate) fn new(
        tenant: &str,
        resource: &str,
        username: &str,
        app_id: &str,
        lifetime: Duration,
    ) -> Self {
        let iat = unix_now();
        let id = random_uuid();
        AzureClaims {
            aud: resource.to_owned(),
            iss: issuer(tenant),
            iat,
            nbf: iat,
            exp: iat + lifetime.as_secs(),
            appid: app_id.to_owned(),
            name: username.to_owned(),
            oid: object_id(username),
            scp: SCOPE.to_owned(),
            sub: pairwise_subject(username, app_id),
            tid: tenant.to_owned(),
            upn: format!("{username}@example.com"),
            uti: id.clone(),
            jti: id,
            ver: "1.0".to_owned(),
        }
    }
}

/// `iss` of v1 access tokens, which is what resources like Storage receive.
pub(crate) fn issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// The user's directory object id: stable across restarts, unrelated to the realm `sub`.
pub(crate) fn object_id(username: &str) -> String {
    name_uuid("azure-oid", username)
}

/// Entra's `sub` is pairwise (per user and application) and not UUID-shaped.
fn pairwise_subject(username: &str, app_id: &str) -> String {
    let hash = digest(
        &SHA256,
        format!("tokenfs-dev-issuer:azure-sub:{username}:{app_id}").as_bytes(),
    );
    B64.encode(hash.as_ref())
}

/// A signed Azure access token for `username` as seen by application `app_id`, with
/// the configured lifetime; returns the JWT and its `exp`.
pub(crate) fn mint(inner: &Inner, username: &str, app_id: &str) -> anyhow::Result<(String, u64)> {
    let cfg = &inner.cfg;
    let claims = AzureClaims::new(
        &cfg.tenant,
        &cfg.azure_resource,
        username,
        app_id,
        cfg.azure_lifetime,
    );
    let jwt = inner.azure_key.sign_jwt(&claims)?;
    Ok((jwt, claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_from_the_realm_subject() {
        let oid = object_id("alice");
        assert_eq!(oid, object_id("alice"));
        assert_ne!(oid, super::super::claims::subject_id("alice"));
        assert_eq!(oid.len(), 36);
        let c = AzureClaims::new("t", "https://r", "alice", "app", Duration::from_secs(60));
        assert_eq!((c.exp - c.iat, c.nbf), (60, c.iat));
        assert_eq!(c.iss, "https://sts.windows.net/t/");
        assert_eq!(c.uti, c.jti);
        assert_ne!(c.sub, pairwise_subject("alice", "other-app"));
    }
}
