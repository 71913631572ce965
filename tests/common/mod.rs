//! Test harness: real `tokenfs` processes, real mounts, real HTTP; every process
//! is ended by PID and every mount is unmounted on drop, also when a test fails.
//! The upstreams tests talk to live beside it: the dev issuer and the API proxy
//! (`issuer.rs`), a programmable Entra endpoint (`entra.rs`) and a fault-injecting
//! token endpoint (`faulty.rs`), and a real Keycloak with a real browser
//! (`keycloak.rs`).

#![allow(dead_code)]

mod entra;
mod faulty;
mod issuer;
mod keycloak;

// Not every test binary uses every upstream.
#[allow(unused_imports)]
pub use entra::*;
#[allow(unused_imports)]
pub use faulty::*;
pub use issuer::*;
#[allow(unused_imports)]
pub use keycloak::*;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenfs");

/// The state directory every tokenfs a test starts uses (`STATE_DIRECTORY`), so
/// default rotated refresh tokens land under `target/`, never in the host's
/// `/var/lib/tokenfs`; a `check` and a mount of one test share it, as on a host.
pub fn state_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("state")
}

/// The runtime directory (`RUNTIME_DIRECTORY`) of every tokenfs a test starts:
/// login sockets land under `target/`, never in the host's `/run/tokenfs`.
pub fn runtime_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime")
}

/// Whether this test can mount. Without root or /dev/fuse it is skipped, unless
/// `TOKENFS_REQUIRE_FUSE=1` (set by CI), which turns the skip into a failure.
pub fn fuse_available(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let dev = Path::new("/dev/fuse").exists();
    if root && dev {
        return true;
    }
    let why = format!("{test}: cannot mount (root: {root}, /dev/fuse: {dev})");
    if std::env::var("TOKENFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{why}; TOKENFS_REQUIRE_FUSE=1 requires mount tests to run");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// The uid of the workload user the tests run as: it owns the home.
pub const USER: u32 = 4242;

/// A home owned by [`USER`] inside a root-owned temporary directory.
pub struct Home {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
}

impl Home {
    pub fn new() -> Home {
        let tmp = tempdir();
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(USER), Some(USER)).unwrap();
        Home { tmp, home }
    }

    /// Where the platform mounts tokenfs in a home.
    pub fn api(&self) -> PathBuf {
        self.home.join(".api")
    }
}

/// A temporary directory that other uids can traverse (tests read as them).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Write a file with the given mode.
pub fn write_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Append what `pipe` carries to `sink` until it closes.
fn collect(
    mut pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// A child process whose stderr and stdout are collected; killed by PID on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    /// Collects stderr; joined once the process exited, so that its last lines
    /// are in `stderr` before anyone looks.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("STATE_DIRECTORY", state_dir());
        cmd.env("RUNTIME_DIRECTORY", runtime_dir());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tokenfs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let reader = collect(child.stderr.take().unwrap(), stderr.clone());
        // Not joined: stdout is only looked at while the process runs.
        collect(child.stdout.take().unwrap(), stdout.clone());
        Proc {
            child,
            stderr,
            stdout,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn child_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait up to `limit` for exit; `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a daemon may take to exit after SIGTERM: the unit's `TimeoutStopSec`,
/// after which systemd would SIGKILL it and leave a stale mount.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

impl Proc {
    /// Wait up to `limit` for exit; if it does not, fail with what each of its
    /// threads is doing (state and kernel wait channel) and the end of its log.
    pub fn exits_within(&mut self, limit: Duration, after: &str) -> std::process::ExitStatus {
        if let Some(status) = self.wait_exit(limit) {
            return status;
        }
        let pid = self.pid();
        let mut threads = String::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let read =
                    |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
                let stat = read("stat");
                let state = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next();
                threads += &format!(
                    "  {} {:<16} state {} wchan {}\n",
                    task.file_name().to_string_lossy(),
                    read("comm").trim(),
                    state.unwrap_or("?"),
                    read("wchan").trim()
                );
            }
        }
        let log = self.stderr();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "tokenfs (pid {pid}) did not exit within {limit:?} after {after}; its threads:\n{threads}\nlast log lines:\n{}",
            tail.join("\n")
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Run `tokenfs <args>` to completion (no stdin).
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("STATE_DIRECTORY", state_dir())
        .env("RUNTIME_DIRECTORY", runtime_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run tokenfs")
}

/// Whether `path` is a mountpoint right now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_str()))
}

pub fn detach(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// A running `tokenfs mount`; on drop it is stopped and the mount removed.
pub struct Mount {
    pub proc: Proc,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Mount {
    /// `tokenfs mount <tmp>/api <args…>`, waiting until the mount answers.
    pub fn start(args: &[&str]) -> Mount {
        let tmp = tempdir();
        let dir = tmp.path().join("api");
        let mut m = Mount::start_at(&dir, args);
        m._tmp = Some(tmp);
        m
    }

    pub fn start_at(dir: &Path, args: &[&str]) -> Mount {
        Mount::start_at_env(dir, args, &[])
    }

    /// `start_at` with these environment variables set for the daemon.
    pub fn start_at_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Mount {
        let mut full = vec!["mount", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        let proc = Proc::spawn(&full, envs);
        let mut m = Mount {
            proc,
            dir: dir.to_owned(),
            _tmp: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(is_mounted(&m.dir) && m.dir.join(".status").exists()) {
            if let Some(status) = m.proc.child.try_wait().unwrap() {
                panic!(
                    "tokenfs exited ({status}) before mounting:\n{}",
                    m.proc.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 30 s:\n{}",
                m.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
    }

    pub fn read_string(&self, name: &str) -> String {
        String::from_utf8(self.read(name).unwrap()).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.read(".status").unwrap()).unwrap()
    }

    /// The `.status` entry of one file.
    pub fn file_status(&self, name: &str) -> serde_json::Value {
        self.status()["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in .status"))
    }

    /// `http://127.0.0.1:PORT` of the issuer `token` is served from (`--dev`'s
    /// embedded one), from `.status`.
    pub fn issuer_base(&self) -> String {
        let upstream = self.file_status("token")["upstream"]
            .as_str()
            .unwrap()
            .to_owned();
        upstream.split("/realms/").next().unwrap().to_owned()
    }

    /// The development issuer's `/dev/stats`: what it has been asked so far.
    pub fn issuer_stats(&self) -> serde_json::Value {
        reqwest::blocking::get(format!("{}/dev/stats", self.issuer_base()))
            .unwrap()
            .json()
            .unwrap()
    }

    /// None of `secrets` shows in `.status` or in the daemon's log so far.
    pub fn assert_shows_none_of(&self, secrets: &[&str]) {
        let status = self.read_string(".status");
        let log = self.proc.stderr();
        for secret in secrets {
            assert!(!status.contains(secret), ".status shows a secret");
            assert!(!log.contains(secret), "the log holds a secret");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc.exits_within(STOP_LIMIT, "SIGTERM")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.proc.child.try_wait().ok().flatten().is_none() {
            self.proc.signal(libc::SIGTERM);
            if self.proc.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.proc.child.kill();
                let _ = self.proc.child.wait();
            }
        }
        if is_mounted(&self.dir) {
            detach(&self.dir);
        }
    }
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The errno of a failed file operation.
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("operation should fail")
        .raw_os_error()
        .unwrap()
}

/// Poll `f` every 100 ms until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serve `app` on an ephemeral loopback port from a thread of its own; it stops
/// when the returned sender is dropped.
fn serve_in_background(
    app: axum::Router,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (addr, stop)
}
