//! `mount --dev`: start the embedded issuer on a loopback port and configure
//! `token` against it through the production code path (refresh_token grant over HTTP).

use std::time::Duration;

use anyhow::{Context, Result};
use secrecy::SecretString;

use crate::cell::Policy;
use crate::config::{Config, FileConfig, SourceConfig};
use crate::issuer::{Issuer, IssuerConfig, RunningIssuer};
use crate::source::http::HttpSettings;
use crate::source::oauth::{Grant, OAuthConfig};

const CLIENT_ID: &str = "tokenfs-dev";

/// Start the issuer on the current runtime; it serves until the returned handle is dropped.
pub async fn start(user: &str, lifetime: Duration) -> Result<(Config, RunningIssuer)> {
    let issuer = Issuer::new(IssuerConfig {
        lifetime,
        ..IssuerConfig::default()
    })
    .context("cannot start the embedded issuer")?;
    let client_secret = SecretString::from(random_secret());
    issuer.add_client(CLIENT_ID, Some(client_secret.clone()));
    let refresh_token = issuer.mint_offline_token(user, CLIENT_ID);
    let running = issuer
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .context("cannot bind the embedded issuer to a loopback port")?;
    tracing::warn!(
        realm = %running.realm_url(),
        userinfo = %running.userinfo_url(),
        user,
        "--dev: serving tokens from the embedded development issuer; never use this in production"
    );
    let policy = Policy::default();
    let config = Config {
        owner: None,
        read_timeout: Duration::from_secs(10),
        files: vec![FileConfig {
            name: "token".into(),
            policy,
            source: SourceConfig::OAuth(Box::new(OAuthConfig {
                token_url: running.token_url(),
                client_id: CLIENT_ID.into(),
                client_secret: Some(client_secret),
                grant: Grant::RefreshToken {
                    refresh_token: Some(refresh_token),
                    file: None,
                    rotated_file: None,
                },
                scope: None,
                consent_url: None,
                http: HttpSettings::default(),
            })),
        }],
    };
    Ok((config, running))
}

fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
