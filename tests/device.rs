//! Device login (`login = "device"`) against the embedded issuer, which answers
//! as Keycloak does: pending, `slow_down`, a code declined, a code expiring
//! unused, then approved; the next read is served and the offline token saved.
//! (`tests/keycloak.rs` runs the same journey against the real Keycloak.)

mod common;

use std::time::Duration;

use common::*;

fn stats(iss: &DevIssuer) -> serde_json::Value {
    reqwest::blocking::get(format!("{}/dev/stats", iss.base_url()))
        .unwrap()
        .json()
        .unwrap()
}

/// The person's answer at the issuer's device page.
fn decide(iss: &DevIssuer, code: &str, approve: bool) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/dev/device", iss.base_url()))
        .form(&[
            ("user_code", code),
            ("user", "alice"),
            ("approve", &approve.to_string()),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The URL and the code `token.consent-url` shows.
fn instructions(m: &Mount) -> Option<(String, String)> {
    let text = String::from_utf8(m.read("token.consent-url").ok()?).unwrap();
    let mut lines = text.lines();
    let url = lines.next()?.to_owned();
    let code = lines.next()?.strip_prefix("code: ")?.to_owned();
    Some((url, code))
}

/// A config whose `token` logs in by device code against `iss`, with no refresh
/// token yet; and where the login's token is saved.
fn device_config(
    iss: &DevIssuer,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let saved = dir.join("state/offline-token");
    let config = dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"tokenfs\"\n\
             client_secret_file = \"{}\"\nscope = \"openid offline_access\"\nlogin = \"device\"\n\
             refresh_token_file = \"{}\"\nrotated_refresh_token_file = \"{}\"\n",
            iss.token_url,
            iss.client_secret_file.display(),
            dir.join("none-yet").display(),
            saved.display()
        ),
        0o600,
    );
    (config, saved)
}

/// Read `token` (it must fail with `ENOKEY`) until the code shown is not `old`.
fn next_code(m: &Mount, old: &str) -> (String, String) {
    eventually(Duration::from_secs(30), "a new code", || {
        assert_eq!(errno(m.read("token")), libc::ENOKEY);
        instructions(m).filter(|(_, c)| c != old)
    })
}

#[test]
fn device_login_pending_slow_down_declined_expired_then_approved() {
    if !fuse_available("device_login_pending_slow_down_declined_expired_then_approved") {
        return;
    }
    // Each code lives 8 s; the first poll of each is answered slow_down, so the
    // daemon's second poll comes 1 + 5 s after the code was issued.
    let iss = DevIssuer::start(&[
        "--device-interval",
        "1s",
        "--device-code-lifespan",
        "8s",
        "--device-slow-down",
    ]);
    let tmp = tempdir();
    let (config, saved) = device_config(&iss, tmp.path());
    let mut m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );

    // Never given: ENOKEY, and what to do.
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let (url, first) = instructions(&m).expect("token.consent-url");
    assert_eq!(url, format!("{}/device?user_code={first}", iss.realm_url));
    let page = reqwest::blocking::get(&url).unwrap().text().unwrap();
    assert!(page.contains(&first), "{page}");

    // Unused, the code expires; no new one is asked for until a read.
    eventually(Duration::from_secs(30), "the first code to expire", || {
        m.proc.stderr().contains("expired unused").then_some(())
    });
    assert_eq!(
        stats(&iss)["device_authorizations"],
        1,
        "no code without a read"
    );
    let (_, second) = next_code(&m, &first);
    assert_eq!(stats(&iss)["device_authorizations"], 2);

    // Declined: the next read shows a new code.
    decide(&iss, &second, false);
    eventually(Duration::from_secs(30), "the decline seen", || {
        m.proc.stderr().contains("the user declined").then_some(())
    });
    let (_, third) = next_code(&m, &second);

    // Approved: the next read is served, and the offline token saved.
    decide(&iss, &third, true);
    let token = eventually(Duration::from_secs(30), "the token after approval", || {
        m.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    assert_eq!(jwt_claims(&token)["preferred_username"], "alice");
    assert!(!m.path("token.consent-url").exists());
    assert!(
        stats(&iss)["slow_downs"].as_u64().unwrap() >= 3,
        "{}",
        stats(&iss)
    );
    let offline = std::fs::read_to_string(&saved).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A restart continues from the saved token: no login.
    m.stop();
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(m.read_string("token").starts_with("eyJ"));
    assert_eq!(stats(&iss)["device_authorizations"], 3);
    let status = String::from_utf8(m.read(".status").unwrap()).unwrap();
    for shown in [status, m.proc.stderr()] {
        assert!(!shown.contains(&offline), "the offline token is shown");
    }
}

#[test]
fn mount_dev_login_starts_with_a_device_login() {
    if !fuse_available("mount_dev_login_starts_with_a_device_login") {
        return;
    }
    let m = Mount::start(&["--dev", "--dev-login", "--dev-user", "carol"]);
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let (url, code) = instructions(&m).expect("token.consent-url");
    // The page a person opens approves as the --dev user.
    let page = reqwest::blocking::get(&url).unwrap().text().unwrap();
    assert!(
        page.contains(&code) && page.contains("value=\"carol\""),
        "{page}"
    );
    let base = url.split("/realms/").next().unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{base}/dev/device"))
        .form(&[
            ("user_code", code.as_str()),
            ("user", "carol"),
            ("approve", "true"),
        ])
        .send()
        .unwrap();
    assert!(r.text().unwrap().contains("Device Login Successful"));
    let token = eventually(Duration::from_secs(30), "the token", || {
        m.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    assert_eq!(jwt_claims(&token)["preferred_username"], "carol");
}

/// Entra's device login: no code in the URL (the second line of
/// `.consent-url` is the code to type), `authorization_pending` until the user
/// approves, then the Azure token, and the refresh token saved.
#[test]
fn an_entra_file_logs_in_by_device_code() {
    if !fuse_available("an_entra_file_logs_in_by_device_code") {
        return;
    }
    let iss = DevIssuer::start(&["--device-interval", "1s"]);
    let tmp = tempdir();
    let saved = tmp.path().join("state/entra-refresh-token");
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.azure-token]\nsource = \"entra\"\nauthority = \"{}\"\ntenant = \"{}\"\n\
             client_id = \"tokenfs\"\nscope = \"https://storage.azure.com/.default offline_access\"\n\
             login = \"device\"\nrefresh_token_file = \"{}\"\nrotated_refresh_token_file = \"{}\"\n",
            iss.base_url(),
            tokenfs::issuer::DEFAULT_TENANT,
            tmp.path().join("none-yet").display(),
            saved.display()
        ),
        0o600,
    );
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(errno(m.read("azure-token")), libc::ENOKEY);
    let text = m.read_string("azure-token.consent-url");
    let mut lines = text.lines();
    let url = lines.next().unwrap();
    let code = lines.next().unwrap().strip_prefix("code: ").unwrap();
    assert_eq!(
        url,
        format!("{}/device", iss.realm_url),
        "no code in Entra's URL"
    );
    decide(&iss, code, true);
    let token = eventually(Duration::from_secs(30), "the Azure token", || {
        m.read("azure-token")
            .ok()
            .map(|b| String::from_utf8(b).unwrap())
    });
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], "https://storage.azure.com");
    assert!(saved.exists(), "the refresh token saved");
}

/// `tokenfs login FILE` from a terminal before any mount: it prints the URL and
/// the code, waits for the approval, saves the token; the mount then serves at
/// once, with no login of its own.
#[test]
fn tokenfs_login_before_the_mount() {
    if !fuse_available("tokenfs_login_before_the_mount") {
        return;
    }
    let iss = DevIssuer::start(&["--device-interval", "1s"]);
    let tmp = tempdir();
    let (config, saved) = device_config(&iss, tmp.path());
    let config = config.to_str().unwrap();
    let out = run(&["login", "nope", "--config", config]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its files: token"));

    let mut login = Proc::spawn(&["login", "token", "--config", config], &[]);
    let printed = eventually(Duration::from_secs(30), "the URL and the code", || {
        let out = login.stdout();
        (out.lines().count() >= 2).then_some(out)
    });
    let mut lines = printed.lines();
    let url = lines.next().unwrap();
    let url = url.strip_prefix("open ").unwrap_or_else(|| panic!("{url}"));
    let code = lines
        .next()
        .unwrap()
        .strip_prefix("code: ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(url.ends_with(&format!("user_code={code}")), "{url}");
    decide(&iss, &code, true);
    let status = login.exits_within(Duration::from_secs(30), "the approval");
    assert!(status.success(), "{}", login.stderr());
    let out = eventually(Duration::from_secs(5), "the last line", || {
        let out = login.stdout();
        out.contains("logged in: token sub=").then_some(out)
    });
    assert!(
        out.lines().any(|l| l.starts_with("logged in: token sub=")),
        "{out}"
    );
    assert!(saved.exists());

    let m = Mount::start_at(&tmp.path().join("api"), &["--config", config]);
    assert_eq!(
        jwt_claims(&m.read_string("token"))["preferred_username"],
        "alice"
    );
    assert_eq!(
        stats(&iss)["device_authorizations"],
        1,
        "the mount needed no login"
    );
}

/// One login for all of a user's workloads: two daemons on one config (one
/// state directory) each show a code; once the first's is approved, the second
/// takes the refresh token that login saved and serves, its own code never
/// approved and no third one asked for.
#[test]
fn one_device_login_serves_every_daemon_sharing_its_state() {
    if !fuse_available("one_device_login_serves_every_daemon_sharing_its_state") {
        return;
    }
    let iss = DevIssuer::start(&["--device-interval", "1s"]);
    let tmp = tempdir();
    let (config, saved) = device_config(&iss, tmp.path());
    let config = config.to_str().unwrap();
    let a = Mount::start_at(&tmp.path().join("a"), &["--config", config]);
    let b = Mount::start_at(&tmp.path().join("b"), &["--config", config]);
    assert_eq!(errno(a.read("token")), libc::ENOKEY);
    assert_eq!(errno(b.read("token")), libc::ENOKEY);
    let (_, code_a) = instructions(&a).expect("a's token.consent-url");
    let (_, code_b) = instructions(&b).expect("b's token.consent-url");
    assert_ne!(code_a, code_b);

    decide(&iss, &code_a, true);
    let token_a = eventually(Duration::from_secs(30), "a's token", || {
        a.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    assert!(saved.exists(), "a's login saved");
    let token_b = eventually(Duration::from_secs(30), "b's token", || {
        b.read("token").ok().map(|b| String::from_utf8(b).unwrap())
    });
    for token in [&token_a, &token_b] {
        assert_eq!(jwt_claims(token)["preferred_username"], "alice");
    }
    assert_ne!(
        token_a, token_b,
        "b got its own token with a's refresh token"
    );
    assert!(
        b.proc
            .stderr()
            .contains("using the refresh token another tokenfs saved"),
        "{}",
        b.proc.stderr()
    );
    assert!(!b.path("token.consent-url").exists());
    assert_eq!(
        stats(&iss)["device_authorizations"],
        2,
        "no login asked for after a's"
    );
}
