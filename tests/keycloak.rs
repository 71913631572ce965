//! tokenfs against a real Keycloak (`tests/keycloak/start`): the README's
//! production config, real offline tokens, Keycloak's own login and account-link
//! pages in a real browser, and the internal→external exchange to a brokered
//! third-party OpenID provider (`oidc-provider`) that stands in for Entra ID.
//! Each test uses a user of its own, so they run in parallel.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const AZURE: &str = "azure-token";
const CONSENT: &str = "azure-token.consent-url";

/// The README's config with tokens this realm can serve: its access tokens
/// live 60 s and the IdP's 60 s, shorter than the README's `min_valid`s.
fn short_min_valid(text: String) -> String {
    text.replace("min_valid = \"5m\"", "min_valid = \"20s\"")
}

fn mount(kc: &Keycloak, dir: &Path, offline: &str, edit: impl Fn(String) -> String) -> Mount {
    let config = kc.readme_config(dir, offline, edit);
    Mount::start_at(&dir.join("api"), &["--config", config.to_str().unwrap()])
}

/// Read `name` until it holds a token other than `old`; the new one.
fn next_token(m: &Mount, name: &str, old: &str, limit: Duration) -> String {
    eventually(limit, &format!("a new {name}"), || {
        m.read(name)
            .ok()
            .map(|b| String::from_utf8(b).unwrap())
            .filter(|t| t != old)
    })
}

fn error_of(m: &Mount, name: &str) -> String {
    m.file_status(name)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The whole journey: log in at Keycloak's page, get the offline token as the
/// platform does, mount, `token`, `azure-token` → ENOKEY and the consent URL,
/// Keycloak's link page → the IdP's login and consent, the Azure token, the
/// stored token refreshed by Keycloak after it expired, then the link removed →
/// the cached token until its deadline, `EKEYEXPIRED` and the URL again.
#[test]
fn journey_login_offline_token_consent_azure_token_refresh_unlink() {
    let test = "journey_login_offline_token_consent_azure_token_refresh_unlink";
    let Some(kc) = Keycloak::get(test) else {
        return;
    };
    if !fuse_available(test) {
        return;
    }
    let user = "alice";
    let browser = Browser::new();
    let callback = browser.login(&kc.login_url(), user);
    let offline = kc.redeem_code(&callback);

    let tmp = tempdir();
    let m = mount(&kc, tmp.path(), &offline, short_min_valid);

    let token = m.read_string("token");
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], kc.realm_url.as_str());
    assert_eq!(claims["preferred_username"], user);
    assert_eq!(m.file_status("token")["state"], "fresh");

    assert_eq!(errno(m.read(AZURE)), libc::ENOKEY, "{}", m.proc.stderr());
    assert_eq!(m.file_status(AZURE)["state"], "consent_required");
    let url = m.read_string(CONSENT);
    // Keycloak's idp_link action, the username prefilled.
    let link_prefix = format!("{}/protocol/openid-connect/auth?", kc.realm_url);
    assert!(url.starts_with(&link_prefix), "{url}");
    assert!(url.ends_with('\n'));
    assert!(url.contains("kc_action=idp_link%3Aazure"), "{url}");
    assert!(url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Flinked"));
    assert!(url.contains(&format!("login_hint={user}")), "{url}");

    let refreshes_before = kc.idp_requests("refresh_token");
    let landed = browser.consent(url.trim(), user);
    assert!(
        landed["url"].as_str().unwrap().starts_with(LINKED),
        "{landed}"
    );
    assert_eq!(kc.links(user), ["azure"]);

    let azure = eventually(Duration::from_secs(10), "azure-token after consent", || {
        m.read(AZURE).ok().map(|b| String::from_utf8(b).unwrap())
    });
    let az = jwt_claims(&azure);
    assert_eq!(az["iss"], kc.idp_url.as_str(), "{az}");
    assert_eq!(az["aud"], IDP_RESOURCE, "{az}");
    assert!(!m.path(CONSENT).exists(), "the consent URL is gone");
    let linked_at = Instant::now();

    // Keycloak hands out its stored token until it has expired, then refreshes
    // it at the IdP (one refresh_token grant there) and hands out the new one.
    let refreshed = next_token(&m, AZURE, &azure, Duration::from_secs(120));
    let new = jwt_claims(&refreshed);
    assert!(new["exp"].as_u64() > az["exp"].as_u64(), "{new}");
    assert_eq!(new["sub"], az["sub"]);
    assert!(
        kc.idp_requests("refresh_token") > refreshes_before,
        "Keycloak refreshed the stored token at the IdP"
    );
    eprintln!(
        "figure: the stored Azure token was replaced {:.0} s after the link (IdP lifetime {} s)",
        linked_at.elapsed().as_secs_f64(),
        az["exp"].as_u64().unwrap() - az["iat"].as_u64().unwrap()
    );

    // The link removed: the cached token stays until its deadline, then the
    // user must consent again.
    kc.unlink(user);
    assert_eq!(m.read_string(AZURE), refreshed, "served while still valid");
    let errno_after = eventually(
        Duration::from_secs(70),
        "the link's loss to show",
        || match m.read(AZURE) {
            Ok(_) => None,
            Err(e) => Some(e.raw_os_error().unwrap()),
        },
    );
    assert_eq!(errno_after, libc::EKEYEXPIRED, "{}", error_of(&m, AZURE));
    assert_eq!(m.file_status(AZURE)["state"], "expired");
    assert!(m.read_string(CONSENT).starts_with(&link_prefix));
    assert_eq!(
        jwt_claims(&m.read_string("token"))["iss"],
        claims["iss"],
        "token unaffected"
    );
}
