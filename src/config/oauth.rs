//! Validation of the token-endpoint sources: `oauth2` (Keycloak refresh_token or
//! client_credentials), `token-exchange` (RFC 8693, incl. Keycloak's
//! internal→external form) and `entra` (direct Entra ID v2 refresh).

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{allow_only, invalid, raw::RawFile, secret, url, ConfigError};
use crate::source::code::CodeLoginConfig;
use crate::source::http::HttpSettings;
use crate::source::oauth::{
    ConsentLink, Exchange, Grant, Login, OAuthConfig, SubjectRef, ACCESS_TOKEN_TYPE,
};

const ENDPOINT_KEYS: [&str; 4] = ["token_url", "client_id", "client_secret_file", "scope"];
const REFRESH_KEYS: [&str; 2] = ["refresh_token_file", "rotated_refresh_token_file"];
const LOGIN_KEYS: [&str; 7] = [
    "login",
    "device_authorization_url",
    "authorization_url",
    "redirect_uri",
    "redirect_listen",
    "login_hint",
    "consent_state_file",
];

/// Where a login's endpoints are when the config names none: Keycloak's next to
/// its token endpoint, Entra's under the tenant.
struct Derived {
    device: Option<String>,
    authorization: Option<String>,
}

/// How a file with no usable refresh token gets one (`login`): `"device"`, or
/// `"code"` (the default with `code_by_default`, Entra's).
fn login(
    name: &str,
    f: &RawFile,
    derived: Derived,
    code_by_default: bool,
) -> Result<Option<Login>, ConfigError> {
    let key = |k: &str| format!("files.{name}.{k}");
    let only_with = |k: &str, set: bool, login: &str| match set {
        true => Err(invalid(
            key(k),
            format!("is used only with login = \"{login}\""),
        )),
        false => Ok(()),
    };
    let kind = match f.login.as_deref() {
        Some(kind) => kind,
        None if code_by_default => "code",
        None => {
            only_with(
                "device_authorization_url",
                f.device_authorization_url.is_some(),
                "device",
            )?;
            for (k, set) in [
                ("authorization_url", f.authorization_url.is_some()),
                ("redirect_listen", f.redirect_listen.is_some()),
                ("login_hint", f.login_hint.is_some()),
                ("consent_state_file", f.consent_state_file.is_some()),
                ("redirect_uri", f.redirect_uri.is_some()),
            ] {
                only_with(k, set, "code")?;
            }
            return Ok(None);
        }
    };
    match kind {
        "device" => {
            for (k, set) in [
                ("authorization_url", f.authorization_url.is_some()),
                ("redirect_listen", f.redirect_listen.is_some()),
                ("consent_state_file", f.consent_state_file.is_some()),
            ] {
                only_with(k, set, "code")?;
            }
            let endpoint = f.device_authorization_url.clone().or(derived.device).ok_or_else(|| {
                invalid(
                    key("device_authorization_url"),
                    "missing, and token_url is not Keycloak's (…/protocol/openid-connect/token) to derive it from",
                )
            })?;
            let url = url(key("device_authorization_url"), Some(endpoint))?;
            Ok(Some(Login::Device { url }))
        }
        "code" => {
            only_with(
                "device_authorization_url",
                f.device_authorization_url.is_some(),
                "device",
            )?;
            let authorization_url = f
                .authorization_url
                .clone()
                .or(derived.authorization)
                .ok_or_else(|| {
                    invalid(
                        key("authorization_url"),
                        "missing, and token_url is not Keycloak's (…/protocol/openid-connect/token) to derive it from",
                    )
                })?;
            let authorization_url = url(key("authorization_url"), Some(authorization_url))?;
            let redirect_uri = f.redirect_uri.clone().ok_or_else(|| {
                invalid(
                    key("redirect_uri"),
                    "missing: where the browser lands after the login, registered for client_id \
                     at the upstream (with redirect_listen, tokenfs serves it itself, e.g. \
                     http://127.0.0.1:8400/callback)",
                )
            })?;
            let redirect_uri = url(key("redirect_uri"), Some(redirect_uri))?;
            let redirect_listen = f
                .redirect_listen
                .as_deref()
                .map(|l| {
                    l.parse::<std::net::SocketAddr>().map_err(|_| {
                        invalid(
                            key("redirect_listen"),
                            format!("{l:?} is not IP:PORT (e.g. \"127.0.0.1:8400\")"),
                        )
                    })
                })
                .transpose()?;
            Ok(Some(Login::Code(CodeLoginConfig {
                authorization_url,
                redirect_uri,
                login_hint: f.login_hint.clone(),
                state_file: f.consent_state_file.clone(),
                redirect_listen,
            })))
        }
        other => Err(invalid(
            key("login"),
            format!("unknown login {other:?}; use \"device\" or \"code\""),
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
    // That it can be saved is [`Config::prepare`]'s to make sure, not loading's.
    let rotated = f
        .rotated_refresh_token_file
        .clone()
        .unwrap_or_else(|| default_rotated_file(&path));
    // The original only when no rotation supersedes it; a missing file is "no
    // token yet" where a login may bring one.
    let not_yet = may_be_missing && !path.exists();
    let refresh_token = if rotated.exists() {
        Some(secret(key("rotated_refresh_token_file"), &rotated)?)
    } else if not_yet {
        None
    } else {
        Some(secret(key("refresh_token_file"), &path)?)
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
    let mut login_cfg = None;
    let grant = match f.grant.as_deref().unwrap_or("refresh_token") {
        "refresh_token" => {
            allow_only(
                name,
                "oauth2",
                &f,
                &[&ENDPOINT_KEYS[..], &REFRESH_KEYS, &LOGIN_KEYS, &["grant"]].concat(),
            )?;
            let realm = token_url.strip_suffix("/protocol/openid-connect/token");
            let derived = Derived {
                device: realm.map(|r| format!("{r}/protocol/openid-connect/auth/device")),
                authorization: realm.map(|r| format!("{r}/protocol/openid-connect/auth")),
            };
            login_cfg = login(name, &f, derived, false)?;
            // With a login there may be no refresh token yet.
            refresh_grant(name, &f, login_cfg.is_some())?
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
        client_secret_file: f.client_secret_file.clone(),
        grant,
        scope: f.scope,
        login: login_cfg,
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
        client_secret_file: f.client_secret_file.clone(),
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
        login: None,
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
        ]
        .iter()
        .chain(&LOGIN_KEYS)
        .copied()
        .collect::<Vec<_>>(),
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
    let derived = Derived {
        device: Some(format!("{authority}/{tenant}/oauth2/v2.0/devicecode")),
        authorization: Some(format!("{authority}/{tenant}/oauth2/v2.0/authorize")),
    };
    Ok(OAuthConfig {
        token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
        client_id,
        client_secret,
        client_secret_file: f.client_secret_file.clone(),
        grant,
        scope: Some(scope),
        login: login(name, &f, derived, true)?,
        http,
    })
}
