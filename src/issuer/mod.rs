//! An embedded, Keycloak-compatible realm for development and tests only.
//!
//! It serves the endpoints tokenfs talks to in production (discovery, JWKS, token,
//! userinfo) with Keycloak's paths and answer shapes, so `--dev` exercises the same
//! code path as a real deployment: the daemon reaches the issuer only over HTTP.
//! Everything lives in memory and the signing key is regenerated at every start.
//! It has no users database, no login, no persistence: never run it in production.

mod claims;
mod cli;
mod keys;
mod routes;
mod store;
mod token;

#[cfg(test)]
mod tests;

use std::future::IntoFuture as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cli::{run_dev_issuer, DevIssuerArgs};

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
    /// Artificial latency of the token endpoint, to make refresh races observable.
    pub token_delay: Duration,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            realm: "DominoRealm".to_owned(),
            lifetime: Duration::from_secs(300),
            rotate_refresh_tokens: false,
            token_delay: Duration::ZERO,
        }
    }
}

/// State shared by every binding of one issuer.
#[derive(Debug)]
struct Inner {
    cfg: IssuerConfig,
    key: keys::SigningKey,
    store: store::Store,
    stats: store::Stats,
}

/// A dev realm: a signing key plus in-memory clients and offline sessions.
/// Cheap to clone; clones share all state.
#[derive(Clone, Debug)]
pub struct Issuer {
    inner: Arc<Inner>,
}

impl Issuer {
    /// Creates the realm and generates its RSA-2048 signing key (tens of milliseconds).
    pub fn new(cfg: IssuerConfig) -> anyhow::Result<Issuer> {
        validate_realm(&cfg.realm)?;
        anyhow::ensure!(
            cfg.lifetime >= Duration::from_secs(1),
            "token lifetime must be at least 1s (JWT times are whole seconds), got {:?}",
            cfg.lifetime
        );
        let key = keys::SigningKey::generate()?;
        tracing::debug!(realm = %cfg.realm, kid = key.kid(), "dev issuer key generated");
        Ok(Issuer {
            inner: Arc::new(Inner {
                cfg,
                key,
                store: store::Store::default(),
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
        let realm_url = format!("http://{}/realms/{}", url_addr(addr), self.inner.cfg.realm);
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
            realm_url,
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
}

/// Keycloak realm names end up in URL paths and JWT `iss`; restricting them to
/// unreserved URL characters means they never need escaping anywhere.
fn validate_realm(realm: &str) -> anyhow::Result<()> {
    let ok = !realm.is_empty()
        && realm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    anyhow::ensure!(
        ok,
        "realm name {realm:?} must be non-empty and use only letters, digits, '-', '_', '.', '~'"
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
    realm_url: String,
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

    /// `/dev/stats`: `{"token_requests", "refresh_token", "client_credentials", "errors"}`,
    /// token-endpoint requests counted on arrival, per grant, and failed ones.
    pub fn stats_url(&self) -> String {
        format!("http://{}/dev/stats", url_addr(self.addr))
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
