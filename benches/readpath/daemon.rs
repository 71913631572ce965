//! The real thing: `tokenfs mount --config …` child processes against embedded,
//! in-process issuers. Every child is ended by its PID and every mount removed on
//! drop, also when the bench panics.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use tokenfs::issuer::{Issuer, IssuerConfig, RunningIssuer};

use crate::http;
use crate::sys::{self, write_private};

const BIN: &str = env!("CARGO_BIN_EXE_tokenfs");
const CLIENT_ID: &str = "tokenfs";
/// Keep the last this many bytes of a daemon's log: enough to explain a failure,
/// bounded however long the daemon runs.
const LOG_TAIL: usize = 64 * 1024;

/// An in-process dev issuer with one confidential client and one offline token,
/// both written to 0600 files a tokenfs config can point at.
pub struct Upstream {
    issuer: RunningIssuer,
    secret_file: PathBuf,
    offline_file: PathBuf,
    secret: String,
    offline: SecretString,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn start(rt: &tokio::runtime::Runtime, cfg: IssuerConfig) -> Upstream {
        let issuer = Issuer::new(cfg).expect("issuer config");
        let secret = format!("bench-secret-{}", std::process::id());
        issuer.add_client(CLIENT_ID, Some(SecretString::from(secret.clone())));
        let offline = issuer.mint_offline_token("bench-user", CLIENT_ID);
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let issuer = rt.block_on(issuer.bind(addr)).expect("bind issuer");
        let dir = tempfile::tempdir().expect("temp dir");
        let secret_file = dir.path().join("client-secret");
        let offline_file = dir.path().join("offline-token");
        write_private(&secret_file, secret.as_bytes(), 0o600);
        write_private(&offline_file, offline.expose_secret().as_bytes(), 0o600);
        Upstream {
            issuer,
            secret_file,
            offline_file,
            secret,
            offline,
            _dir: dir,
        }
    }

    /// A `[files.NAME]` table for this issuer; `extra` adds keys (e.g. `min_valid`).
    pub fn file_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[files.{name}]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n{extra}\n",
            self.issuer.token_url(),
            self.secret_file.display(),
            self.offline_file.display(),
        )
    }

    /// Token-endpoint requests the issuer has seen (counted on arrival).
    pub fn token_requests(&self) -> u64 {
        let body = http::get(&self.issuer.stats_url()).expect("GET /dev/stats");
        let stats: serde_json::Value = serde_json::from_slice(&body).expect("stats JSON");
        stats["token_requests"].as_u64().expect("token_requests")
    }

    /// One `refresh_token` grant, exactly as the daemon sends it, on a fresh
    /// connection (a cold daemon has none open either); returns the elapsed time.
    pub fn time_refresh(&self) -> Duration {
        let form = format!(
            "grant_type=refresh_token&refresh_token={}&client_id={CLIENT_ID}&client_secret={}",
            http::form_encode(self.offline.expose_secret()),
            http::form_encode(&self.secret),
        );
        let t = Instant::now();
        let body = http::post_form(&self.issuer.token_url(), &form).expect("token endpoint");
        let elapsed = t.elapsed();
        assert!(
            body.starts_with(b"{") && body.windows(14).any(|w| w == b"\"access_token\""),
            "unexpected token answer: {}",
            String::from_utf8_lossy(&body)
        );
        elapsed
    }
}

/// A config file (0600) with the given `[files.*]` tables.
pub fn write_config(dir: &Path, tables: &[String]) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!("[mount]\nread_timeout = \"10s\"\n\n{}", tables.concat());
    write_private(&path, text.as_bytes(), 0o600);
    path
}

/// A `tokenfs mount` child. Drop: SIGTERM by PID, a bounded wait, SIGKILL, and a
/// lazy unmount if the mount is still there.
pub struct TokenfsMount {
    child: Child,
    dir: PathBuf,
    log: Arc<Mutex<Vec<u8>>>,
    _tmp: tempfile::TempDir,
}

impl TokenfsMount {
    /// Spawn `tokenfs mount <tmp>/api --config <config>`; returns at once (the
    /// mount is not necessarily there yet).
    pub fn spawn(config: &Path) -> TokenfsMount {
        TokenfsMount::spawn_with(config, &[])
    }

    /// `spawn` with more `mount` options.
    pub fn spawn_with(config: &Path, options: &[&str]) -> TokenfsMount {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("api");
        std::fs::create_dir(&dir).expect("mountpoint");
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(&dir)
            .arg("--config")
            .arg(config)
            .args(options)
            // State (lock files, rotations) stays in the run's temp dir, not the host's.
            .env("STATE_DIRECTORY", tmp.path())
            .env("RUNTIME_DIRECTORY", tmp.path())
            // Logging is not what is measured; warnings still show on failure.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenfs");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.extend_from_slice(&buf[..n]);
                let excess = log.len().saturating_sub(LOG_TAIL);
                log.drain(..excess);
            }
        });
        TokenfsMount {
            child,
            dir,
            log,
            _tmp: tmp,
        }
    }

    /// Spawn and wait (≤ 30 s) until the mount answers: `.status` is there.
    /// Reading `.status` does not issue a token, so the cells stay empty.
    pub fn start(config: &Path) -> TokenfsMount {
        TokenfsMount::start_with(config, &[])
    }

    /// `start` with more `mount` options.
    pub fn start_with(config: &Path, options: &[&str]) -> TokenfsMount {
        let mut m = TokenfsMount::spawn_with(config, options);
        let ready = sys::poll(Duration::from_secs(30), Duration::from_millis(5), || {
            m.assert_running();
            (sys::is_mounted(&m.dir) && m.path(".status").exists()).then_some(())
        });
        assert!(ready.is_some(), "not mounted after 30 s:\n{}", m.log());
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Read a file of the mount; panics (broken setup) if it fails.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}\n{}", self.log()))
    }

    /// Panics with the daemon's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("tokenfs exited ({status}):\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&log).into_owned()
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        sys::poll(limit, Duration::from_millis(10), || {
            self.child.try_wait().ok().flatten()
        })
        .is_some()
    }
}

impl Drop for TokenfsMount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Only our own child, by its PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            if !self.wait_exit(Duration::from_secs(5)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if sys::is_mounted(&self.dir) {
            sys::detach(&self.dir);
        }
    }
}
