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

/// The running Keycloak, if this test can also mount (each skips or, in CI,
/// fails as [`Keycloak::get`] and [`fuse_available`] say).
fn keycloak_and_fuse(test: &str) -> Option<Keycloak> {
    let kc = Keycloak::get(test)?;
    fuse_available(test).then_some(kc)
}

/// `tokenfs mount --config` with the README's config (see
/// [`Keycloak::readme_config`]) at `dir/api`.
fn mount(
    kc: &Keycloak,
    dir: &Path,
    offline: &str,
    azure: bool,
    edit: impl Fn(String) -> String,
) -> Mount {
    let config = kc.readme_config(dir, offline, azure, edit);
    Mount::start_at(&dir.join("api"), &["--config", config.to_str().unwrap()])
}

/// Link `user` to `azure` through Keycloak's pages: log in as the platform does,
/// mount with both files, and consent at the URL `azure-token.consent-url` shows.
fn linked_mount(kc: &Keycloak, dir: &Path, user: &str) -> (Mount, Browser) {
    let browser = Browser::new();
    let offline = kc.redeem_code(&browser.login(&kc.login_url(), user));
    let m = mount(kc, dir, &offline, true, short_min_valid);
    assert_eq!(errno(m.read(AZURE)), libc::ENOKEY);
    browser.consent(m.read_string(CONSENT).trim(), user);
    (m, browser)
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
    let Some(kc) =
        keycloak_and_fuse("journey_login_offline_token_consent_azure_token_refresh_unlink")
    else {
        return;
    };
    let user = "alice";
    let browser = Browser::new();
    let callback = browser.login(&kc.login_url(), user);
    let offline = kc.redeem_code(&callback);

    let tmp = tempdir();
    let m = mount(&kc, tmp.path(), &offline, true, short_min_valid);

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

    // Keycloak hands out its stored token until it has less than the IdP's
    // `minValidityToken` (30 s here) left, then refreshes it at the IdP (one
    // refresh_token grant there) and hands out the new one. As that is more than
    // the file's min_valid (20 s), no read fails meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reads = 0;
    let refreshed = loop {
        reads += 1;
        let now = m.read(AZURE).map(|b| String::from_utf8(b).unwrap());
        let now = now.unwrap_or_else(|e| {
            panic!(
                "a read failed ({e}) while Keycloak held a valid token: {}",
                error_of(&m, AZURE)
            )
        });
        if now != azure {
            break now;
        }
        assert!(Instant::now() < deadline, "no new azure-token in 120 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let new = jwt_claims(&refreshed);
    assert!(new["exp"].as_u64() > az["exp"].as_u64(), "{new}");
    assert_eq!(new["sub"], az["sub"]);
    assert!(
        kc.idp_requests("refresh_token") > refreshes_before,
        "Keycloak refreshed the stored token at the IdP"
    );
    eprintln!(
        "figure: the stored Azure token was replaced {:.0} s after the link (IdP lifetime {} s); \
         {reads} reads meanwhile, none failed; tokenfs asked Keycloak {} times for it",
        linked_at.elapsed().as_secs_f64(),
        az["exp"].as_u64().unwrap() - az["iat"].as_u64().unwrap(),
        m.file_status(AZURE)["fetches"]
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
    assert_eq!(m.file_status(AZURE)["state"], "consent_required");
    assert!(m.read_string(CONSENT).starts_with(&link_prefix));
    assert_eq!(
        jwt_claims(&m.read_string("token"))["iss"],
        claims["iss"],
        "token unaffected"
    );
    for name in ["token", AZURE] {
        let st = m.file_status(name);
        eprintln!(
            "figure: {name}: {} upstream requests, {} failed, in {:.0} s since the link",
            st["fetches"],
            st["failures"],
            linked_at.elapsed().as_secs_f64()
        );
    }
}

/// `token` from a real offline token, verified against Keycloak's JWKS (through
/// discovery), refreshed across expiry with "Revoke Refresh Token" on (reuse 0):
/// each rotation is saved, and survives `tokenfs check` and a restart.
#[test]
fn offline_token_rotates_and_survives_check_and_restart() {
    let Some(kc) = keycloak_and_fuse("offline_token_rotates_and_survives_check_and_restart") else {
        return;
    };
    let offline = kc.offline_token(CLIENT, "bob");
    let tmp = tempdir();
    let discovery = |text: String| {
        text.replace("jwks_url = \"", "# jwks_url = \"").replace(
            "[files.token.verify]\n",
            &format!(
                "[files.token.verify]\ndiscovery_url = \"{}/.well-known/openid-configuration\"\n",
                kc.realm_url
            ),
        )
    };
    let config = kc.readme_config(tmp.path(), &offline, false, discovery);
    let rotated = tmp.path().join("state/offline-token");

    let out = run(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("token            OK     sub="), "{stdout}");
    assert!(!stdout.contains(&offline[..40]) && !stdout.contains(kc.secret_of(CLIENT)));
    let after_check = std::fs::read_to_string(&rotated).expect("check saved the rotated token");
    assert_ne!(after_check, offline, "Keycloak rotated the offline token");

    let mut m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let first = m.read_string("token");
    let claims = jwt_claims(&first);
    assert_eq!(claims["iss"], kc.realm_url.as_str());
    assert_eq!(claims["preferred_username"], "bob");
    // 60 s tokens, min_valid 30 s: refreshed ahead within about 30 s.
    let second = next_token(&m, "token", &first, Duration::from_secs(60));
    assert_eq!(
        jwt_claims(&second)["sid"],
        claims["sid"],
        "the same offline session"
    );
    let saved = std::fs::read_to_string(&rotated).unwrap();
    assert_ne!(saved, after_check, "each refresh rotates, and is saved");
    assert_eq!(m.stop().code(), Some(0));

    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let third = m.read_string("token");
    assert_ne!(third, second);
    assert_eq!(jwt_claims(&third)["sid"], claims["sid"]);
    assert_eq!(m.file_status("token")["state"], "fresh");

    // A spent offline token is refused: the rotation was real.
    let (status, body) = kc.token_request(
        CLIENT,
        &[("grant_type", "refresh_token"), ("refresh_token", &offline)],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    eprintln!("figure: a spent offline token: {body}");
}

/// Two daemons on two mountpoints with one config (one state directory) share
/// one rotating Keycloak offline token: each refreshes in turn with the newest
/// rotation, so Keycloak never sees a spent token (it would end the session),
/// and a `tokenfs check` beside them takes its turn too.
#[test]
fn two_daemons_share_one_rotating_offline_token() {
    let Some(kc) = keycloak_and_fuse("two_daemons_share_one_rotating_offline_token") else {
        return;
    };
    let offline = kc.offline_token(CLIENT, "grace");
    let tmp = tempdir();
    let config = kc.readme_config(tmp.path(), &offline, false, |t| t);
    let config = config.to_str().unwrap();
    let a = Mount::start_at(&tmp.path().join("a"), &["--config", config]);
    let b = Mount::start_at(&tmp.path().join("b"), &["--config", config]);
    let (mut last_a, mut last_b) = (a.read_string("token"), b.read_string("token"));
    let sid = jwt_claims(&last_a)["sid"].clone();
    for _ in 0..2 {
        last_a = next_token(&a, "token", &last_a, Duration::from_secs(60));
        last_b = next_token(&b, "token", &last_b, Duration::from_secs(60));
    }
    let out = run(&["check", "--config", config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (m, token) in [(&a, &last_a), (&b, &last_b)] {
        assert_eq!(jwt_claims(token)["sid"], sid, "one offline session");
        assert_eq!(
            m.file_status("token")["failures"],
            0,
            "{}",
            m.file_status("token")
        );
        assert!(!m.proc.stderr().contains("invalid_grant"));
    }
    let log = a.proc.stderr() + &b.proc.stderr();
    assert!(
        log.contains("using the refresh token another tokenfs saved"),
        "{log}"
    );
    let (status, body) = kc.token_request(
        CLIENT,
        &[("grant_type", "refresh_token"), ("refresh_token", &offline)],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "rotated"
    );
}

/// An offline session revoked by an admin, or idle past its timeout: `EIO`, and
/// `.status` quotes Keycloak's reason.
#[test]
fn offline_session_revoked_or_idle_expired_is_eio_with_the_reason() {
    let Some(kc) =
        keycloak_and_fuse("offline_session_revoked_or_idle_expired_is_eio_with_the_reason")
    else {
        return;
    };
    // Idles out 15 s after it was last used.
    let idle = kc.offline_token(SHORT_CLIENT, "dave");
    let revoked = kc.offline_token(CLIENT, "carol");
    kc.revoke_consent("carol", CLIENT);
    std::thread::sleep(Duration::from_secs(17));

    let short = |text: String| {
        text.replace(
            "client_id = \"domino-tokenfs\"",
            "client_id = \"domino-tokenfs-short\"",
        )
    };
    for (user, offline, edit) in [("carol", revoked, None), ("dave", idle, Some(short))] {
        let tmp = tempdir();
        let m = mount(&kc, tmp.path(), &offline, false, |t| match edit {
            Some(f) => f(t),
            None => t,
        });
        assert_eq!(errno(m.read("token")), libc::EIO, "{user}");
        let status = m.file_status("token");
        assert_eq!(status["state"], "failed", "{user}: {status}");
        let error = status["last_error"].as_str().unwrap();
        assert!(error.contains("invalid_grant"), "{user}: {error}");
        assert!(!error.contains(&offline[..40]), "no token in .status");
        eprintln!("figure: {user}: .status last_error: {error}");
    }
}

/// The exchange's other answers: a client without the token-exchange
/// permission (403), and a link whose refresh the IdP refuses (Keycloak says
/// `token_expired` once, then `not_linked`: both are consent expired).
#[test]
fn exchange_without_permission_and_after_the_idp_revoked_the_grant() {
    let Some(kc) =
        keycloak_and_fuse("exchange_without_permission_and_after_the_idp_revoked_the_grant")
    else {
        return;
    };
    // 403: the other client, with an offline token of its own.
    let tmp = tempdir();
    let other = kc.offline_token(OTHER_CLIENT, "frank");
    let config = kc.readme_config(tmp.path(), &other, true, |t| {
        short_min_valid(t).replace(
            "client_id = \"domino-tokenfs\"",
            "client_id = \"domino-other\"",
        )
    });
    write_file(
        &tmp.path().join("client-secret"),
        kc.secret_of(OTHER_CLIENT),
        0o600,
    );
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    m.read_string("token");
    assert_eq!(errno(m.read(AZURE)), libc::EIO);
    let error = error_of(&m, AZURE);
    assert!(
        error.contains("403") && error.contains("token-exchange permission"),
        "{error}"
    );
    drop(m);

    let tmp = tempdir();
    let (m, _browser) = linked_mount(&kc, tmp.path(), "erin");
    let azure = eventually(Duration::from_secs(10), "azure-token after consent", || {
        m.read(AZURE).ok()
    });
    kc.idp_revoke("erin-entra-oid");
    assert_eq!(m.read(AZURE).unwrap(), azure, "served until its deadline");
    let errno_after = eventually(Duration::from_secs(70), "the revoked grant to show", || {
        m.read(AZURE).err().map(|e| e.raw_os_error().unwrap())
    });
    assert_eq!(errno_after, libc::EKEYEXPIRED, "{}", error_of(&m, AZURE));
    assert!(m.path(CONSENT).exists());
    // Keycloak dropped the stored token: the next exchange says not_linked.
    let (status, body) = kc.exchange(CLIENT, &m.read_string("token"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("not_linked")),
        "{body}"
    );
    let failures = m.file_status(AZURE)["failures"].as_u64().unwrap();
    eventually(Duration::from_secs(70), "tokenfs to ask again", || {
        let _ = m.read(AZURE);
        (m.file_status(AZURE)["failures"].as_u64().unwrap() > failures).then_some(())
    });
    assert_eq!(
        errno(m.read(AZURE)),
        libc::EKEYEXPIRED,
        "still expired, not never given"
    );
}

/// One server's side of [`the_dev_issuer_answers_as_keycloak_does`].
struct Side {
    token_url: String,
    client_id: String,
    secret: String,
    access_token: String,
    spent_refresh_token: String,
    refresh_token: String,
}

impl Side {
    /// A refresh of `offline` (which the server rotates): the side, with the
    /// access token it got and the now spent `offline`.
    fn new(token_url: &str, client_id: &str, secret: &str, offline: &str) -> Side {
        let mut side = Side {
            token_url: token_url.into(),
            client_id: client_id.into(),
            secret: secret.into(),
            access_token: String::new(),
            spent_refresh_token: offline.into(),
            refresh_token: String::new(),
        };
        let (status, body) =
            side.post(&[("grant_type", "refresh_token"), ("refresh_token", offline)]);
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["refresh_token"], offline, "rotated");
        side.access_token = body["access_token"].as_str().unwrap().into();
        side.refresh_token = body["refresh_token"].as_str().unwrap().into();
        side
    }

    fn post(&self, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let mut form = form.to_vec();
        if !form.iter().any(|(k, _)| *k == "client_id") {
            form.push(("client_id", &self.client_id));
        }
        if !form.iter().any(|(k, _)| *k == "client_secret") {
            form.push(("client_secret", &self.secret));
        }
        let answer = reqwest::blocking::Client::new()
            .post(&self.token_url)
            .form(&form)
            .send()
            .unwrap();
        (answer.status().as_u16(), answer.json().unwrap_or_default())
    }

    fn exchange(&self, subject: &str, issuer: &str) -> (u16, serde_json::Value) {
        self.post(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("requested_issuer", issuer),
        ])
    }
}

/// The embedded issuer (`--dev`, `dev-issuer`) stands in for Keycloak, so it
/// must answer as Keycloak does: the same requests to both (rotating refresh
/// tokens on both), the same status, `error` and `error_description`.
#[test]
fn the_dev_issuer_answers_as_keycloak_does() {
    let Some(kc) = Keycloak::get("the_dev_issuer_answers_as_keycloak_does") else {
        return;
    };
    let dev = DevIssuer::start(&["--rotate-refresh-tokens"]);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().to_owned();
    let sides = [
        Side::new(
            &kc.token_url,
            CLIENT,
            kc.secret_of(CLIENT),
            &kc.offline_token(CLIENT, "grace"),
        ),
        Side::new(
            &dev.token_url,
            "tokenfs",
            &read(&dev.client_secret_file),
            &read(&dev.offline_token_file),
        ),
    ];
    type Case = fn(&Side) -> (u16, serde_json::Value);
    // The spent refresh token last: Keycloak ends the session when it sees one.
    let cases: [(&str, Case); 9] = [
        ("an unknown refresh token", |s| {
            s.post(&[("grant_type", "refresh_token"), ("refresh_token", "x.y.z")])
        }),
        ("an unknown client", |s| {
            s.post(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &s.refresh_token),
                ("client_id", "nobody"),
            ])
        }),
        ("a wrong client secret", |s| {
            s.post(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &s.spent_refresh_token),
                ("client_secret", "wrong"),
            ])
        }),
        ("an unknown grant type", |s| {
            s.post(&[("grant_type", "urn:x")])
        }),
        ("an exchange of a token that is none", |s| {
            s.exchange("garbage", "azure")
        }),
        ("an exchange to an unknown provider", |s| {
            s.exchange(&s.access_token, "nope")
        }),
        ("an exchange for a user never linked", |s| {
            s.exchange(&s.access_token, "azure")
        }),
        ("a spent refresh token", |s| {
            s.post(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &s.spent_refresh_token),
            ])
        }),
        (
            "the newest refresh token, after a spent one was sent",
            |s| {
                s.post(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &s.refresh_token),
                ])
            },
        ),
    ];
    let shape = |(status, body): (u16, serde_json::Value)| {
        (
            status,
            body["error"].as_str().unwrap_or("-").to_owned(),
            body["error_description"].as_str().unwrap_or("-").to_owned(),
            body.get("account-link-url").is_some(),
        )
    };
    let mut differ = Vec::new();
    for (name, case) in cases {
        let [real, dev] = [shape(case(&sides[0])), shape(case(&sides[1]))];
        eprintln!("figure: {name}: Keycloak {real:?}, dev issuer {dev:?}");
        if real != dev {
            differ.push(format!("{name}: Keycloak {real:?}, dev issuer {dev:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "the dev issuer differs:\n{}",
        differ.join("\n")
    );
}

/// Why the consent URL is Keycloak's `idp_link` action and not the
/// `account-link-url` Keycloak's exchange answers with: that URL carries a hash
/// of the subject token's session, and Keycloak accepts it only in the browser
/// session whose login made that session.
#[test]
fn account_link_url_works_only_in_the_session_that_minted_the_offline_token() {
    let Some(kc) = keycloak_and_fuse(
        "account_link_url_works_only_in_the_session_that_minted_the_offline_token",
    ) else {
        return;
    };
    let user = "frank";
    let platform = Browser::new();
    let offline = kc.redeem_code(&platform.login(&kc.login_url(), user));
    let tmp = tempdir();
    let m = mount(&kc, tmp.path(), &offline, true, |t| {
        short_min_valid(t).replace(
            "requested_issuer = \"azure\"",
            "requested_issuer = \"azure\"\nconsent_link = \"account-link-url\"",
        )
    });
    assert_eq!(errno(m.read(AZURE)), libc::ENOKEY);
    let url = m.read_string(CONSENT);
    assert!(
        url.starts_with(&format!("{}/broker/azure/link?", kc.realm_url)),
        "{url}"
    );

    // Another browser, logged in to Keycloak as the same user: the hash names
    // another session.
    let other = Browser::new();
    other.login(&kc.login_url(), user);
    let (ok, result) = other.try_consent(url.trim(), user);
    eprintln!("figure: account-link-url in another session: {result}");
    assert!(
        !ok && result["error"]
            .as_str()
            .unwrap()
            .contains("Invalid Request"),
        "{result}"
    );
    // The browser whose login minted the offline token: that Keycloak session
    // ended when the platform redeemed the code for an offline token.
    let (ok, result) = platform.try_consent(url.trim(), user);
    eprintln!("figure: account-link-url in the minting browser: {result}");
    assert!(
        !ok && result["url"]
            .as_str()
            .unwrap()
            .contains("link_error=not_logged_in"),
        "{result}"
    );
    assert!(kc.links(user).is_empty(), "nothing linked");
}

/// What `token.consent-url` shows during a device login: the URL, and the code.
fn device_instructions(m: &Mount) -> Option<(String, String)> {
    let text = String::from_utf8(m.read("token.consent-url").ok()?).unwrap();
    let mut lines = text.lines();
    let url = lines.next()?.to_owned();
    let code = lines.next()?.strip_prefix("code: ")?.to_owned();
    Some((url, code))
}

/// A user with no offline token gets from `cat token` to a token by following
/// only what the filesystem shows: `ENOKEY` and a verification URL with a code;
/// declined → a new code at the next read; approved in Keycloak's own pages →
/// the next read is served and the offline token saved; the offline session
/// revoked → `EKEYEXPIRED` and a new code once the cached token's deadline
/// passes; approved again → served again.
#[test]
fn device_login_from_the_filesystem_and_again_after_the_session_is_revoked() {
    let Some(kc) = keycloak_and_fuse("device_login_from_the_filesystem_and_again") else {
        return;
    };
    let user = "heidi";
    let tmp = tempdir();
    let config = kc.readme_device_config(tmp.path(), |t| t);
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let (url, code) = device_instructions(&m).expect("token.consent-url");
    assert!(
        url.starts_with(&format!("{}/device", kc.realm_url)) && url.contains(&code),
        "{url}"
    );
    let browser = Browser::new();

    assert_eq!(browser.device(&url, user, false), "denied");
    let (url, _) = eventually(
        Duration::from_secs(30),
        "a new code after the decline",
        || {
            assert_eq!(errno(m.read("token")), libc::ENOKEY);
            device_instructions(&m).filter(|(_, c)| *c != code)
        },
    );

    assert_eq!(browser.device(&url, user, true), "approved");
    let approved = Instant::now();
    let token = eventually(Duration::from_secs(30), "the token after approval", || {
        m.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    eprintln!(
        "device login: approval to the first served read {:?}",
        approved.elapsed()
    );
    assert_eq!(jwt_claims(&token)["preferred_username"], user);
    assert!(!m.path("token.consent-url").exists());
    let saved = tmp.path().join("state/offline-token");
    let offline = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(jwt_claims(&offline)["typ"], "Offline");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    kc.revoke_consent(user, "domino-tokenfs");
    let (url, _) = eventually(
        Duration::from_secs(90),
        "a login asked for again",
        || match m.read("token") {
            Err(e) if e.raw_os_error() == Some(libc::EKEYEXPIRED) => device_instructions(&m),
            _ => None,
        },
    );
    assert_eq!(browser.device(&url, user, true), "approved");
    let again = eventually(
        Duration::from_secs(30),
        "the token after the new login",
        || m.read("token").ok().map(|b| String::from_utf8(b).unwrap()),
    );
    assert_ne!(again, token);
    let renewed = std::fs::read_to_string(&saved).unwrap();
    assert_ne!(renewed, offline, "the new login's offline token saved");

    m.assert_shows_none_of(&[&offline, &renewed, kc.secret_of("domino-tokenfs")]);
}

/// The code login against the real Keycloak, as the README configures it: the
/// user opens `token.consent-url`, logs in on Keycloak's page, and hands the
/// address the browser landed on to `tokenfs consent`; the daemon redeems it
/// with its PKCE verifier, the next read is served and the offline token saved.
/// The same URL again is refused; after the offline session is revoked the file
/// asks again (`EKEYEXPIRED`) and a second login serves it again.
#[test]
fn code_login_with_tokenfs_consent_and_again_after_the_session_is_revoked() {
    let Some(kc) = keycloak_and_fuse("code_login_with_tokenfs_consent") else {
        return;
    };
    // Not heidi: the device test revokes heidi's consent, which would end this
    // test's session too.
    let user = "ivan";
    let tmp = tempdir();
    let config = kc.readme_code_config(tmp.path());
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let file = m.path("token");
    let file = file.to_str().unwrap();
    let login = |expected: i32| {
        assert_eq!(errno(m.read("token")), expected);
        let url = m.read_string("token.consent-url").trim_end().to_owned();
        assert!(
            url.starts_with(&format!("{}/protocol/openid-connect/auth?", kc.realm_url)),
            "{url}"
        );
        // A browser of its own each time: no Keycloak session carried over.
        let landed = Browser::new().login(&url, user);
        assert!(landed.starts_with(CALLBACK), "{landed}");
        let started = Instant::now();
        let out = run(&["consent", file, &landed]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = m.read_string("token");
        eprintln!(
            "code login: consent to the first served read {:?}",
            started.elapsed()
        );
        (landed, token)
    };
    let (landed, token) = login(libc::ENOKEY);
    assert_eq!(jwt_claims(&token)["preferred_username"], user);
    let saved = tmp.path().join("state/offline-token");
    let offline = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(
        jwt_claims(&offline)["typ"],
        "Offline",
        "offline_access was asked for"
    );

    let replay = run(&["consent", file, &landed]);
    let err = String::from_utf8_lossy(&replay.stderr);
    assert!(
        !replay.status.success() && err.contains("already used"),
        "{err}"
    );

    kc.revoke_consent(user, "domino-tokenfs");
    eventually(Duration::from_secs(90), "a login asked for again", || {
        let failed = m.read("token").err()?.raw_os_error();
        (failed == Some(libc::EKEYEXPIRED)).then_some(())
    });
    let (_, again) = login(libc::EKEYEXPIRED);
    assert_ne!(again, token);
    let renewed = std::fs::read_to_string(&saved).unwrap();
    assert_ne!(renewed, offline, "the new login's offline token saved");

    let code = reqwest::Url::parse(&landed)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    m.assert_shows_none_of(&[&offline, &renewed, &code, kc.secret_of("domino-tokenfs")]);
}

/// The device login against a certified third-party provider (oidc-provider,
/// the brokered IdP): its own confirmation, login and consent pages, its JWT
/// access token, and its rotating refresh token used for the next token.
#[test]
fn device_login_against_a_third_party_provider() {
    let Some(kc) = keycloak_and_fuse("device_login_against_a_third_party_provider") else {
        return;
    };
    let tmp = tempdir();
    let (m, saved) = idp_mount(
        &kc,
        tmp.path(),
        "tokenfs-device",
        &format!(
            "device_authorization_url = \"{}/device/auth\"\nscope = \"openid offline_access\"\n\
             login = \"device\"\n",
            kc.idp_url
        ),
    );
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let (url, code) = device_instructions(&m).expect("token.consent-url");
    assert!(url.starts_with(&kc.idp_url) && url.contains(&code), "{url}");
    assert_eq!(Browser::new().device_at_idp(&url, "heidi"), "approved");
    let token = eventually(Duration::from_secs(30), "the token after approval", || {
        m.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    assert_the_idps_token_rotates(&m, &token, &saved);
}

/// The code login against a certified third-party provider (oidc-provider):
/// its login and consent pages, PKCE S256 checked by it, the landing address
/// handed over by `tokenfs consent`, its rotating refresh token saved.
#[test]
fn code_login_against_a_third_party_provider() {
    let Some(kc) = keycloak_and_fuse("code_login_against_a_third_party_provider") else {
        return;
    };
    let tmp = tempdir();
    let (m, saved) = idp_mount(
        &kc,
        tmp.path(),
        "tokenfs-code",
        &format!(
            "authorization_url = \"{}/auth\"\nscope = \"openid\"\nlogin = \"code\"\n\
             redirect_uri = \"{CALLBACK}\"\n",
            kc.idp_url
        ),
    );
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let url = m.read_string("token.consent-url").trim_end().to_owned();
    assert!(url.starts_with(&format!("{}/auth?", kc.idp_url)), "{url}");
    let (ok, landed) = Browser::new().try_run(
        "consent",
        serde_json::json!({"url": url, "idp_username": "heidi", "idp_password": "heidi-idp-pw",
                           "callback_prefix": CALLBACK}),
    );
    assert!(ok, "{landed}");
    let landed = landed["url"].as_str().unwrap().to_owned();
    let out = run(&["consent", m.path("token").to_str().unwrap(), &landed]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = m.read_string("token");
    assert_the_idps_token_rotates(&m, &token, &saved);
}

/// A mount of one file, `token`, logging in at the brokered IdP as its client
/// `client` (secret `<client>-secret`) with the `login` settings; and where
/// its refresh token is saved.
fn idp_mount(kc: &Keycloak, dir: &Path, client: &str, login: &str) -> (Mount, std::path::PathBuf) {
    let secret = dir.join("client-secret");
    write_file(&secret, &format!("{client}-secret"), 0o600);
    let saved = dir.join("state/refresh-token");
    let config = dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"{client}\"\n\
             client_secret_file = \"{}\"\n{login}refresh_token_file = \"{}\"\n\
             rotated_refresh_token_file = \"{}\"\nmin_valid = \"20s\"\n",
            kc.idp_url,
            secret.display(),
            dir.join("none-yet").display(),
            saved.display(),
        ),
        0o600,
    );
    let m = Mount::start_at(&dir.join("api"), &["--config", config.to_str().unwrap()]);
    (m, saved)
}

/// `token` is heidi's JWT for the resource, and the provider's 60 s token is
/// refreshed with its rotating refresh token, the rotation saved.
fn assert_the_idps_token_rotates(m: &Mount, token: &str, saved: &Path) {
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "heidi-entra-oid");
    assert_eq!(claims["aud"], IDP_RESOURCE);
    let first_refresh = std::fs::read_to_string(saved).unwrap();
    let next = next_token(m, "token", token, Duration::from_secs(90));
    assert_eq!(jwt_claims(&next)["sub"], "heidi-entra-oid");
    assert_ne!(
        std::fs::read_to_string(saved).unwrap(),
        first_refresh,
        "rotated and saved"
    );
}
