//! HTTP plumbing shared by the sources: one way to build a client, read a body
//! and turn transport failures into [`SourceError`]s.
//!
//! Error texts end up in logs and `.status`, so they never carry a query
//! string, user info, a header value or a body.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::zeroize::Zeroizing;

use super::SourceError;
use crate::sync::lock;

/// Limits and trust settings for one upstream.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time allowed to establish the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole exchange, connect to last body byte.
    pub timeout: Duration,
    /// Largest response body read; token answers are a few KiB.
    pub max_body: usize,
    /// Extra PEM CA certificate(s) trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Whether `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` from the daemon's
    /// environment apply (`proxy = "env"`, the default) or not (`"none"`).
    pub proxy_from_env: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            ca_file: None,
            proxy_from_env: true,
        }
    }
}

/// Why a source could not be set up. Raised once at start, so messages say
/// which setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the CA file {}: {error}", path.display())]
    CaFileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the CA file {} holds no PEM certificate; it must contain one or more `-----BEGIN CERTIFICATE-----` blocks", path.display())]
    CaFileNotPem { path: PathBuf },
    #[error("cannot set up the HTTP client{}: {reason}", ca_file.as_ref().map(|p| format!(" (with the CA file {})", p.display())).unwrap_or_default())]
    Client {
        ca_file: Option<PathBuf>,
        reason: String,
    },
    #[error("{setting} is not a valid http(s) URL ({reason}): {url}")]
    InvalidUrl {
        setting: &'static str,
        /// The URL without query, fragment or user info.
        url: String,
        reason: String,
    },
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: &'static str,
    },
    #[error("header {name:?} is invalid: {reason}; use a token name and a value of visible ASCII")]
    InvalidHeader { name: String, reason: &'static str },
}

/// The HTTP clients of a set of sources, one per distinct settings, shared by
/// every source built with it: each client carries its own TLS root store and
/// connection pool (about 100 KiB), so a mount with many files would otherwise
/// pay that per file. Whoever builds the sources (the daemon, `check`) makes one
/// and passes it in; a source built alone gets a registry of its own.
#[derive(Default)]
pub struct Clients(std::sync::Mutex<std::collections::HashMap<ClientKey, reqwest::Client>>);

/// What makes two settings' clients differ (`max_body` is checked per read).
type ClientKey = (Duration, Duration, Option<PathBuf>, bool);

impl Clients {
    /// The client for `s`, built at its first use.
    pub fn client(&self, s: &HttpSettings) -> Result<reqwest::Client, BuildError> {
        let key = (
            s.connect_timeout,
            s.timeout,
            s.ca_file.clone(),
            s.proxy_from_env,
        );
        let mut clients = lock(&self.0);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(s)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Build a client: rustls (aws-lc-rs, the same provider as the JWT code), no
/// redirects, both timeouts, optional extra CA, and a `User-Agent` that names
/// tokenfs in the upstream's logs.
fn build_client(s: &HttpSettings) -> Result<reqwest::Client, BuildError> {
    let mut builder = reqwest::Client::builder()
        // A token endpoint that redirects would have us re-send credentials to
        // wherever it points (SSRF, and a leak of the form body).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(s.connect_timeout)
        .timeout(s.timeout)
        .user_agent(concat!("tokenfs/", env!("CARGO_PKG_VERSION")));
    if !s.proxy_from_env {
        builder = builder.no_proxy();
    }
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path).map_err(|source| BuildError::CaFileUnreadable {
            path: path.clone(),
            error: source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| BuildError::CaFileNotPem { path: path.clone() })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| BuildError::Client {
        ca_file: s.ca_file.clone(),
        reason: error_chain(e),
    })
}

/// Parse and check a configured URL; `setting` names it in the error.
pub fn parse_url(setting: &'static str, url: &str) -> Result<Url, BuildError> {
    let parsed = check_url(url).map_err(|reason| BuildError::InvalidUrl {
        setting,
        url: redact_unparsed(url),
        reason,
    })?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    if parsed.scheme() == "http" && !loopback {
        tracing::warn!(
            setting,
            url = %redact_url(&parsed),
            "plain http to a host that is not a loopback address: secrets and tokens \
             cross the network unencrypted and unauthenticated; use https"
        );
    }
    Ok(parsed)
}

/// The one check of every URL setting, pure (the config's validation and the
/// sources share it): `http://` or `https://` with a host, no credentials in
/// it, and no `http://localhost`. The refusal says why, without the URL.
pub fn check_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials; use client_secret_file".into());
    }
    // Nothing authenticates a plain-http peer, and a name may resolve to
    // 127.0.0.1 or ::1 (Kubernetes' /etc/hosts lists ::1 first): any local
    // user can listen on the loopback address the service does not, and
    // would get our secrets and serve us tokens.
    if let (true, Some(url::Host::Domain(d))) = (parsed.scheme() == "http", parsed.host()) {
        if is_localhost(d) {
            return Err(
                "http://localhost may reach 127.0.0.1 or ::1, and another local user can \
                 listen on the one the service does not: write the address the service \
                 listens on (http://127.0.0.1:PORT or http://[::1]:PORT), or use https"
                    .into(),
            );
        }
    }
    Ok(parsed)
}

fn is_localhost(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// Cut what might be secret (query, fragment, user info) out of a string
/// that did not parse as a URL.
fn redact_unparsed(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
            format!("{scheme}://{}", &rest[host_start..])
        }
        None => url.to_string(),
    }
}

/// `url` as it may appear in logs: no user info, query or fragment.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    // Fails only for URLs that cannot have credentials anyway.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// An upstream's answer as read: a token answer holds the token, and an error
/// answer may echo the refresh token or client secret sent, so every body is
/// wiped when dropped, on every path (parsed, refused, too big, cut off).
/// Only the bytes this crate holds: the HTTP stack's own chunk buffers are
/// beyond its reach.
pub type Body = Zeroizing<Vec<u8>>;

/// Read a body of at most `max` bytes. Chunks are checked as they arrive, so
/// an endless or huge body costs at most `max` plus one chunk of memory. A
/// `Content-Length` over the cap fails before reading anything.
///
/// Without the client's timeout at hand, a timeout while reading the body is
/// reported as `Unavailable`; sources use [`read_body`] to get `Timeout`.
pub async fn read_capped(resp: reqwest::Response, max: usize) -> Result<Body, SourceError> {
    read_capped_with(resp, max, None).await
}

/// [`read_capped`] with `s.max_body`, reporting a timeout as
/// `Timeout(s.timeout)` like [`map_send_error`] does.
pub async fn read_body(resp: reqwest::Response, s: &HttpSettings) -> Result<Body, SourceError> {
    read_capped_with(resp, s.max_body, Some(s.timeout)).await
}

async fn read_capped_with(
    mut resp: reqwest::Response,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Body, SourceError> {
    let too_big = || SourceError::Malformed(format!("response body over {max} bytes"));
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    // Sized once up front: growing would leave copies of a token in freed
    // memory, and `max` is small.
    let mut body = Body::new(Vec::with_capacity(declared.map_or(max, |n| n as usize)));
    let url = redact_url(resp.url());
    while let Some(chunk) = resp.chunk().await.map_err(|e| match timeout {
        Some(t) if e.is_timeout() => SourceError::Timeout(t),
        _ => SourceError::Unavailable(format!(
            "reading the response from {url} failed: {}",
            error_chain(e)
        )),
    })? {
        if body.len() + chunk.len() > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Map a failed `send()` to a [`SourceError`]: a timeout to `Timeout`, anything
/// else (refused, DNS, TLS, reset) to `Unavailable`.
pub fn map_send_error(e: reqwest::Error, s: &HttpSettings) -> SourceError {
    if e.is_timeout() {
        // A connect timeout is reported with the limit that fired.
        return SourceError::Timeout(if e.is_connect() {
            s.connect_timeout
        } else {
            s.timeout
        });
    }
    let target = e.url().map(|url| {
        if e.is_connect() {
            format!(
                "cannot connect to {}:{}",
                url.host_str().unwrap_or("?"),
                url.port_or_known_default().unwrap_or(0)
            )
        } else {
            format!("request to {} failed", redact_url(url))
        }
    });
    // For a failed connect the innermost cause ("Connection refused", a TLS
    // certificate problem) is the useful part; the layers above only repeat
    // "connect error".
    let cause = if e.is_connect() && std::error::Error::source(&e).is_some() {
        root_cause(&e)
    } else {
        error_chain(e)
    };
    SourceError::Unavailable(format!(
        "{}: {cause}",
        target.as_deref().unwrap_or("request failed")
    ))
}

/// The error text for a non-2xx status without a more specific reason.
/// 5xx and 429 are the upstream's trouble and worth retrying (`Unavailable`);
/// anything else, including a redirect we refuse to follow, is `Rejected`.
pub fn status_error(status: StatusCode, url: &Url, detail: Option<&str>) -> SourceError {
    let mut msg = format!("HTTP {} from {}", status.as_u16(), redact_url(url));
    if status.is_redirection() {
        msg.push_str(" (redirects are not followed; configure the final URL)");
    }
    if let Some(d) = detail {
        msg.push_str(": ");
        msg.push_str(d);
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        SourceError::Unavailable(msg)
    } else {
        SourceError::Rejected(msg)
    }
}

/// Secret values shorter than this are not searched for in upstream text: a
/// few letters would blank ordinary words, and a secret that short is guessed anyway.
const MIN_REDACTED_SECRET: usize = 8;
/// An unbroken run of token characters this long is taken for a credential.
const MIN_TOKEN_RUN: usize = 32;
const REDACTED: &str = "[redacted]";

/// Upstream-provided text (an OAuth `error_description`) made safe to show the
/// user and log: an upstream may echo what it was sent, so every value in
/// `sent` (the request's form: refresh token, client secret, subject token),
/// anything JWT-shaped and any long token-like run are replaced by
/// `[redacted]`; control characters are replaced and the length capped.
pub fn upstream_text(s: &str, sent: &[&str]) -> String {
    let mut text = s.to_owned();
    for secret in sent.iter().filter(|v| v.len() >= MIN_REDACTED_SECRET) {
        // As sent (form-encoded) and as the upstream may have decoded it.
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        text = text.replace(secret, REDACTED).replace(&encoded, REDACTED);
    }
    sanitize_upstream_text(&redact_token_runs(&text))
}

/// Replace runs of base64url/JWT characters that look like a credential: three
/// dot-separated parts starting `eyJ` (a JWT), or [`MIN_TOKEN_RUN`] characters
/// or more that are not a UUID (trace IDs in error texts are useful).
fn redact_token_runs(s: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+=".contains(c);
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let jwt = run.starts_with("eyJ") && run.matches('.').count() >= 2;
        let uuid = run.len() == 36 && run.bytes().filter(|b| *b == b'-').count() == 4;
        if jwt || (run.len() >= MIN_TOKEN_RUN && !uuid) {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if is_token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Upstream-provided text made safe for one log line: control characters
/// replaced, length capped (see [`upstream_text`] for text that may hold secrets).
pub fn sanitize_upstream_text(s: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `e`'s text and its causes joined with ": ", with the URL (and so any
/// query string) taken out of reqwest's top line.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(&e);
    while let Some(err) = cur {
        let text = err.to_string();
        // hyper-util nests errors whose texts repeat their sources.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::path::Path;

    use axum::routing::get;
    use axum::Router;

    /// Serve `app` on 127.0.0.1 for the rest of the test; returns its base URL.
    pub(crate) async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// A base URL nothing listens on: bind, note the port, close.
    pub(crate) fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}")
    }

    pub(crate) fn fast() -> HttpSettings {
        HttpSettings {
            connect_timeout: Duration::from_millis(300),
            timeout: Duration::from_millis(300),
            max_body: 1024,
            ..HttpSettings::default()
        }
    }

    /// A GET of `base` with a client for `s`.
    async fn get_with(s: &HttpSettings, base: &str) -> reqwest::Response {
        Clients::default()
            .client(s)
            .unwrap()
            .get(base)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn body_over_cap_fails_without_reading_it_all() {
        // An endless chunked body, written by hand because axum's streaming
        // bodies need the futures crates. If the reader did not stop at the
        // cap, the test would run into the 5 s timeout instead.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = conn.read(&mut req).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("64\r\n{}\r\n", "x".repeat(100));
            while conn.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let s = HttpSettings {
            timeout: Duration::from_secs(5),
            ..fast()
        };
        let resp = get_with(&s, &base).await;
        assert_eq!(resp.content_length(), None);
        let err = read_body(resp, &s).await.unwrap_err();
        assert_eq!(
            err,
            SourceError::Malformed("response body over 1024 bytes".into())
        );
    }

    #[tokio::test]
    async fn declared_length_over_cap_fails_early() {
        let app = Router::new().route("/", get(|| async { vec![b'x'; 2000] }));
        let base = serve(app).await;
        let s = fast();
        let resp = get_with(&s, &base).await;
        assert!(resp.content_length().is_some());
        let err = read_capped(resp, 1024).await.unwrap_err();
        assert!(matches!(err, SourceError::Malformed(_)));
        // Exactly at the cap is fine.
        let app = Router::new().route("/", get(|| async { vec![b'x'; 1024] }));
        let base = serve(app).await;
        let resp = get_with(&s, &base).await;
        assert_eq!(read_capped(resp, 1024).await.unwrap().len(), 1024);
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable_and_names_the_address() {
        let base = dead_url();
        let s = fast();
        let e = Clients::default()
            .client(&s)
            .unwrap()
            .get(format!("{base}/x?secret=1"))
            .send()
            .await
            .unwrap_err();
        let err = map_send_error(e, &s);
        let msg = err.to_string();
        assert!(matches!(err, SourceError::Unavailable(_)), "{msg}");
        assert!(
            msg.contains(&format!("cannot connect to {}", &base[7..])),
            "{msg}"
        );
        assert!(msg.contains("Connection refused"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn redaction_and_url_checks() {
        let u = Url::parse("https://user:pw@idp.example/realms/r/token?a=secret#frag").unwrap();
        assert_eq!(redact_url(&u), "https://idp.example/realms/r/token");
        assert!(parse_url("token_url", "ftp://x/").is_err());
        let e = parse_url("token_url", "not a url?secret=1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse_url("token_url", "http://user:secret@bad host/t?q=secret").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("http://bad host/t"), "{e}");
        assert!(e.to_string().contains("token_url"), "{e}");
    }

    #[test]
    fn status_mapping() {
        let u = Url::parse("http://h/t?q=1").unwrap();
        for (code, unavailable) in [
            (500, true),
            (503, true),
            (429, true),
            (400, false),
            (401, false),
            (403, false),
            (302, false),
            (404, false),
        ] {
            let e = status_error(StatusCode::from_u16(code).unwrap(), &u, None);
            assert_eq!(
                matches!(e, SourceError::Unavailable(_)),
                unavailable,
                "{code}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("HTTP {code} from http://h/t")),
                "{e}"
            );
            assert!(!e.to_string().contains("q=1"));
        }
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let s = HttpSettings {
            ca_file: Some(missing.clone()),
            ..HttpSettings::default()
        };
        let e = Clients::default().client(&s).unwrap_err();
        assert!(matches!(e, BuildError::CaFileUnreadable { .. }));
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let s = HttpSettings {
            ca_file: Some(garbage),
            ..HttpSettings::default()
        };
        let e = Clients::default().client(&s).unwrap_err();
        assert!(matches!(e, BuildError::CaFileNotPem { .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");
    }

    #[test]
    fn ca_file_with_certificates_is_accepted() {
        // Any PEM bundle will do; the system one is the only one at hand.
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if !bundle.exists() {
            eprintln!("skipped: no {} on this machine", bundle.display());
            return;
        }
        let s = HttpSettings {
            ca_file: Some(bundle.to_path_buf()),
            ..HttpSettings::default()
        };
        Clients::default().client(&s).unwrap();
    }

    #[test]
    fn upstream_text_redacts_what_was_sent_and_anything_token_like() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let echoed = format!(
            "bad refresh_token=rt-0123456789 client_secret=cs%2Fsecret+value and {jwt}; \
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; trace 6f1c2a3b-1111-2222-3333-444455556666; short"
        );
        let text = upstream_text(&echoed, &["rt-0123456789", "cs/secret value", "short"]);
        assert!(
            !text.contains("rt-0123456789") && !text.contains("value"),
            "{text}"
        );
        assert!(!text.contains(jwt) && !text.contains("AAAAAAAA"), "{text}");
        assert!(
            text.contains("trace 6f1c2a3b-1111-2222-3333-444455556666"),
            "{text}"
        );
        // Under 8 characters a value is not searched for.
        assert!(text.ends_with("; short"), "{text}");
        assert_eq!(
            upstream_text("invalid_grant: Session not active", &[]),
            "invalid_grant: Session not active"
        );
    }

    #[test]
    fn sanitize_cuts_and_flattens() {
        assert_eq!(sanitize_upstream_text("a\nb"), "a b");
        assert_eq!(
            sanitize_upstream_text(&"x".repeat(400)).chars().count(),
            301
        );
    }
}
