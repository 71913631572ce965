//! End to end: real `tokenfs` processes, real FUSE mounts, real HTTP.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

const MIN_VALID: f64 = 30.0;

#[test]
fn dev_mount_serves_a_verified_jwt_with_contract_attributes() {
    if !fuse_available("dev_mount_serves_a_verified_jwt_with_contract_attributes") {
        return;
    }
    let mount = Mount::start(&["--dev"]);
    let token = mount.read_string("token");
    assert!(
        !token.ends_with('\n') && !token.contains(char::is_whitespace),
        "raw token bytes, no newline"
    );

    let status = mount.file_status("token");
    let token_url = status["upstream"].as_str().unwrap();
    assert!(token_url.starts_with("http://127.0.0.1:"), "{token_url}");
    let claims = verify_jwt(&token, &token_url.replace("/token", "/certs"));
    let left = claims["exp"].as_f64().unwrap() - now_secs();
    assert!(left >= MIN_VALID - 1.0, "served with {left}s left");
    for claim in [
        "iss",
        "sub",
        "aud",
        "iat",
        "jti",
        "name",
        "preferred_username",
        "email",
    ] {
        assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
    }

    // ls -l / stat: the owner of the mountpoint's parent, 0400, real size, mtime = obtained.
    let parent = std::fs::metadata(mount.dir.parent().unwrap()).unwrap();
    let meta = std::fs::metadata(mount.path("token")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (parent.uid(), parent.gid()));
    assert_eq!(meta.mode() & 0o7777, 0o400);
    assert!(meta.is_file());
    assert_eq!(meta.len(), token.len() as u64);
    let obtained = humantime::parse_rfc3339(status["obtained_at"].as_str().unwrap()).unwrap();
    let mtime = meta.modified().unwrap();
    let skew = mtime
        .duration_since(obtained)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(1),
        "mtime {mtime:?} vs obtained_at {obtained:?}"
    );
    let dir = std::fs::metadata(&mount.dir).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o500);
    assert!(dir.is_dir());

    let ls = Command::new("ls")
        .arg("-la")
        .arg(&mount.dir)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    // azure-token, unread and waiting on consent, is listed as an empty file.
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(
        listing.contains(" 0 ") && listing.contains(" azure-token\n"),
        "{listing}"
    );
    assert!(
        listing.contains(" token\n") && listing.contains(" .status\n"),
        "{listing}"
    );
    assert!(listing.contains("-r--------"), "{listing}");

    // The token is accepted by the issuer's userinfo endpoint, as the platform API would.
    let userinfo: serde_json::Value = reqwest::blocking::Client::new()
        .get(token_url.replace("/token", "/userinfo"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(userinfo["sub"], claims["sub"]);

    // .status is JSON and never holds a secret.
    let status_text = mount.read_string(".status");
    assert!(!status_text.contains(&token));
    assert_eq!(status["state"], "fresh");
    assert_eq!(status["fetches"], 1);
    assert_eq!(status["sub"], claims["sub"]);
}

#[test]
fn reads_across_expiry_stay_valid_and_ask_the_upstream_once_per_lifetime() {
    if !fuse_available("reads_across_expiry_stay_valid_and_ask_the_upstream_once_per_lifetime") {
        return;
    }
    const LIFETIME: f64 = 20.0;
    const MIN: f64 = 5.0;
    const RUN: Duration = Duration::from_secs(50);
    let issuer = DevIssuer::start(&["--lifetime", "20s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"5s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let certs = format!("{}/protocol/openid-connect/certs", issuer.realm_url);

    let start = Instant::now();
    let mut reads = 0u64;
    let mut tokens = std::collections::BTreeSet::new();
    let size = || std::fs::metadata(mount.path("token")).unwrap().len();
    while start.elapsed() < RUN {
        let size_before = size();
        let token = mount.read_string("token");
        let now = now_secs();
        let size_after = size();
        if size_before == size_after {
            // No refresh in between: stat and read must agree.
            assert_eq!(
                size_before,
                token.len() as u64,
                "stat size equals the bytes read"
            );
        }
        // Decoding claims is cheap; verify the signature of each distinct token.
        if tokens.insert(token.clone()) {
            verify_jwt(&token, &certs);
        }
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        let left = claims["exp"].as_f64().unwrap() - now;
        assert!(
            left > MIN - 1.0,
            "read {reads}: token with {left:.1}s left served"
        );
        assert_eq!(
            std::fs::metadata(mount.path("token")).unwrap().len(),
            token.len() as u64
        );
        reads += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let requests = issuer.token_requests();
    let lifetimes = RUN.as_secs_f64() / LIFETIME;
    eprintln!(
        "{reads} reads over {}s, {} distinct tokens, {requests} upstream requests ({lifetimes:.1} lifetimes)",
        RUN.as_secs(),
        tokens.len()
    );
    // Refresh at ~80 % of 20 s: one request per ~16 s, plus the first.
    assert!(
        requests >= 3,
        "tokens must have been refreshed: {requests} requests"
    );
    assert!(
        requests as f64 <= lifetimes / 0.75 + 2.0,
        "{requests} requests for {lifetimes:.1} lifetimes"
    );
    // Every request produced a token readers saw, except perhaps one that landed
    // as the loop ended.
    assert!(
        (0..=1).contains(&(requests - tokens.len() as u64)),
        "{} tokens seen for {requests} requests",
        tokens.len()
    );
    assert!(
        reads > 50 * requests,
        "reads are served from cache, not upstream"
    );
}

#[test]
fn fifty_concurrent_readers_on_an_empty_cell_cause_one_upstream_request() {
    if !fuse_available("fifty_concurrent_readers_on_an_empty_cell_cause_one_upstream_request") {
        return;
    }
    // A slow token endpoint makes sure the readers really overlap.
    let issuer = DevIssuer::start(&["--token-delay", "500ms"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        issuer.token_requests(),
        0,
        "nothing is issued before the first read"
    );

    let barrier = Arc::new(Barrier::new(50));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let path = mount.path("token");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::read(path).unwrap()
            })
        })
        .collect();
    let tokens: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(
        tokens.iter().all(|t| t == &tokens[0] && !t.is_empty()),
        "all readers got the same token"
    );
    assert_eq!(issuer.token_requests(), 1);
    assert_eq!(mount.file_status("token")["fetches"], 1);
}

#[test]
fn only_the_owner_and_root_can_read() {
    if !fuse_available("only_the_owner_and_root_can_read") {
        return;
    }
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "uid = 4242\ngid = 4242", "");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let meta = std::fs::metadata(mount.path("token")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4242));

    let cat_as = |uid: u32| {
        Command::new("cat")
            .arg(mount.path("token"))
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let owner = cat_as(4242);
    assert!(
        owner.status.success(),
        "owner: {}",
        String::from_utf8_lossy(&owner.stderr)
    );
    assert_eq!(
        owner.stdout,
        mount.read("token").unwrap(),
        "owner and root read the same token"
    );

    let other = cat_as(4343);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("Permission denied"),
        "another uid gets EACCES: {stderr}"
    );
    assert!(other.stdout.is_empty());
}

#[test]
fn writes_creates_unlinks_renames_and_chmods_are_refused() {
    if !fuse_available("writes_creates_unlinks_renames_and_chmods_are_refused") {
        return;
    }
    let mount = Mount::start(&["--dev"]);
    let before = mount.read("token").unwrap();
    let token = mount.path("token");
    let erofs = libc::EROFS;

    let open_write = std::fs::OpenOptions::new().write(true).open(&token);
    assert_eq!(errno(open_write), erofs, "write");
    let open_append = std::fs::OpenOptions::new().append(true).open(&token);
    assert_eq!(errno(open_append), erofs, "append");
    let open_trunc = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&token);
    assert_eq!(errno(open_trunc), erofs, "truncate");
    assert_eq!(
        errno(std::fs::write(mount.path("new"), b"x")),
        erofs,
        "create"
    );
    assert_eq!(errno(std::fs::create_dir(mount.path("d"))), erofs, "mkdir");
    assert_eq!(errno(std::fs::remove_file(&token)), erofs, "unlink");
    assert_eq!(
        errno(std::fs::rename(&token, mount.path("t2"))),
        erofs,
        "rename"
    );
    let chmod = std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644));
    assert_eq!(errno(chmod), erofs, "chmod");
    let chown = std::os::unix::fs::chown(&token, Some(0), Some(0));
    assert_eq!(errno(chown), erofs, "chown");
    assert_eq!(
        errno(std::os::unix::fs::symlink("token", mount.path("l"))),
        erofs,
        "symlink"
    );

    // Nothing changed.
    assert_eq!(mount.read("token").unwrap(), before);
    let names: std::collections::BTreeSet<_> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            ".metrics",
            ".status",
            "azure-token",
            "token",
            "token.expires"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(std::fs::metadata(&token).unwrap().mode() & 0o7777, 0o400);
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    if !fuse_available("sigterm_and_sigint_unmount_and_exit_zero") {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut mount = Mount::start(&["--dev"]);
        mount.read("token").unwrap();
        mount.proc.signal(sig);
        let status = mount.proc.exits_within(STOP_LIMIT, "the signal");
        assert!(
            status.success(),
            "signal {sig}: {status}\n{}",
            mount.proc.stderr()
        );
        assert!(!is_mounted(&mount.dir), "signal {sig}: still mounted");
        assert!(
            mount.proc.stderr().contains("unmounted"),
            "{}",
            mount.proc.stderr()
        );
    }
}

#[test]
fn sigterm_while_a_reader_holds_the_file_open_still_unmounts() {
    if !fuse_available("sigterm_while_a_reader_holds_the_file_open_still_unmounts") {
        return;
    }
    let mut mount = Mount::start(&["--dev"]);
    let held = std::fs::File::open(mount.path("token")).unwrap();
    let status = mount.stop();
    assert!(status.success(), "{status}\n{}", mount.proc.stderr());
    assert!(!is_mounted(&mount.dir));
    // The holder cannot keep reading a token nobody refreshes.
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 16];
    assert_eq!(errno(held.read_at(&mut buf, 0)), libc::ENOTCONN);
}

#[test]
fn upstream_down_with_no_token_fails_reads_with_eio_and_says_why() {
    if !fuse_available("upstream_down_with_no_token_fails_reads_with_eio_and_says_why") {
        return;
    }
    // A port with nothing listening: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempdir();
    let secret = tmp.path().join("secret");
    write_file(&secret, "s", 0o600);
    let offline = tmp.path().join("offline");
    write_file(&offline, "o", 0o600);
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"http://127.0.0.1:{port}/realms/DominoRealm/protocol/openid-connect/token\"\n\
             client_id = \"c\"\nclient_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n",
            secret.display(),
            offline.display()
        ),
        0o600,
    );
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let cat = Command::new("cat")
        .arg(mount.path("token"))
        .output()
        .unwrap();
    assert!(!cat.status.success());
    assert!(
        cat.stdout.is_empty(),
        "never an error message in place of a token"
    );
    assert!(String::from_utf8_lossy(&cat.stderr).contains("Input/output error"));
    assert_eq!(errno(mount.read("token")), libc::EIO);
    let status = mount.file_status("token");
    assert_eq!(status["state"], "failed");
    let why = status["last_error"].as_str().unwrap();
    assert!(why.contains("unavailable"), "{why}");
    assert!(
        mount.proc.stderr().contains("token request failed"),
        "the log says why"
    );
}

/// Run `tokenfs mount` with `config`, expecting it to refuse to start; its stderr.
fn mount_refused(config: &std::path::Path) -> String {
    let dir = config.with_file_name("api");
    let args = [
        "mount",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut proc = Proc::spawn(&args, &[]);
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", proc.stderr());
    assert!(!is_mounted(&dir));
    proc.stderr()
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let tmp = tempdir();
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        "[files.token]\nsource = \"oauth2\"\nclient_id = \"c\"\n",
        0o600,
    );
    let stderr = mount_refused(&config);
    assert!(
        stderr.contains("files.token.token_url: missing"),
        "{stderr}"
    );

    // A group-readable secret file is refused, and the message says how to fix it.
    let secret = tmp.path().join("secret");
    write_file(&secret, "s3cret", 0o640);
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"http://127.0.0.1:1/t\"\nclient_id = \"c\"\n\
             grant = \"client_credentials\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        ),
        0o600,
    );
    let stderr = mount_refused(&config);
    assert!(
        stderr.contains("client_secret_file") && stderr.contains("chmod"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"));
}

#[test]
fn http_source_serves_the_api_proxy_token() {
    if !fuse_available("http_source_serves_the_api_proxy_token") {
        return;
    }
    let proxy = ApiProxy::start();
    let tmp = tempdir();
    let key = tmp.path().join("api-key");
    write_file(&key, "k3y", 0o600);
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"http\"\nurl = \"{}/access-token\"\n\
             headers = {{ X-Domino-Api-Key = {{ file = \"{}\" }} }}\n",
            proxy.url,
            key.display()
        ),
        0o600,
    );
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let token = mount.read_string("token");
    assert_eq!(
        token,
        proxy.last_token(),
        "the body, trimmed of its newline"
    );
    assert_eq!(mount.read_string("token"), token);
    assert_eq!(proxy.requests(), 1, "one request, then served from cache");
    assert_eq!(
        proxy.last_api_key(),
        "k3y",
        "header read from its 0600 file"
    );
}

#[test]
fn a_rotated_refresh_token_is_persisted_and_used_after_a_restart() {
    if !fuse_available("a_rotated_refresh_token_is_persisted_and_used_after_a_restart") {
        return;
    }
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens"]);
    let original = std::fs::read_to_string(&issuer.offline_token_file).unwrap();
    let tmp = tempdir();
    let rotated = tmp.path().join("rotated-offline-token");
    let config = issuer.config(
        tmp.path(),
        "",
        &format!("rotated_refresh_token_file = \"{}\"", rotated.display()),
    );
    let mut first = Mount::start(&["--config", config.to_str().unwrap()]);
    let token1 = first.read_string("token");
    let persisted = std::fs::read_to_string(&rotated).unwrap();
    assert_ne!(
        persisted, original,
        "the upstream rotated the token and it was persisted"
    );
    assert_eq!(std::fs::metadata(&rotated).unwrap().mode() & 0o777, 0o600);
    assert!(!first.proc.stderr().contains(&persisted), "never logged");
    assert!(first.stop().success());

    // The original is revoked now: only the persisted one can work.
    let mut second = Mount::start(&["--config", config.to_str().unwrap()]);
    let token2 = second.read_string("token");
    assert_ne!(token2, token1);
    assert_eq!(second.file_status("token")["state"], "fresh");
    let rotated_again = std::fs::read_to_string(&rotated).unwrap();
    assert_ne!(
        rotated_again, persisted,
        "rotated again and persisted again"
    );
    // A running daemon keeps one empty temp file ready; stopped, it leaves none.
    assert!(second.stop().success());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            n.contains("rotated")
                && n != "rotated-offline-token"
                && n != "rotated-offline-token.lock"
        })
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

/// Without `rotated_refresh_token_file` a rotation is saved in the state
/// directory: `check`, a mount and a restart each spend the last one and go on.
#[test]
fn without_a_rotated_file_rotations_go_to_the_state_directory_and_survive_check_and_restart() {
    let test =
        "without_a_rotated_file_rotations_go_to_the_state_directory_and_survive_check_and_restart";
    if !fuse_available(test) {
        return;
    }
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens"]);
    let original = std::fs::read_to_string(&issuer.offline_token_file).unwrap();
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let config = config.to_str().unwrap();

    let out = run(&["check", "--config", config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The default file is named after offline-token and a hash of its path; the
    // one this check wrote is newer than the issuer's file (others are older runs').
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let saved: Vec<_> = std::fs::read_dir(state_dir().join("rotated"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("offline-token-")
                && !name.ends_with(".lock")
                && mtime(p) >= mtime(&issuer.offline_token_file)
        })
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let rotated = saved[0].clone();
    assert_ne!(
        std::fs::read_to_string(&rotated).unwrap(),
        original,
        "rotated"
    );
    assert_eq!(std::fs::metadata(&rotated).unwrap().mode() & 0o777, 0o600);
    let after_checks = std::fs::read_to_string(&rotated).unwrap();

    let mut m = Mount::start(&["--config", config]);
    let first = m.read_string("token");
    assert!(m.stop().success());
    let m = Mount::start(&["--config", config]);
    assert_ne!(m.read_string("token"), first);
    assert_eq!(m.file_status("token")["state"], "fresh");
    assert_ne!(std::fs::read_to_string(&rotated).unwrap(), after_checks);

    // A default that cannot be written is refused before any refresh.
    let out = Command::new(BIN)
        .args(["check", "--config", config])
        .env("STATE_DIRECTORY", issuer.offline_token_file.as_os_str())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("files.token.rotated_refresh_token_file: not set, and its default"),
        "{stderr}"
    );
}

/// A refresh whose answer, which carries the rotated refresh token, arrives after
/// `timeout`: the reader gets ETIMEDOUT, but the request is not abandoned, so the
/// rotation is saved and the next start refreshes with it.
#[test]
fn a_rotating_answer_later_than_timeout_is_still_saved_and_the_grant_lives_on() {
    if !fuse_available("a_rotating_answer_later_than_timeout_is_still_saved_and_the_grant_lives_on")
    {
        return;
    }
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens", "--token-delay", "3s"]);
    let original = std::fs::read_to_string(&issuer.offline_token_file).unwrap();
    let tmp = tempdir();
    let rotated = tmp.path().join("rotated");
    let config = issuer.config(
        tmp.path(),
        "read_timeout = \"1s\"",
        &format!(
            "timeout = \"2s\"\nrotated_refresh_token_file = \"{}\"",
            rotated.display()
        ),
    );
    let mut m = Mount::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(errno(m.read("token")), libc::ETIMEDOUT);
    let token = eventually(Duration::from_secs(20), "the late answer", || {
        m.read("token").ok()
    });
    assert!(!token.is_empty());
    let saved = std::fs::read_to_string(&rotated).expect("the rotation was saved");
    assert_ne!(saved, original);
    assert_eq!(
        issuer.token_requests(),
        1,
        "one request, not abandoned and sent again"
    );
    assert!(m.stop().success());
    let m = Mount::start(&["--config", config.to_str().unwrap()]);
    let again = eventually(Duration::from_secs(20), "a token after the restart", || {
        m.read("token").ok()
    });
    assert_ne!(again, token);
    assert_eq!(
        m.file_status("token")["failures"],
        0,
        "{}",
        m.file_status("token")
    );
}

/// One grant for all of a user's daemons: two mounts on one config (one state
/// directory) and a `check` between them share a rotating refresh token, each
/// refresh locking it and taking the rotation another saved. The issuer ends the
/// whole session when a spent token comes back, so a token sent twice would fail
/// the next refresh of both, and the restart.
#[test]
fn two_daemons_and_check_on_one_config_share_a_rotating_grant_and_it_lives_on() {
    let test = "two_daemons_and_check_on_one_config_share_a_rotating_grant_and_it_lives_on";
    if !fuse_available(test) {
        return;
    }
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens", "--lifetime", "4s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"1s\"");
    let config = config.to_str().unwrap();
    let mut a = Mount::start_at(&tmp.path().join("a"), &["--config", config]);
    let mut b = Mount::start_at(&tmp.path().join("b"), &["--config", config]);
    let (mut last_a, mut last_b) = (a.read_string("token"), b.read_string("token"));
    for round in 0..3 {
        last_a = next_token(&a, "token", &last_a);
        last_b = next_token(&b, "token", &last_b);
        if round == 1 {
            let out = run(&["check", "--config", config]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(!stderr.contains("invalid_grant"), "{stderr}");
        }
    }
    for m in [&a, &b] {
        let status = m.file_status("token");
        assert_eq!(status["failures"], 0, "{status}");
        assert!(
            !m.proc.stderr().contains("invalid_grant"),
            "{}",
            m.proc.stderr()
        );
    }
    let adopted = "using the refresh token another tokenfs saved";
    assert!(
        a.proc.stderr().contains(adopted) && b.proc.stderr().contains(adopted),
        "each took the other's rotation:\n{}\n{}",
        a.proc.stderr(),
        b.proc.stderr()
    );

    assert!(a.stop().success());
    assert!(b.stop().success());
    let m = Mount::start_at(&tmp.path().join("a"), &["--config", config]);
    assert!(m.read("token").is_ok(), "{}", m.file_status("token"));
    assert_eq!(m.file_status("token")["failures"], 0);
}

#[test]
fn a_slow_upstream_fails_the_read_with_etimedout_then_serves_once_it_answers() {
    if !fuse_available("a_slow_upstream_fails_the_read_with_etimedout_then_serves_once_it_answers")
    {
        return;
    }
    let issuer = DevIssuer::start(&["--token-delay", "3s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "read_timeout = \"1s\"", "");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(errno(mount.read("token")), libc::ETIMEDOUT);
    // The request went on in the background; a later read gets its token without a
    // second request (bounded wait: the token endpoint answers after 3 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        match mount.read("token") {
            Ok(token) => break token,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT), "{e}");
                assert!(Instant::now() < deadline, "no token after 20 s");
            }
        }
    };
    assert!(!token.is_empty());
    assert_eq!(issuer.token_requests(), 1);
}

#[test]
fn no_secret_in_the_trace_log_in_status_or_under_the_mount() {
    if !fuse_available("no_secret_in_the_trace_log_in_status_or_under_the_mount") {
        return;
    }
    let tmp = tempdir();
    let entra_rt = tmp.path().join("entra-refresh-token");
    let issuer = DevIssuer::start(&[
        "--rotate-refresh-tokens",
        "--lifetime",
        "40s",
        "--linked",
        "--entra-refresh-token-file",
        entra_rt.to_str().unwrap(),
    ]);
    let offline = std::fs::read_to_string(&issuer.offline_token_file).unwrap();
    let client_secret = std::fs::read_to_string(&issuer.client_secret_file).unwrap();
    let entra_initial = std::fs::read_to_string(&entra_rt).unwrap();
    let rotated = tmp.path().join("rotated");
    let entra_rotated = tmp.path().join("entra-rotated");
    let extra = format!(
        "min_valid = \"30s\"\nrotated_refresh_token_file = \"{rotated}\"\n\n\
         [files.azure-token]\nsource = \"token-exchange\"\ntoken_url = \"{url}\"\nclient_id = \"tokenfs\"\n\
         client_secret_file = \"{secret}\"\nsubject = \"token\"\nrequested_issuer = \"azure\"\nredirect_uri = \"http://127.0.0.1/linked\"\n\n\
         [files.azure-direct]\nsource = \"entra\"\nauthority = \"{base}\"\ntenant = \"{tenant}\"\nclient_id = \"tokenfs\"\n\
         scope = \"https://storage.azure.com/.default\"\nredirect_uri = \"http://127.0.0.1/callback\"\n\
         refresh_token_file = \"{entra}\"\nrotated_refresh_token_file = \"{entra_rotated}\"",
        rotated = rotated.display(),
        url = issuer.token_url,
        secret = issuer.client_secret_file.display(),
        base = issuer.base_url(),
        tenant = tokenfs::issuer::DEFAULT_TENANT,
        entra = entra_rt.display(),
        entra_rotated = entra_rotated.display(),
    );
    let config = issuer.config(tmp.path(), "", &extra);
    let dir = tmp.path().join("api");
    let args = [
        "mount",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut proc = Proc::spawn(&args, &[("RUST_LOG", "trace")]);
    eventually(Duration::from_secs(30), "the mount", || {
        (is_mounted(&dir) && dir.join(".status").exists()).then_some(())
    });
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    // Two platform tokens: the first read, then a refresh forced by the 10 s servable window.
    let first = read("token");
    let second = eventually(Duration::from_secs(30), "a refresh", || {
        Some(read("token")).filter(|t| *t != first)
    });
    let azure = read("azure-token");
    let azure_direct = read("azure-direct");
    // Everything readable under the mount, as root.
    let mut under_mount = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        under_mount += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    let status = read(".status");
    let rotated_now = std::fs::read_to_string(&rotated).unwrap();
    let entra_rotated_now = std::fs::read_to_string(&entra_rotated).unwrap();
    proc.signal(libc::SIGTERM);
    assert!(proc.exits_within(STOP_LIMIT, "SIGTERM").success());
    let log = proc.stderr();
    assert!(log.contains("TRACE"), "trace logging was on");

    let never_served = [
        ("offline token", offline.as_str()),
        ("rotated refresh token", rotated_now.as_str()),
        ("client secret", client_secret.as_str()),
        ("Entra refresh token", entra_initial.as_str()),
        ("rotated Entra refresh token", entra_rotated_now.as_str()),
    ];
    let served = [
        ("access token", first.as_str()),
        ("second access token", second.as_str()),
        ("Azure token", azure.as_str()),
        ("direct Azure token", azure_direct.as_str()),
    ];
    for (what, secret) in never_served.iter().chain(&served) {
        assert!(secret.len() > 20, "{what}: {secret:?}");
        assert!(!log.contains(secret), "{what} appears in the trace log");
        assert!(!status.contains(secret), "{what} appears in .status");
        // Signatures are the part a leak would most likely show on its own.
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !log.contains(sig),
                "{what} signature appears in the trace log"
            );
        }
    }
    for (what, secret) in never_served {
        assert!(
            !under_mount.contains(secret),
            "{what} is readable under the mount"
        );
    }
    assert_ne!(
        entra_rotated_now, entra_initial,
        "the Entra refresh token was rotated and persisted"
    );
}

/// Read `name` until it holds a token other than `old` (at most 20 s); the new one.
fn next_token(m: &Mount, name: &str, old: &str) -> String {
    eventually(Duration::from_secs(20), "a refreshed token", || {
        m.read(name)
            .ok()
            .map(|b| String::from_utf8(b).unwrap())
            .filter(|t| t != old)
    })
}

/// The first read of a fresh mount, with or without a stat before it, never
/// ends empty and its size is the token's: a stat before it sees the empty
/// stand-in (and asks nothing), the read moves on to the token file, and no
/// invalidation races it. (With an invalidation after every new token, about
/// one fresh mount in three read an empty `token`.)
#[test]
fn the_first_read_of_a_fresh_mount_gets_the_whole_token() {
    if !fuse_available("the_first_read_of_a_fresh_mount_gets_the_whole_token") {
        return;
    }
    for round in 0..30 {
        let m = Mount::start(&["--dev"]);
        if round % 2 == 0 {
            assert_eq!(std::fs::metadata(m.path("token")).unwrap().len(), 0);
        }
        let token = m.read("token").unwrap();
        assert!(token.starts_with(b"eyJ"), "round {round}: {token:?}");
        let size = std::fs::metadata(m.path("token")).unwrap().len();
        assert_eq!(size, token.len() as u64, "round {round}");
    }
}
