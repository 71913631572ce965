//! `azure-token` in `mount --dev`: the consent flow and the min-valid rule,
//! through the mount, against the embedded issuer over HTTP.

mod common;

use std::time::Duration;

use common::*;

const FILE: &str = "azure-token";
const CONSENT: &str = "azure-token.consent-url";

/// `http://127.0.0.1:PORT` of the embedded issuer, from `.status`.
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
        mount.issuer_base()
    );
    let answer = reqwest::blocking::Client::new().post(url).send().unwrap();
    assert!(answer.status().is_success(), "{}", answer.text().unwrap());
}

fn exchanges(mount: &Mount) -> u64 {
    mount.issuer_stats()["token_exchange"].as_u64().unwrap()
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
        mount.issuer_base(),
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

/// `warn` lines saying a token below min_valid is served.
fn short_warnings(log: &str) -> usize {
    log.matches("serving a token below min_valid").count()
}

#[test]
fn an_azure_token_shorter_than_min_valid_is_served_down_to_the_floor() {
    if !fuse_available("an_azure_token_shorter_than_min_valid_is_served_down_to_the_floor") {
        return;
    }
    // Every Azure token lives 20 s, less than the 30 s min_valid: the best there is,
    // so it is served down to the 5 s floor, and reads never fail.
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
    let mut tokens = std::collections::BTreeSet::new();
    while start.elapsed() < Duration::from_secs(35) {
        let token = String::from_utf8(mount.read(FILE).expect("a token")).unwrap();
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        let left = claims["exp"].as_f64().unwrap() - now_secs();
        assert!(left > 4.95, "served with {left:.2} s left, under the floor");
        tokens.insert(token);
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = exchanges(&mount) - before;
    eprintln!(
        "figure: 35 s of reads: {} tokens, {asked} exchanges, no failed read",
        tokens.len()
    );
    assert!(tokens.len() >= 2, "refreshed before the floor");
    assert!(
        asked <= tokens.len() as u64 + 1,
        "{asked} exchanges for {} tokens",
        tokens.len()
    );
    let why = mount.file_status(FILE)["below_min_valid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("less than min_valid (30s)"), "{why}");
    // A token obtained after the last read was never read: one more line then.
    let warned = short_warnings(&mount.proc.stderr());
    assert!(
        (tokens.len()..=tokens.len() + 1).contains(&warned),
        "one warn line per token: {warned} for {} tokens",
        tokens.len()
    );
}

/// One run of [`near_expiry_stored_tokens_fail_reads_for_at_most_the_floor_per_lifetime`]:
/// seconds of failed reads per lifetime, and the tokens served.
fn failed_reads_per_lifetime(lifetime: u64, min_valid: u64, lifetimes: u64) -> (f64, usize) {
    let issuer = DevIssuer::start(&[
        "--linked",
        "--azure-lifetime",
        &format!("{lifetime}s"),
        "--azure-min-validity",
        "1s",
    ]);
    let tmp = tempdir();
    let azure = format!(
        "\n[files.azure-token]\nsource = \"token-exchange\"\ntoken_url = \"{}\"\nclient_id = \"tokenfs\"\n\
         client_secret_file = \"{}\"\nsubject = \"token\"\nrequested_issuer = \"azure\"\n\
         redirect_uri = \"http://127.0.0.1/linked\"\nmin_valid = \"{min_valid}s\"\n",
        issuer.token_url,
        issuer.client_secret_file.display()
    );
    let config = issuer.config(tmp.path(), "", &azure);
    let mount = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let start = std::time::Instant::now();
    let mut failed = Duration::ZERO;
    let mut tokens = std::collections::BTreeSet::new();
    let step = Duration::from_millis(100);
    while start.elapsed() < Duration::from_secs(lifetime * lifetimes) {
        match mount.read(FILE) {
            Ok(token) => {
                let token = String::from_utf8(token).unwrap();
                let claims: serde_json::Value =
                    jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
                let left = claims["exp"].as_f64().unwrap() - now_secs();
                assert!(left > 4.95, "served with {left:.2} s left, under the floor");
                tokens.insert(token);
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += step;
            }
        }
        std::thread::sleep(step);
    }
    // A token obtained after the last read was never read: one more line then.
    let warned = short_warnings(&mount.proc.stderr());
    assert!(
        warned <= tokens.len() + 1,
        "one warn line per token: {warned} for {} tokens",
        tokens.len()
    );
    (failed.as_secs_f64() / lifetimes as f64, tokens.len())
}

/// Keycloak with a `minValidityToken` under the floor hands out its stored token
/// until it has nearly expired: tokenfs serves it down to the floor, refuses it
/// below, and asks again just after it expired. Reads fail for at most the floor
/// plus a request per lifetime; none ever gets a token under the floor. With
/// `min_valid` under the lifetime and over it.
#[test]
fn near_expiry_stored_tokens_fail_reads_for_at_most_the_floor_per_lifetime() {
    if !fuse_available("near_expiry_stored_tokens_fail_reads_for_at_most_the_floor_per_lifetime") {
        return;
    }
    let cases = [(15, 30, 4), (20, 10, 3)];
    let results: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|&(l, m, n)| s.spawn(move || failed_reads_per_lifetime(l, m, n)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for ((lifetime, min_valid, _), (per_lifetime, tokens)) in cases.iter().zip(results) {
        eprintln!(
            "figure: {lifetime} s stored tokens, minValidityToken 1 s, min_valid {min_valid} s, \
             floor 5 s: {per_lifetime:.1} s of failed reads per lifetime, {tokens} tokens"
        );
        // The floor (5 s), the retry just after expiry (0.5 s) and a request.
        assert!(
            per_lifetime <= 6.5,
            "{per_lifetime:.1} s of failed reads per lifetime"
        );
        assert!(tokens >= 3, "{tokens} tokens");
    }
}
