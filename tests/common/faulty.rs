//! A token endpoint that misbehaves on demand, and the RS256 signer of its tokens.

use super::*;

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
    /// A good token whose `exp` is in the year 10000.
    FarFuture,
    /// HTTP 400 whose `error_description` echoes the request form (its refresh
    /// token and client secret) and a JWT.
    EchoRequest,
    /// A good token whose `sub` and `jti` hold terminal escapes and CR/LF.
    ForgedClaims,
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
    let form =
        String::from_utf8_lossy(&req[req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..])
            .into_owned();
    let (status, extra_header, body): (u16, &str, String) = match fault {
        Fault::Ok(lifetime) => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now_secs() as u64, now_secs() as u64 + lifetime, now_secs() as u64), "expires_in": lifetime, "token_type": "Bearer"}),
            ),
        ),
        Fault::Refuse => return,
        Fault::FarFuture => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signed(fault, now, 253_402_300_800 + 3600, now), "expires_in": 60}),
            ),
        ),
        Fault::EchoRequest => (
            400,
            "",
            json(serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("cannot parse {form} near {}", signed(fault, now, now + 60, now)),
            })),
        ),
        Fault::ForgedClaims => (
            200,
            "",
            json(
                serde_json::json!({"access_token": signer.token(fault, serde_json::json!({
                "sub": "x\u{1b}[2K\rOK     sub=admin", "jti": "j\nOK", "iat": now, "nbf": now, "exp": now + 300,
            })), "expires_in": 300}),
            ),
        ),
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
