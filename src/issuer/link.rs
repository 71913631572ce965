//! Account links to the identity provider: who has consented, the Azure token Keycloak
//! stores for each link, the pages that stand in for consent (Keycloak's `idp_link`
//! action at the authorization endpoint, which tokenfs's consent URL opens, and its
//! legacy account-link page), and the `/dev/consent` admin endpoint that revokes it.
//!
//! A real Keycloak sends the user through the provider's login and consent screens;
//! here opening the link URL is the consent. There is no login, so the URL's `nonce`
//! is what names the user: anyone holding it can link that user (dev only).

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest::{digest, SHA256};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::azure;
use super::http::{bad_request, text, unknown_realm, AppState};
use super::store::{lock, random_secret};

/// A user's link to an identity provider, as the token exchange sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    /// Never consented: the exchange answers `not_linked`.
    #[default]
    Unlinked,
    /// Consented: the exchange answers with an Azure token.
    Linked,
    /// Consent revoked or expired at the provider: the exchange answers `token_expired`
    /// once (Keycloak's refresh at the provider failed), then `not_linked`.
    Revoked,
}

impl LinkState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LinkState::Unlinked => "unlinked",
            LinkState::Linked => "linked",
            LinkState::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [LinkState::Unlinked, LinkState::Linked, LinkState::Revoked]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// The provider token Keycloak keeps for a link. No `Debug`: it holds a token.
struct StoredToken {
    jwt: SecretString,
    exp: u64,
}

#[derive(Default)]
struct Link {
    state: LinkState,
    token: Option<StoredToken>,
}

#[derive(Default)]
struct Table {
    links: HashMap<(String, String), Link>,
    /// One nonce per user, made on first use, so repeated exchanges (every refresh of
    /// the daemon) do not grow the table; reuse is harmless in a dev realm.
    nonce_of_user: HashMap<String, String>,
    user_of_nonce: HashMap<String, String>,
}

/// What an exchange finds for a user's link.
pub(crate) enum Lookup {
    Unlinked,
    Revoked,
    /// The stored token and its `exp`, minted now if there was none or it had expired.
    Linked(SecretString, u64),
}

#[derive(Default)]
pub(crate) struct Links {
    table: Mutex<Table>,
}

/// Sizes only: the table holds tokens and the nonces that stand in for logins.
impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = lock(&self.table);
        f.debug_struct("Links")
            .field("links", &table.links.len())
            .field("nonces", &table.user_of_nonce.len())
            .finish()
    }
}

impl Links {
    /// Sets the state; a `Linked` state starts afresh with `token` (or none, to be
    /// minted by the next exchange), the others drop the stored token.
    pub(crate) fn set(
        &self,
        user: &str,
        alias: &str,
        state: LinkState,
        token: Option<(String, u64)>,
    ) {
        let token = token
            .filter(|_| state == LinkState::Linked)
            .map(|(jwt, exp)| StoredToken {
                jwt: jwt.into(),
                exp,
            });
        let key = (user.to_owned(), alias.to_owned());
        lock(&self.table).links.insert(key, Link { state, token });
    }

    /// The link's answer at time `now`: Keycloak returns the stored provider token as
    /// is until it has no more than `min_validity` seconds left, and only then gets a
    /// new one (`mint`, run under the lock so that concurrent exchanges store and
    /// return one token). A revoked link is a refresh the provider refuses: Keycloak
    /// answers `token_expired` once and drops the stored token, so the link is gone
    /// (`not_linked`) after that.
    pub(crate) fn exchange(
        &self,
        user: &str,
        alias: &str,
        now: u64,
        min_validity: u64,
        mint: impl FnOnce() -> anyhow::Result<(String, u64)>,
    ) -> anyhow::Result<Lookup> {
        let mut table = lock(&self.table);
        let Some(link) = table.links.get_mut(&(user.to_owned(), alias.to_owned())) else {
            return Ok(Lookup::Unlinked);
        };
        if link.state == LinkState::Unlinked {
            return Ok(Lookup::Unlinked);
        }
        let token = match link.token.take().filter(|t| t.exp > now + min_validity) {
            Some(token) => token,
            None if link.state == LinkState::Revoked => {
                link.state = LinkState::Unlinked;
                return Ok(Lookup::Revoked);
            }
            None => {
                let (jwt, exp) = mint()?;
                StoredToken {
                    jwt: jwt.into(),
                    exp,
                }
            }
        };
        let answer = Lookup::Linked(token.jwt.expose_secret().into(), token.exp);
        link.token = Some(token);
        Ok(answer)
    }

    /// The nonce that names `user` on the link page.
    pub(crate) fn nonce_for(&self, user: &str) -> String {
        let mut table = lock(&self.table);
        if let Some(nonce) = table.nonce_of_user.get(user) {
            return nonce.clone();
        }
        let nonce = random_secret().expose_secret().to_owned();
        table.nonce_of_user.insert(user.to_owned(), nonce.clone());
        table.user_of_nonce.insert(nonce.clone(), user.to_owned());
        nonce
    }

    fn user_of_nonce(&self, nonce: &str) -> Option<String> {
        lock(&self.table).user_of_nonce.get(nonce).cloned()
    }
}

/// `{realm_url}/broker/{alias}/link?client_id=…&nonce=…&hash=…`, Keycloak's
/// client-initiated account-link URL. `hash` is computed as Keycloak does
/// (`sha256(nonce + session + client_id + alias)`, the username standing in for the
/// session) but, like the missing login, not checked by the dev link page.
pub(crate) fn account_link_url(st: &AppState, user: &str, client_id: &str) -> String {
    let alias = &st.inner.cfg.idp_alias;
    let nonce = st.inner.links.nonce_for(user);
    let hash = B64.encode(digest(
        &SHA256,
        format!("{nonce}{user}{client_id}{alias}").as_bytes(),
    ));
    format!(
        "{}/broker/{alias}/link?client_id={}&nonce={nonce}&hash={hash}",
        st.realm_url,
        percent_encode(client_id)
    )
}

/// Percent-encodes all but RFC 3986 unreserved characters, so any client id is safe
/// in a query string.
pub(crate) fn percent_encode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The query of the link page; other parameters (`hash`, …) are ignored.
#[derive(Deserialize)]
pub(crate) struct LinkQuery {
    nonce: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
}

/// `GET /realms/{realm}/broker/{alias}/link`: the user's consent. Answers with a page
/// instead of redirecting to `redirect_uri`, so `curl` or a browser both end here.
pub(crate) async fn link_page(
    State(st): State<AppState>,
    Path((realm, alias)): Path<(String, String)>,
    query: Result<Query<LinkQuery>, QueryRejection>,
) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    if alias != st.inner.cfg.idp_alias {
        return text(
            StatusCode::BAD_REQUEST,
            "Unknown identity provider.\n".into(),
        );
    }
    let Ok(Query(query)) = query else {
        return text(StatusCode::BAD_REQUEST, "Malformed link request.\n".into());
    };
    let user = query
        .nonce
        .as_deref()
        .and_then(|nonce| st.inner.links.user_of_nonce(nonce));
    let Some(user) = user else {
        return text(
            StatusCode::BAD_REQUEST,
            "Unknown or missing nonce: take the account-link-url from a token-exchange answer.\n"
                .into(),
        );
    };
    grant(
        &st,
        &user,
        &alias,
        query.client_id.as_deref(),
        query.redirect_uri.as_deref(),
    )
}

/// Link `user` to `alias` now, as Keycloak does at the end of the provider's login:
/// with a client id the provider token is minted now, else by the next exchange.
fn grant(
    st: &AppState,
    user: &str,
    alias: &str,
    client_id: Option<&str>,
    redirect_uri: Option<&str>,
) -> Response {
    let token = match client_id {
        Some(client_id) => match azure::mint(&st.inner, user, client_id) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "dev issuer could not sign an Azure token");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Signing failed.\n".into(),
                );
            }
        },
        None => None,
    };
    st.inner.links.set(user, alias, LinkState::Linked, token);
    tracing::info!(user, alias, "dev issuer: account linked (consent granted)");
    let mut body =
        format!("Consent granted: {user} is now linked to {alias}. You can close this window.\n");
    if let Some(uri) = redirect_uri {
        body += &format!("(Not redirecting to {uri}: this is the tokenfs development issuer.)\n");
    }
    text(StatusCode::OK, body)
}

/// The query of the authorization endpoint, as tokenfs's consent URL fills it.
#[derive(Deserialize)]
pub(crate) struct ActionQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    kc_action: Option<String>,
    login_hint: Option<String>,
}

/// `GET /realms/{realm}/protocol/openid-connect/auth?kc_action=idp_link:ALIAS&login_hint=U…`:
/// Keycloak's application-initiated linking, the consent URL tokenfs serves. A real
/// Keycloak logs the user in, asks to confirm and runs the provider's login; here
/// there is no login, so `login_hint` names the user (dev only), and the page is the
/// answer instead of a redirect to `redirect_uri`.
/// Without `kc_action`, the authorization code flow (see `code`).
pub(crate) async fn link_action(
    State(st): State<AppState>,
    Path(realm): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    if let Some(resp) = unknown_realm(&st, &realm) {
        return resp;
    }
    let query: Result<Query<ActionQuery>, QueryRejection> = Query::try_from_uri(&uri);
    if matches!(&query, Ok(Query(q)) if q.kc_action.is_none()) {
        return match Query::<super::code::AuthorizeQuery>::try_from_uri(&uri) {
            Ok(Query(q)) => {
                super::code::authorize(&st, q, &st.inner.cfg.device_user, Some(&st.realm_url))
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "Malformed request.\n".into()),
        };
    }
    let Ok(Query(query)) = query else {
        return text(StatusCode::BAD_REQUEST, "Malformed request.\n".into());
    };
    let alias = &st.inner.cfg.idp_alias;
    if query.kc_action.as_deref() != Some(&format!("idp_link:{alias}")) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("The development issuer has no login page: only kc_action=idp_link:{alias} is served here.\n"),
        );
    }
    let Some(user) = query.login_hint.filter(|u| !u.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "Missing login_hint: the development issuer has no login, the hint names the user.\n"
                .into(),
        );
    };
    grant(
        &st,
        &user,
        alias,
        query.client_id.as_deref(),
        query.redirect_uri.as_deref(),
    )
}

#[derive(Deserialize)]
pub(crate) struct ConsentQuery {
    user: Option<String>,
    alias: Option<String>,
    state: Option<String>,
}

/// `POST /dev/consent?user=U&alias=A&state=linked|revoked|unlinked` (alias defaults to
/// the configured one): what a user or admin does at the provider, for tests.
pub(crate) async fn consent_admin(
    State(st): State<AppState>,
    query: Result<Query<ConsentQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("malformed query");
    };
    let Some(user) = query.user.filter(|u| !u.is_empty()) else {
        return bad_request("missing user");
    };
    let alias = query
        .alias
        .unwrap_or_else(|| st.inner.cfg.idp_alias.clone());
    if alias != st.inner.cfg.idp_alias {
        return bad_request("unknown alias");
    }
    let Some(state) = query.state.as_deref().and_then(LinkState::parse) else {
        return bad_request("state must be linked, revoked or unlinked");
    };
    st.inner.links.set(&user, &alias, state, None);
    tracing::info!(
        user,
        alias,
        state = state.as_str(),
        "dev issuer: link state set"
    );
    Json(serde_json::json!({ "user": user, "alias": alias, "state": state.as_str() }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minted(jwt: &str, exp: u64) -> impl FnOnce() -> anyhow::Result<(String, u64)> + '_ {
        move || Ok((jwt.to_owned(), exp))
    }

    fn jwt(lookup: Lookup) -> (String, u64) {
        match lookup {
            Lookup::Linked(jwt, exp) => (jwt.expose_secret().to_owned(), exp),
            _ => panic!("not linked"),
        }
    }

    #[test]
    fn stored_token_is_returned_until_min_validity_then_replaced() {
        let links = Links::default();
        let unlinked = links
            .exchange("alice", "azure", 100, 5, minted("x", 0))
            .unwrap();
        assert!(matches!(unlinked, Lookup::Unlinked));
        links.set(
            "alice",
            "azure",
            LinkState::Linked,
            Some(("t1".into(), 110)),
        );
        let t = links.exchange("alice", "azure", 100, 5, minted("t2", 200));
        assert_eq!(jwt(t.unwrap()), ("t1".into(), 110));
        // Still t1 with 6 s left, a new one with 5 s left (Keycloak's default).
        let t = links.exchange("alice", "azure", 104, 5, minted("t2", 200));
        assert_eq!(jwt(t.unwrap()), ("t1".into(), 110));
        let t = links.exchange("alice", "azure", 105, 5, minted("t2", 200));
        assert_eq!(jwt(t.unwrap()), ("t2".into(), 200));
        let t = links.exchange("alice", "azure", 111, 5, minted("t3", 300));
        assert_eq!(jwt(t.unwrap()), ("t2".into(), 200));
        // A larger min validity replaces it sooner.
        let t = links.exchange("alice", "azure", 111, 89, minted("t3", 300));
        assert_eq!(jwt(t.unwrap()), ("t3".into(), 300));

        links.set(
            "alice",
            "azure",
            LinkState::Revoked,
            Some(("t4".into(), 900)),
        );
        // The provider refuses the refresh: token_expired once, then no link.
        let revoked = links.exchange("alice", "azure", 111, 5, minted("t5", 300));
        assert!(matches!(revoked.unwrap(), Lookup::Revoked));
        let gone = links.exchange("alice", "azure", 112, 5, minted("t5", 300));
        assert!(matches!(gone.unwrap(), Lookup::Unlinked));
        // A fresh link without a token mints on the next exchange.
        links.set("alice", "azure", LinkState::Linked, None);
        let t = links.exchange("alice", "azure", 111, 5, minted("t6", 300));
        assert_eq!(jwt(t.unwrap()), ("t6".into(), 300));
        let other = links
            .exchange("alice", "other", 111, 5, minted("x", 0))
            .unwrap();
        assert!(matches!(other, Lookup::Unlinked));
    }

    #[test]
    fn nonce_names_one_user() {
        let links = Links::default();
        let n = links.nonce_for("alice");
        assert_eq!(n, links.nonce_for("alice"));
        assert_ne!(n, links.nonce_for("bob"));
        assert_eq!(links.user_of_nonce(&n).as_deref(), Some("alice"));
        assert_eq!(links.user_of_nonce("nope"), None);
        assert_eq!(percent_encode("a b/c~"), "a%20b%2Fc~");
    }
}
