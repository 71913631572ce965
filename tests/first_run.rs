//! First-run friction, with real processes and mounts: what the README's commands
//! do when pasted, defaults that name what the docs name, an environment that
//! must not break `--dev`, messages for a non-root user, quiet unmounts, paths
//! through links, and a failed start that leaves no directory behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;

/// The workload user of the tests that run as someone else.
const USER: u32 = 4242;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The claims of a JWT, unverified (the issuer is the test's own).
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `tokenfs <args>` with RUST_LOG=info, so a warn line would show.
fn run_logged(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env("STATE_DIRECTORY", state_dir())
        .env("RUNTIME_DIRECTORY", runtime_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn warn_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ")).collect()
}

#[test]
fn dev_user_is_dev_user_whatever_user_is_set() {
    if !fuse_available("dev_user_is_dev_user_whatever_user_is_set") {
        return;
    }
    let tmp = tempdir();
    let m = Mount::start_at_env(&tmp.path().join("api"), &["--dev"], &[("USER", "alice")]);
    assert_eq!(
        claims(&m.read_string("token"))["preferred_username"],
        "dev-user"
    );
}

#[test]
fn dev_ignores_tokenfs_config_from_the_environment() {
    if !fuse_available("dev_ignores_tokenfs_config_from_the_environment") {
        return;
    }
    let tmp = tempdir();
    let m = Mount::start_at_env(
        &tmp.path().join("api"),
        &["--dev"],
        &[("TOKENFS_CONFIG", "/nonexistent/tokenfs.toml")],
    );
    assert!(m.read_string("token").starts_with("eyJ"));

    // Given on the command line, it is still a usage error.
    let out = run(&[
        "mount",
        tmp.path().join("other").to_str().unwrap(),
        "--dev",
        "--config",
        "/etc/tokenfs/config.toml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--config cannot be used with --dev"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("other").exists());
}

/// The README's "A mount against a separately running development issuer", pasted
/// into a shell (its paths and port moved into a temporary directory), then its
/// mount: the token is alice's.
#[test]
fn the_readme_dev_issuer_session_works_pasted() {
    if !fuse_available("the_readme_dev_issuer_session_works_pasted") {
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### A mount against a separately running development issuer")
        .nth(1)
        .unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let tmp = tempdir();
    // Not created: the issuer must make it.
    let dev = tmp.path().join("root-dev");
    let mountpoint = tmp.path().join("demo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut mount_line = None;
    let mut script = String::from("set -e\n");
    for line in block.lines() {
        let line = line
            .replace("/root/dev", dev.to_str().unwrap())
            .replace("/tmp/tokenfs-demo", mountpoint.to_str().unwrap())
            .replace("127.0.0.1:8180", &format!("127.0.0.1:{port}"));
        let line = match line.strip_prefix("tokenfs ") {
            Some(rest) => format!("{BIN} {rest}"),
            None => line,
        };
        if line.starts_with(&format!("{BIN} mount")) {
            mount_line = Some(line);
            continue;
        }
        script += &line;
        script.push('\n');
        if line.ends_with('&') {
            // The harness ends the issuer by its PID.
            script += &format!("echo $! > {}/issuer.pid\n", tmp.path().display());
        }
    }
    let mount_line = mount_line.expect("the block ends with a mount");
    let mut sh = Command::new("sh")
        .args(["-c", &script])
        // The pasted tokenfs keeps its state under target/, not the host's.
        .env("STATE_DIRECTORY", state_dir())
        .env("RUNTIME_DIRECTORY", runtime_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: the issuer it starts in the background keeps it open.
        .stderr(std::fs::File::create(tmp.path().join("sh.err")).unwrap())
        .spawn()
        .unwrap();
    let pid_file = tmp.path().join("issuer.pid");
    struct Kill(std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
    }
    let _issuer = Kill(pid_file);
    let status = eventually(Duration::from_secs(30), "the pasted block", || {
        sh.try_wait().unwrap()
    });
    let err = std::fs::read_to_string(tmp.path().join("sh.err")).unwrap();
    assert!(status.success(), "{script}\n{err}");
    let mode = std::fs::metadata(&dev).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    let args: Vec<&str> = mount_line.split_whitespace().skip(2).collect();
    let at = args
        .iter()
        .position(|a| *a == mountpoint.to_str().unwrap())
        .unwrap();
    let rest: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, a)| *a)
        .collect();
    let m = Mount::start_at(&mountpoint, &rest);
    assert_eq!(
        claims(&m.read_string("token"))["preferred_username"],
        "alice"
    );
}

#[test]
fn a_non_root_user_is_told_mount_needs_root() {
    // Becoming uid 4242 needs root; as root, the copy's message is a non-root user's.
    if !fuse_available("a_non_root_user_is_told_mount_needs_root") {
        return;
    }
    let tmp = tempdir();
    let bin = tmp.path().join("tokenfs");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .args(["mount", "--dev", tmp.path().join("api").to_str().unwrap()])
        .current_dir(tmp.path())
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs root"), "{err}");
    for blame in ["cgroup", "device", "DeviceAllow"] {
        assert!(!err.contains(blame), "{err}");
    }
}

#[test]
fn a_normal_unmount_warns_of_nothing() {
    if !fuse_available("a_normal_unmount_warns_of_nothing") {
        return;
    }
    let tmp = tempdir();
    let mut m = Mount::start_at_env(&tmp.path().join("api"), &["--dev"], &[("RUST_LOG", "info")]);
    assert!(m.read_string("token").starts_with("eyJ"));
    let out = run_logged(&["unmount", m.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        warn_lines(&text(&out.stderr)).is_empty(),
        "{}",
        text(&out.stderr)
    );
    let status = m.proc.exits_within(STOP_LIMIT, "tokenfs unmount");
    assert!(status.success());
    let log = m.proc.stderr();
    // The one warning of --dev itself (never for production) is not about unmounting.
    let after_mount = log.split(" mounted ").nth(1).expect("a mounted line");
    assert!(warn_lines(after_mount).is_empty(), "{log}");
}

#[test]
fn status_and_unmount_follow_a_trusted_link_and_refuse_another() {
    if !fuse_available("status_and_unmount_follow_a_trusted_link_and_refuse_another") {
        return;
    }
    let tmp = tempdir();
    std::fs::create_dir(tmp.path().join("x")).unwrap();
    let mut m = Mount::start_at(&tmp.path().join("x").join("api"), &["--dev"]);
    // A root-owned directory only root writes: trusted.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&m.dir, &link).unwrap();
    // A root-owned link in a sticky directory (as /tmp): trusted.
    let sticky = tmp.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sticky_link = sticky.join("link");
    std::os::unix::fs::symlink(&m.dir, &sticky_link).unwrap();
    // The workload user's link in that sticky directory: refused.
    let users_link = sticky.join("users");
    std::os::unix::fs::symlink(&m.dir, &users_link).unwrap();
    std::os::unix::fs::lchown(&users_link, Some(USER), Some(USER)).unwrap();

    for via in [&link, &sticky_link] {
        let out = run(&["status", via.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("token"), "{}", text(&out.stdout));
    }
    for cmd in ["status", "unmount"] {
        let out = run(&[cmd, users_link.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains("is a symbolic link") && err.contains("give the real path"),
            "{err}"
        );
        assert!(is_mounted(&m.dir));
    }
    let out = run(&["unmount", sticky_link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!is_mounted(&m.dir));
    m.proc
        .exits_within(STOP_LIMIT, "tokenfs unmount through a link");
}

#[test]
fn a_failed_start_removes_the_mountpoint_it_made() {
    if !fuse_available("a_failed_start_removes_the_mountpoint_it_made") {
        return;
    }
    let tmp = tempdir();
    let made = tmp.path().join("api");
    let missing = tmp.path().join("missing.toml");
    let out = run(&[
        "mount",
        made.to_str().unwrap(),
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!made.exists(), "{}", text(&out.stderr));

    // One that was there stays.
    std::fs::create_dir(&made).unwrap();
    let out = run(&[
        "mount",
        made.to_str().unwrap(),
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(made.is_dir());
}

#[test]
fn check_accepts_a_secret_written_by_echo_and_refuses_stray_whitespace() {
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let secret = std::fs::read_to_string(&issuer.client_secret_file).unwrap();
    for ending in ["\n", "\r\n"] {
        write_file(
            &issuer.client_secret_file,
            &format!("{secret}{ending}"),
            0o600,
        );
        let out = run(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{ending:?}: {}",
            text(&out.stderr)
        );
    }
    for (written, says) in [
        (format!("{secret} \n"), "a space at its end"),
        (format!("{secret}\n\n"), "a line break (\\n) at its end"),
        (format!(" {secret}"), "a space at its start"),
        (
            format!("{}\t{}", &secret[..4], &secret[4..]),
            "a tab inside it, after character 4",
        ),
    ] {
        write_file(&issuer.client_secret_file, &written, 0o600);
        let out = run(&["check", "--config", config.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("files.token.client_secret_file") && err.contains(says),
            "{err}"
        );
        assert!(
            !err.contains(&secret[4..]) && !text(&out.stdout).contains(&secret[4..]),
            "{err}"
        );
    }
}

#[test]
fn a_client_secret_fixed_in_place_is_used_at_the_next_read() {
    if !fuse_available("a_client_secret_fixed_in_place_is_used_at_the_next_read") {
        return;
    }
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let secret = std::fs::read_to_string(&issuer.client_secret_file).unwrap();
    write_file(&issuer.client_secret_file, "not-the-secret", 0o600);
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(m.read("token").is_err());
    let status = m.file_status("token");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("Invalid client credentials"),
        "{status}"
    );
    // In its backoff (at least half a second after that failure): without the
    // change a read now gets the same error without asking.
    let before = issuer.token_requests();
    assert!(m.read("token").is_err());
    assert_eq!(issuer.token_requests(), before, "asked during the backoff");

    write_file(&issuer.client_secret_file, &format!("{secret}\n"), 0o600);
    let token = m.read_string("token");
    assert!(token.starts_with("eyJ"), "{token}");
    assert!(!m.proc.stderr().contains(&secret), "the secret in the log");
}
