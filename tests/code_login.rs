//! Code login (`login = "code"`, authorization code with PKCE) against the
//! embedded issuer, which redirects at once with a code (its stand-in for a
//! person logging in): completed by `tokenfs consent` and by the daemon's
//! redirect listener; a wrong state, a replayed URL, another file's URL, a
//! declined login, and an Entra grant that dies while mounted. Secrets never
//! show. (`tests/keycloak.rs` runs the journey against the real Keycloak.)

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A uid other than the home's owner ([`USER`]).
const OTHER: u32 = 4243;

/// A `redirect_uri` nothing serves: the browser's landing address is copied.
const LANDED: &str = "http://127.0.0.1:9/landed";

/// The redirect the upstream sends the browser to, not followed.
fn landed_at(url: &str) -> String {
    let resp = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 302, "{url}");
    resp.headers()["location"].to_str().unwrap().to_owned()
}

/// `[files.NAME]` of `oauth2` logging in by code against `iss`, with no
/// refresh token yet; `extra` adds settings (e.g. `redirect_listen`).
fn code_file(iss: &DevIssuer, dir: &Path, name: &str, redirect: &str, extra: &str) -> String {
    format!(
        "[files.{name}]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"tokenfs\"\n\
         client_secret_file = \"{}\"\nscope = \"openid\"\nlogin = \"code\"\n\
         redirect_uri = \"{redirect}\"\nrefresh_token_file = \"{}\"\n\
         rotated_refresh_token_file = \"{}\"\n{extra}",
        iss.token_url,
        iss.client_secret_file.display(),
        dir.join("none-yet").display(),
        dir.join(format!("state/{name}-refresh-token")).display(),
    )
}

impl Home {
    /// A copy of the binary in a directory other uids can reach.
    fn bin(&self) -> PathBuf {
        let bin = self.tmp.path().join("tokenfs");
        if !bin.exists() {
            std::fs::copy(BIN, &bin).unwrap();
        }
        bin
    }

    /// One file, `token`, logging in by code, landing where nothing listens.
    fn token_config(&self, iss: &DevIssuer) -> PathBuf {
        self.config(&code_file(iss, self.tmp.path(), "token", LANDED, ""))
    }

    fn config(&self, text: &str) -> PathBuf {
        let config = self.tmp.path().join("config.toml");
        write_file(&config, text, 0o600);
        config
    }

    fn mount(&self, config: &Path) -> Mount {
        Mount::start_at(&self.api(), &["--config", config.to_str().unwrap()])
    }

    /// `tokenfs consent ARGS…` as `uid`: exit status, stdout, stderr.
    fn consent(&self, uid: u32, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.bin())
            .arg("consent")
            .args(args)
            .uid(uid)
            .gid(uid)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn with_state(url: &str, state: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| match &*k {
            "state" => (k.into_owned(), state.to_owned()),
            _ => (k.into_owned(), v.into_owned()),
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn query(url: &str, key: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{key} in {url}"))
}

#[test]
fn a_code_login_is_completed_by_tokenfs_consent_and_refuses_what_is_not_its_own() {
    if !fuse_available(
        "a_code_login_is_completed_by_tokenfs_consent_and_refuses_what_is_not_its_own",
    ) {
        return;
    }
    let iss = DevIssuer::start(&[]);
    let h = Home::new();
    let dir = h.tmp.path();
    let redirect = LANDED;
    let config = h.config(&format!(
        "{}{}",
        code_file(&iss, dir, "token", redirect, ""),
        code_file(&iss, dir, "other", redirect, "")
    ));
    let mut m = h.mount(&config);
    let file = m.path("token");
    let file = file.to_str().unwrap();

    // Never given: ENOKEY, and the URL to open, the same at every read.
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let url = m.read_string("token.consent-url").trim_end().to_owned();
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    assert_eq!(m.read_string("token.consent-url").trim_end(), url);
    assert!(url.starts_with(&format!(
        "{}/protocol/openid-connect/auth?client_id=tokenfs&response_type=code",
        iss.realm_url
    )));
    assert_eq!(query(&url, "code_challenge_method"), "S256");
    assert_eq!(query(&url, "scope"), "openid offline_access");
    let landed = landed_at(&url);
    assert!(landed.starts_with(redirect), "{landed}");

    // Not a redirect, a forged state, another uid: refused, and nothing redeemed.
    let (ok, _, err) = h.consent(USER, &[file, redirect]);
    assert!(
        !ok && err.contains("is not where the browser landed"),
        "{err}"
    );
    let (ok, _, err) = h.consent(USER, &[file, &with_state(&landed, "forged")]);
    assert!(!ok && err.contains("its state does not match"), "{err}");
    let (ok, _, err) = h.consent(OTHER, &[file, &landed]);
    assert!(
        !ok && err.contains("cannot read .status: Permission denied"),
        "{err}"
    );
    // Nor can another uid reach the socket: it is the owner's, 0600.
    let status: serde_json::Value = serde_json::from_str(&m.read_string(".status")).unwrap();
    let socket = status["login_socket"].as_str().unwrap().to_owned();
    let meta = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (USER, 0o600));
    let connect = Command::new("python3")
        .args([
            "-c",
            "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
            &socket,
        ])
        .uid(OTHER)
        .gid(OTHER)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&connect.stderr).contains("PermissionError"),
        "{connect:?}"
    );
    assert_eq!(errno(m.read("token")), libc::ENOKEY);

    // Another file's URL: said so, and that file's login is not spent either.
    assert_eq!(errno(m.read("other")), libc::ENOKEY);
    let other = landed_at(m.read_string("other.consent-url").trim_end());
    let (ok, _, err) = h.consent(USER, &[file, &other]);
    assert!(
        !ok && err.contains("is the login of other, not of token"),
        "{err}"
    );

    // The owner completes it: the daemon redeems, and the read is served.
    let approved = Instant::now();
    let (ok, out, err) = h.consent(USER, &[file, &landed]);
    assert!(ok, "{err}");
    assert!(out.starts_with("logged in: token sub="), "{out}");
    let token = m.read_string("token");
    println!(
        "code login: consent to first served read {:?}",
        approved.elapsed()
    );
    assert_eq!(jwt_claims(&token)["preferred_username"], "alice");
    assert!(m.read("token.consent-url").is_err(), "the URL is gone");
    let saved = dir.join("state/token-refresh-token");
    assert!(saved.exists(), "the refresh token saved");

    // Replayed: already used; root may complete one too (by name, --mountpoint).
    let (ok, _, err) = h.consent(USER, &[file, &landed]);
    assert!(!ok && err.contains("already used"), "{err}");
    let out = run(&[
        "consent",
        "other",
        &other,
        "--mountpoint",
        m.dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.read("other").is_ok());

    // Nothing secret in what anyone sees.
    let status = m.read_string(".status");
    assert!(status.contains("\"login_socket\""), "{status}");
    let refresh = std::fs::read_to_string(&saved).unwrap();
    m.assert_shows_none_of(&[&query(&landed, "code"), refresh.trim()]);
    assert!(m.stop().success());
    let log = m.proc.stderr();
    assert!(!log.contains(&query(&url, "state")), "the state in the log");
}

#[test]
fn a_declined_code_login_offers_a_new_url() {
    if !fuse_available("a_declined_code_login_offers_a_new_url") {
        return;
    }
    let iss = DevIssuer::start(&[]);
    let h = Home::new();
    let config = h.token_config(&iss);
    let m = h.mount(&config);
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let url = m.read_string("token.consent-url").trim_end().to_owned();
    let declined = landed_at(&format!("{url}&dev_deny=1"));
    let file = m.path("token");
    let (ok, _, err) = h.consent(USER, &[file.to_str().unwrap(), &declined]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(
            "the upstream did not log token in (access_denied: The user denied the request)"
        ),
        "{err}"
    );
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let next = m.read_string("token.consent-url").trim_end().to_owned();
    assert_ne!(query(&next, "state"), query(&url, "state"), "a new login");
}

/// The daemon serves `redirect_uri` itself: the browser's redirect completes
/// the login, and the page says so.
#[test]
fn the_redirect_listener_completes_a_code_login_from_the_browser() {
    if !fuse_available("the_redirect_listener_completes_a_code_login_from_the_browser") {
        return;
    }
    let iss = DevIssuer::start(&[]);
    let h = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = h.config(&code_file(
        &iss,
        h.tmp.path(),
        "token",
        &format!("http://127.0.0.1:{port}/callback"),
        &format!("redirect_listen = \"127.0.0.1:{port}\"\n"),
    ));
    let m = h.mount(&config);
    assert_eq!(errno(m.read("token")), libc::ENOKEY);
    let url = m.read_string("token.consent-url").trim_end().to_owned();
    eventually(Duration::from_secs(10), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // A stranger's request first: no login waits for it.
    let stray =
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/callback?code=x&state=y")).unwrap();
    assert_eq!(stray.status(), 400);
    let approved = Instant::now();
    let page = reqwest::blocking::get(&url).unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    assert!(page.contains("logged in: token sub="), "{page}");
    assert!(m.read("token").is_ok());
    println!(
        "redirect listener: approval to first served read {:?}",
        approved.elapsed()
    );
}

/// Entra by code login: consent, then the grant dies while mounted (the
/// user's sessions revoked), the file asks again (`EKEYEXPIRED`), and a new
/// consent serves it again.
#[test]
fn an_entra_file_logs_in_by_code_and_again_when_the_grant_dies() {
    if !fuse_available("an_entra_file_logs_in_by_code_and_again_when_the_grant_dies") {
        return;
    }
    let iss = DevIssuer::start(&["--azure-lifetime", "4s"]);
    let h = Home::new();
    let dir = h.tmp.path();
    let config = h.config(&format!(
        "[files.azure-token]\nsource = \"entra\"\nauthority = \"{}\"\ntenant = \"{}\"\n\
         client_id = \"azure-app\"\nscope = \"https://storage.azure.com/.default\"\n\
         redirect_uri = \"http://127.0.0.1:9/azure\"\nlogin_hint = \"alice\"\n\
         refresh_token_file = \"{}\"\nrotated_refresh_token_file = \"{}\"\nmin_valid = \"1s\"\n",
        iss.base_url(),
        tokenfs::issuer::DEFAULT_TENANT,
        dir.join("none-yet").display(),
        dir.join("state/entra").display(),
    ));
    let m = h.mount(&config);
    let file = m.path("azure-token");
    let file = file.to_str().unwrap();
    let login = |m: &Mount, errno_wanted: i32| {
        assert_eq!(errno(m.read("azure-token")), errno_wanted);
        let url = m
            .read_string("azure-token.consent-url")
            .trim_end()
            .to_owned();
        assert!(url.contains("/oauth2/v2.0/authorize?"), "{url}");
        let (ok, out, err) = h.consent(USER, &[file, &landed_at(&url)]);
        assert!(ok, "{err}");
        assert!(out.starts_with("logged in: azure-token"), "{out}");
        m.read_string("azure-token")
    };
    let first = login(&m, libc::ENOKEY);
    assert_eq!(jwt_claims(&first)["aud"], "https://storage.azure.com");

    let admin = format!(
        "{}/dev/entra?user=alice&state=invalid_grant",
        iss.base_url()
    );
    let r = reqwest::blocking::Client::new().post(admin).send().unwrap();
    assert_eq!(r.status(), 200);
    // The cached token serves until it expires; then consent is asked again.
    eventually(Duration::from_secs(20), "the grant found dead", || {
        let failed = m.read("azure-token").err()?.raw_os_error();
        (failed == Some(libc::EKEYEXPIRED)).then_some(())
    });
    let again = login(&m, libc::EKEYEXPIRED);
    assert_ne!(again, first);
}

/// `tokenfs login FILE` for a code login, from a terminal before any mount: it
/// prints the URL, takes the landing address pasted on stdin, saves the token;
/// the mount then serves at once.
#[test]
fn tokenfs_login_takes_the_landing_address_on_stdin() {
    if !fuse_available("tokenfs_login_takes_the_landing_address_on_stdin") {
        return;
    }
    use std::io::{BufRead, Write};
    let iss = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        &code_file(&iss, tmp.path(), "token", LANDED, ""),
        0o600,
    );
    let mut login = Command::new(BIN)
        .args(["login", "token", "--config", config.to_str().unwrap()])
        .env("STATE_DIRECTORY", state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(login.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .strip_prefix("open ")
        .expect("open URL")
        .trim()
        .to_owned();
    let mut stdin = login.stdin.take().unwrap();
    writeln!(stdin, "{}", with_state(&landed_at(&url), "forged")).unwrap();
    writeln!(stdin, "{}", landed_at(&url)).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = login.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut login.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{rest}{err}");
    assert!(rest.contains("logged in: token sub="), "{rest}");
    assert!(
        err.contains("its state does not match"),
        "the forged one refused: {err}"
    );
    let requests = iss.token_requests();
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(m.read("token").is_ok(), "served from the saved token");
    assert!(iss.token_requests() > requests);
}

/// Two daemons sharing a state directory: a code login completed in one
/// serves the other's next read, whose own login is dropped.
#[test]
fn one_code_login_serves_every_daemon_sharing_its_state() {
    if !fuse_available("one_code_login_serves_every_daemon_sharing_its_state") {
        return;
    }
    let iss = DevIssuer::start(&[]);
    let h = Home::new();
    let config = h.token_config(&iss);
    let a = h.mount(&config);
    let b = Mount::start_at(
        &h.tmp.path().join("b"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(errno(a.read("token")), libc::ENOKEY);
    assert_eq!(errno(b.read("token")), libc::ENOKEY);
    let url_a = a.read_string("token.consent-url").trim_end().to_owned();
    let url_b = b.read_string("token.consent-url").trim_end().to_owned();
    assert_ne!(
        query(&url_a, "state"),
        query(&url_b, "state"),
        "a login each"
    );
    let file = a.path("token");
    let (ok, _, err) = h.consent(USER, &[file.to_str().unwrap(), &landed_at(&url_a)]);
    assert!(ok, "{err}");
    let token = eventually(Duration::from_secs(10), "b served", || {
        b.read("token").ok().map(|t| String::from_utf8(t).unwrap())
    });
    assert!(b.read("token.consent-url").is_err(), "b asks for nothing");
    assert!(b
        .proc
        .stderr()
        .contains("using the refresh token another tokenfs saved"));
    assert_eq!(jwt_claims(&token)["preferred_username"], "alice");
}
