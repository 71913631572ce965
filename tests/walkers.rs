//! Readers that walk the home never trip over the mount: before any read and
//! before consent, `ls -l`, `stat`, `du`, `find`, `tar` of what can be read,
//! and Python's `os.path.exists`/`pathlib` succeed. A file's first access asks
//! the upstream once; a file that cannot be served (consent needed, upstream
//! down) is then an empty file to them, and they ask nothing more. Only
//! reading such a file fails, with the contract's errno; a served file's size
//! is the length a read returns.

mod common;

use std::process::Command;

use common::*;

fn stats(iss: &DevIssuer) -> serde_json::Value {
    reqwest::blocking::get(format!("{}/dev/stats", iss.base_url()))
        .unwrap()
        .json()
        .unwrap()
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

#[test]
fn walking_the_mount_before_any_read_and_before_consent_never_fails() {
    if !fuse_available("walking_the_mount_before_any_read_and_before_consent_never_fails") {
        return;
    }
    let iss = DevIssuer::start(&[]);
    let tmp = tempdir();
    // `token` is served at the first read; `login` waits for a device login.
    let config = iss.config(tmp.path(), "", "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "[files.login]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"tokenfs\"\n\
         client_secret_file = \"{}\"\nlogin = \"device\"\nrefresh_token_file = \"{}\"\n\
         rotated_refresh_token_file = \"{}\"\n",
        iss.token_url,
        iss.client_secret_file.display(),
        tmp.path().join("none-yet").display(),
        tmp.path().join("state/login").display(),
    );
    write_file(&config, &text, 0o600);
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let dir = m.dir.to_str().unwrap().to_owned();

    let ls = sh(&format!("ls -l {dir}"));
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{ls:?}");
    assert!(!listing.contains('?'), "{listing}");
    for walk in [
        format!("stat {dir}/token {dir}/login"),
        format!("du -a {dir}"),
        format!("find {dir} -type f"),
        format!(
            "python3 -c 'import os, pathlib, sys; d = sys.argv[1]; \
             assert os.path.exists(d + \"/login\") and pathlib.Path(d, \"login\").exists(); \
             assert os.path.getsize(d + \"/login\") == 0' {dir}"
        ),
    ] {
        let out = sh(&walk);
        assert!(out.status.success(), "{walk}: {out:?}");
    }
    let find = String::from_utf8_lossy(&sh(&format!("find {dir} -type f")).stdout).into_owned();
    assert!(
        find.contains("/token\n") && find.contains("/login\n"),
        "{find}"
    );
    // The first access asked once per file; walking again asks nothing.
    let before = stats(&iss);
    assert_eq!(before["device_authorizations"], 1, "{before}");
    for _ in 0..3 {
        assert!(sh(&format!("ls -l {dir} && du -a {dir}")).status.success());
    }
    assert_eq!(
        stats(&iss),
        before,
        "walking again asked the upstream for nothing"
    );

    // `token` is served, its size is its length, and `tar` of it works;
    // reading `login` fails with the contract's errno.
    let token = m.read("token").unwrap();
    let size = std::fs::metadata(m.path("token")).unwrap().len();
    assert_eq!(size, token.len() as u64);
    let tar = sh(&format!("tar -cf - -C {dir} token | tar -tvf -"));
    assert!(tar.status.success(), "{tar:?}");
    let listed = String::from_utf8_lossy(&tar.stdout);
    assert!(listed.contains(&format!(" {size} ")), "{listed}");
    assert_eq!(errno(m.read("login")), libc::ENOKEY);
    // A stat after the failed read still succeeds, and says empty.
    assert_eq!(std::fs::metadata(m.path("login")).unwrap().len(), 0);
    assert!(m.path("login.consent-url").exists());
}

/// The first read of a fresh mount, with or without a stat before it, never
/// ends empty and its size is the token's: the read's own attribute request
/// brings the token's size, and no invalidation races it. (With an
/// invalidation after every new token, about one fresh mount in three read an
/// empty `token`.)
#[test]
fn the_first_read_of_a_fresh_mount_gets_the_whole_token() {
    if !fuse_available("the_first_read_of_a_fresh_mount_gets_the_whole_token") {
        return;
    }
    for round in 0..30 {
        let m = Mount::start(&["--dev"]);
        let stat = (round % 2 == 0).then(|| std::fs::metadata(m.path("token")).unwrap().len());
        let token = m.read("token").unwrap();
        assert!(token.starts_with(b"eyJ"), "round {round}: {token:?}");
        let size = std::fs::metadata(m.path("token")).unwrap().len();
        assert_eq!(size, token.len() as u64);
        assert_eq!(stat.unwrap_or(size), size, "round {round}");
    }
}
