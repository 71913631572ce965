//! Test harness: real `tokenfs` processes, real mounts, real HTTP; every process
//! is ended by PID and every mount is unmounted on drop, also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenfs");

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

/// A child process whose stderr is collected; killed by PID on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
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
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tokenfs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
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
        });
        Proc { child, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
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
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let mut full = vec!["mount", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        let proc = Proc::spawn(&full, &[]);
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

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "tokenfs did not exit after SIGTERM:\n{}",
                    self.proc.stderr()
                )
            })
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

/// A `tokenfs dev-issuer` process on an ephemeral loopback port.
pub struct DevIssuer {
    pub proc: Proc,
    pub token_url: String,
    pub realm_url: String,
    pub offline_token_file: PathBuf,
    pub client_secret_file: PathBuf,
    _tmp: tempfile::TempDir,
}

impl DevIssuer {
    pub fn start(extra: &[&str]) -> DevIssuer {
        let tmp = tempdir();
        let offline = tmp.path().join("offline-token");
        let secret = tmp.path().join("client-secret");
        let mut args = vec![
            "dev-issuer",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "alice",
            "--offline-token-file",
            offline.to_str().unwrap(),
            "--client-secret-file",
            secret.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, &[]);
        let stdout = BufReader::new(proc.child.stdout.take().unwrap());
        let mut token_url = None;
        let mut lines = stdout.lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(url) = line
                .split_whitespace()
                .find(|w| w.starts_with("http") && w.ends_with("/protocol/openid-connect/token"))
            {
                token_url = Some(url.to_owned());
                break;
            }
        }
        // Keep draining: a closed pipe must not disturb the issuer.
        std::thread::spawn(move || lines.for_each(drop));
        let token_url = token_url
            .unwrap_or_else(|| panic!("dev-issuer printed no token URL:\n{}", proc.stderr()));
        let realm_url = token_url
            .trim_end_matches("/protocol/openid-connect/token")
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(offline.exists() && secret.exists()) {
            assert!(Instant::now() < deadline, "dev-issuer wrote no files");
            std::thread::sleep(Duration::from_millis(20));
        }
        DevIssuer {
            proc,
            token_url,
            realm_url,
            offline_token_file: offline,
            client_secret_file: secret,
            _tmp: tmp,
        }
    }

    pub fn base_url(&self) -> String {
        let rest = self.token_url.split("/realms/").next().unwrap();
        rest.to_owned()
    }

    /// Token endpoint requests the issuer has answered so far.
    pub fn token_requests(&self) -> u64 {
        let stats: serde_json::Value =
            reqwest::blocking::get(format!("{}/dev/stats", self.base_url()))
                .unwrap()
                .json()
                .unwrap();
        stats["token_requests"].as_u64().unwrap()
    }

    /// A config file for `mount --config` against this issuer.
    pub fn config(&self, dir: &Path, extra_mount: &str, extra_file: &str) -> PathBuf {
        let path = dir.join("config.toml");
        write_file(
            &path,
            &format!(
                "[mount]\n{extra_mount}\n\n[files.token]\nsource = \"oauth2\"\ntoken_url = \"{}\"\n\
                 client_id = \"tokenfs\"\nclient_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n{extra_file}\n",
                self.token_url,
                self.client_secret_file.display(),
                self.offline_token_file.display()
            ),
            0o600,
        );
        path
    }
}

/// Verify a JWT against the JWKS at `certs_url`; returns its claims.
pub fn verify_jwt(token: &str, certs_url: &str) -> serde_json::Value {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let jwks: JwkSet = reqwest::blocking::get(certs_url).unwrap().json().unwrap();
    let header = decode_header(token).expect("a JWT header");
    let kid = header.kid.expect("kid in the header");
    let jwk = jwks.find(&kid).expect("kid in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    decode::<serde_json::Value>(token, &key, &validation)
        .expect("signature and exp verify")
        .claims
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

/// A stand-in for the platform's API proxy: `GET /access-token` answers with a
/// fresh (unsigned) JWT and a trailing newline, and counts requests.
pub struct ApiProxy {
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct ProxyState {
    requests: u64,
    last_token: String,
    last_api_key: String,
}

impl ApiProxy {
    pub fn start() -> ApiProxy {
        use axum::{extract::State, http::HeaderMap, routing::get, Router};
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let app = Router::new()
            .route(
                "/access-token",
                get(
                    |State(s): State<Arc<Mutex<ProxyState>>>, headers: HeaderMap| async move {
                        let token = unsigned_jwt(300);
                        let mut s = s.lock().unwrap();
                        s.requests += 1;
                        s.last_token = token.clone();
                        s.last_api_key = headers
                            .get("x-domino-api-key")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        format!("{token}\n")
                    },
                ),
            )
            .with_state(state.clone());
        let (addr, stop) = serve_in_background(app);
        ApiProxy {
            url: format!("http://{addr}"),
            state,
            _stop: stop,
        }
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    pub fn last_token(&self) -> String {
        self.state.lock().unwrap().last_token.clone()
    }

    pub fn last_api_key(&self) -> String {
        self.state.lock().unwrap().last_api_key.clone()
    }
}

/// A JWT-shaped token expiring in `lifetime` seconds (signature not checked by this source).
pub fn unsigned_jwt(lifetime: u64) -> String {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = now_secs() as u64;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let jti = format!("{:x}", rand::random::<u64>());
    let claims = serde_json::json!({"sub": "alice", "iat": now, "exp": now + lifetime, "jti": jti});
    format!("{}.{}.c2ln", b64(&header), b64(&claims))
}

/// How the test Entra endpoint answers the next refresh.
#[derive(Debug, Clone, PartialEq)]
pub enum EntraMode {
    /// Issue a token of this lifetime and rotate the refresh token.
    Ok { lifetime: u64 },
    /// An AADSTS-shaped error body with HTTP 400.
    Error { error: &'static str, code: u32 },
    /// HTTP 500 with an HTML body.
    ServerError,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

#[derive(Default)]
struct EntraState {
    mode: Option<EntraMode>,
    /// The refresh token it accepts; each success rotates it.
    current: String,
    generation: u32,
    presented: Vec<String>,
}

/// A programmable Entra ID v2 token endpoint on loopback
/// (`POST /{tenant}/oauth2/v2.0/token`), for the direct source's fault tests.
pub struct FakeEntra {
    pub authority: String,
    state: Arc<Mutex<EntraState>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeEntra {
    /// Accepts `initial` as the first refresh token.
    pub fn start(initial: &str, mode: EntraMode) -> FakeEntra {
        use axum::{
            extract::State, http::StatusCode, response::IntoResponse, routing::post, Form, Router,
        };
        let state = Arc::new(Mutex::new(EntraState {
            mode: Some(mode),
            current: initial.to_owned(),
            ..EntraState::default()
        }));
        let app = Router::new()
                    .route(
                        "/{tenant}/oauth2/v2.0/token",
                        post(
                            |State(s): State<Arc<Mutex<EntraState>>>,
                             Form(form): Form<std::collections::HashMap<String, String>>| async move {
                                let mut s = s.lock().unwrap();
                                let presented = form.get("refresh_token").cloned().unwrap_or_default();
                                s.presented.push(presented.clone());
                                match s.mode.clone().unwrap() {
                                    EntraMode::Ok { .. } if presented != s.current => (
                                        StatusCode::BAD_REQUEST,
                                        axum::Json(serde_json::json!({
                                            "error": "invalid_grant",
                                            "error_description": "AADSTS9002313: Invalid request.",
                                            "error_codes": [9002313]
                                        })),
                                    )
                                        .into_response(),
                                    EntraMode::Ok { lifetime } => {
                                        s.generation += 1;
                                        s.current = format!("entra-rt-{}", s.generation);
                                        let body = serde_json::json!({
                                            "token_type": "Bearer",
                                            "scope": form.get("scope"),
                                            "expires_in": lifetime,
                                            "ext_expires_in": lifetime,
                                            "access_token": unsigned_jwt(lifetime),
                                            "refresh_token": s.current,
                                        });
                                        axum::Json(body).into_response()
                                    }
                                    EntraMode::Error { error, code } => (
                                        StatusCode::BAD_REQUEST,
                                        axum::Json(serde_json::json!({
                                            "error": error,
                                            "error_description": format!("AADSTS{code}: test"),
                                            "error_codes": [code]
                                        })),
                                    )
                                        .into_response(),
                                    EntraMode::ServerError => {
                                        (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>").into_response()
                                    }
                                    EntraMode::Garbage => (StatusCode::OK, "{not json").into_response(),
                                }
                            },
                        ),
                    )
                    .with_state(state.clone());
        let (addr, stop) = serve_in_background(app);
        FakeEntra {
            authority: format!("http://{addr}"),
            state,
            _stop: stop,
        }
    }

    pub fn set_mode(&self, mode: EntraMode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Refresh tokens presented so far, in order.
    pub fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }

    /// A config file for a direct Entra `azure-token` against this endpoint.
    pub fn config(&self, dir: &Path, refresh_token: &str, extra: &str) -> PathBuf {
        let rt = dir.join("entra-refresh-token");
        write_file(&rt, refresh_token, 0o600);
        let path = dir.join("config.toml");
        write_file(
            &path,
            &format!(
                "[files.azure-token]\nsource = \"entra\"\nauthority = \"{}\"\ntenant = \"contoso\"\n\
                 client_id = \"app\"\nscope = \"https://storage.azure.com/.default\"\n\
                 redirect_uri = \"https://domino.example.com/azure/callback\"\n\
                 refresh_token_file = \"{}\"\nrotated_refresh_token_file = \"{}\"\n{extra}\n",
                self.authority,
                rt.display(),
                dir.join("entra-rotated").display()
            ),
            0o600,
        );
        path
    }
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

/// How the fault-injecting token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A good token (unsigned JWT) of this lifetime, in seconds.
    Ok(u64),
    /// Nothing listens: connections are refused.
    Refuse,
    /// This HTTP status with an HTML body, with or without `Retry-After: 1`.
    Status(u16, bool),
    /// Accepts and never answers.
    Hang,
    /// Answers one byte every 300 ms.
    Drip,
    InvalidJson,
    EmptyBody,
    /// A 70 KB body, over the 64 KiB cap.
    Oversize,
    /// JSON without `access_token`.
    MissingFields,
    /// An opaque token and no `expires_in`.
    NonJwt,
    /// A JWT that expired a minute ago.
    ExpiredJwt,
    /// A JWT with 2 s left (below any sane min_valid).
    ShortJwt,
    /// HTTP 400 `invalid_grant`.
    InvalidGrant,
    /// A good token whose payload was altered after signing.
    BadSignature,
    /// Signed by a key the JWKS does not hold.
    UnknownKid,
    /// `alg: none`, no signature.
    AlgNone,
    /// `iat` ten minutes in the future (beyond any leeway).
    IssuedInFuture,
    /// `nbf` ten minutes in the future.
    NotYetValid,
}

/// RS256 signing for the fault upstream's tokens, with its JWKS.
struct Signer {
    key: aws_lc_rs::rsa::KeyPair,
    other: aws_lc_rs::rsa::KeyPair,
}

/// The `iss` of every token the fault upstream issues.
pub const FAULT_ISSUER: &str = "http://fault.test/realms/R";

impl Signer {
    fn new() -> Signer {
        let gen = || aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        Signer {
            key: gen(),
            other: gen(),
        }
    }

    fn jwks(&self) -> String {
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let public = self.key.public_key();
        serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }]})
        .to_string()
    }

    /// A JWT with these claims (plus `iss`), shaped by `fault`.
    fn token(&self, fault: Fault, mut claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        claims["iss"] = FAULT_ISSUER.into();
        let (alg, kid, key) = match fault {
            Fault::AlgNone => ("none", "k1", None),
            Fault::UnknownKid => ("RS256", "k-unknown", Some(&self.other)),
            _ => ("RS256", "k1", Some(&self.key)),
        };
        let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = key.map_or_else(String::new, |key| {
            let mut sig = vec![0u8; key.public_modulus_len()];
            key.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            b64(&sig)
        });
        if fault == Fault::BadSignature {
            claims["sub"] = "mallory".into();
            return format!(
                "{}.{}.{signature}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
        }
        format!("{signing_input}.{signature}")
    }
}

struct FaultState {
    fault: Fault,
    requests: u64,
    signer: Arc<Signer>,
}

/// A token endpoint on loopback that answers with a chosen fault. Hand-written
/// HTTP/1.1 on std sockets, so it can refuse, hang or drip at will.
pub struct FaultyUpstream {
    pub url: String,
    addr: std::net::SocketAddr,
    state: Arc<Mutex<FaultState>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultyUpstream {
    pub fn start(fault: Fault) -> FaultyUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FaultState {
            fault,
            requests: 0,
            signer: Arc::new(Signer::new()),
        }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let up = FaultyUpstream {
            url: format!("http://{addr}/realms/R/protocol/openid-connect/token"),
            addr,
            state,
            stop,
        };
        up.serve(listener);
        up
    }

    fn serve(&self, listener: std::net::TcpListener) {
        let (state, stop, addr) = (self.state.clone(), self.stop.clone(), self.addr);
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let mut listener = Some(listener);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let refusing = state.lock().unwrap().fault == Fault::Refuse;
                match (&listener, refusing) {
                    // Close the socket to refuse; bind the same port again to heal.
                    (Some(_), true) => listener = None,
                    (None, false) => {
                        let l = std::net::TcpListener::bind(addr).unwrap();
                        l.set_nonblocking(true).unwrap();
                        listener = Some(l);
                    }
                    _ => {}
                }
                match listener.as_ref().map(|l| l.accept()) {
                    Some(Ok((conn, _))) => {
                        let (state, stop) = (state.clone(), stop.clone());
                        std::thread::spawn(move || answer(conn, &state, &stop));
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    pub fn set(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// A config for `token` against this endpoint, with short timeouts.
    pub fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let secret = dir.join("secret");
        write_file(&secret, "s", 0o600);
        let offline = dir.join("offline");
        write_file(&offline, "offline-token", 0o600);
        let path = dir.join("config.toml");
        write_file(
            &path,
            &format!(
                "[mount]\nread_timeout = \"2s\"\n\n[files.token]\nsource = \"oauth2\"\ntoken_url = \"{}\"\n\
                 client_id = \"c\"\nclient_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n\
                 timeout = \"4s\"\nconnect_timeout = \"1s\"\n{extra}\n\n\
                 [files.token.verify]\njwks_url = \"http://{}/jwks\"\nissuer = \"{FAULT_ISSUER}\"\n",
                self.url,
                secret.display(),
                offline.display(),
                self.addr
            ),
            0o600,
        );
        path
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn answer(
    mut conn: std::net::TcpStream,
    state: &Mutex<FaultState>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Read the request head and its body (the form), then answer.
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = conn.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        req.extend_from_slice(&buf[..n]);
        if let Some(head_end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..head_end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if req.len() >= head_end + 4 + len {
                break;
            }
        }
    }
    if req.starts_with(b"GET /jwks") {
        let jwks = state.lock().unwrap().signer.jwks();
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                jwks.len()
            )
            .as_bytes(),
        );
        return;
    }
    let (fault, signer) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        (s.fault, s.signer.clone())
    };
    let jti = || format!("{:x}", rand::random::<u64>());
    let signed = |fault: Fault, iat: u64, exp: u64, nbf: u64| {
        signer.token(
            fault,
            serde_json::json!({"sub": "alice", "iat": iat, "nbf": nbf, "exp": exp, "jti": jti()}),
        )
    };
    let now = now_secs() as u64;
    let json = |v: serde_json::Value| v.to_string();
    let (status, extra_header, body): (u16, &str, String) = match fault {
        Fault::Ok(lifetime) => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now_secs() as u64, now_secs() as u64 + lifetime, now_secs() as u64), "expires_in": lifetime, "token_type": "Bearer"}),
            ),
        ),
        Fault::Refuse => return,
        Fault::Status(code, retry_after) => (
            code,
            if retry_after {
                "Retry-After: 1\r\n"
            } else {
                ""
            },
            "<html>down</html>".into(),
        ),
        Fault::Hang => {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        Fault::Drip => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..100 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || conn.write_all(b" ").is_err()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            return;
        }
        Fault::InvalidJson => (200, "", "{\"access_token\": \"abc".into()),
        Fault::EmptyBody => (200, "", String::new()),
        Fault::Oversize => (
            200,
            "",
            format!("{{\"access_token\":\"{}\"}}", "x".repeat(70_000)),
        ),
        Fault::MissingFields => (
            200,
            "",
            json(serde_json::json!({"token_type": "Bearer", "expires_in": 300})),
        ),
        Fault::NonJwt => (
            200,
            "",
            json(
                serde_json::json!({"access_token": "opaque-token-without-expiry", "token_type": "Bearer"}),
            ),
        ),
        Fault::ExpiredJwt => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now - 120, now - 60, now - 120), "expires_in": 60}),
            ),
        ),
        Fault::ShortJwt => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now - 10, now + 2, now - 10), "expires_in": 2}),
            ),
        ),
        Fault::BadSignature | Fault::UnknownKid | Fault::AlgNone => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now, now + 60, now), "expires_in": 60}),
            ),
        ),
        Fault::IssuedInFuture => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now + 600, now + 660, now), "expires_in": 60}),
            ),
        ),
        Fault::NotYetValid => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now, now + 660, now + 600), "expires_in": 660}),
            ),
        ),
        Fault::InvalidGrant => (
            400,
            "",
            json(
                serde_json::json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
            ),
        ),
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
