//! The embedded issuer as a separate `tokenfs dev-issuer` process, JWT checks, and
//! a stand-in for the platform's API proxy.

use super::*;

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
        let proc = Proc::spawn(&args, &[]);
        let find_url = |out: &str| {
            out.split_whitespace()
                .find(|w| w.starts_with("http") && w.ends_with("/protocol/openid-connect/token"))
                .map(str::to_owned)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut token_url = None;
        while token_url.is_none() && Instant::now() < deadline {
            token_url = find_url(&proc.stdout());
            if token_url.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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
