//! `mount --dev`: start the embedded issuer on a loopback port and configure the
//! files against it through the production code paths, over HTTP: `token` with the
//! refresh_token grant, `azure-token` with Keycloak's internal→external token
//! exchange of `token` (the user starts unlinked, so it first needs consent).
//! `token` is verified against the issuer's JWKS before it is served.

use std::time::Duration;

use anyhow::{Context, Result};
use secrecy::SecretString;

use crate::cell::Policy;
use crate::config::{Config, FileConfig, SourceConfig};
use crate::issuer::{Issuer, IssuerConfig, RunningIssuer};
use crate::source::http::HttpSettings;
use crate::source::oauth::{
    ConsentLink, Exchange, Grant, Login, OAuthConfig, SubjectRef, ACCESS_TOKEN_TYPE,
};
use crate::source::verify::{JwksLocation, VerifyConfig, DEFAULT_LEEWAY};

const CLIENT_ID: &str = "tokenfs-dev";

/// Token lifetimes of the embedded issuer.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub platform: Duration,
    pub azure: Duration,
}

/// Start the issuer on the current runtime; it serves until the returned handle is dropped.
pub async fn start(
    user: &str,
    lifetimes: Lifetimes,
    login: bool,
) -> Result<(Config, RunningIssuer)> {
    let defaults = IssuerConfig::default();
    let alias = defaults.idp_alias.clone();
    // As the README's Keycloak setup asks: the stored Azure token is replaced while
    // it still has more than the file's min_valid left, so no read waits for it.
    let azure_min_validity = Policy::default().min_valid + Duration::from_secs(5);
    let issuer = Issuer::new(IssuerConfig {
        lifetime: lifetimes.platform,
        azure_lifetime: lifetimes.azure,
        azure_min_validity,
        device_user: user.to_owned(),
        ..defaults
    })
    .context("cannot start the embedded issuer")?;
    let client_secret = SecretString::from(crate::random::secret(24));
    issuer.add_client(CLIENT_ID, Some(client_secret.clone()));
    // With a device login the user approves at the issuer's page instead.
    let refresh_token = (!login).then(|| issuer.mint_offline_token(user, CLIENT_ID));
    let running = issuer
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .context("cannot bind the embedded issuer to a loopback port")?;
    tracing::warn!(
        realm = %running.realm_url(),
        userinfo = %running.userinfo_url(),
        consent_admin = %running.consent_admin_url(),
        user,
        "--dev: serving tokens from the embedded development issuer; never use this in production"
    );
    let endpoint = |grant| {
        Box::new(OAuthConfig {
            token_url: running.token_url(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(client_secret.clone()),
            client_secret_file: None,
            grant,
            scope: None,
            login: None,
            http: HttpSettings::default(),
        })
    };
    let token = FileConfig {
        name: "token".into(),
        policy: Policy::default(),
        source: SourceConfig::OAuth(Box::new(OAuthConfig {
            login: login.then(|| Login::Device {
                url: format!(
                    "{}/protocol/openid-connect/auth/device",
                    running.realm_url()
                ),
            }),
            ..*endpoint(Grant::RefreshToken {
                refresh_token,
                file: None,
                rotated_file: None,
            })
        })),
        // Verified as the README's production example does, so --dev runs the
        // same checks (JWKS fetch, signature, iss) a deployment would.
        verify: Some(VerifyConfig {
            jwks: JwksLocation::Url(running.jwks_url()),
            issuer: running.realm_url(),
            audience: None,
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            leeway: DEFAULT_LEEWAY,
            http: HttpSettings::default(),
        }),
    };
    let azure = FileConfig {
        name: "azure-token".into(),
        policy: Policy::default(),
        source: SourceConfig::OAuth(endpoint(Grant::TokenExchange(Exchange {
            subject: SubjectRef::MountFile("token".into()),
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            requested_issuer: Some(alias),
            requested_token_type: None,
            audience: None,
            // The dev issuer answers the link action with its page itself.
            redirect_uri: Some(format!("{}/account", running.realm_url())),
            consent: ConsentLink::Action {
                authorization_url: format!("{}/protocol/openid-connect/auth", running.realm_url()),
            },
        }))),
        verify: None,
    };
    let config = Config {
        owner: None,
        read_timeout: Duration::from_secs(10),
        files: vec![token, azure],
    };
    Ok((config, running))
}
