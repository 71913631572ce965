//! A bounded HTTP/1 listener on TCP or a Unix socket, for the daemon's extras
//! (metrics, the login redirect, the login socket).
//!
//! Any local uid can connect to a TCP port, so a listener is bounded: at most
//! [`MAX_CONNECTIONS`] at once (the rest wait in the kernel's backlog, costing
//! the daemon no descriptor), a request head within [`HEAD_TIMEOUT`] and
//! [`MAX_HEAD`] bytes, a whole connection within [`CONNECTION_TIMEOUT`]. It is
//! an extra: failing to listen never stops the mount, and is retried.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::resolve;

pub const MAX_CONNECTIONS: usize = 16;
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's smallest allowed read buffer; a GET head is far shorter.
const MAX_HEAD: usize = 8192;
const RETRY_BIND: Duration = Duration::from_secs(5);

/// Where to listen: `PORT` (on 127.0.0.1), `IP:PORT`, or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(format!(
                    "{s:?}: a socket needs an absolute path, e.g. unix:/run/tokenfs/metrics.sock"
                ));
            }
            return Ok(Listen::Unix(path));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Listen::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        s.parse().map(Listen::Tcp).map_err(|_| {
            format!("{s:?} is neither a port, IP:PORT nor unix:/PATH (e.g. 9464, 127.0.0.1:9464)")
        })
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error("its directory {0} is writable by users other than root: put the socket in a root-only directory such as /run/tokenfs")]
    UntrustedDirectory(PathBuf),
    #[error("{0} exists and is not a socket: not replacing it")]
    NotASocket(PathBuf),
}

fn bind(listen: &Listen, purpose: Purpose) -> Result<Listener, BindError> {
    match listen {
        Listen::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "{} is served without authentication on a non-loopback address",
                    purpose.what
                );
            }
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
        }
        Listen::Unix(path) => Ok(Listener::Unix(bind_unix(path, purpose.owner)?)),
    }
}

/// A socket only root (and `owner`) can connect to (0600), in a directory only
/// root writes, created through that directory's descriptor.
fn bind_unix(path: &Path, owner: Option<u32>) -> Result<tokio::net::UnixListener, BindError> {
    let resolved = resolve::resolve(path)?;
    let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
    if !resolve::only_root_writes(&resolved.parent).map_err(std::io::Error::from)? {
        return Err(BindError::UntrustedDirectory(parent));
    }
    if let Some(leaf) = &resolved.leaf {
        match resolve::file_type(leaf).map_err(std::io::Error::from)? {
            rustix::fs::FileType::Socket => rustix::fs::unlinkat(
                &resolved.parent,
                &resolved.name,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(std::io::Error::from)?,
            _ => return Err(BindError::NotASocket(path.to_owned())),
        }
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", resolved.parent.as_raw_fd()))
        .join(&resolved.name);
    let listener = std::os::unix::net::UnixListener::bind(&via)?;
    rustix::fs::chmodat(
        &resolved.parent,
        &resolved.name,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    if let Some(uid) = owner {
        rustix::fs::chownat(
            &resolved.parent,
            &resolved.name,
            Some(rustix::process::Uid::from_raw(uid)),
            None,
            rustix::fs::AtFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
    }
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// What a listener is for, in its log lines: e.g. `metrics` and the option
/// that set it, `--metrics-listen`. A Unix socket is chowned to `owner` (it
/// stays 0600: that uid and root may connect).
#[derive(Debug, Clone, Copy)]
pub struct Purpose {
    pub what: &'static str,
    /// What is served, for the line that says it listens.
    pub serves: &'static str,
    pub setting: &'static str,
    pub owner: Option<u32>,
}

/// Listen and serve `app` until the runtime shuts down; a failure to listen is
/// logged and retried, never fatal.
pub async fn serve(listen: Listen, app: Router, purpose: Purpose) {
    loop {
        match bind(&listen, purpose) {
            Ok(listener) => {
                tracing::info!(addr = %shown(&listener, &listen), "serving {}", purpose.serves);
                accept(listener, app.clone(), purpose).await;
            }
            Err(e) => tracing::error!(
                "cannot listen for {} on {listen} ({}): {e}; the files are served all the \
                 same; trying again in {}s",
                purpose.what,
                purpose.setting,
                RETRY_BIND.as_secs()
            ),
        }
        tokio::time::sleep(RETRY_BIND).await;
    }
}

fn shown(listener: &Listener, listen: &Listen) -> String {
    match listener {
        Listener::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string()),
        Listener::Unix(_) => listen.to_string(),
    }
}

async fn accept(listener: Listener, app: Router, purpose: Purpose) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = match &listener {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Stream>),
        };
        match accepted {
            Ok(stream) => {
                let app = app.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    connection(stream, app).await;
                });
            }
            // Out of descriptors, or the peer gave up: wait a little, keep listening.
            Err(e) => {
                tracing::warn!("{} listener: accept failed: {e}", purpose.what);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connection(stream: Box<dyn Stream>, app: Router) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    // Past the deadline the connection is dropped, whatever state it is in.
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_port_an_address_and_a_socket() {
        assert_eq!(
            "9464".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            "[::1]:9".parse::<Listen>().unwrap(),
            Listen::Tcp("[::1]:9".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/tokenfs/m.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/tokenfs/m.sock".into())
        );
        assert!("unix:m.sock".parse::<Listen>().is_err());
        assert!("localhost:x"
            .parse::<Listen>()
            .unwrap_err()
            .contains("neither a port"));
    }
}
