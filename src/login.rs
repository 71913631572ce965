//! Where a code login comes back to the daemon: the URL the browser landed on,
//! brought by `tokenfs consent` over a Unix socket only root and the files'
//! owner can connect to, or by the browser itself to a redirect listener the
//! daemon runs (`redirect_listen`). Either way the daemon finds the file whose
//! login waits for that `state` and redeems the code.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::cell::Cell;
use crate::source::code::{self, LoginError};

/// The socket `tokenfs consent` talks to, advertised in `.status`: one per
/// daemon, in systemd's `RuntimeDirectory=` when set, else `/run/tokenfs`.
pub fn socket_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|d| std::env::split_paths(&d).next())
        .unwrap_or_else(|| PathBuf::from("/run/tokenfs"));
    dir.join(format!("login-{}.sock", std::process::id()))
}

/// Create the socket's directory if missing. Readable by all (the files'
/// owner connects through it); whether only root writes it is checked when
/// the socket is bound.
pub fn create_socket_dir(socket: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        // The unit's umask would leave it 0700: the owner could not reach the socket.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Complete the login the redirect belongs to: of the file named `file`, or
/// (from the browser, which names none) of whichever file waits for its state.
/// On success, the file's first token, as a line for the user.
pub async fn complete(
    cells: &[Arc<Cell>],
    file: Option<&str>,
    redirected: &str,
) -> Result<String, LoginError> {
    let redirect = code::parse_redirect(redirected)?;
    let waiting = |c: &&Arc<Cell>| redirect.state().is_some_and(|s| c.login_waits_for(s));
    let cell = match file {
        Some(name) => {
            let Some(cell) = cells.iter().find(|c| c.name() == name) else {
                return Err(LoginError::NoSuchFile {
                    file: "this mount".into(),
                    name: name.into(),
                    files: names(cells),
                });
            };
            if !cell.login_waits_for(redirect.state().unwrap_or_default()) {
                if let Some(other) = cells.iter().find(waiting) {
                    return Err(LoginError::OtherFile {
                        file: name.into(),
                        other: other.name().into(),
                    });
                }
            }
            cell
        }
        None => match cells.iter().find(waiting) {
            Some(cell) => cell,
            None => {
                return Err(LoginError::StateMismatch {
                    file: "the file".into(),
                })
            }
        },
    };
    cell.complete_login(redirect).await?;
    Ok(match cell.get().await {
        Ok(token) => format!(
            "logged in: {} sub={} exp={}",
            cell.name(),
            token.claims.sub.as_deref().unwrap_or("-"),
            crate::status::schema::rfc3339(token.expires_at)
        ),
        Err(e) => format!(
            "logged in: {}, but its first token could not be served yet: {e}",
            cell.name()
        ),
    })
}

/// Why `tokenfs consent` could not hand a redirect to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "the login socket {0} is in a directory users other than root can write: not using it"
    )]
    Untrusted(PathBuf),
    #[error("cannot reach the daemon at {}: {error}", socket.display())]
    Io {
        socket: PathBuf,
        error: std::io::Error,
    },
    #[error("the daemon's answer is not HTTP")]
    Garbled,
}

/// Hand `url` for `file` to the daemon listening on `socket`: `Ok(Ok(line))`
/// logged in, `Ok(Err(why))` the daemon refused. The socket is reached through
/// its directory's descriptor, after checking only root writes that directory,
/// so a user cannot point a root `tokenfs consent` at a socket of their own.
pub fn send(
    socket: &std::path::Path,
    file: &str,
    url: &str,
) -> Result<Result<String, String>, SendError> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let io = |source| SendError::Io {
        socket: socket.to_owned(),
        error: source,
    };
    let resolved =
        crate::resolve::resolve(socket).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    if !crate::resolve::only_root_writes(&resolved.parent).map_err(|e| io(e.into()))? {
        return Err(SendError::Untrusted(socket.to_owned()));
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", resolved.parent.as_raw_fd()))
        .join(&resolved.name);
    let mut stream = std::os::unix::net::UnixStream::connect(via).map_err(io)?;
    // Redeeming waits on the upstream (its timeout, several times for a
    // rotating grant) and then on the first token.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .map_err(io)?;
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("file", file)
        .append_pair("url", url)
        .finish();
    write!(
        stream,
        "POST /login HTTP/1.1\r\nHost: tokenfs\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, text) = answer.split_once("\r\n\r\n").ok_or(SendError::Garbled)?;
    let ok = match head.split(' ').nth(1) {
        Some("200") => true,
        Some(_) => false,
        None => return Err(SendError::Garbled),
    };
    let text = text.trim_end().to_owned();
    Ok(if ok { Ok(text) } else { Err(text) })
}

fn names(cells: &[Arc<Cell>]) -> String {
    cells
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

type Cells = Arc<Vec<Arc<Cell>>>;

/// `POST /login` with `file` and `url` (a form): 200 and the line to show, or
/// 400 and why not.
pub fn socket_router(cells: Vec<Arc<Cell>>) -> Router {
    Router::new()
        .route("/login", post(from_command))
        .with_state(Arc::new(cells))
}

#[derive(Deserialize)]
struct LoginForm {
    file: String,
    url: String,
}

async fn from_command(State(cells): State<Cells>, Form(form): Form<LoginForm>) -> Response {
    match complete(&cells, Some(&form.file), &form.url).await {
        Ok(line) => {
            tracing::info!(
                file = form.file,
                "code login completed by `tokenfs consent`"
            );
            plain(StatusCode::OK, line)
        }
        Err(e) => {
            tracing::warn!(file = form.file, "`tokenfs consent` refused: {e}");
            plain(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Serve the browser's redirects for `cells` on `addr` (`redirect_listen`),
/// until the runtime ends.
pub async fn serve_redirects(addr: std::net::SocketAddr, cells: Vec<Arc<Cell>>) {
    let purpose = crate::listener::Purpose {
        what: "login redirects",
        serves: "login redirects",
        setting: "redirect_listen",
        owner: None,
    };
    let listen = crate::listener::Listen::Tcp(addr);
    crate::listener::serve(listen, redirect_router(cells), purpose).await
}

/// Any `GET` with the upstream's redirect: a page saying what happened.
fn redirect_router(cells: Vec<Arc<Cell>>) -> Router {
    Router::new()
        .fallback(get(from_browser))
        .with_state(Arc::new(cells))
}

async fn from_browser(State(cells): State<Cells>, uri: Uri) -> Response {
    // A browser also asks for /favicon.ico and the like: no query, no login.
    let Some(query) = uri.query() else {
        return plain(StatusCode::NOT_FOUND, "not found".into());
    };
    let (status, line) = match complete(&cells, None, query).await {
        Ok(line) => {
            tracing::info!("code login completed at the redirect listener");
            (StatusCode::OK, format!("{line}. You can close this page."))
        }
        Err(e) => {
            tracing::warn!("the redirect listener refused a login: {e}");
            (StatusCode::BAD_REQUEST, e.to_string())
        }
    };
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>tokenfs</title><p id=result>{}</p>\n",
        escape_html(&line)
    );
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (status, headers, Html(page)).into_response()
}

fn plain(status: StatusCode, mut line: String) -> Response {
    line.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        line,
    )
        .into_response()
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_is_escaped() {
        assert_eq!(
            super::escape_html("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
