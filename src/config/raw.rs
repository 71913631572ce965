//! The config file as written: every key optional here, checked in `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub mount: RawMount,
    #[serde(default)]
    pub files: BTreeMap<String, RawFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub source: Option<String>,
    // oauth2
    pub token_url: Option<String>,
    pub grant: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub refresh_token_file: Option<PathBuf>,
    pub rotated_refresh_token_file: Option<PathBuf>,
    pub scope: Option<String>,
    /// `"device"`: get a refresh token by the device authorization grant when
    /// there is none or it is dead.
    pub login: Option<String>,
    pub device_authorization_url: Option<String>,
    /// `login = "code"`: the authorization endpoint (derived for Keycloak and Entra).
    pub authorization_url: Option<String>,
    /// `login = "code"`: where the daemon listens for the browser's redirect.
    pub redirect_listen: Option<String>,
    // token-exchange
    pub subject: Option<String>,
    pub subject_token_file: Option<PathBuf>,
    pub subject_token_type: Option<String>,
    pub requested_issuer: Option<String>,
    pub requested_token_type: Option<String>,
    pub audience: Option<String>,
    pub redirect_uri: Option<String>,
    pub consent_link: Option<String>,
    // entra
    pub tenant: Option<String>,
    pub authority: Option<String>,
    pub login_hint: Option<String>,
    pub consent_state_file: Option<PathBuf>,
    // http
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, HeaderValue>>,
    // common
    #[serde(default, with = "humantime_serde")]
    pub min_valid: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_valid_floor: Option<Duration>,
    pub refresh_at: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_body: Option<usize>,
    pub ca_file: Option<PathBuf>,
    pub proxy: Option<ProxyMode>,
    /// `[files.NAME.verify]`: check each token before serving it (any source).
    pub verify: Option<RawVerify>,
}

/// `proxy`: whether the proxy variables of the daemon's environment apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Env,
    None,
}

/// `[files.NAME.verify]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub jwks_url: Option<String>,
    pub discovery_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
}

/// A header value given inline, or read from a 0600 file when it is a secret.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Plain(String),
    File { file: PathBuf },
}

impl RawFile {
    /// The settings that name a file, with their paths.
    pub fn path_settings(&self) -> impl Iterator<Item = (&'static str, &std::path::Path)> {
        [
            ("client_secret_file", &self.client_secret_file),
            ("refresh_token_file", &self.refresh_token_file),
            (
                "rotated_refresh_token_file",
                &self.rotated_refresh_token_file,
            ),
            ("subject_token_file", &self.subject_token_file),
            ("consent_state_file", &self.consent_state_file),
            ("ca_file", &self.ca_file),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_deref().map(|p| (k, p)))
    }

    /// The source-specific keys that are set, to refuse those another source owns.
    pub fn source_keys(&self) -> Vec<&'static str> {
        let keys = [
            ("token_url", self.token_url.is_some()),
            ("grant", self.grant.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("refresh_token_file", self.refresh_token_file.is_some()),
            (
                "rotated_refresh_token_file",
                self.rotated_refresh_token_file.is_some(),
            ),
            ("scope", self.scope.is_some()),
            ("login", self.login.is_some()),
            (
                "device_authorization_url",
                self.device_authorization_url.is_some(),
            ),
            ("authorization_url", self.authorization_url.is_some()),
            ("redirect_listen", self.redirect_listen.is_some()),
            ("subject", self.subject.is_some()),
            ("subject_token_file", self.subject_token_file.is_some()),
            ("subject_token_type", self.subject_token_type.is_some()),
            ("requested_issuer", self.requested_issuer.is_some()),
            ("requested_token_type", self.requested_token_type.is_some()),
            ("audience", self.audience.is_some()),
            ("redirect_uri", self.redirect_uri.is_some()),
            ("consent_link", self.consent_link.is_some()),
            ("tenant", self.tenant.is_some()),
            ("authority", self.authority.is_some()),
            ("login_hint", self.login_hint.is_some()),
            ("consent_state_file", self.consent_state_file.is_some()),
            ("url", self.url.is_some()),
            ("headers", self.headers.is_some()),
        ];
        keys.into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect()
    }
}
