//! The API-proxy design: a loopback HTTP server answering `GET /access-token`, and a
//! hand-written HTTP/1.1 client over one kept-alive `TcpStream`, so the client adds as
//! little as possible to what is measured (no pool, no async runtime, no parser crate).

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::body::Bytes;

/// Bounds every read and write: a wedged server fails the bench, never hangs it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1 that serves `body` at `/access-token`; stops on drop.
pub struct TokenServer {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TokenServer {
    pub fn start(rt: &tokio::runtime::Runtime, body: &[u8]) -> TokenServer {
        let body = Bytes::copy_from_slice(body);
        let app = axum::Router::new().route(
            "/access-token",
            axum::routing::get(move || async move { body }),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            let _ = serve.await;
        });
        TokenServer { addr, _stop: stop }
    }
}

/// One HTTP/1.1 connection. Handles `Content-Length` bodies only (all our servers
/// send them); anything else is an error, not a guess.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    len: usize,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: vec![0; 8192],
            len: 0,
        })
    }

    /// Send a complete request and read the answer's body into `body` (cleared
    /// first); returns the status code.
    pub fn round_trip(&mut self, request: &[u8], body: &mut Vec<u8>) -> io::Result<u16> {
        self.stream.write_all(request)?;
        let head_len = loop {
            if let Some(i) = find(&self.buf[..self.len], b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let (status, content_len) = parse_head(&self.buf[..head_len])?;
        let end = head_len + content_len;
        while self.len < end {
            self.fill()?;
        }
        body.clear();
        body.extend_from_slice(&self.buf[head_len..end]);
        // Keep whatever follows (nothing, without pipelining) for the next answer.
        self.buf.copy_within(end..self.len, 0);
        self.len -= end;
        Ok(status)
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.len..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.len += n;
        Ok(())
    }
}

/// The request the API-proxy client sends on every read.
pub fn access_token_request() -> Vec<u8> {
    b"GET /access-token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()
}

/// `GET url` on a fresh connection; the body, or an error for a non-200 answer.
pub fn get(url: &str) -> io::Result<Vec<u8>> {
    let (addr, path) = split_url(url)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    one_shot(addr, req.as_bytes())
}

/// `POST url` with a form body on a fresh connection, as a token client does.
pub fn post_form(url: &str, form: &str) -> io::Result<Vec<u8>> {
    let (addr, path) = split_url(url)?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    one_shot(addr, req.as_bytes())
}

fn one_shot(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let status = Conn::connect(addr)?.round_trip(request, &mut body)?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        return Err(io::Error::other(format!("HTTP {status}: {text}")));
    }
    Ok(body)
}

/// `http://127.0.0.1:PORT/path` → (address, `/path`); loopback literals only.
fn split_url(url: &str) -> io::Result<(SocketAddr, &str)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not http://IP:PORT/…: {url}"),
        )
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let slash = rest.find('/').ok_or_else(bad)?;
    let addr = rest[..slash].parse().map_err(|_| bad())?;
    Ok((addr, &rest[slash..]))
}

/// Status code and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> io::Result<(u16, usize)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let content_len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    Ok((status, content_len))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encode a form value (everything but RFC 3986 unreserved characters).
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
