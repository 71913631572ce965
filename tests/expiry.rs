//! `<file>.expires` through a real mount (`mount --dev`, 20 s tokens), and the
//! README's Python snippets run as written against one.
//!
//! A refresh raises no inotify event on a FUSE file (README, "Using the files
//! from code"), so the refresh is observed by polling `.expires`, as clients do.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// Requests the issuer's realm token endpoint has received.
fn token_requests(mount: &Mount) -> u64 {
    mount.issuer_stats()["token_requests"].as_u64().unwrap()
}

fn expires(mount: &Mount, file: &str) -> Value {
    let text = mount.read_string(&format!("{file}.expires"));
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "one line: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// Runs `f` until `file` obtained no token while it ran (its `.status`
/// generation is the same before and after), so that what it compares belongs
/// to one token even if a refresh-ahead lands meanwhile.
fn settled<T>(mount: &Mount, file: &str, mut f: impl FnMut() -> T) -> T {
    for _ in 0..5 {
        let before = mount.file_status(file)["generation"].clone();
        assert!(before.is_u64(), "{before}");
        let out = f();
        if mount.file_status(file)["generation"] == before {
            return out;
        }
    }
    panic!("a refresh landed during each of 5 tries");
}

fn names(mount: &Mount) -> Vec<String> {
    std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn expires_file_appears_with_the_first_read_matches_the_jwt_and_follows_refreshes() {
    if !fuse_available(
        "expires_file_appears_with_the_first_read_matches_the_jwt_and_follows_refreshes",
    ) {
        return;
    }
    let mount = Mount::start(&["--dev", "--dev-lifetime", "20s"]);
    let requests = token_requests(&mount);

    // Before `token` was accessed (a stat of it would issue its token): listing
    // the directory, and looking up or reading `token.expires`, find no expiry
    // and ask for nothing.
    for _ in 0..3 {
        let listed = names(&mount);
        assert!(
            !listed.iter().any(|n| n.ends_with(".expires")),
            "{listed:?}"
        );
        assert!(std::fs::metadata(&mount.dir).unwrap().is_dir());
        assert_eq!(
            errno(std::fs::metadata(mount.path("token.expires"))),
            libc::ENOENT
        );
        assert_eq!(errno(mount.read("token.expires")), libc::ENOENT);
    }
    assert_eq!(token_requests(&mount), requests, "looking asks for nothing");
    assert_eq!(mount.file_status("token")["fetches"], 0);

    // After the first read: the JWT's own `exp`, and the token's owner, mode, mtime.
    let token = mount.read_string("token");
    let (first, claims) = settled(&mount, "token", || {
        let token = mount.read_string("token");
        let expiry = expires(&mount, "token");
        let claims = jwt_claims(&token);
        let status = mount.file_status("token");
        assert_eq!(expiry["expires_on"], claims["exp"]);
        let exp = UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap());
        assert_eq!(
            expiry["expires_at"],
            humantime::format_rfc3339_seconds(exp).to_string()
        );
        assert_eq!(expiry["expires_at"], status["expires_at"]);
        assert_eq!(expiry["obtained_at"], status["obtained_at"]);
        assert_eq!(expiry["refresh_at"], status["refresh_at"]);
        let of_token = std::fs::metadata(mount.path("token")).unwrap();
        let of_expires = std::fs::metadata(mount.path("token.expires")).unwrap();
        assert_eq!(of_expires.mode() & 0o7777, 0o400);
        assert_eq!(
            (of_expires.uid(), of_expires.gid(), of_expires.mode()),
            (of_token.uid(), of_token.gid(), of_token.mode()),
            "owned like the token"
        );
        assert_eq!(
            of_expires.modified().unwrap(),
            of_token.modified().unwrap(),
            "dated like the token"
        );
        let text = mount.read_string("token.expires");
        assert_eq!(of_expires.len(), text.len() as u64);
        assert!(!text.contains(&token), "never the token");
        (expiry, claims)
    });
    assert!(!token.is_empty());
    assert!(names(&mount).contains(&"token.expires".to_owned()));

    // Reading and stat'ing it asks the upstream for nothing.
    settled(&mount, "token", || {
        let before = token_requests(&mount);
        for _ in 0..20 {
            expires(&mount, "token");
            std::fs::metadata(mount.path("token.expires")).unwrap();
        }
        assert_eq!(token_requests(&mount), before);
    });

    // `azure-token` needs consent in --dev: it has no token, so no expiry.
    assert_eq!(errno(mount.read("azure-token")), libc::ENOKEY);
    assert_eq!(
        errno(std::fs::metadata(mount.path("azure-token.expires"))),
        libc::ENOENT
    );
    assert!(!names(&mount).contains(&"azure-token.expires".to_owned()));

    // Refresh-ahead replaces the token (at ~75 % of 20 s): the expiry follows
    // without anyone reading `token`, and matches the token read then.
    let later = eventually(Duration::from_secs(60), "a refreshed expiry", || {
        let now = expires(&mount, "token");
        (now["expires_on"] != first["expires_on"]).then_some(now)
    });
    assert!(later["expires_on"].as_u64() > first["expires_on"].as_u64());
    assert_ne!(later["obtained_at"], first["obtained_at"]);
    settled(&mount, "token", || {
        let expiry = expires(&mount, "token");
        let claims_now = jwt_claims(&mount.read_string("token"));
        assert_ne!(claims_now["jti"], claims["jti"], "a new token");
        assert_eq!(expiry["expires_on"], claims_now["exp"]);
    });
}

/// The ```python block after `heading` in README.md.
fn readme_python(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[at..];
    let start = rest.find("```python\n").expect("a python block") + "```python\n".len();
    let len = rest[start..].find("```").expect("the block's end");
    rest[start..start + len].to_owned()
}

/// Whether python3 can import `azure.core` and `requests`. `bash .ci/run`
/// installs both, so under CI their absence fails the test instead of skipping it.
fn python_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import azure.core, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!(
            "{test}: python3 cannot import azure.core and requests \
             (python3 -m pip install azure-core requests)"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}; .ci/run installs them");
        }
        eprintln!("SKIPPED {why}");
    }
    ok
}

/// Runs `script` with `args`; its stdout, or a failure with its stderr (which
/// holds a traceback, never a token: the scripts print only what is compared).
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn readme_python_snippets_run_as_written() {
    if !fuse_available("readme_python_snippets_run_as_written")
        || !python_available("readme_python_snippets_run_as_written")
    {
        return;
    }
    let mount = Mount::start(&["--dev", "--dev-user", "alice"]);

    // (a) The credential, on `azure-token` once consent was given.
    assert_eq!(errno(mount.read("azure-token")), libc::ENOKEY);
    let url = mount.read_string("azure-token.consent-url");
    let page = reqwest::blocking::get(url.trim()).unwrap();
    assert!(page.status().is_success());
    let credential = readme_python("### Python: an azure-identity credential");
    assert!(
        credential.contains("class TokenFsCredential"),
        "{credential}"
    );
    let script = format!(
        "{credential}\n\
         import sys\n\
         from pathlib import Path\n\
         t = TokenFsCredential(sys.argv[1]).get_token('https://storage.azure.com/.default')\n\
         print(type(t).__name__, type(t.expires_on).__name__, t.expires_on, \
               t.token == Path(sys.argv[1]).read_text())\n"
    );
    let file = mount.path("azure-token");
    let out = eventually(Duration::from_secs(15), "a token after consent", || {
        mount.read("azure-token").ok()?;
        Some(python(&script, &[file.to_str().unwrap()]))
    });
    let words: Vec<&str> = out.split_whitespace().collect();
    let (expires_on, same) = settled(&mount, "azure-token", || {
        let out = python(&script, &[file.to_str().unwrap()]);
        let words: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        let exp = jwt_claims(&mount.read_string("azure-token"))["exp"].clone();
        (
            words[2].parse::<u64>().unwrap() == exp.as_u64().unwrap(),
            words[3].clone(),
        )
    });
    assert_eq!(&words[..2], ["AccessToken", "int"], "{out}");
    assert!(expires_on, "expires_on is the token's exp");
    assert_eq!(same, "True", "the token is the file's");

    // (b) The requests auth, against the issuer's userinfo endpoint, which
    // answers only a valid bearer token.
    let auth = readme_python("### Python: bearer auth for `requests`");
    assert!(auth.contains("class TokenFsAuth"), "{auth}");
    let realm = mount.file_status("token")["upstream"]
        .as_str()
        .unwrap()
        .strip_suffix("/protocol/openid-connect/token")
        .unwrap()
        .to_owned();
    let userinfo = format!("{realm}/protocol/openid-connect/userinfo");
    let script = format!(
        "{auth}\n\
         import sys\n\
         print(requests.get(sys.argv[1]).status_code)\n\
         session.auth = TokenFsAuth(sys.argv[2])\n\
         for _ in range(2):\n    \
             r = session.get(sys.argv[1])\n    \
             print(r.status_code, r.json()['sub'])\n"
    );
    let out = python(&script, &[&userinfo, mount.path("token").to_str().unwrap()]);
    let sub = jwt_claims(&mount.read_string("token"))["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["401", &format!("200 {sub}"), &format!("200 {sub}")],
        "refused without the token, served with it"
    );
}
