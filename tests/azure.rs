//! `azure-token` in `mount --dev`: the consent flow and the min-valid rule,
//! through the mount, against the embedded issuer over HTTP.

mod common;

use std::time::Duration;

use common::*;

const FILE: &str = "azure-token";
const CONSENT: &str = "azure-token.consent-url";

/// `http://127.0.0.1:PORT` of the embedded issuer, from `.status`.
fn issuer_base(mount: &Mount) -> String {
    let upstream = mount.file_status("token")["upstream"]
        .as_str()
        .unwrap()
        .to_owned();
    upstream.split("/realms/").next().unwrap().to_owned()
}

fn open_consent_url(mount: &Mount) {
    let url = mount.read_string(CONSENT);
    assert!(url.ends_with('\n'), "the URL and a newline");
    let page = reqwest::blocking::get(url.trim()).unwrap();
    assert!(page.status().is_success());
    assert!(
        page.text().unwrap().contains("Consent granted"),
        "the page says so"
    );
}

fn set_consent(mount: &Mount, state: &str) {
    let url = format!(
        "{}/dev/consent?user=alice&alias=azure&state={state}",
        issuer_base(mount)
    );
    let answer = reqwest::blocking::Client::new().post(url).send().unwrap();
    assert!(answer.status().is_success(), "{}", answer.text().unwrap());
}

fn exchanges(mount: &Mount) -> u64 {
    let stats: serde_json::Value =
        reqwest::blocking::get(format!("{}/dev/stats", issuer_base(mount)))
            .unwrap()
            .json()
            .unwrap();
    stats["token_exchange"].as_u64().unwrap()
}

#[test]
fn consent_flow_enokey_consent_token_revoke_ekeyexpired_reconsent() {
    if !fuse_available("consent_flow_enokey_consent_token_revoke_ekeyexpired_reconsent") {
        return;
    }
    // 45 s Azure tokens with the default 30 s min_valid: servable for 15 s.
    let mount = Mount::start(&[
        "--dev",
        "--dev-user",
        "alice",
        "--dev-azure-lifetime",
        "45s",
    ]);

    assert!(
        !mount.path(CONSENT).exists(),
        "no consent URL before anyone asked"
    );
    let cat = std::process::Command::new("cat")
        .arg(mount.path(FILE))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&cat.stderr).contains("Required key not available"));
    assert!(cat.stdout.is_empty());
    assert_eq!(errno(mount.read(FILE)), libc::ENOKEY);
    assert_eq!(mount.file_status(FILE)["state"], "consent_required");
    let names: Vec<_> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&CONSENT.to_owned()),
        "ls shows it: {names:?}"
    );
    assert!(
        mount
            .proc
            .stderr()
            .contains("consent required: open http://127.0.0.1:"),
        "the log says what to do"
    );

    open_consent_url(&mount);
    let token = eventually(Duration::from_secs(10), "a token after consent", || {
        mount.read(FILE).ok()
    });
    let token = String::from_utf8(token).unwrap();
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    let jwks = format!(
        "{}/{}/discovery/v2.0/keys",
        issuer_base(&mount),
        claims["tid"].as_str().unwrap()
    );
    let verified = verify_jwt(&token, &jwks);
    assert_eq!(verified["aud"], "https://storage.azure.com");
    assert!(verified["iss"]
        .as_str()
        .unwrap()
        .starts_with("https://sts.windows.net/"));
    assert!(
        verified["exp"].as_f64().unwrap() - now_secs() >= 29.0,
        "min_valid left"
    );
    assert!(!mount.path(CONSENT).exists(), "gone once a token is served");
    assert_eq!(mount.file_status(FILE)["state"], "fresh");

    // Revoked: the cached token is served until its deadline, then EKEYEXPIRED.
    set_consent(&mount, "revoked");
    let errno = eventually(
        Duration::from_secs(40),
        "the revocation to show",
        || match mount.read(FILE) {
            Ok(t) => {
                assert_eq!(t, token.as_bytes(), "only the still-valid token is served");
                None
            }
            Err(e) => Some(e.raw_os_error().unwrap()),
        },
    );
    assert_eq!(errno, libc::EKEYEXPIRED);
    assert!(mount.path(CONSENT).exists());
    assert_eq!(mount.file_status(FILE)["state"], "consent_required");

    open_consent_url(&mount);
    let renewed = eventually(Duration::from_secs(10), "a token after re-consent", || {
        mount.read(FILE).ok()
    });
    assert_ne!(renewed, token.as_bytes());
    assert!(!mount.path(CONSENT).exists());
    // `token` was served all along.
    assert!(mount.read("token").is_ok());
}

#[test]
fn an_azure_token_shorter_than_min_valid_is_never_served_and_reads_fail_cleanly() {
    if !fuse_available(
        "an_azure_token_shorter_than_min_valid_is_never_served_and_reads_fail_cleanly",
    ) {
        return;
    }
    // Keycloak hands out the stored Entra token as is: here it always has less
    // than the 30 s min_valid left.
    let mount = Mount::start(&[
        "--dev",
        "--dev-user",
        "alice",
        "--dev-azure-lifetime",
        "20s",
    ]);
    set_consent(&mount, "linked");
    let before = exchanges(&mount);
    let start = std::time::Instant::now();
    let mut reads = 0;
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            errno(mount.read(FILE)),
            libc::EIO,
            "never a token with less than min_valid"
        );
        reads += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = exchanges(&mount) - before;
    eprintln!("{reads} reads in 5 s caused {asked} exchanges");
    assert!(asked >= 1, "the upstream was asked");
    assert!(
        asked <= 8,
        "{asked} exchanges for {reads} reads: backoff, not one per read"
    );
    let why = mount.file_status(FILE)["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("less than min_valid"), "{why}");
    assert!(!mount.path(CONSENT).exists(), "not a consent problem");
}
