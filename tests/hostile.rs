//! The workload user (uid 4242, owner of the home the mount lives in) and other
//! local uids, attacking a root daemon: every attack runs as that uid against a
//! real mount, and each test asserts that it fails and that tokenfs keeps working.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

impl Home {
    /// A root-owned directory outside the home, holding one file.
    fn victim(&self) -> PathBuf {
        let victim = self.tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), "root's file").unwrap();
        victim
    }
}

/// `sh -c script` as the workload user, in `dir`.
fn as_user(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .current_dir(dir)
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null());
    cmd
}

fn run_as_user(dir: &Path, script: &str) -> String {
    let out = as_user(dir, script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmpfs the test mounts, standing for another mount root must not touch;
/// unmounted on drop.
struct OtherMount(PathBuf);

impl OtherMount {
    fn at(dir: &Path) -> OtherMount {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(dir.to_str().unwrap());
        let rc = unsafe {
            libc::mount(
                c("victim").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        std::fs::write(dir.join("precious"), "another mount's file").unwrap();
        OtherMount(dir.to_owned())
    }

    fn intact(&self) -> bool {
        is_mounted(&self.0) && self.0.join("precious").exists()
    }
}

impl Drop for OtherMount {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// A mount the test did not start by `Mount` (it moved): detached on drop.
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            detach(&self.0);
        }
    }
}

/// `tokenfs mount --dev <path>` expected to fail: its stderr.
fn mount_fails(path: &Path) -> String {
    let mut p = Proc::spawn(&["mount", path.to_str().unwrap(), "--dev"], &[]);
    let status = p.exits_within(STOP_LIMIT, "a refused mount");
    assert!(!status.success(), "mounted on {}", path.display());
    p.stderr()
}

#[test]
fn a_symlinked_mountpoint_is_refused_and_nothing_is_mounted_where_it_points() {
    if !fuse_available("a_symlinked_mountpoint_is_refused") {
        return;
    }
    let h = Home::new();
    let empty = h.tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run_as_user(&h.home, &format!("ln -s {} .api", empty.display()));

    let err = mount_fails(&h.api());
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!is_mounted(&empty));
    // A link deeper in the path is refused the same way.
    run_as_user(&h.home, "mkdir real && ln -s real sub");
    let err = mount_fails(&h.home.join("sub/.api"));
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!is_mounted(&h.home.join("real/.api")));
}

/// fanotify permission events make the race exact: the daemon's open of the
/// mountpoint (to check it is empty) waits while the user swaps it.
struct OpenGate {
    fan: std::os::fd::OwnedFd,
}

impl OpenGate {
    fn on(dir: &Path) -> OpenGate {
        let fd = unsafe { libc::fanotify_init(libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "fanotify_init: {}",
            std::io::Error::last_os_error()
        );
        let fan = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let rc = unsafe {
            libc::fanotify_mark(
                std::os::fd::AsRawFd::as_raw_fd(&fan),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM | libc::FAN_ONDIR,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        assert_eq!(rc, 0, "fanotify_mark: {}", std::io::Error::last_os_error());
        OpenGate { fan }
    }

    /// Wait for an open by `pid`, run `meanwhile` while it is held, then let it
    /// (and, by closing the gate, every later open) through.
    fn hold_open_by(self, pid: i32, meanwhile: impl FnOnce()) {
        let mut meanwhile = Some(meanwhile);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fan);
        while meanwhile.is_some() {
            let mut event: libc::fanotify_event_metadata = unsafe { std::mem::zeroed() };
            let n = unsafe {
                libc::read(
                    raw,
                    (&mut event as *mut libc::fanotify_event_metadata).cast(),
                    std::mem::size_of::<libc::fanotify_event_metadata>(),
                )
            };
            assert!(n > 0, "fanotify read: {}", std::io::Error::last_os_error());
            if event.pid == pid {
                (meanwhile.take().unwrap())();
            }
            let response = libc::fanotify_response {
                fd: event.fd,
                response: libc::FAN_ALLOW,
            };
            unsafe {
                libc::write(
                    raw,
                    (&response as *const libc::fanotify_response).cast(),
                    std::mem::size_of::<libc::fanotify_response>(),
                );
                libc::close(event.fd);
            }
        }
    }
}

#[test]
fn a_mountpoint_swapped_during_the_checks_gets_the_mount_on_the_checked_directory() {
    if !fuse_available("a_mountpoint_swapped_during_the_checks") {
        return;
    }
    let h = Home::new();
    let victim = h.victim();
    // Root created .api, as a platform's init does; the user owns the home around it.
    std::fs::create_dir(h.api()).unwrap();
    let gate = OpenGate::on(&h.api());
    let moved = h.home.join(".api-old");
    let _moved_mount = DetachOnDrop(moved.clone());
    let mut p = Proc::spawn(&["mount", h.api().to_str().unwrap(), "--dev"], &[]);
    gate.hold_open_by(p.pid(), || {
        run_as_user(
            &h.home,
            &format!("mv .api .api-old && ln -s {} .api", victim.display()),
        );
    });
    let token = eventually(
        Duration::from_secs(30),
        "the mount on the checked directory",
        || {
            let token = std::fs::read_to_string(moved.join("token")).ok();
            if token.is_none() && p.child.try_wait().unwrap().is_some() {
                panic!("tokenfs exited:\n{}", p.stderr());
            }
            token
        },
    );
    assert!(token.starts_with("eyJ"), "{token}");
    assert!(!is_mounted(&victim), "root mounted over the victim");
    assert!(victim.join("precious").exists());

    // At stop the path names the victim now: nothing is unmounted by it.
    p.signal(libc::SIGTERM);
    p.exits_within(STOP_LIMIT, "SIGTERM");
    assert!(
        p.stderr().contains("no longer names this daemon's mount"),
        "{}",
        p.stderr()
    );
    assert!(victim.join("precious").exists());
}

/// The user's own user and mount namespace, made before the mount: there the
/// mountpoint is a plain directory, which the user may rename away.
struct UserNamespace {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl UserNamespace {
    /// `script` runs in the namespace each time `step` is called.
    fn enter(home: &Path) -> UserNamespace {
        let mut child = as_user(
            home,
            "exec unshare -Urm sh -c 'echo in; while read -r line; do eval \"$line\"; echo done; done'",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "in", "unshare -Urm failed");
        UserNamespace { child, out }
    }

    fn step(&mut self, script: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{script}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "{script}");
    }
}

impl Drop for UserNamespace {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn a_path_swapped_from_the_users_own_namespace_unmounts_nothing_else() {
    if !fuse_available("a_path_swapped_from_the_users_own_namespace") {
        return;
    }
    let h = Home::new();
    let other = OtherMount::at(&h.tmp.path().join("other"));
    let mut ns = UserNamespace::enter(&h.home);
    let moved = h.home.join(".api-old");
    let _moved_mount = DetachOnDrop(moved.clone());

    // At stop: the path is a link to another mount by then.
    let mut m = Mount::start_at(&h.api(), &["--dev"]);
    ns.step(&format!(
        "mv .api .api-old && ln -s {} .api",
        other.0.display()
    ));
    let token = std::fs::read_to_string(moved.join("token")).unwrap();
    assert!(token.starts_with("eyJ"), "{token}");
    m.stop();
    assert!(other.intact(), "root unmounted another mount at stop");
    assert!(
        m.proc.stderr().contains("no longer names"),
        "{}",
        m.proc.stderr()
    );

    // At start, over a stale mount: the same link is refused, nothing detached.
    // (Its dead mount moves back with the directory; the next start detaches it.)
    ns.step("rm .api && mv .api-old .api");
    let mut m = Mount::start_at(&h.api(), &["--dev"]);
    m.proc.signal(libc::SIGKILL);
    m.proc.exits_within(STOP_LIMIT, "SIGKILL");
    ns.step(&format!(
        "mv .api .api-old && ln -s {} .api",
        other.0.display()
    ));
    let err = mount_fails(&h.api());
    assert!(err.contains("symbolic link"), "{err}");
    assert!(other.intact(), "root detached another mount at start");
    // `tokenfs unmount` on the path refuses the same way.
    let out = run(&["unmount", h.api().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(other.intact(), "tokenfs unmount detached another mount");
}

/// A config for the fault upstream whose secrets are long enough to be searched
/// for in what comes back.
fn fault_config(up: &FaultyUpstream, dir: &Path) -> PathBuf {
    let config = up.config(dir, "");
    write_file(&dir.join("secret"), "cs-0123456789abcdef", 0o600);
    config
}

#[test]
fn a_far_future_expiry_is_malformed_and_the_service_keeps_working() {
    if !fuse_available("a_far_future_expiry_is_malformed") {
        return;
    }
    let up = FaultyUpstream::start(Fault::FarFuture);
    let dir = tempdir();
    let config = fault_config(&up, dir.path());
    let config = config.to_str().unwrap();

    let out = run(&["check", "--config", config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("over 10 years"), "{stdout}");

    let mut m = Mount::start(&["--config", config]);
    assert_eq!(errno(m.read("token")), libc::EIO);
    let last_error = m.file_status("token")["last_error"].to_string();
    assert!(last_error.contains("over 10 years"), "{last_error}");
    // The mount lives on and recovers once the upstream answers sanely.
    up.set(Fault::Ok(300));
    let token = eventually(Duration::from_secs(30), "a sane token", || {
        m.read("token").ok()
    });
    assert!(token.starts_with(b"eyJ"));
    assert!(m.proc.child.try_wait().unwrap().is_none());
}

#[test]
fn an_upstream_echoing_the_request_shows_no_secret_anywhere() {
    if !fuse_available("an_upstream_echoing_the_request") {
        return;
    }
    let up = FaultyUpstream::start(Fault::EchoRequest);
    let dir = tempdir();
    let config = fault_config(&up, dir.path());
    let config = config.to_str().unwrap();
    let secrets = ["cs-0123456789abcdef", "offline-token", "eyJ"];

    let out = run(&["check", "--config", config]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("invalid_request: cannot parse"), "{shown}");

    let mut m = Mount::start(&["--config", config]);
    assert_eq!(errno(m.read("token")), libc::EIO);
    let status = String::from_utf8(m.read(".status").unwrap()).unwrap();
    assert!(status.contains("[redacted]"), "{status}");
    m.stop();
    let log = m.proc.stderr();
    for secret in secrets {
        assert!(!shown.contains(secret), "check printed {secret}: {shown}");
        assert!(!status.contains(secret), ".status shows {secret}: {status}");
        assert!(!log.contains(secret), "the log holds {secret}: {log}");
    }
}

#[test]
fn claims_with_terminal_escapes_cannot_forge_check_lines() {
    let up = FaultyUpstream::start(Fault::ForgedClaims);
    let dir = tempdir();
    let config = fault_config(&up, dir.path());
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\r'),
        "{stdout:?}"
    );
    // The config line and one line for the file: no line was forged.
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains(r"sub=x\u{1b}[2K\rOK"), "{stdout}");
}

/// A Python script run as the workload user (stdin: `args` as JSON), for the
/// attacks that need many sockets or another address family.
fn python_as_user(script: &str, args: serde_json::Value) -> std::process::Child {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    writeln!(child.stdin.as_mut().unwrap(), "{args}").unwrap();
    child
}

/// Read one line of the child's stdout.
fn line_of(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    let mut byte = [0u8; 1];
    let out = child.stdout.as_mut().unwrap();
    while std::io::Read::read(out, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    line
}

/// Opens `idle` connections that send nothing and `slow` ones that drip a
/// request head a byte every 200 ms, then reports how many of each the server
/// closed within `within` seconds; holds the rest until stdin closes.
const FLOOD: &str = r#"
import json, resource, socket, sys, time
a = json.loads(sys.stdin.readline())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def conn():
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", a["port"]))
    except BlockingIOError: pass
    return s
idle = [conn() for _ in range(a["idle"])]
slow = [conn() for _ in range(a["slow"])]
print("open", len(idle) + len(slow), flush=True)
closed, deadline, head, i = set(), time.time() + a["within"], b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 400, 0
while time.time() < deadline and len(closed) < len(slow):
    for n, s in enumerate(slow):
        if n in closed: continue
        try:
            s.send(head[i % len(head):i % len(head) + 1])
            if s.recv(1) == b"": closed.add(n)
        except BlockingIOError: pass
        except OSError: closed.add(n)
    i += 1; time.sleep(0.2)
print("slow-closed", len(closed), flush=True)
sys.stdin.read()
"#;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The `addr=` the daemon logged for its metrics listener.
fn metrics_addr(m: &Mount) -> String {
    eventually(Duration::from_secs(10), "the metrics address", || {
        let log = m.proc.stderr();
        let line = log.lines().find(|l| l.contains("serving /metrics"))?;
        Some(
            line.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned(),
        )
    })
}

fn get_metrics(addr: &str) -> Option<u16> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client.get(format!("http://{addr}/metrics")).send().ok()?;
    Some(r.status().as_u16())
}

#[test]
fn a_connection_flood_on_the_metrics_port_leaves_the_daemon_its_descriptors() {
    if !fuse_available("a_connection_flood_on_the_metrics_port") {
        return;
    }
    let mut m = Mount::start(&[
        "--dev",
        "--dev-lifetime",
        "12s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let addr = metrics_addr(&m);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let first = m.read_string("token");
    let before = fd_count(m.proc.pid());
    let rss_before = rss_kib(m.proc.pid());

    let mut flood = python_as_user(
        FLOOD,
        serde_json::json!({"port": port, "idle": 1100, "slow": 12, "within": 30}),
    );
    assert_eq!(line_of(&mut flood), "open 1112");
    // The slow heads are cut off by the server, not left to grow.
    assert_eq!(line_of(&mut flood), "slow-closed 12");
    let during = fd_count(m.proc.pid());
    eprintln!(
        "flood of 1,100 idle + 12 slow connections: the daemon's descriptors {before} -> {during}, \
         RSS {} -> {} KiB",
        rss_before,
        rss_kib(m.proc.pid())
    );
    assert!(
        during <= before + 16 + 4,
        "the daemon holds {during} descriptors (was {before}) under the flood"
    );
    // The token expires meanwhile: a new one needs a new connection upstream.
    let second = eventually(
        Duration::from_secs(30),
        "a token refreshed under the flood",
        || {
            let t = m.read_string("token");
            (t != first).then_some(t)
        },
    );
    assert!(second.starts_with("eyJ"));
    drop(flood.stdin.take());
    flood.wait().unwrap();
    let status = eventually(Duration::from_secs(30), "/metrics after the flood", || {
        get_metrics(&addr)
    });
    assert_eq!(status, 200);
    m.stop();
}

/// Binds 127.0.0.1:`port` and answers every connection `HTTP 200 squatted`
/// until stdin closes.
const SQUAT: &str = r#"
import json, socket, sys, threading
a = json.loads(sys.stdin.readline())
s = socket.socket(socket.AF_INET6 if ":" in a["host"] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((a["host"], a["port"])); s.listen(16)
print("listening", s.getsockname()[1], flush=True)
seen = [0]
def serve():
    while True:
        c, _ = s.accept(); seen[0] += 1
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsquatted\n"); c.close()
threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
print("connections", seen[0], flush=True)
"#;

#[test]
fn a_squatted_metrics_port_does_not_stop_the_mount_and_is_taken_once_free() {
    if !fuse_available("a_squatted_metrics_port") {
        return;
    }
    let mut squat = python_as_user(SQUAT, serde_json::json!({"host": "127.0.0.1", "port": 0}));
    let port = line_of(&mut squat)
        .strip_prefix("listening ")
        .unwrap()
        .to_owned();
    let mut m = Mount::start(&["--dev", "--metrics-listen", &port]);
    assert!(m.read_string("token").starts_with("eyJ"));
    eventually(Duration::from_secs(10), "the bind failure logged", || {
        m.proc
            .stderr()
            .contains(&format!("cannot listen for metrics on 127.0.0.1:{port}"))
            .then_some(())
    });
    drop(squat.stdin.take());
    squat.wait().unwrap();
    let addr = metrics_addr(&m);
    assert_eq!(addr, format!("127.0.0.1:{port}"));
    assert_eq!(get_metrics(&addr), Some(200));
    m.stop();
}

#[test]
fn a_metrics_socket_is_root_only_and_refused_in_a_directory_others_write() {
    if !fuse_available("a_metrics_socket_is_root_only") {
        return;
    }
    let h = Home::new();
    let run_dir = h.tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = run_dir.join("metrics.sock");
    let listen = format!("unix:{}", sock.display());
    let mut m = Mount::start(&["--dev", "--metrics-listen", &listen]);
    eventually(Duration::from_secs(10), "the socket", || {
        m.proc.stderr().contains("serving /metrics").then_some(())
    });
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let out = as_user(
        &h.home,
        &format!(
            "python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"{}\")'",
            sock.display()
        ),
    )
    .output()
    .unwrap();
    assert!(
        !out.status.success(),
        "the user connected to the root-only socket"
    );
    m.stop();

    // In the user's home the socket could be swapped: refused, the mount serves.
    let sock = h.home.join("metrics.sock");
    let mut m = Mount::start(&[
        "--dev",
        "--metrics-listen",
        &format!("unix:{}", sock.display()),
    ]);
    assert!(m.read_string("token").starts_with("eyJ"));
    eventually(Duration::from_secs(10), "the refusal", || {
        m.proc
            .stderr()
            .contains("writable by users other than root")
            .then_some(())
    });
    assert!(!sock.exists());
    m.stop();
}

#[test]
fn plain_http_to_localhost_is_refused_so_a_squatter_on_the_other_family_gets_nothing() {
    let up = FaultyUpstream::start(Fault::Ok(300));
    let port = up
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut squat = python_as_user(
        SQUAT,
        serde_json::json!({"host": "::1", "port": port.parse::<u16>().unwrap()}),
    );
    assert_eq!(line_of(&mut squat), format!("listening {port}"));

    let dir = tempdir();
    let key = dir.path().join("api-key");
    write_file(&key, "api-key-0123456789", 0o600);
    let config = dir.path().join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"http\"\nurl = \"http://localhost:{port}/t\"\n\
             headers = {{ X-Domino-Api-Key = {{ file = \"{}\" }} }}\n",
            key.display()
        ),
        0o600,
    );
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("http://127.0.0.1:PORT"), "{err}");
    let dir2 = tempdir();
    let refused = mount_fails_with(
        &dir2.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(refused.contains("localhost may reach"), "{refused}");

    drop(squat.stdin.take());
    assert_eq!(line_of(&mut squat), "connections 0");
    squat.wait().unwrap();
}

fn mount_fails_with(path: &Path, args: &[&str]) -> String {
    let mut full = vec!["mount", path.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut p = Proc::spawn(&full, &[]);
    let status = p.exits_within(STOP_LIMIT, "a refused mount");
    assert!(!status.success(), "mounted on {}", path.display());
    p.stderr()
}

#[test]
fn secret_and_state_files_the_user_controls_are_refused() {
    let h = Home::new();
    let up = FaultyUpstream::start(Fault::Ok(300));
    let dir = tempdir();
    let config = fault_config(&up, dir.path());
    let config_text = std::fs::read_to_string(&config).unwrap();
    let check = |text: &str| {
        write_file(&config, text, 0o600);
        let out = run(&["check", "--config", config.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check(&config_text).0, Some(0), "the baseline works");

    // A client secret the user owns.
    std::os::unix::fs::chown(dir.path().join("secret"), Some(USER), None).unwrap();
    let (code, err) = check(&config_text);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("belongs to uid {USER}")), "{err}");
    std::os::unix::fs::chown(dir.path().join("secret"), Some(0), None).unwrap();

    // A refresh token in the user's home (root's file, but the user may swap it).
    let in_home = h.home.join("offline");
    write_file(&in_home, "offline-token", 0o600);
    let text = config_text.replace(
        &dir.path().join("offline").display().to_string(),
        &in_home.display().to_string(),
    );
    let (code, err) = check(&text);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("writable by users other than root"), "{err}");

    // The rotated token's directory, a link the user made to a directory of root's.
    let target = h.tmp.path().join("root-dir");
    std::fs::create_dir(&target).unwrap();
    run_as_user(&h.home, &format!("ln -s {} state", target.display()));
    let text = config_text.replace(
        "[files.token.verify]",
        &format!(
            "rotated_refresh_token_file = \"{}\"\n\n[files.token.verify]",
            h.home.join("state/rotated").display()
        ),
    );
    let (code, err) = check(&text);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "root wrote through the link"
    );
}
