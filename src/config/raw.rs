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
    // http
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, HeaderValue>>,
    // common
    #[serde(default, with = "humantime_serde")]
    pub min_valid: Option<Duration>,
    pub refresh_at: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_body: Option<usize>,
    pub ca_file: Option<PathBuf>,
}

/// A header value given inline, or read from a 0600 file when it is a secret.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Plain(String),
    File { file: PathBuf },
}
