//! The direct Entra ID source through a real mount, against a programmable
//! Entra-shaped endpoint on loopback.

mod common;

use std::time::Duration;

use common::*;

const FILE: &str = "azure-token";

#[test]
fn rotated_entra_refresh_token_is_persisted_and_used_after_a_restart() {
    if !fuse_available("rotated_entra_refresh_token_is_persisted_and_used_after_a_restart") {
        return;
    }
    let entra = FakeEntra::start("entra-rt-0", EntraMode::Ok { lifetime: 3600 });
    let tmp = tempdir();
    let config = entra.config(tmp.path(), "entra-rt-0", "");
    let mut first = Mount::start(&["--config", config.to_str().unwrap()]);
    let token1 = first.read_string(FILE);
    assert!(!token1.is_empty());
    let rotated = tmp.path().join("entra-rotated");
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "entra-rt-1");
    assert!(first.stop().success());

    // The endpoint now accepts only entra-rt-1: a restart must present it.
    let second = Mount::start(&["--config", config.to_str().unwrap()]);
    let token2 = second.read_string(FILE);
    assert_ne!(token2, token1);
    assert_eq!(entra.presented(), ["entra-rt-0", "entra-rt-1"]);
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "entra-rt-2");
}

#[test]
fn each_consent_error_means_consent_and_consent_recovers_without_restart() {
    if !fuse_available("each_consent_error_means_consent_and_consent_recovers_without_restart") {
        return;
    }
    let entra = FakeEntra::start(
        "entra-rt-0",
        EntraMode::Error {
            error: "consent_required",
            code: 65001,
        },
    );
    let tmp = tempdir();
    let config = entra.config(tmp.path(), "entra-rt-0", "");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);

    assert_eq!(errno(mount.read(FILE)), libc::ENOKEY, "consent never given");
    let url = mount.read_string("azure-token.consent-url");
    assert!(url.ends_with('\n'));
    let consent = reqwest::Url::parse(url.trim()).unwrap();
    assert_eq!(consent.path(), "/contoso/oauth2/v2.0/authorize");
    assert!(url.contains("offline_access") && url.contains("code_challenge_method=S256"));
    let listing: Vec<_> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        listing.contains(&"azure-token.consent-url".to_owned()),
        "{listing:?}"
    );
    assert_eq!(mount.file_status(FILE)["state"], "consent_required");

    // Waiting on the user, not dead: the refresh token is kept and tried again
    // at each read while the login is offered (an admin's consent or a sign-in
    // elsewhere fixes it). A dead one (`invalid_grant`) is dropped: see
    // tests/code_login.rs, where a new login replaces it.
    {
        let (error, code) = ("interaction_required", 50173);
        entra.set_mode(EntraMode::Error { error, code });
        eventually(Duration::from_secs(10), error, || {
            let errno = errno(mount.read(FILE));
            let status = mount.file_status(FILE);
            let seen = status["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("expired");
            (errno == libc::EKEYEXPIRED && seen).then_some(())
        });
        assert!(mount.path("azure-token.consent-url").exists(), "{error}");
    }

    entra.set_mode(EntraMode::Ok { lifetime: 3600 });
    let token = eventually(Duration::from_secs(10), "a token after consent", || {
        mount.read(FILE).ok()
    });
    assert!(!token.is_empty());
    assert!(
        !mount.path("azure-token.consent-url").exists(),
        "gone once a token is served"
    );
    assert_eq!(mount.file_status(FILE)["state"], "fresh");
    let log = mount.proc.stderr();
    assert_eq!(
        log.matches("consent required").count(),
        1,
        "warned once per state change:\n{log}"
    );
}

#[test]
fn server_errors_and_garbage_are_eio_and_never_replace_a_valid_token() {
    if !fuse_available("server_errors_and_garbage_are_eio_and_never_replace_a_valid_token") {
        return;
    }
    let entra = FakeEntra::start("entra-rt-0", EntraMode::ServerError);
    let tmp = tempdir();
    // 20 s tokens, 5 s min_valid: servable for 15 s, refreshed ahead at ~14 s.
    let config = entra.config(tmp.path(), "entra-rt-0", "min_valid = \"5s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        errno(mount.read(FILE)),
        libc::EIO,
        "500 with nothing cached"
    );
    entra.set_mode(EntraMode::Garbage);
    eventually(Duration::from_secs(10), "garbage to be tried", || {
        let status = mount.file_status(FILE);
        let why = status["last_error"].as_str().unwrap_or_default().to_owned();
        (errno(mount.read(FILE)) == libc::EIO && why.contains("not a JSON")).then_some(())
    });

    entra.set_mode(EntraMode::Ok { lifetime: 20 });
    let mut good = eventually(Duration::from_secs(10), "a token", || mount.read(FILE).ok());
    for bad in [EntraMode::Garbage, EntraMode::ServerError] {
        entra.set_mode(bad.clone());
        // Until its deadline the valid token keeps being served, then EIO: never
        // the garbage, never an expired token.
        let mut served = 0;
        let errno = eventually(Duration::from_secs(30), "the deadline", || {
            match mount.read(FILE) {
                Ok(t) => {
                    assert_eq!(t, good, "{bad:?} must not replace the valid token");
                    served += 1;
                    None
                }
                Err(e) => Some(e.raw_os_error().unwrap()),
            }
        });
        assert_eq!(errno, libc::EIO, "{bad:?}");
        assert!(served > 0, "{bad:?}: the cached token was served meanwhile");
        let status = mount.file_status(FILE);
        assert_eq!(status["state"], "failed");
        entra.set_mode(EntraMode::Ok { lifetime: 20 });
        let next = eventually(Duration::from_secs(10), "recovery", || {
            mount.read(FILE).ok()
        });
        assert_ne!(next, good);
        good = next;
    }
}
