//! Operations with real processes and mounts: recovery from a dead daemon's
//! stale mount, refusal of a second daemon and of unusable mountpoints, the
//! `status`, `check` and `unmount` commands, and systemd readiness. Metrics and logs
//! are in `observability.rs`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Detaches whatever is mounted at the path on drop (a dead daemon's mount).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        while is_mounted(&self.0) {
            detach(&self.0);
        }
    }
}

fn wait_mounted(proc: &mut Proc, dir: &Path) {
    eventually(Duration::from_secs(30), "the mount", || {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!("tokenfs exited ({status}):\n{}", proc.stderr());
        }
        (is_mounted(dir) && dir.join(".status").exists()).then_some(())
    });
}

#[test]
fn restart_after_kill_9_detaches_the_stale_mount() {
    if !fuse_available("restart_after_kill_9_detaches_the_stale_mount") {
        return;
    }
    let tmp = tempdir();
    let dir = tmp.path().join("api");
    let _cleanup = DetachOnDrop(dir.clone());
    let mut first = Proc::spawn(&["mount", dir.to_str().unwrap(), "--dev"], &[]);
    wait_mounted(&mut first, &dir);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("killed");
    let e = std::fs::read(dir.join(".status")).expect_err("dead mount");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    assert!(is_mounted(&dir));

    let second = Mount::start_at(&dir, &["--dev"]);
    assert!(second.read_string("token").starts_with("eyJ"));
    assert!(
        second.proc.stderr().contains("found a stale mount"),
        "{}",
        second.proc.stderr()
    );
}

#[test]
fn a_second_daemon_on_the_same_mountpoint_refuses_to_start() {
    if !fuse_available("a_second_daemon_on_the_same_mountpoint_refuses_to_start") {
        return;
    }
    let m = Mount::start(&["--dev"]);
    let out = run(&["mount", m.dir.to_str().unwrap(), "--dev"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another tokenfs already serves") && err.contains("tokenfs unmount"),
        "{err}"
    );
    // The first one is untouched.
    assert!(m.read_string("token").starts_with("eyJ"));
}

#[test]
fn unusable_mountpoints_are_one_line_errors() {
    if !fuse_available("unusable_mountpoints_are_one_line_errors") {
        return;
    }
    let tmp = tempdir();
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let out = run(&["mount", busy.to_str().unwrap(), "--dev"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(
        err.trim().lines().last().unwrap().matches("error").count(),
        1
    );
    assert!(busy.join("keep").exists());

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = run(&["mount", file.to_str().unwrap(), "--dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_cap_sys_admin_mount_says_what_to_add() {
    if !fuse_available("without_cap_sys_admin_mount_says_what_to_add") {
        return;
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED without_cap_sys_admin_mount_says_what_to_add: no setpriv");
        return;
    }
    let tmp = tempdir();
    let dir = tmp.path().join("api");
    let out = Command::new("/usr/bin/setpriv")
        .args([
            "--bounding-set=-sys_admin",
            "--inh-caps=-sys_admin",
            BIN,
            "mount",
        ])
        .arg(&dir)
        .arg("--dev")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_SYS_ADMIN") && err.contains("--cap-add SYS_ADMIN"),
        "{err}"
    );
    assert!(!is_mounted(&dir));
}

#[test]
fn check_obtains_one_token_per_file_and_prints_no_token() {
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let before = issuer.token_requests();
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("token") && stdout.contains("OK"),
        "{stdout}"
    );
    assert!(stdout.contains("sub=") && stdout.contains("jti=") && stdout.contains("exp=2"));
    assert!(
        !stdout.contains("eyJ") && !text(&out.stderr).contains("eyJ"),
        "{stdout}"
    );
    assert_eq!(issuer.token_requests(), before + 1);
    assert!(!is_mounted(Path::new("/var/lib/domino/home/.api")));

    // An upstream that refuses connections: the file fails, the exit code says so.
    let down = FaultyUpstream::start(Fault::Refuse);
    let dir = tempdir();
    let config = down.config(dir.path(), "");
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED upstream unavailable"), "{stdout}");

    // A config that does not validate.
    let bad = tmp.path().join("bad.toml");
    write_file(&bad, "[files.token]\nsource = \"oauth2\"\n", 0o600);
    let out = run(&["check", "--config", bad.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("files.token"), "{err}");
}

#[test]
fn status_exit_codes_follow_the_files_health() {
    if !fuse_available("status_exit_codes_follow_the_files_health") {
        return;
    }
    // Healthy: a token was read and is fresh.
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "");
    let m = Mount::start(&["--config", config.to_str().unwrap()]);
    m.read("token").unwrap();
    let out = run(&["status", m.dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("FILE"), "{stdout}");
    assert!(
        stdout.contains("token") && stdout.contains("fresh"),
        "{stdout}"
    );
    assert!(!stdout.contains("eyJ"));

    // Upstream down, no token: failed.
    let down = FaultyUpstream::start(Fault::Refuse);
    let dir = tempdir();
    let config = down.config(dir.path(), "");
    let bad = Mount::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(errno(bad.read("token")), libc::EIO);
    let out = run(&["status", bad.dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("failed") && stdout.contains("upstream unavailable"),
        "{stdout}"
    );

    // Not mounted.
    let out = run(&["status", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not mounted"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unmount_ends_the_mount_and_the_daemon() {
    if !fuse_available("unmount_ends_the_mount_and_the_daemon") {
        return;
    }
    let mut m = Mount::start(&["--dev"]);
    let out = run(&["unmount", m.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!is_mounted(&m.dir));
    let status = m.proc.exits_within(STOP_LIMIT, "tokenfs unmount");
    assert!(status.success(), "{}", m.proc.stderr());

    // Busy (a file held open): detached at once, the holder still reads; the
    // daemon ends once it is closed.
    let mut m = Mount::start(&["--dev"]);
    let mut held = std::fs::File::open(m.path("token")).unwrap();
    let out = run(&["unmount", m.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("unmounted"),
        "{}",
        text(&out.stdout)
    );
    assert!(!is_mounted(&m.dir));
    let mut token = String::new();
    std::io::Read::read_to_string(&mut held, &mut token).unwrap();
    assert!(token.starts_with("eyJ"), "{token}");
    assert!(
        m.proc.child.try_wait().unwrap().is_none(),
        "ended while a file was held"
    );
    drop(held);
    m.proc
        .exits_within(STOP_LIMIT, "a lazy unmount and the last close");

    // Nothing mounted there any more.
    let out = run(&["unmount", m.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not mounted"));
}

#[test]
fn readiness_is_signalled_only_once_the_mount_answers() {
    if !fuse_available("readiness_is_signalled_only_once_the_mount_answers") {
        return;
    }
    let tmp = tempdir();
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let dir = tmp.path().join("api");
    let _cleanup = DetachOnDrop(dir.clone());
    let mut proc = Proc::spawn(
        &["mount", dir.to_str().unwrap(), "--dev"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut buf = [0u8; 1024];
    let recv = |buf: &mut [u8]| {
        let n = socket.recv(buf).expect("a notification");
        text(&buf[..n])
    };
    // Until every file serves a token or waits on its user, STATUS says why.
    let mut first = recv(&mut buf);
    for _ in 0..50 {
        if first.starts_with("READY=1\n") {
            break;
        }
        assert!(
            first.starts_with("STATUS=not ready: ") || first == "WATCHDOG=1",
            "{first:?}"
        );
        first = recv(&mut buf);
    }
    // At the moment READY=1 arrives the mount is there, answers, and each
    // file was asked once: token is served, azure-token waits for consent.
    assert!(is_mounted(&dir), "READY=1 before the mount");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".status")).unwrap()).unwrap();
    assert_eq!(status["files"][0]["state"], "fresh", "{status}");
    assert_eq!(status["files"][1]["state"], "consent_required", "{status}");
    assert!(first.starts_with("READY=1\n"), "{first:?}");
    assert!(first.contains("STATUS=serving 2 file(s)"), "{first:?}");

    // Watchdog pings every 200 ms while healthy.
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if recv(&mut buf) == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    proc.signal(libc::SIGTERM);
    let stopping = eventually(Duration::from_secs(10), "STOPPING=1", || {
        let msg = recv(&mut buf);
        (msg == "STOPPING=1").then_some(msg)
    });
    assert_eq!(stopping, "STOPPING=1");
    let status = proc.exits_within(STOP_LIMIT, "SIGTERM");
    assert!(status.success(), "{}", proc.stderr());
}

/// The example config parses and validates (secrets files aside).
#[test]
fn the_example_config_validates_up_to_its_secret_files() {
    let out = run(&["check", "--config", "systemd/config.example.toml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    // It gets as far as the secret files, which do not exist here.
    assert!(err.contains("/etc/tokenfs/"), "{err}");
}

/// `systemd-analyze verify` accepts the unit without a warning (skipped without
/// systemd-analyze; `.ci/run` runs it too).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(which) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return;
    };
    if !which.status.success() {
        eprintln!("SKIPPED the_systemd_unit_verifies: no systemd-analyze");
        return;
    }
    let unit = std::fs::read_to_string("systemd/tokenfs.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tokenfs mount --config /etc/tokenfs/config.toml"));
    let tmp = tempdir();
    let copy = tmp.path().join("tokenfs.service");
    // verify checks that ExecStart exists: point it at the binary under test.
    std::fs::write(&copy, unit.replace("/usr/bin/tokenfs", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && all.trim().is_empty(), "{all}");
}

#[test]
fn wait_returns_once_the_mount_answers_and_fails_fast_when_it_cannot() {
    if !fuse_available("wait_returns_once_the_mount_answers_and_fails_fast_when_it_cannot") {
        return;
    }
    let tmp = tempdir();
    let dir = tmp.path().join("api");
    let dir_arg = dir.to_str().unwrap();

    // Nothing will mount there: the timeout ends it, with what to look at.
    let out = run(&["wait", dir_arg, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no tokenfs answered on"),
        "{}",
        text(&out.stderr)
    );

    // The daemon fails (the mountpoint is a file): --pid notices at once.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut doomed = Proc::spawn(&["mount", file.to_str().unwrap(), "--dev"], &[]);
    let out = run(&[
        "wait",
        file.to_str().unwrap(),
        "--pid",
        &doomed.pid().to_string(),
        "--timeout",
        "60s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exited before"),
        "{}",
        text(&out.stderr)
    );
    assert!(doomed.wait_exit(Duration::from_secs(5)).is_some());

    // A daemon starting in the background: wait returns when the file can be read.
    let _guard = DetachOnDrop(dir.clone());
    let mut daemon = Proc::spawn(&["mount", dir_arg, "--dev"], &[]);
    let pid = daemon.pid().to_string();
    let out = run(&["wait", dir_arg, "--pid", &pid, "--timeout", "30s"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.stderr()
    );
    let token = std::fs::read_to_string(dir.join("token")).expect("token readable after wait");
    assert_eq!(token.split('.').count(), 3, "a JWT");
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exits_within(STOP_LIMIT, "SIGTERM").success());
}

/// Each piece of an error (split at ": " and "; ") said once: no cause repeated
/// after the message that already holds it.
fn assert_said_once(err: &str) {
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.matches("(os error").count() <= 1, "{err}");
    let pieces: Vec<&str> = line
        .split([':', ';'])
        .map(str::trim)
        .filter(|p| p.len() > 3)
        .collect();
    for (i, p) in pieces.iter().enumerate() {
        assert!(!pieces[i + 1..].contains(p), "{p:?} twice in: {err}");
    }
}

#[test]
fn errors_say_what_happened_once() {
    if !fuse_available("errors_say_what_happened_once") {
        return;
    }
    let tmp = tempdir();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let missing = tmp.path().join("missing.toml");
    let (file_below, missing_s, api) = (
        file.join("x").to_str().unwrap().to_owned(),
        missing.to_str().unwrap().to_owned(),
        tmp.path().join("api").to_str().unwrap().to_owned(),
    );
    let cases: [(&[&str], &str); 4] = [
        (
            &["mount", "/nonexistent/x/y", "--dev"],
            "parent directory must exist",
        ),
        (&["mount", &file_below, "--dev"], "is a file"),
        (&["mount", &api, "--config", &missing_s], "No such file"),
        (&["check", "--config", &missing_s], "No such file"),
    ];
    for (args, says) in cases {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_said_once(&err);
    }
    // The config's path once, not again in a context around it.
    let out = run(&["check", "--config", &missing_s]);
    assert_eq!(text(&out.stderr).matches(missing_s.as_str()).count(), 1);
}
