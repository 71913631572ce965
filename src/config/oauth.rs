//! Validation of the token-endpoint sources: `oauth2` (Keycloak refresh_token or
//! client_credentials), `token-exchange` (RFC 8693, incl. Keycloak's
//! internal→external form) and `entra` (direct Entra ID v2 refresh).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use secrecy::SecretString;

use super::{allow_only, invalid, raw::RawFile, secret, url, ConfigError};
use crate::secret_file;
use crate::source::http::HttpSettings;
use crate::source::oauth::{
    ConsentLink, Exchange, Grant, OAuthConfig, SubjectRef, ACCESS_TOKEN_TYPE,
};

const ENDPOINT_KEYS: [&str; 4] = ["token_url", "client_id", "client_secret_file", "scope"];
const REFRESH_KEYS: [&str; 2] = ["refresh_token_file", "rotated_refresh_token_file"];
const LOGIN_KEYS: [&str; 2] = ["login", "device_authorization_url"];

/// `login = "device"`: the device authorization endpoint, as configured or
/// derived (`derived`: Keycloak's next to its token endpoint, Entra's
/// `devicecode`), or `None` without `login`.
fn device_login(
    name: &str,
    f: &RawFile,
    derived: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    match f.login.as_deref() {
        None if f.device_authorization_url.is_some() => Err(invalid(
            key("device_authorization_url"),
            "is used only with login = \"device\"",
        )),
        None => Ok(None),
        Some("device") => {
            let endpoint = f.device_authorization_url.clone().or(derived).ok_or_else(|| {
                invalid(
                    key("device_authorization_url"),
                    "missing, and token_url is not Keycloak's (…/protocol/openid-connect/token) to derive it from",
                )
            })?;
            url(key("device_authorization_url"), Some(endpoint)).map(Some)
        }
        Some(other) => Err(invalid(
            key("login"),
            format!("unknown login {other:?}; the one there is is \"device\""),
        )),
    }
}

fn client(name: &str, f: &RawFile) -> Result<(String, Option<SecretString>), ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    let client_id = f
        .client_id
        .clone()
        .ok_or_else(|| invalid(key("client_id"), "missing"))?;
    let secret = f
        .client_secret_file
        .as_deref()
        .map(|p| secret(key("client_secret_file"), p))
        .transpose()?;
    Ok((client_id, secret))
}

fn require_secret(name: &str, secret: &Option<SecretString>, why: &str) -> Result<(), ConfigError> {
    match secret {
        Some(_) => Ok(()),
        None => Err(invalid(
            format!("files.{name}.client_secret_file"),
            format!("missing (required by {why})"),
        )),
    }
}

/// The refresh-token grant: a rotated token persisted by an earlier run
/// supersedes the original. With `may_be_missing` (Entra, before consent) a
/// missing file is "no token yet" rather than an error.
fn refresh_grant(name: &str, f: &RawFile, may_be_missing: bool) -> Result<Grant, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    let path = f.refresh_token_file.clone().ok_or_else(|| {
        invalid(
            key("refresh_token_file"),
            "missing (required by the refresh_token grant)",
        )
    })?;
    // Any refresh may rotate the token and revoke the one in refresh_token_file, so
    // a rotation is always saved: where the config says, else in the state directory.
    let (rotated, default) = match &f.rotated_refresh_token_file {
        Some(rotated) => (rotated.clone(), false),
        None => (default_rotated_file(&path), true),
    };
    // The original first, so a config that cannot work is refused before anything
    // is written; a rotation saved earlier supersedes it.
    let not_yet = may_be_missing && !path.exists();
    let original = if rotated.exists() || not_yet {
        None
    } else {
        Some(secret(key("refresh_token_file"), &path)?)
    };
    // Before any refresh: a rotated token that cannot be saved is lost at the next
    // start, and the upstream has revoked the one in refresh_token_file by then.
    secret_file::ensure_writable(&rotated).map_err(|e| {
        let why = if default {
            format!(
                "not set, and its default {} cannot be written ({e}); set it, or \
                 STATE_DIRECTORY, to a directory only root can write",
                rotated.display()
            )
        } else {
            e.to_string()
        };
        invalid(key("rotated_refresh_token_file"), why)
    })?;
    // No lock is taken here: daemons sharing the file share the grant, each use
    // of the token locking it (see `holder`); a save under way elsewhere keeps its
    // temp file.
    secret_file::remove_stale_temps(&rotated);
    let refresh_token = if rotated.exists() {
        Some(secret(key("rotated_refresh_token_file"), &rotated)?)
    } else if original.is_none() && !not_yet {
        // The rotated file was there when first looked at and is gone now.
        Some(secret(key("refresh_token_file"), &path)?)
    } else {
        original
    };
    Ok(Grant::RefreshToken {
        refresh_token,
        file: Some(path),
        rotated_file: Some(rotated),
    })
}

/// Where a rotation of the token in `refresh_token_file` is saved when the config
/// names no place: `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`, its first
/// entry) or `/var/lib/tokenfs`, under `rotated/`, in a file named after the
/// refresh-token file and a hash of its path, so every credential has its own and
/// `check` finds the daemon's.
pub fn default_rotated_file(refresh_token_file: &Path) -> PathBuf {
    let state = if cfg!(test) {
        // Unit tests never write the host's state directory.
        std::env::temp_dir().join("tokenfs-unit-tests")
    } else {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|dirs| {
                std::env::split_paths(&dirs)
                    .next()
                    .filter(|d| d.is_absolute())
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/tokenfs"))
    };
    let absolute =
        std::path::absolute(refresh_token_file).unwrap_or_else(|_| refresh_token_file.to_owned());
    let hash = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        absolute.as_os_str().as_encoded_bytes(),
    );
    let hex: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem: String = refresh_token_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join("rotated").join(format!("{stem}-{hex}"))
}

/// `source = "oauth2"`.
pub(super) fn oauth2(
    name: &str,
    f: RawFile,
    http: HttpSettings,
) -> Result<OAuthConfig, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    let token_url = url(key("token_url"), f.token_url.clone())?;
    let (client_id, client_secret) = client(name, &f)?;
    let mut device = None;
    let grant = match f.grant.as_deref().unwrap_or("refresh_token") {
        "refresh_token" => {
            allow_only(
                name,
                "oauth2",
                &f,
                &[&ENDPOINT_KEYS[..], &REFRESH_KEYS, &LOGIN_KEYS, &["grant"]].concat(),
            )?;
            let derived = token_url
                .strip_suffix("/protocol/openid-connect/token")
                .map(|realm| format!("{realm}/protocol/openid-connect/auth/device"));
            device = device_login(name, &f, derived)?;
            // With a device login there may be no refresh token yet.
            refresh_grant(name, &f, device.is_some())?
        }
        "client_credentials" => {
            allow_only(
                name,
                "oauth2\" with grant = \"client_credentials",
                &f,
                &[&ENDPOINT_KEYS[..], &["grant"]].concat(),
            )?;
            require_secret(name, &client_secret, "grant = \"client_credentials\"")?;
            Grant::ClientCredentials
        }
        other => {
            return Err(invalid(
                key("grant"),
                format!("unknown grant {other:?}; use \"refresh_token\" or \"client_credentials\""),
            ))
        }
    };
    Ok(OAuthConfig {
        token_url,
        client_id,
        client_secret,
        grant,
        scope: f.scope,
        consent_url: None,
        device_authorization_url: device,
        http,
    })
}

/// `source = "token-exchange"`: the subject is another file of the mount
/// (`subject = "token"`) or a file on disk (`subject_token_file`).
pub(super) fn exchange(
    name: &str,
    f: RawFile,
    http: HttpSettings,
) -> Result<OAuthConfig, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    allow_only(
        name,
        "token-exchange",
        &f,
        &[
            &ENDPOINT_KEYS[..],
            &[
                "subject",
                "subject_token_file",
                "subject_token_type",
                "requested_issuer",
                "requested_token_type",
                "audience",
                "redirect_uri",
                "consent_link",
            ],
        ]
        .concat(),
    )?;
    let token_url = url(key("token_url"), f.token_url.clone())?;
    let (client_id, client_secret) = client(name, &f)?;
    require_secret(name, &client_secret, "source = \"token-exchange\"")?;
    let redirect_uri = f
        .redirect_uri
        .clone()
        .map(|u| url(key("redirect_uri"), Some(u)))
        .transpose()?;
    let consent = consent_link(name, &f, &token_url, redirect_uri.as_deref())?;
    let subject = match (f.subject, f.subject_token_file) {
        (Some(file), None) if file == name => {
            return Err(invalid(key("subject"), "a file cannot be its own subject"))
        }
        (Some(file), None) => SubjectRef::MountFile(file),
        (None, Some(path)) => SubjectRef::Path(path),
        _ => {
            return Err(invalid(
                key("subject"),
                "set exactly one of subject (a file of this mount, e.g. \"token\") or subject_token_file (a path)",
            ))
        }
    };
    Ok(OAuthConfig {
        token_url,
        client_id,
        client_secret,
        grant: Grant::TokenExchange(Exchange {
            subject,
            subject_token_type: f
                .subject_token_type
                .unwrap_or_else(|| ACCESS_TOKEN_TYPE.into()),
            requested_issuer: f.requested_issuer,
            requested_token_type: f.requested_token_type,
            audience: f.audience,
            redirect_uri,
            consent,
        }),
        scope: f.scope,
        consent_url: None,
        device_authorization_url: None,
        http,
    })
}

/// How a user who must link the identity provider is sent to Keycloak. By
/// default Keycloak's `idp_link` action at the realm's authorization endpoint:
/// Keycloak's own `account-link-url` is bound to the browser session that
/// minted the offline token (any later login fails with "Invalid Request") and
/// is off unless the server allows client-initiated account linking.
fn consent_link(
    name: &str,
    f: &RawFile,
    token_url: &str,
    redirect_uri: Option<&str>,
) -> Result<ConsentLink, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    match (f.consent_link.as_deref(), f.requested_issuer.is_some()) {
        (Some("account-link-url"), _) | (None, false) => Ok(ConsentLink::AccountLinkUrl),
        (Some("kc_action"), false) => Err(invalid(
            key("consent_link"),
            "\"kc_action\" links an identity provider: set requested_issuer too",
        )),
        (Some("kc_action") | None, true) => {
            let authorization_url = token_url
                .strip_suffix("/protocol/openid-connect/token")
                .map(|realm| format!("{realm}/protocol/openid-connect/auth"))
                .ok_or_else(|| {
                    invalid(
                        key("consent_link"),
                        "\"kc_action\" (the default) needs a Keycloak token_url \
                         (…/realms/REALM/protocol/openid-connect/token); for another server \
                         set consent_link = \"account-link-url\"",
                    )
                })?;
            if redirect_uri.is_none() {
                return Err(invalid(
                    key("redirect_uri"),
                    "missing: Keycloak sends the browser there once the user has linked the \
                     identity provider; it must be a valid redirect URI of client_id",
                ));
            }
            Ok(ConsentLink::Action { authorization_url })
        }
        (Some(_), _) => Err(invalid(
            key("consent_link"),
            "must be \"kc_action\" or \"account-link-url\"",
        )),
    }
}

/// `source = "entra"`: the daemon holds the user's Entra refresh token and
/// calls the v2.0 token endpoint itself.
pub(super) fn entra(
    name: &str,
    f: RawFile,
    http: HttpSettings,
) -> Result<OAuthConfig, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    allow_only(
        name,
        "entra",
        &f,
        &[
            "client_id",
            "client_secret_file",
            "scope",
            "refresh_token_file",
            "rotated_refresh_token_file",
            "tenant",
            "authority",
            "redirect_uri",
            "login_hint",
            "consent_state_file",
            "login",
            "device_authorization_url",
        ],
    )?;
    let tenant = f
        .tenant
        .clone()
        .ok_or_else(|| invalid(key("tenant"), "missing (the directory id or domain)"))?;
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(invalid(
            key("tenant"),
            "must be a tenant id or domain (letters, digits, - . _)",
        ));
    }
    let authority = url(
        key("authority"),
        Some(
            f.authority
                .clone()
                .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
        ),
    )?;
    let authority = authority.trim_end_matches('/');
    let scope = f.scope.clone().ok_or_else(|| {
        invalid(
            key("scope"),
            "missing (e.g. \"https://storage.azure.com/.default\")",
        )
    })?;
    let (client_id, client_secret) = client(name, &f)?;
    let grant = refresh_grant(name, &f, true)?;
    let device = device_login(
        name,
        &f,
        Some(format!("{authority}/{tenant}/oauth2/v2.0/devicecode")),
    )?;
    if device.is_some() {
        // No browser comes back anywhere: the daemon polls for the tokens.
        return Ok(OAuthConfig {
            token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
            client_id,
            client_secret,
            grant,
            scope: Some(scope),
            consent_url: None,
            device_authorization_url: device,
            http,
        });
    }
    let redirect_uri = url(key("redirect_uri"), f.redirect_uri.clone())?;
    let consent_url = authorize_url(
        &format!("{authority}/{tenant}/oauth2/v2.0/authorize"),
        &client_id,
        &redirect_uri,
        &scope,
        f.login_hint.as_deref(),
        f.consent_state_file.clone(),
        name,
    )?;
    Ok(OAuthConfig {
        token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
        client_id,
        client_secret,
        grant,
        scope: Some(scope),
        consent_url: Some(consent_url),
        device_authorization_url: None,
        http,
    })
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The Entra authorize URL the user opens to consent: authorization code flow
/// with `offline_access`, `state` and PKCE S256. Whatever receives
/// `redirect_uri` redeems the code; it finds `state` and the PKCE verifier in
/// `consent_state_file` (0600) and writes the refresh token to `refresh_token_file`.
fn authorize_url(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    login_hint: Option<&str>,
    state_file: Option<PathBuf>,
    name: &str,
) -> Result<String, ConfigError> {
    let state = random_b64(16);
    let verifier = random_b64(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let scope = if scope.split_whitespace().any(|s| s == "offline_access") {
        scope.to_owned()
    } else {
        format!("{scope} offline_access")
    };
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| invalid(format!("files.{name}.authority"), e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_mode", "query")
        .append_pair("scope", &scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(hint) = login_hint {
        url.query_pairs_mut().append_pair("login_hint", hint);
    }
    if let Some(path) = state_file {
        let doc = serde_json::json!({
            "state": state,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
        });
        secret_file::write_secret_file(&path, &SecretString::from(doc.to_string()))
            .map_err(|e| invalid(format!("files.{name}.consent_state_file"), e.to_string()))?;
    }
    Ok(url.to_string())
}
