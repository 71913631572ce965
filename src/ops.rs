//! Operator commands: `status` (a running mount's health), `check` (a config
//! and its upstreams, without mounting), `wait` (for a mount to answer) and `unmount`. Each returns the
//! process's exit code; none ever prints a token.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::cli::{CheckArgs, ConsentArgs, LoginArgs, StatusArgs, WaitArgs};
use crate::config::Config;
use crate::fs::Owner;
use crate::health::Readiness;
use crate::mountpoint::{self, MountpointError, Unanswered};
use crate::status::Reported;

/// Exit codes of `status`.
pub const HEALTHY: u8 = 0;
pub const UNHEALTHY: u8 = 1;
pub const UNREACHABLE: u8 = 2;

/// A mount's `.status`, typed; `Err` says why it cannot be read.
fn parse_status(bytes: &[u8]) -> Result<Reported, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("its .status is not JSON: {e}"))
}

/// `tokenfs status [MOUNTPOINT]`.
pub fn status(args: StatusArgs) -> u8 {
    let path = match mountpoint::absolute(&args.mountpoint) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tokenfs: error: {e}");
            return UNREACHABLE;
        }
    };
    let mount = match mountpoint::find(&path) {
        Ok(Some(m)) if m.is_tokenfs() => m,
        Ok(_) => {
            eprintln!(
                "tokenfs: error: tokenfs is not mounted on {}: start it with `tokenfs mount {0}`",
                path.display()
            );
            return UNREACHABLE;
        }
        Err(e) => {
            eprintln!("tokenfs: error: {e}");
            return UNREACHABLE;
        }
    };
    let problem = match mount.read_status() {
        Ok(bytes) => parse_status(&bytes),
        Err(u) => Err(unanswered(u)),
    };
    let doc = match problem {
        Ok(doc) => doc,
        Err(problem) => {
            eprintln!("tokenfs: error: {}: {problem}", path.display());
            return UNREACHABLE;
        }
    };
    let (table, code) = render_status(&doc, SystemTime::now());
    print!("{table}");
    code
}

/// The async runtime of a command that talks to upstreams without mounting.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Why a mount's `.status` could not be read, for the user.
fn unanswered(u: Unanswered) -> String {
    match u {
        Unanswered::Dead => {
            "its daemon is dead (stale mount): restart it; `tokenfs mount` detaches the stale mount"
                .to_owned()
        }
        Unanswered::Hung => "it does not answer (is its daemon stopped?)".to_owned(),
        Unanswered::Error(e) => format!("cannot read .status: {e}"),
    }
}

/// The human table of a `.status` document, and the exit code it means.
pub fn render_status(doc: &Reported, now: SystemTime) -> (String, u8) {
    let mut rows = vec![[
        "FILE".to_owned(),
        "STATE".to_owned(),
        "EXPIRES IN".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    let mut code = HEALTHY;
    for f in &doc.files {
        if Readiness::of_reported(&f.cell).failing() {
            code = UNHEALTHY;
        }
        let expires_in = f
            .cell
            .expires_at
            .map(|t| match t.0.duration_since(now) {
                Ok(left) => {
                    humantime::format_duration(Duration::from_secs(left.as_secs())).to_string()
                }
                Err(_) => "expired".to_owned(),
            })
            .unwrap_or_else(|| "-".to_owned());
        rows.push([
            f.name.clone(),
            f.cell.state.as_str().to_owned(),
            expires_in,
            f.cell.last_error.as_deref().unwrap_or("-").to_owned(),
        ]);
    }
    let mut widths = [0usize; 3];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    // Serving fine, so not unhealthy, but it needs an operator before the next restart.
    for f in &doc.files {
        if let Some(why) = &f.cell.unsaved_refresh_token {
            let _ = writeln!(
                out,
                "WARNING {}: the rotated refresh token is not saved and is lost when tokenfs restarts: {why}",
                f.name
            );
        }
    }
    (out, code)
}

/// The files' owner for a command that reads the config's secrets but does not
/// mount, decided as `mount` would: `--owner`, the config's, else the owner of
/// the mountpoint's parent if it exists (`None`: no owner known).
fn owner_without_mount(given: Option<Owner>, configured: Option<Owner>) -> Option<Owner> {
    use std::os::unix::fs::MetadataExt;
    given.or(configured).or_else(|| {
        let mountpoint = std::env::var_os("TOKENFS_MOUNTPOINT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::cli::DEFAULT_MOUNTPOINT));
        let meta = std::fs::metadata(mountpoint.parent()?).ok()?;
        Some(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        })
    })
}

/// `tokenfs check --config FILE`: 0 if every file got a token, else 1.
pub fn check(args: CheckArgs) -> Result<u8> {
    let config =
        Config::load_owned_at_edge(&args.config, |c| Ok(owner_without_mount(args.owner, c)))?;
    println!("config {}: OK", args.config.display());
    let rt = runtime()?;
    let _enter = rt.enter();
    let cells = crate::daemon::build_cells(config.files)?;
    let mut code = 0;
    // Through the cell, as a read would: one request per file (an exchange's
    // subject file answers from its cell), and the same min_valid rule.
    for cell in &cells {
        let outcome = rt.block_on(tokio::time::timeout(args.timeout, cell.get()));
        let line = match outcome {
            Ok(Ok(token)) => {
                let exp = crate::status::schema::rfc3339(token.expires_at);
                let left = token
                    .expires_at
                    .duration_since(SystemTime::now())
                    .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())))
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                format!(
                    "OK     sub={} exp={exp} (in {left}) jti={}",
                    token.claims.sub.as_deref().unwrap_or("-"),
                    token.claims.jti.as_deref().unwrap_or("-"),
                )
            }
            Ok(Err(e)) => {
                code = 1;
                format!("FAILED {e}")
            }
            Err(_) => {
                code = 1;
                format!(
                    "FAILED no answer within {}",
                    humantime::format_duration(args.timeout)
                )
            }
        };
        println!("{:<16} {line}  [{}]", cell.name(), cell.upstream());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

/// `tokenfs login FILE --config CONFIG`: the file's device login from a
/// terminal. Reads go through the file's cell as a mount's would, once a second,
/// so the login, the polling and the saving are the daemon's own.
pub fn login(args: LoginArgs) -> Result<u8> {
    const EVERY: Duration = Duration::from_secs(1);
    let config =
        Config::load_owned_at_edge(&args.config, |c| Ok(owner_without_mount(args.owner, c)))?;
    let names: Vec<String> = config.files.iter().map(|f| f.name.clone()).collect();
    let Some(file) = config.files.into_iter().find(|f| f.name == args.file) else {
        anyhow::bail!(
            "{} has no file {:?}; its files: {}",
            args.config.display(),
            args.file,
            names.join(", ")
        );
    };
    let login = match &file.source {
        crate::config::SourceConfig::OAuth(c) => c.login.clone(),
        _ => None,
    };
    let Some(login) = login else {
        anyhow::bail!(
            "files.{} has no login (\"device\" or \"code\"): there is nothing to log in to",
            file.name
        );
    };
    let redirect_listen = match &login {
        crate::source::oauth::Login::Code(c) => c.redirect_listen,
        crate::source::oauth::Login::Device { .. } => None,
    };
    let code = matches!(login, crate::source::oauth::Login::Code(_));
    let rt = runtime()?;
    let _enter = rt.enter();
    let cell = crate::daemon::build_cells(vec![file])?.remove(0);
    if let Some(addr) = redirect_listen {
        rt.spawn(crate::login::serve_redirects(addr, vec![cell.clone()]));
    }
    let deadline = std::time::Instant::now() + args.timeout;
    let mut shown = None;
    let mut reading = false;
    loop {
        match rt.block_on(tokio::time::timeout(Duration::from_secs(30), cell.get())) {
            Ok(Ok(token)) => {
                println!(
                    "logged in: {} sub={} exp={}",
                    cell.name(),
                    token.claims.sub.as_deref().unwrap_or("-"),
                    crate::status::schema::rfc3339(token.expires_at)
                );
                rt.shutdown_timeout(Duration::from_secs(1));
                return Ok(0);
            }
            Ok(Err(e)) => match cell.consent_url() {
                Some(text) => {
                    if shown.as_ref() != Some(&text) {
                        let mut lines = text.lines();
                        println!("open {}", lines.next().unwrap_or_default());
                        if let Some(code) = lines.next() {
                            println!("{code}  (check it matches, or type it there)");
                        }
                        if code {
                            println!(
                                "then paste here the address your browser landed on \
                                 (the page itself may fail to load):"
                            );
                        } else {
                            println!("waiting for the approval…");
                        }
                        shown = Some(text);
                    }
                    if code && !reading {
                        reading = true;
                        paste_redirects(cell.clone(), rt.handle().clone());
                    }
                }
                None => anyhow::bail!("{}: {e}", cell.name()),
            },
            Err(_) => anyhow::bail!("{}: the upstream did not answer within 30 s", cell.name()),
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{}: not approved within {}",
                cell.name(),
                humantime::format_duration(args.timeout)
            );
        }
        std::thread::sleep(EVERY);
    }
}

/// Read redirects pasted on stdin (one per line) and complete the login with
/// each; the login loop sees the outcome in the cell.
fn paste_redirects(cell: std::sync::Arc<crate::cell::Cell>, rt: tokio::runtime::Handle) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            let cells = [cell.clone()];
            let done = rt.block_on(crate::login::complete(&cells, Some(cell.name()), &line));
            if let Err(e) = done {
                eprintln!("tokenfs: error: {e}");
            }
        }
    });
}

/// `tokenfs consent FILE URL`: hand the browser's redirect to the running daemon.
pub fn consent(args: ConsentArgs) -> Result<u8> {
    let (mountpoint, name) = match (args.file.parent(), args.file.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => (dir.to_owned(), name),
        _ => (args.mountpoint.clone(), args.file.as_os_str()),
    };
    let name = name.to_string_lossy().into_owned();
    let url = if args.url == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the address from stdin")?;
        line
    } else {
        args.url.clone()
    };
    let path = mountpoint::absolute(&mountpoint)?;
    let mount = match mountpoint::find(&path)? {
        Some(m) if m.is_tokenfs() => m,
        _ => anyhow::bail!(
            "tokenfs is not mounted on {}: give the file's path in the mount (e.g. \
             ~/.api/azure-token), or --mountpoint",
            path.display()
        ),
    };
    let status = mount
        .read_status()
        .map_err(|u| anyhow::anyhow!("{}: {}", path.display(), unanswered(u)))?;
    let doc: Reported =
        serde_json::from_slice(&status).context("the mount's .status is not JSON")?;
    let Some(socket) = doc.login_socket else {
        anyhow::bail!(
            "the tokenfs on {} has no file with login = \"code\": there is nothing to complete",
            path.display()
        );
    };
    match crate::login::send(&socket, &name, &url)? {
        Ok(line) => {
            println!("{line}");
            Ok(0)
        }
        Err(why) => anyhow::bail!("{why}"),
    }
}

/// `tokenfs unmount [MOUNTPOINT]`.
pub fn unmount(args: StatusArgs) -> Result<u8, MountpointError> {
    let path = mountpoint::unmount(&args.mountpoint)?;
    println!(
        "unmounted {} (a reader still holding one of its files keeps it until closing it)",
        path.display()
    );
    Ok(0)
}

/// `tokenfs wait [MOUNTPOINT]`: until a live tokenfs answers there (exit 0), the
/// timeout passes, or the daemon named by `--pid` exits (exit 1, with the reason).
pub fn wait(args: WaitArgs) -> Result<u8> {
    wait_until(&args.mountpoint, args.timeout, args.pid, args.live)?;
    Ok(HEALTHY)
}

/// Wait until the mount at `mountpoint` is ready (or, `live`, answers); fail
/// after `timeout`, or once the daemon `pid` is gone.
pub fn wait_until(
    mountpoint: &std::path::Path,
    timeout: Duration,
    pid: Option<i32>,
    live: bool,
) -> Result<()> {
    const POLL: Duration = Duration::from_millis(50);
    let path = mountpoint::absolute(mountpoint)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut asked = false;
    let mut why = String::new();
    loop {
        let mount = mountpoint::find(&path)
            .ok()
            .flatten()
            .filter(|m| m.is_tokenfs());
        let status = mount
            .as_ref()
            .and_then(|m| m.read_status().ok())
            .and_then(|b| parse_status(&b).ok());
        if let (Some(doc), Some(mount)) = (status, &mount) {
            if live {
                return Ok(());
            }
            let not_ready = not_ready(&doc);
            if not_ready.is_empty() {
                return Ok(());
            }
            if !asked {
                // Files are issued at their first access: read each once (the
                // bytes are dropped) so its upstream is asked.
                asked = true;
                for (name, _) in &not_ready {
                    let _ = mount.read_file(name).map(zeroize_bytes);
                }
                continue;
            }
            why = crate::health::describe(&not_ready);
        }
        if let Some(pid) = pid {
            // Signal 0: only asks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone || is_zombie(pid) {
                anyhow::bail!(
                    "the daemon (pid {pid}) exited before {} was ready; its error is in its log",
                    path.display()
                );
            }
        }
        if std::time::Instant::now() >= deadline {
            if !why.is_empty() {
                anyhow::bail!(
                    "{} is not ready after {}: {why}",
                    path.display(),
                    humantime::format_duration(timeout)
                );
            }
            anyhow::bail!(
                "no tokenfs answered on {} within {}: is `tokenfs mount` running? (`tokenfs status` says more)",
                path.display(),
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The files of a `.status` document that keep the mount from being ready.
fn not_ready(doc: &Reported) -> Vec<(String, String)> {
    crate::health::not_ready_of(
        doc.files
            .iter()
            .map(|f| (f.name.clone(), Readiness::of_reported(&f.cell))),
    )
}

fn zeroize_bytes(mut token: Vec<u8>) {
    use secrecy::zeroize::Zeroize;
    token.zeroize();
}

/// A child that exited but was not reaped yet (a shell's background job) still
/// exists for `kill(pid, 0)`.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(doc: serde_json::Value) -> Reported {
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn an_unsaved_refresh_token_is_a_warning_not_a_failure() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let doc = serde_json::json!({"files": [
            {"name": "token", "state": "fresh", "unsaved_refresh_token": "cannot write /x/y: gone"},
        ]});
        let (table, code) = render_status(&typed(doc), now);
        assert_eq!(code, HEALTHY);
        assert!(
            table.ends_with("WARNING token: the rotated refresh token is not saved and is lost when tokenfs restarts: cannot write /x/y: gone\n"),
            "{table}"
        );
    }

    #[test]
    fn table_and_exit_code_follow_the_states() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let doc = serde_json::json!({"files": [
            {"name": "token", "state": "fresh", "expires_at": "2026-01-01T00:05:00Z"},
            {"name": "azure-token", "state": "empty"},
        ]});
        let (table, code) = render_status(&typed(doc), now);
        assert_eq!(code, HEALTHY);
        assert!(table.contains("token        fresh  5m"), "{table}");
        // Waiting on the user is not a failure; the table says what to do.
        let doc = serde_json::json!({"files": [
            {"name": "token", "state": "degraded", "last_error": "upstream unavailable: x"},
            {"name": "azure-token", "state": "consent_required", "last_error": "consent required"},
        ]});
        let (table, code) = render_status(&typed(doc), now);
        assert_eq!(code, HEALTHY);
        assert!(table.contains("consent required"), "{table}");
        let doc = serde_json::json!({"files": [
            {"name": "token", "state": "failed", "last_error": "upstream unavailable: x"},
        ]});
        assert_eq!(render_status(&typed(doc), now).1, UNHEALTHY);
        let doc = serde_json::json!({"files": [
            {"name": "token", "state": "empty", "last_error": "upstream unavailable: x"},
        ]});
        assert_eq!(render_status(&typed(doc), now).1, UNHEALTHY);
    }

    #[test]
    fn a_state_this_build_does_not_know_is_failing_not_unreadable() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let doc = typed(serde_json::json!({"files": [
            {"name": "token", "state": "warming"},
            {"name": "other", "state": "fresh"},
        ]}));
        let (table, code) = render_status(&doc, now);
        assert_eq!(code, UNHEALTHY);
        assert!(table.contains("token  warming"), "{table}");
        assert_eq!(
            not_ready(&doc),
            vec![("token".to_owned(), "unknown state \"warming\"".to_owned())]
        );
    }
}
