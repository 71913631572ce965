//! The configuration: a TOML file parsed into [`raw`] structs, then validated once
//! into the typed [`Config`] the rest of the program uses (secrets loaded, URLs
//! checked, defaults applied). Every error names the key and the problem.

mod oauth;
mod raw;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::cell::Policy;
use crate::fs::Owner;
use crate::secret_file;
use crate::secret_mode;
use crate::source::get::GetConfig;
use crate::source::http::HttpSettings;
use crate::source::oauth::{Exchange, Grant, OAuthConfig, SubjectRef};
use crate::source::verify::VerifyConfig;

pub use raw::RawConfig;

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Files' owner; `None` = the owner of the mountpoint's parent directory.
    pub owner: Option<Owner>,
    pub read_timeout: Duration,
    pub files: Vec<FileConfig>,
}

#[derive(Debug)]
pub struct FileConfig {
    pub name: String,
    pub policy: Policy,
    pub source: SourceConfig,
    /// Verify each token before serving it (`[files.NAME.verify]`).
    pub verify: Option<VerifyConfig>,
}

impl FileConfig {
    /// The file of this mount whose token this one exchanges, if any.
    pub fn mount_subject(&self) -> Option<&str> {
        let SourceConfig::OAuth(c) = &self.source else {
            return None;
        };
        match &c.grant {
            Grant::TokenExchange(Exchange {
                subject: SubjectRef::MountFile(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum SourceConfig {
    OAuth(Box<OAuthConfig>),
    Get(GetConfig),
}

/// A configuration problem, naming the key (`files.token.token_url`) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io::Error is in the message, not a `source`: `{:#}` would repeat it.
    #[error("cannot read config file {path}: {error}; {}", read_hint(.error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// What to do when the config file cannot be read.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "write one (an example: /usr/share/doc/tokenfs/examples/config.toml), or pass --config FILE"
        }
        std::io::ErrorKind::PermissionDenied => "run tokenfs as root",
        _ => "check the file",
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// `load` for a command's edge: an error names the file once (reading and
    /// parsing errors already do; a key's error gets the file added).
    pub fn load_at_edge(path: &Path) -> anyhow::Result<Config> {
        Config::load(path).map_err(|e| edge(path, e))
    }

    /// [`Config::load_at_edge`] for a command that knows the files' owner
    /// before the secret files are read: `owner` gets the config's
    /// `mount.uid`/`mount.gid` (if set) and decides; that owner becomes
    /// [`Config::owner`] and the process's [`secret_mode::set_workload`], so a
    /// group-readable secret file is judged against its groups. Reads only.
    pub fn load_owned(
        path: &Path,
        owner: impl FnOnce(Option<Owner>) -> anyhow::Result<Option<Owner>>,
    ) -> anyhow::Result<Config> {
        let raw = Config::parse(path).map_err(|e| edge(path, e))?;
        let configured = raw_owner(&raw).map_err(|e| edge(path, e))?;
        let owner = owner(configured)?;
        if let Some(owner) = owner {
            secret_mode::set_workload(secret_mode::Workload::of(owner));
        }
        let mut config = Config::from_raw(path, raw).map_err(|e| edge(path, e))?;
        config.owner = owner;
        Ok(config)
    }

    /// [`Config::load_owned`] then [`Config::prepare`], for `check` and
    /// `login`: both fetch through the file's cell as a mount does, so they
    /// may receive, and must be able to save, a rotated refresh token.
    pub fn load_owned_at_edge(
        path: &Path,
        owner: impl FnOnce(Option<Owner>) -> anyhow::Result<Option<Owner>>,
    ) -> anyhow::Result<Config> {
        let config = Config::load_owned(path, owner)?;
        config.prepare_at_edge(path)?;
        Ok(config)
    }

    /// Read, parse and validate a config file. Reads only: nothing is created,
    /// written or removed (that is [`Config::prepare`]'s), so a `check` beside a
    /// running daemon, or a fuzzer, changes nothing by loading.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_raw(path, Config::parse(path)?)
    }

    fn parse(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn from_raw(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        refuse_readable_inline_headers(path, &raw)?;
        Config::validate(raw)
    }

    /// Make the places this config saves secrets to ready, before any token is
    /// fetched: each rotated refresh token's directory is created (0700) and
    /// must be root's alone, and temp files a killed run left there (each holds a
    /// live secret) are removed. A rotation the upstream sends with nowhere to
    /// keep it is lost: by then the upstream has revoked the token it replaces.
    /// The one step with side effects; a save under way in another daemon keeps
    /// its temp file (it holds it locked).
    pub fn prepare(&self) -> Result<(), ConfigError> {
        for file in &self.files {
            let SourceConfig::OAuth(c) = &file.source else {
                continue;
            };
            let Grant::RefreshToken {
                file: original,
                rotated_file: Some(rotated),
                ..
            } = &c.grant
            else {
                continue;
            };
            secret_file::ensure_writable(rotated).map_err(|e| {
                let defaulted = original
                    .as_deref()
                    .is_some_and(|o| oauth::default_rotated_file(o) == *rotated);
                let why = if defaulted {
                    format!(
                        "not set, and its default {} cannot be written ({e}); set it, or \
                         STATE_DIRECTORY, to a directory only root can write",
                        rotated.display()
                    )
                } else {
                    e.to_string()
                };
                invalid(
                    format!("files.{}.rotated_refresh_token_file", file.name),
                    why,
                )
            })?;
            // No lock is taken: daemons sharing the file share the grant, each
            // use of the token locking it (see `holder`).
            secret_file::remove_stale_temps(rotated);
        }
        Ok(())
    }

    /// [`Config::prepare`] for a command's edge: an error names the file once.
    pub fn prepare_at_edge(&self, path: &Path) -> anyhow::Result<()> {
        self.prepare().map_err(|e| edge(path, e))
    }

    /// Turn the parsed file into the typed config, loading secret files.
    /// Reads only, as [`Config::load`].
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let owner = raw_owner(&raw)?;
        let read_timeout = raw.mount.read_timeout.unwrap_or(Duration::from_secs(10));
        if read_timeout.is_zero() {
            return Err(invalid("mount.read_timeout", "must be more than 0s"));
        }
        if raw.files.is_empty() {
            return Err(invalid(
                "files",
                "no files configured; add a [files.token] table (see the README)",
            ));
        }
        let files = raw
            .files
            .into_iter()
            .map(|(name, file)| validate_file(name, file))
            .collect::<Result<Vec<_>, _>>()?;
        for file in &files {
            if let Some(subject) = file.mount_subject() {
                let target = files.iter().find(|f| f.name == subject);
                match target {
                    None => {
                        return Err(invalid(
                            format!("files.{}.subject", file.name),
                            format!("no file named {subject:?} in this config"),
                        ))
                    }
                    Some(t) if t.mount_subject().is_some() => {
                        return Err(invalid(
                            format!("files.{}.subject", file.name),
                            format!("{subject:?} is itself an exchange of another file; chain at most one level"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(Config {
            owner,
            read_timeout,
            files,
        })
    }
}

/// A config error at a command's edge, naming the file once.
fn edge(path: &Path, e: ConfigError) -> anyhow::Error {
    match e {
        ConfigError::Invalid { .. } => {
            anyhow::Error::new(e).context(format!("invalid configuration in {}", path.display()))
        }
        named => anyhow::Error::new(named),
    }
}

fn raw_owner(raw: &RawConfig) -> Result<Option<Owner>, ConfigError> {
    match (raw.mount.uid, raw.mount.gid) {
        (Some(uid), Some(gid)) => Ok(Some(Owner { uid, gid })),
        (None, None) => Ok(None),
        _ => Err(invalid("mount.uid/mount.gid", "set both or neither")),
    }
}

/// Inline header values (e.g. an API key) are secrets held in the config itself:
/// then the config must be as private as a secret file.
fn refuse_readable_inline_headers(path: &Path, raw: &RawConfig) -> Result<(), ConfigError> {
    let inline = raw.files.iter().find_map(|(name, f)| {
        let headers = f.headers.as_ref()?;
        let (header, _) = headers
            .iter()
            .find(|(_, v)| matches!(v, raw::HeaderValue::Plain(_)))?;
        Some(format!("files.{name}.headers.{header}"))
    });
    let Some(key) = inline else {
        return Ok(());
    };
    let meta = std::fs::metadata(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    secret_file::check_private_mode(path, &meta).map_err(|e| {
        invalid(
            key,
            format!("an inline header value, but {e}; or move the value to {{ file = \"/path\" }}"),
        )
    })
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let key = format!("files.{name}");
    if name.is_empty() || name.len() > 200 {
        return Err(invalid(key, "a file name must be 1 to 200 bytes long"));
    }
    if name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(invalid(
            key,
            "a file name must not start with '.' or contain '/' (names starting with '.' are reserved)",
        ));
    }
    // The companion files' names: `<file>.consent-url` and `<file>.expires`.
    for suffix in [crate::fs::CONSENT_SUFFIX, crate::fs::EXPIRES_SUFFIX] {
        if name.ends_with(suffix) {
            return Err(invalid(
                key,
                format!("names ending in {suffix} are reserved"),
            ));
        }
    }
    Ok(())
}

fn validate_file(name: String, mut f: raw::RawFile) -> Result<FileConfig, ConfigError> {
    validate_name(&name)?;
    let key = |k: &str| format!("files.{name}.{k}");
    // A relative path would be read, created and locked in whatever directory the
    // daemon happens to run in (`/` under systemd, anywhere for `check`).
    let header_files = f.headers.iter().flatten().filter_map(|(h, v)| match v {
        raw::HeaderValue::File { file } => Some((format!("headers.{h}.file"), file.as_path())),
        raw::HeaderValue::Plain(_) => None,
    });
    for (setting, path) in f
        .path_settings()
        .map(|(k, p)| (k.to_owned(), p))
        .chain(header_files)
    {
        if !path.is_absolute() {
            return Err(invalid(
                key(&setting),
                format!(
                    "{} is a relative path: write it from / (e.g. /etc/tokenfs/…)",
                    path.display()
                ),
            ));
        }
    }
    let defaults = Policy::default();
    let min_valid = f.min_valid.unwrap_or(defaults.min_valid);
    let policy = Policy {
        min_valid,
        floor: f.min_valid_floor.unwrap_or(defaults.floor.min(min_valid)),
        refresh_at: f.refresh_at.unwrap_or(defaults.refresh_at),
        ..defaults
    };
    if policy.floor.is_zero() || policy.floor > policy.min_valid {
        return Err(invalid(
            key("min_valid_floor"),
            format!(
                "must be more than 0s and at most min_valid ({})",
                humantime::format_duration(policy.min_valid)
            ),
        ));
    }
    if !(0.1..=0.95).contains(&policy.refresh_at) {
        return Err(invalid(
            key("refresh_at"),
            "must be between 0.1 and 0.95 (fraction of the lifetime)",
        ));
    }
    let http = HttpSettings {
        connect_timeout: f.connect_timeout.unwrap_or(Duration::from_secs(5)),
        timeout: f.timeout.unwrap_or(Duration::from_secs(10)),
        max_body: f.max_body.unwrap_or(64 * 1024),
        ca_file: f.ca_file.clone(),
        proxy_from_env: f.proxy != Some(raw::ProxyMode::None),
    };
    if http.timeout.is_zero() || http.connect_timeout.is_zero() {
        return Err(invalid(key("timeout"), "timeouts must be more than 0s"));
    }
    if !(1024..=16 * 1024 * 1024).contains(&http.max_body) {
        return Err(invalid(
            key("max_body"),
            "must be between 1024 and 16777216 bytes",
        ));
    }
    let verify = f
        .verify
        .take()
        .map(|v| verify::verify(&name, v, http.clone()))
        .transpose()?;
    let source = match f.source.as_deref() {
        Some("oauth2") => SourceConfig::OAuth(Box::new(oauth::oauth2(&name, f, http)?)),
        Some("token-exchange") => SourceConfig::OAuth(Box::new(oauth::exchange(&name, f, http)?)),
        Some("entra") => SourceConfig::OAuth(Box::new(oauth::entra(&name, f, http)?)),
        Some("http") => SourceConfig::Get(get(&name, f, http)?),
        Some(other) => {
            return Err(invalid(
                key("source"),
                format!("unknown source {other:?}; use \"oauth2\", \"token-exchange\", \"entra\" or \"http\""),
            ))
        }
        None => {
            return Err(invalid(
                key("source"),
                "missing; use \"oauth2\", \"token-exchange\", \"entra\" or \"http\"",
            ))
        }
    };
    Ok(FileConfig {
        name,
        policy,
        source,
        verify,
    })
}

fn url(key: String, value: Option<String>) -> Result<String, ConfigError> {
    let value = value.ok_or_else(|| invalid(&key, "missing"))?;
    crate::source::http::check_url(&value).map_err(|reason| invalid(&key, reason))?;
    Ok(value)
}

fn secret(key: String, path: &Path) -> Result<SecretString, ConfigError> {
    secret_file::read_secret_file(path).map_err(|e| invalid(key, e.to_string()))
}

/// Refuse keys that belong to another source kind: naming them here is a mistake.
fn allow_only(
    name: &str,
    kind: &str,
    f: &raw::RawFile,
    allowed: &[&str],
) -> Result<(), ConfigError> {
    match f.source_keys().into_iter().find(|k| !allowed.contains(k)) {
        Some(k) => Err(invalid(
            format!("files.{name}.{k}"),
            format!("not valid for source = \"{kind}\""),
        )),
        None => Ok(()),
    }
}

fn get(name: &str, f: raw::RawFile, http: HttpSettings) -> Result<GetConfig, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    allow_only(name, "http", &f, &["url", "headers"])?;
    let url = url(key("url"), f.url)?;
    let mut headers = Vec::new();
    for (header, value) in f.headers.unwrap_or_default() {
        let value = match value {
            raw::HeaderValue::Plain(v) => SecretString::from(v),
            raw::HeaderValue::File { file } => {
                secret(key(&format!("headers.{header}.file")), &file)?
            }
        };
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(invalid(
                key(&format!("headers.{header}")),
                "not a valid HTTP header name",
            ));
        }
        headers.push((header, value));
    }
    Ok(GetConfig { url, headers, http })
}

#[cfg(test)]
mod tests;
