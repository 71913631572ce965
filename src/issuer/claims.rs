//! Access-token claims in Keycloak's shape, and the ids inside them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

/// The scope every user token carries: what an offline token obtained with
/// `scope=openid offline_access` yields from a default Keycloak realm.
pub(crate) const USER_SCOPE: &str = "openid profile email offline_access";
/// What Keycloak grants a service account by default.
pub(crate) const SERVICE_ACCOUNT_SCOPE: &str = "profile email";

/// Who a token is for: a realm user, or a client's service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    User(String),
    ServiceAccount { client_id: String },
}

impl Principal {
    pub(crate) fn username(&self) -> String {
        match self {
            Principal::User(name) => name.clone(),
            Principal::ServiceAccount { client_id } => format!("service-account-{client_id}"),
        }
    }

    pub(crate) fn scope(&self) -> &'static str {
        match self {
            Principal::User(_) => USER_SCOPE,
            Principal::ServiceAccount { .. } => SERVICE_ACCOUNT_SCOPE,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub typ: String,
    pub azp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub preferred_username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

impl AccessClaims {
    pub(crate) fn new(
        issuer: &str,
        principal: &Principal,
        client_id: &str,
        session_id: Option<&str>,
        lifetime: Duration,
    ) -> Self {
        let iat = unix_now();
        let username = principal.username();
        let (name, email) = match principal {
            // Keycloak fills these from the user's profile; service accounts have none.
            Principal::User(user) => (Some(user.clone()), Some(format!("{user}@example.com"))),
            Principal::ServiceAccount { .. } => (None, None),
        };
        AccessClaims {
            exp: iat + lifetime.as_secs(),
            iat,
            jti: random_uuid(),
            iss: issuer.to_owned(),
            aud: "account".to_owned(),
            sub: subject_id(&username),
            typ: "Bearer".to_owned(),
            azp: client_id.to_owned(),
            sid: session_id.map(str::to_owned),
            scope: principal.scope().to_owned(),
            name,
            preferred_username: username,
            email_verified: email.as_ref().map(|_| true),
            email,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A UUID-shaped id derived from the username, so a user keeps the same `sub` across
/// issuer restarts (consumers key state on `sub`, as they would with Keycloak).
pub(crate) fn subject_id(username: &str) -> String {
    name_uuid("user", username)
}

/// A stable, UUID-shaped id for `name` in the namespace `kind`: different kinds give
/// unrelated ids for one user, as Keycloak's `sub` and Entra's `oid` are unrelated.
pub(crate) fn name_uuid(kind: &str, name: &str) -> String {
    let hash = digest(
        &SHA256,
        format!("tokenfs-dev-issuer:{kind}:{name}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    // Version 5 (name-based, SHA) and RFC 4122 variant bits, so strict UUID parsers accept it.
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format_uuid(&bytes)
}

/// A random version-4 UUID, as Keycloak uses for `jti` and session ids.
pub(crate) fn random_uuid() -> String {
    let mut bytes: [u8; 16] = crate::random::bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format_uuid(&bytes)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_stable_and_uuid_shaped() {
        let a = subject_id("alice");
        assert_eq!(a, subject_id("alice"));
        assert_ne!(a, subject_id("bob"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'5');
        assert!(random_uuid() != random_uuid());
    }
}
