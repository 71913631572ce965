//! In-memory realm state: registered clients, offline sessions, request counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use aws_lc_rs::digest::{digest, SHA256};
use secrecy::{ExposeSecret, SecretString};

use super::claims::random_uuid;

/// Whether a client may authenticate with a secret (confidential) or not (public).
pub(crate) struct Client {
    secret: Option<SecretString>,
}

/// An offline session: what a refresh token stands for.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub username: String,
    pub client_id: String,
    pub id: String,
}

/// Why a client was not authenticated. Keycloak tells the two apart:
/// `invalid_client` for an unknown client, `unauthorized_client` for a known
/// one with a wrong or missing secret.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientAuthError {
    Unknown,
    BadSecret,
}

/// Why a refresh token was refused; all map to `invalid_grant`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefreshError {
    Unknown,
    OtherClient,
    /// A token already spent by a rotation: its session ends.
    Reused,
    /// The live token of a session that ended so.
    Detached,
}

/// A refresh token that no longer works, and why.
enum Retired {
    /// Rotated out of `session`. Sending it again ends that session, as Keycloak
    /// does with "Revoke Refresh Token" and no reuse: the newest token dies too.
    Spent { session: String },
    /// It was the session's newest when that happened.
    Detached,
}

/// Offline sessions are keyed by the SHA-256 of their token, so the raw token is not
/// kept in memory longer than the request that carries it.
pub(crate) type TokenHash = [u8; 32];

#[derive(Default)]
pub(crate) struct Store {
    clients: Mutex<HashMap<String, Client>>,
    sessions: Mutex<HashMap<TokenHash, Session>>,
    /// Locked after `sessions` when both are needed.
    retired: Mutex<HashMap<TokenHash, Retired>>,
    /// Clients refused the token exchange; Keycloak's fine-grained "token-exchange"
    /// permission reduced to a deny list, since the dev realm allows it by default.
    exchange_denied: Mutex<HashSet<String>>,
}

/// Shows sizes only: the maps hold client secrets.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("clients", &lock(&self.clients).len())
            .field("sessions", &lock(&self.sessions).len())
            .field("exchange_denied", &lock(&self.exchange_denied).len())
            .finish()
    }
}

// Every update of the maps is a single insert or remove.
pub(crate) use crate::sync::lock;

pub(crate) fn token_hash(token: &str) -> TokenHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// 32 random bytes, base64url: opaque, like Keycloak's tokens look to a client.
pub(crate) fn random_secret() -> SecretString {
    SecretString::from(crate::random::secret(32))
}

impl Store {
    pub(crate) fn add_client(&self, client_id: &str, secret: Option<SecretString>) {
        lock(&self.clients).insert(client_id.to_owned(), Client { secret });
    }

    /// Authenticates a client; `Some(confidential)` on success. A public client
    /// succeeds whatever secret it sends, as in Keycloak.
    /// Whether the client is confidential; `Err` with why it is refused.
    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        secret: Option<&SecretString>,
    ) -> Result<bool, ClientAuthError> {
        let clients = lock(&self.clients);
        let client = clients.get(client_id).ok_or(ClientAuthError::Unknown)?;
        match (&client.secret, secret) {
            (None, _) => Ok(false),
            (Some(want), Some(got)) => {
                // Compare digests: equal-length inputs make the comparison's timing
                // independent of where the secrets first differ.
                let ok = token_hash(want.expose_secret()) == token_hash(got.expose_secret());
                ok.then_some(true).ok_or(ClientAuthError::BadSecret)
            }
            (Some(_), None) => Err(ClientAuthError::BadSecret),
        }
    }

    pub(crate) fn set_exchange_permitted(&self, client_id: &str, permitted: bool) {
        let mut denied = lock(&self.exchange_denied);
        if permitted {
            denied.remove(client_id);
        } else {
            denied.insert(client_id.to_owned());
        }
    }

    pub(crate) fn exchange_permitted(&self, client_id: &str) -> bool {
        !lock(&self.exchange_denied).contains(client_id)
    }

    pub(crate) fn mint(&self, username: &str, client_id: &str) -> SecretString {
        let session = Session {
            username: username.to_owned(),
            client_id: client_id.to_owned(),
            id: random_uuid(),
        };
        self.insert_session(session)
    }

    fn insert_session(&self, session: Session) -> SecretString {
        let token = random_secret();
        lock(&self.sessions).insert(token_hash(token.expose_secret()), session);
        token
    }

    /// Looks up the session for a refresh token presented by `client_id`. With
    /// `rotate`, the presented token is revoked and a new one for the same session
    /// is returned, as Keycloak does with "Revoke Refresh Token" on.
    pub(crate) fn refresh(
        &self,
        token: &SecretString,
        client_id: &str,
        rotate: bool,
    ) -> Result<(Session, Option<SecretString>), RefreshError> {
        let hash = token_hash(token.expose_secret());
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get(&hash) else {
            let mut retired = lock(&self.retired);
            return Err(match retired.get(&hash) {
                None => RefreshError::Unknown,
                Some(Retired::Detached) => RefreshError::Detached,
                Some(Retired::Spent { session }) => {
                    let id = session.clone();
                    sessions.retain(|live, s| {
                        let ends = s.id == id;
                        if ends {
                            retired.insert(*live, Retired::Detached);
                        }
                        !ends
                    });
                    RefreshError::Reused
                }
            });
        };
        if session.client_id != client_id {
            return Err(RefreshError::OtherClient);
        }
        if !rotate {
            return Ok((session.clone(), None));
        }
        let session = sessions.remove(&hash).ok_or(RefreshError::Unknown)?;
        lock(&self.retired).insert(
            hash,
            Retired::Spent {
                session: session.id.clone(),
            },
        );
        let new_token = random_secret();
        sessions.insert(token_hash(new_token.expose_secret()), session.clone());
        Ok((session, Some(new_token)))
    }
}

/// Counts token-endpoint requests so tests can assert how often a consumer went upstream.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub token_requests: AtomicU64,
    pub refresh_token: AtomicU64,
    pub client_credentials: AtomicU64,
    pub token_exchange: AtomicU64,
    pub errors: AtomicU64,
    /// Requests to the Entra token endpoint; not part of `token_requests`, which
    /// counts the realm's token endpoint only.
    pub entra: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "token_requests": self.token_requests.load(Ordering::Relaxed),
            "refresh_token": self.refresh_token.load(Ordering::Relaxed),
            "client_credentials": self.client_credentials.load(Ordering::Relaxed),
            "token_exchange": self.token_exchange.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "entra": self.entra.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_revokes_the_presented_token() {
        let store = Store::default();
        let t1 = store.mint("alice", "cli");
        let (s, new) = store.refresh(&t1, "cli", true).unwrap();
        assert_eq!(s.username, "alice");
        let t2 = new.unwrap();
        let (s2, none) = store.refresh(&t2, "cli", false).unwrap();
        assert_eq!((s2.id, none.is_none()), (s.id, true));
        assert_eq!(
            store.refresh(&t2, "other", false).unwrap_err(),
            RefreshError::OtherClient
        );
        // Sending the spent one ends the session: the newest one dies with it.
        assert_eq!(
            store.refresh(&t1, "cli", true).unwrap_err(),
            RefreshError::Reused
        );
        assert_eq!(
            store.refresh(&t2, "cli", true).unwrap_err(),
            RefreshError::Detached
        );
        let unknown: SecretString = "never-issued".into();
        assert_eq!(
            store.refresh(&unknown, "cli", true).unwrap_err(),
            RefreshError::Unknown
        );
    }

    #[test]
    fn client_authentication() {
        let store = Store::default();
        store.add_client("pub", None);
        store.add_client("conf", Some("s3cret".into()));
        assert_eq!(store.authenticate("pub", None), Ok(false));
        assert_eq!(store.authenticate("conf", Some(&"s3cret".into())), Ok(true));
        let bad = Err(ClientAuthError::BadSecret);
        assert_eq!(store.authenticate("conf", Some(&"wrong".into())), bad);
        assert_eq!(store.authenticate("conf", None), bad);
        let unknown = Err(ClientAuthError::Unknown);
        assert_eq!(store.authenticate("nobody", None), unknown);
    }
}
