//! The authorization code grant with PKCE (RFC 7636), for upstreams or tenants
//! that block the device flow. The daemon makes the authorize URL (shown in
//! `<file>.consent-url`) and keeps its `state` and verifier in memory; the
//! browser lands on `redirect_uri` with `code` and `state`, and that URL comes
//! back to the daemon (its redirect listener, or `tokenfs consent`), which
//! checks the state and redeems the code with the verifier. A code is useless
//! without the verifier, so a URL seen by someone else cannot be redeemed by them.

use std::time::{Duration, SystemTime};

use base64::Engine;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

/// How long one authorize URL stays the one shown: long enough for a login
/// with a password manager, a second factor and a coffee. After it the next
/// read shows a new one (the old one's redirect is then refused).
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// What the config says about the code login of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeLoginConfig {
    /// The upstream's authorization endpoint.
    pub authorization_url: String,
    /// Registered with the upstream; where the browser lands with the code.
    pub redirect_uri: String,
    /// Pre-fills the upstream's login form.
    pub login_hint: Option<String>,
    /// Written (0600) at each new login for a platform that redeems the code
    /// itself: `state`, `code_verifier`, `redirect_uri`, `client_id`.
    pub state_file: Option<std::path::PathBuf>,
    /// Where the daemon itself serves `redirect_uri`, if it does.
    pub redirect_listen: Option<std::net::SocketAddr>,
}

/// A login the user has not finished. `Debug` shows neither state nor verifier.
#[derive(Clone)]
pub struct Pending {
    pub url: String,
    pub state: String,
    pub verifier: SecretString,
    pub started: SystemTime,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub fn is_current(&self, now: SystemTime) -> bool {
        now.duration_since(self.started).unwrap_or_default() < MAX_AGE
    }
}

/// `offline_access` is what makes the upstream hand out a refresh token that
/// outlives the browser session (Keycloak: an offline token).
pub fn with_offline_access(scope: Option<&str>) -> String {
    match scope {
        Some(s) if s.split_whitespace().any(|s| s == "offline_access") => s.to_owned(),
        Some(s) if !s.trim().is_empty() => format!("{s} offline_access"),
        _ => "offline_access".to_owned(),
    }
}

/// A new login: fresh `state` and verifier, and the URL that carries them.
pub fn start(
    cfg: &CodeLoginConfig,
    client_id: &str,
    scope: Option<&str>,
    now: SystemTime,
) -> Result<Pending, url::ParseError> {
    let state = crate::random::secret(16);
    let verifier = crate::random::secret(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let mut url = Url::parse(&cfg.authorization_url)?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &cfg.redirect_uri)
        .append_pair("response_mode", "query")
        .append_pair("scope", &with_offline_access(scope))
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(hint) = &cfg.login_hint {
        url.query_pairs_mut().append_pair("login_hint", hint);
    }
    Ok(Pending {
        url: url.into(),
        state,
        verifier: SecretString::from(verifier),
        started: now,
    })
}

/// What the browser brought back to `redirect_uri`.
pub enum Redirect {
    Code {
        code: SecretString,
        state: String,
    },
    /// The upstream's refusal, e.g. `access_denied` when the user said no.
    Error {
        state: Option<String>,
        error: String,
        description: Option<String>,
    },
}

impl Redirect {
    pub fn state(&self) -> Option<&str> {
        match self {
            Redirect::Code { state, .. } => Some(state),
            Redirect::Error { state, .. } => state.as_deref(),
        }
    }
}

/// Why a redirect did not log a file in. Each says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error(
        "this is not where the browser landed after the login: the URL has no `code` (or \
         `error`) and `state` in its query; copy the whole address from the browser's address bar"
    )]
    NotARedirect,
    #[error("{file} has no code login (login = \"code\"): there is nothing to complete")]
    NoCodeLogin { file: String },
    #[error("{file} has no file {name:?}; its files: {files}")]
    NoSuchFile {
        file: String,
        name: String,
        files: String,
    },
    #[error("this URL was already used to log {file} in; nothing to do")]
    AlreadyUsed { file: String },
    #[error(
        "this URL is the login of {other}, not of {file}: complete it for {other}, or open \
         {file}.consent-url for {file}'s own"
    )]
    OtherFile { file: String, other: String },
    #[error(
        "this URL is not from the login {file}.consent-url shows now (its state does not \
         match; it may have been replaced by a newer one): open {file}.consent-url again"
    )]
    StateMismatch { file: String },
    #[error(
        "the upstream did not log {file} in ({error}{}): open {file}.consent-url to try again",
        description.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Declined {
        file: String,
        error: String,
        description: Option<String>,
    },
    #[error(
        "redeeming the code for {file} failed: {reason}; open {file}.consent-url to try again"
    )]
    Redeem { file: String, reason: String },
}

/// Upstream text shown back to a user is bounded and printable: the redirect
/// is attacker-supplied (anyone can craft one).
fn shown(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
}

/// Parse what the user pasted: the full URL, or just its query (`?code=…`).
pub fn parse_redirect(text: &str) -> Result<Redirect, LoginError> {
    let text = text.trim();
    let query = match Url::parse(text) {
        Ok(url) => url.query().unwrap_or_default().to_owned(),
        Err(_) => text.trim_start_matches('?').to_owned(),
    };
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "code" => &mut code,
            "state" => &mut state,
            "error" => &mut error,
            "error_description" => &mut description,
            _ => continue,
        };
        // A repeated parameter is a forged URL, not one an upstream made.
        if slot.replace(v.into_owned()).is_some() {
            return Err(LoginError::NotARedirect);
        }
    }
    match (code, state, error) {
        (_, state, Some(error)) => Ok(Redirect::Error {
            state,
            error: shown(&error),
            description: description.as_deref().map(shown),
        }),
        (Some(code), Some(state), None) if !code.is_empty() => Ok(Redirect::Code {
            code: SecretString::from(code),
            state,
        }),
        _ => Err(LoginError::NotARedirect),
    }
}

/// `url` with the value of its `state` parameter left out (for logs).
pub fn without_state(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return url.to_owned();
    };
    if !parsed.query_pairs().any(|(k, _)| k == "state") {
        return url.to_owned();
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| match &*k {
            "state" => (k.into_owned(), "…".to_owned()),
            _ => (k.into_owned(), v.into_owned()),
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

/// Compare states without an early exit, so timing tells nothing about a guess.
pub fn same_state(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The state file a platform's own redeemer reads (see [`CodeLoginConfig::state_file`]).
pub fn state_document(p: &Pending, cfg: &CodeLoginConfig, client_id: &str) -> SecretString {
    SecretString::from(
        serde_json::json!({
            "state": p.state,
            "code_verifier": p.verifier.expose_secret(),
            "redirect_uri": cfg.redirect_uri,
            "client_id": client_id,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CodeLoginConfig {
        CodeLoginConfig {
            authorization_url: "https://kc.example/realms/R/protocol/openid-connect/auth".into(),
            redirect_uri: "http://127.0.0.1:8400/callback".into(),
            login_hint: Some("ada".into()),
            state_file: None,
            redirect_listen: None,
        }
    }

    #[test]
    fn the_url_carries_state_and_an_s256_challenge_of_the_verifier() {
        let p = start(&cfg(), "tokenfs", Some("openid"), SystemTime::UNIX_EPOCH).unwrap();
        let url = Url::parse(&p.url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["state"], p.state);
        assert_eq!(q["scope"], "openid offline_access");
        assert_eq!(q["login_hint"], "ada");
        assert_eq!(q["code_challenge_method"], "S256");
        let want =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                p.verifier.expose_secret().as_bytes(),
            ));
        assert_eq!(q["code_challenge"], want);
        assert!(!p.url.contains(p.verifier.expose_secret()));
        assert!(!format!("{p:?}").contains(&p.state));
        let other = start(&cfg(), "tokenfs", None, SystemTime::UNIX_EPOCH).unwrap();
        assert_ne!(other.state, p.state);
        assert!(p.is_current(SystemTime::UNIX_EPOCH + MAX_AGE - Duration::from_secs(1)));
        assert!(!p.is_current(SystemTime::UNIX_EPOCH + MAX_AGE));
    }

    #[test]
    fn redirects_parse_from_a_url_or_a_query_and_forgeries_are_refused() {
        let Redirect::Code { code, state } =
            parse_redirect(" http://127.0.0.1:8400/callback?state=s1&code=c%2B1&iss=x\n").unwrap()
        else {
            panic!("a code")
        };
        assert_eq!((code.expose_secret(), state.as_str()), ("c+1", "s1"));
        assert!(matches!(
            parse_redirect("?code=c&state=s").unwrap(),
            Redirect::Code { .. }
        ));
        let Redirect::Error {
            error, description, ..
        } = parse_redirect("https://x/cb?error=access_denied&error_description=no%1b[2K&state=s")
            .unwrap()
        else {
            panic!("an error")
        };
        assert_eq!(error, "access_denied");
        assert_eq!(description.as_deref(), Some("no[2K"));
        for bad in [
            "https://x/cb",
            "https://x/cb?code=c",
            "https://x/cb?state=s",
            "https://x/cb?code=&state=s",
            "https://x/cb?code=a&code=b&state=s",
        ] {
            assert!(
                matches!(parse_redirect(bad), Err(LoginError::NotARedirect)),
                "{bad}"
            );
        }
    }

    #[test]
    fn states_compare_exactly() {
        assert!(same_state("abc", "abc"));
        assert!(!same_state("abc", "abd"));
        assert!(!same_state("abc", "abcd"));
        assert!(!same_state("", "a"));
    }
}
