//! An embedded, Keycloak-compatible realm for development and tests only.
//!
//! It serves the endpoints tokenfs talks to in production (discovery, JWKS, token,
//! userinfo) with Keycloak's paths and answer shapes, so `--dev` exercises the same
//! code path as a real deployment: the daemon reaches the issuer only over HTTP.
//!
//! It also plays the Azure half of the consent flow: Keycloak's internal→external
//! token exchange to an identity provider (`exchange`), the account-link page that
//! stands in for the user's consent (`link`), and a minimal Entra ID v2 tenant with
//! its own signing key (`entra`, `azure`), plus `/dev/…` admin endpoints that revoke
//! consent so a client's consent handling can be driven from a test or a shell.
//!
//! Everything lives in memory and the signing keys are regenerated at every start.
//! It has no users database, no login, no persistence: never run it in production.

mod azure;
mod claims;
mod cli;
mod client;
mod code;
mod device;
mod entra;
mod exchange;
mod http;
mod keys;
mod link;
mod routes;
mod store;
mod token;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_azure;

use std::future::IntoFuture as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cli::{run_dev_issuer, AzureArgs, DevIssuerArgs};
pub use link::LinkState;

/// The dev tenant id when none is configured: UUID-shaped like a real one, and
/// obviously fake.
pub const DEFAULT_TENANT: &str = "00000000-0000-4000-8000-00000000d0d0";

/// How long [`RunningIssuer::shutdown`] lets in-flight requests finish before
/// cutting them off; a dev tool must never hang a test run or a Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the dev realm.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Realm name, the `{realm}` in `/realms/{realm}/…`.
    pub realm: String,
    /// Access-token lifetime (`expires_in`, `exp - iat`); whole seconds, at least 1 s.
    pub lifetime: Duration,
    /// Return a new refresh token on every refresh and revoke the presented one,
    /// like Keycloak's "Revoke Refresh Token" realm setting.
    pub rotate_refresh_tokens: bool,
    /// Artificial latency of the realm token endpoint's answers, after the grant took
    /// effect (a rotation is done by then), to make refresh races and timeouts
    /// observable.
    pub token_delay: Duration,
    /// Alias of the Azure identity provider in the realm: the `requested_issuer` of
    /// the token exchange and the `{alias}` in `/broker/{alias}/link`.
    pub idp_alias: String,
    /// Entra tenant id: the `{tenant}` in the Entra URLs and the `tid` of Azure tokens.
    pub tenant: String,
    /// Lifetime of the Azure access tokens; whole seconds, at least 1 s.
    pub azure_lifetime: Duration,
    /// `aud` of the Azure access tokens: the resource they are for.
    pub azure_resource: String,
    /// The identity provider's `minValidityToken`: the exchange replaces the stored
    /// Azure token once it has this little left (Keycloak's default is 5 s), and
    /// until then returns it as is.
    pub azure_min_validity: Duration,
    /// How long a device login's code lives (Keycloak's `oauth2DeviceCodeLifespan`).
    pub device_lifespan: Duration,
    /// How often a device code may be polled (`oauth2DevicePollingInterval`); a
    /// poll sooner is answered `slow_down`.
    pub device_interval: Duration,
    /// Answer the first poll of every device code `slow_down`, as Keycloak does
    /// to a client that polls too soon.
    pub device_slow_down: bool,
    /// Who the device page approves as unless told otherwise.
    pub device_user: String,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            realm: "DominoRealm".to_owned(),
            lifetime: Duration::from_secs(300),
            rotate_refresh_tokens: false,
            token_delay: Duration::ZERO,
            idp_alias: "azure".to_owned(),
            tenant: DEFAULT_TENANT.to_owned(),
            azure_lifetime: Duration::from_secs(3600),
            azure_resource: "https://storage.azure.com".to_owned(),
            azure_min_validity: Duration::from_secs(5),
            device_lifespan: device::DEFAULT_LIFESPAN,
            device_interval: device::DEFAULT_INTERVAL,
            device_slow_down: false,
            device_user: "dev-user".to_owned(),
        }
    }
}

/// State shared by every binding of one issuer.
#[derive(Debug)]
struct Inner {
    cfg: IssuerConfig,
    key: keys::SigningKey,
    /// The Entra tenant's key: a second key, so a consumer that verified an Azure
    /// token against the realm JWKS (or the other way round) fails as it would in
    /// production.
    azure_key: keys::SigningKey,
    store: store::Store,
    links: link::Links,
    entra: entra::EntraStore,
    devices: device::Devices,
    codes: code::Codes,
    stats: store::Stats,
}

/// A dev realm: a signing key plus in-memory clients and offline sessions.
/// Cheap to clone; clones share all state.
#[derive(Clone, Debug)]
pub struct Issuer {
    inner: Arc<Inner>,
}

impl Issuer {
    /// Creates the realm and generates its two RSA-2048 signing keys, the realm's and
    /// the Entra tenant's (tens of milliseconds each).
    pub fn new(cfg: IssuerConfig) -> anyhow::Result<Issuer> {
        validate_name("realm name", &cfg.realm)?;
        validate_name("identity provider alias", &cfg.idp_alias)?;
        validate_name("tenant", &cfg.tenant)?;
        for (what, lifetime) in [("token", cfg.lifetime), ("Azure token", cfg.azure_lifetime)] {
            anyhow::ensure!(
                lifetime >= Duration::from_secs(1),
                "{what} lifetime must be at least 1s (JWT times are whole seconds), got {lifetime:?}"
            );
        }
        anyhow::ensure!(
            !cfg.azure_resource.is_empty(),
            "the Azure resource (token audience) must not be empty"
        );
        let key = keys::SigningKey::generate()?;
        let azure_key = keys::SigningKey::generate()?;
        tracing::debug!(
            realm = %cfg.realm,
            kid = key.kid(),
            azure_kid = azure_key.kid(),
            "dev issuer keys generated"
        );
        Ok(Issuer {
            inner: Arc::new(Inner {
                cfg,
                key,
                azure_key,
                store: store::Store::default(),
                links: link::Links::default(),
                entra: entra::EntraStore::default(),
                devices: device::Devices::default(),
                codes: code::Codes::default(),
                stats: store::Stats::default(),
            }),
        })
    }

    /// Binds `addr` (port 0 picks a free port) and serves on the current tokio runtime
    /// until [`RunningIssuer::shutdown`] is called or the `RunningIssuer` is dropped.
    pub async fn bind(self, addr: SocketAddr) -> anyhow::Result<RunningIssuer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("dev issuer: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{}", url_addr(addr));
        let realm_url = format!("{base_url}/realms/{}", self.inner.cfg.realm);
        let tenant = self.inner.cfg.tenant.clone();
        let app = routes::router(self.inner, realm_url.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        // A dropped sender resolves `stopped` as well, so dropping the handle stops
        // the server instead of leaking it.
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve.into_future());
        tracing::info!(%addr, "dev issuer listening");
        Ok(RunningIssuer {
            addr,
            base_url,
            realm_url,
            tenant,
            stop,
            task,
        })
    }

    /// Registers (or replaces) a client: confidential with a secret, public without.
    pub fn add_client(&self, client_id: &str, secret: Option<SecretString>) {
        self.inner.store.add_client(client_id, secret);
    }

    /// Creates an offline session for `username` and returns its refresh token, valid
    /// for the `refresh_token` grant when presented by `client_id`. Stands in for the
    /// browser login a real user would do once to get an offline token.
    pub fn mint_offline_token(&self, username: &str, client_id: &str) -> SecretString {
        self.inner.store.mint(username, client_id)
    }

    /// Sets whether `username` has consented to (is linked with) the identity provider
    /// `alias`, as the link page and `POST /dev/consent` do. `Linked` is a fresh link:
    /// the next exchange gets a newly minted Azure token. `Revoked` makes the exchange
    /// answer `token_expired`, `Unlinked` `not_linked`. Any alias is stored; only the
    /// configured one is ever asked for.
    pub fn set_link(&self, username: &str, alias: &str, state: LinkState) {
        self.inner.links.set(username, alias, state, None);
    }

    /// Allows or forbids `client_id` the token exchange (403 `access_denied` when
    /// forbidden). Confidential clients are allowed unless forbidden here; the setting
    /// is kept apart from the client, so it may be made before or after `add_client`.
    pub fn set_exchange_permitted(&self, client_id: &str, permitted: bool) {
        self.inner
            .store
            .set_exchange_permitted(client_id, permitted);
    }

    /// An Entra refresh token for `username`, valid at the Entra token endpoint with
    /// any client id. Stands in for the authorization-code flow a user would complete
    /// once to give tokenfs its refresh token.
    pub fn mint_entra_refresh_token(&self, username: &str) -> SecretString {
        self.inner.entra.mint(username)
    }
}

/// Realm names, aliases and tenant ids end up in URL paths and JWT claims; restricting
/// them to unreserved URL characters means they never need escaping anywhere.
fn validate_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    anyhow::ensure!(
        ok,
        "{what} {name:?} must be non-empty and use only letters, digits, '-', '_', '.', '~'"
    );
    Ok(())
}

/// The address clients should use: a wildcard bind is reachable on loopback, while
/// `http://0.0.0.0:…` would be a useless `iss` and endpoint URL.
fn url_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// A bound, serving issuer. Dropping it stops the server, like [`Self::shutdown`]
/// without waiting.
#[derive(Debug)]
pub struct RunningIssuer {
    /// The bound address (with the real port when port 0 was asked for).
    pub addr: SocketAddr,
    base_url: String,
    realm_url: String,
    tenant: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningIssuer {
    /// `http://HOST:PORT/realms/{realm}`: also the `iss` of every token.
    pub fn realm_url(&self) -> String {
        self.realm_url.clone()
    }

    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.realm_url)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.realm_url)
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}/protocol/openid-connect/userinfo", self.realm_url)
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.realm_url)
    }

    /// `/dev/stats`: `{"token_requests", "refresh_token", "client_credentials",
    /// "token_exchange", "errors", "entra"}`: realm token-endpoint requests counted on
    /// arrival, per grant, and failed ones; `entra` counts Entra token-endpoint requests.
    pub fn stats_url(&self) -> String {
        format!("{}/dev/stats", self.base_url)
    }

    /// `http://HOST:PORT`, the root of every URL this issuer serves.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The Entra tenant id: `tid` of Azure tokens and `{tenant}` in the Entra URLs.
    pub fn tenant(&self) -> String {
        self.tenant.clone()
    }

    /// `http://HOST:PORT/{tenant}/oauth2/v2.0/token`: the Entra-style refresh endpoint.
    pub fn entra_token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.base_url, self.tenant)
    }

    /// `http://HOST:PORT/{tenant}/oauth2/v2.0/authorize`: the dev consent page that makes
    /// a user's Entra refresh tokens work again.
    pub fn entra_authorize_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/authorize", self.base_url, self.tenant)
    }

    /// `http://HOST:PORT/{tenant}/discovery/v2.0/keys`: the JWKS of Azure tokens.
    pub fn azure_jwks_url(&self) -> String {
        format!("{}/{}/discovery/v2.0/keys", self.base_url, self.tenant)
    }

    /// `http://HOST:PORT/dev/consent`: `POST ?user=U&alias=A&state=linked|revoked|unlinked`.
    pub fn consent_admin_url(&self) -> String {
        format!("{}/dev/consent", self.base_url)
    }

    /// `http://HOST:PORT/dev/entra`: `POST ?user=U&state=ok|invalid_grant|
    /// interaction_required|consent_required`.
    pub fn entra_admin_url(&self) -> String {
        format!("{}/dev/entra", self.base_url)
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        let RunningIssuer { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "dev issuer stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "dev issuer task failed"),
            Err(_) => {
                tracing::warn!(
                    "dev issuer: requests still running after {SHUTDOWN_GRACE:?}; aborting them"
                );
                task.abort();
            }
        }
    }
}
