//! `tokenfs mount`: wire config → sources → cells → filesystem, mount, serve in
//! the foreground, and unmount cleanly on SIGTERM/SIGINT.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Session, SessionACL};

use crate::fs::fuse::ReadPath;
use tokio::signal::unix::{signal, SignalKind};

use crate::cell::{random_jitter, Cell, SystemClock};
use crate::cli::{MountArgs, DEFAULT_CONFIG};
use crate::config::{Config, FileConfig, SourceConfig};
use crate::fs::fuse::{invalidate_on_change, TokenFs};
use crate::fs::{Files, Options, Owner};
use crate::notify::Notify;
use crate::source::get::GetSource;
use crate::source::oauth::OAuthSource;
use crate::source::verify::VerifyingSource;
use crate::source::{Source, SourceError, Subject};
use secrecy::SecretString;

/// Longest the kernel may cache a file's pages and attributes, whatever the token.
const TTL_CAP: Duration = Duration::from_secs(600);
/// How long a stop waits for the detached session to end before exiting anyway.
const SESSION_END_WAIT: Duration = Duration::from_secs(2);

pub fn run(args: MountArgs) -> Result<()> {
    limit_malloc_arenas();
    raise_open_files_limit();
    crate::mountpoint::check_privileges()?;
    // Before anything else starts: a second daemon stops here, a stale mount is detached.
    let prepared = crate::mountpoint::prepare(&args.mountpoint)?;
    let mountpoint = prepared.path.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking work is rare and short (cache invalidations, secret-file writes):
        // a few threads, rather than tokio's default of up to 512.
        .max_blocking_threads(4)
        .enable_all()
        .thread_name("tokenfs-rt")
        .build()
        .context("cannot start the async runtime")?;
    // In --dev the issuer serves from this process until `_dev_issuer` drops at exit.
    let (config, _dev_issuer) = load_config(&args, &rt, &prepared)?;
    let owner = match args.owner.or(config.owner) {
        Some(owner) => owner,
        None => owner_of_parent(&prepared)?,
    };

    let _enter = rt.enter();
    // Before mounting: a SIGTERM from then on must unmount, not kill us with the
    // mount left behind.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let redirect_listens = redirect_listens(&config.files);
    let login_socket = has_code_login(&config.files).then(crate::login::socket_path);
    let _socket_gone_at_exit = login_socket.clone().map(RemovedOnDrop);
    let cells = build_cells(config.files)?;
    let files = Files::new(
        cells.clone(),
        Options {
            owner,
            read_timeout: config.read_timeout,
            ttl_cap: TTL_CAP,
            login_socket: login_socket.clone(),
        },
    );

    let read_path = if args.direct_io {
        ReadPath::DirectIo
    } else if args.kernel_opens {
        ReadPath::KernelOpens
    } else {
        ReadPath::PageCache
    };
    let fs = TokenFs::new(files.clone(), rt.handle().clone(), read_path);
    // The files belong to the user, not to the root daemon: the kernel's mode
    // checks (default_permissions, set by `mount_fuse`) decide who reads.
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = SessionACL::All;
    fuse_config.n_threads = Some(2);
    let (session, fuse) = FuseSession::mount(prepared, fs, fuse_config)?;
    let notifier = fuse.notifier();

    let liveness = crate::health::Liveness::new();
    for cell in &cells {
        let (cell, alive) = (cell.clone(), liveness.refresh_loop());
        rt.spawn(async move {
            let _alive = alive;
            cell.keep_fresh().await
        });
    }
    rt.spawn(invalidate_on_change(files.clone(), notifier));
    if let Some(listen) = args.metrics_listen {
        rt.spawn(crate::metrics::http::serve(
            listen,
            cells.clone(),
            liveness.clone(),
        ));
    }
    serve_logins(login_socket.as_deref(), redirect_listens, &cells, owner.uid);

    let mut session = session.serve(fuse, liveness.clone())?;
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    tracing::info!(
        mountpoint = %mountpoint.display(),
        uid = owner.uid,
        gid = owner.gid,
        files = ?names,
        "mounted"
    );
    let notify = Notify::from_env();
    if notify.enabled() {
        // Ready means the mount answers: ask it, as a reader would. Only then:
        // a daemon killed while it reads its own mount can hang in exit, its
        // FUSE request never answered, so it does not do so needlessly.
        // The root descriptor goes with it: an open descriptor on the mount
        // keeps it busy, and an unmount from outside must end the session.
        if let Err(probe) = crate::mountpoint::read_status(session.take_root()) {
            bail!(
                "mounted, but {}/{} does not answer ({probe:?}); not signalling readiness",
                mountpoint.display(),
                crate::fs::STATUS_NAME
            );
        }
        rt.spawn(signal_ready(
            notify.clone(),
            cells.clone(),
            mountpoint.display().to_string(),
        ));
        if let Some(every) = notify.watchdog_interval() {
            rt.spawn(watchdog(notify.clone(), every, liveness.clone()));
        }
    } else {
        drop(session.take_root());
    }

    let how = rt.block_on(session.until_stopped(&mut term, &mut int));
    // No upstream request starts once the mount is going away.
    crate::cell::stop_all(&cells);
    notify.send_or_warn("STOPPING=1");
    let joined = session.stop(how, &rt)?;
    if joined {
        rt.shutdown_timeout(Duration::from_secs(1));
        tracing::info!("unmounted; bye");
    }
    Ok(())
}

/// The mount's config: the embedded issuer's with `--dev` (and the issuer,
/// serving until dropped), else the config file's, loaded then prepared.
fn load_config(
    args: &MountArgs,
    rt: &tokio::runtime::Runtime,
    prepared: &crate::mountpoint::Prepared,
) -> Result<(Config, Option<DevIssuer>)> {
    if args.dev {
        return dev_config(args, rt).map(|(config, issuer)| (config, Some(issuer)));
    }
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = Config::load_owned(&path, |configured| match args.owner.or(configured) {
        Some(owner) => Ok(Some(owner)),
        None => owner_of_parent(prepared).map(Some),
    })?;
    config.prepare_at_edge(&path)?;
    Ok((config, None))
}

#[cfg(feature = "dev-issuer")]
type DevIssuer = crate::issuer::RunningIssuer;
#[cfg(not(feature = "dev-issuer"))]
type DevIssuer = std::convert::Infallible;

#[cfg(feature = "dev-issuer")]
fn dev_config(args: &MountArgs, rt: &tokio::runtime::Runtime) -> Result<(Config, DevIssuer)> {
    let lifetimes = crate::dev::Lifetimes {
        platform: args.dev_lifetime,
        azure: args.dev_azure_lifetime,
    };
    rt.block_on(crate::dev::start(&args.dev_user, lifetimes, args.dev_login))
}

#[cfg(not(feature = "dev-issuer"))]
fn dev_config(_: &MountArgs, _: &tokio::runtime::Runtime) -> Result<(Config, DevIssuer)> {
    bail!(crate::cli::NO_DEV_ISSUER)
}

/// Why the session is stopping.
enum Stop {
    /// SIGTERM or SIGINT: ours to unmount.
    Signal,
    /// Unmounted from outside (`tokenfs unmount`, umount): the session has ended.
    External,
}

/// One FUSE mount and the thread that serves it, from the mount to the join:
/// [`FuseSession::mount`] attaches the filesystem and opens the kernel's
/// session, [`FuseSession::serve`] starts the thread, [`FuseSession::stop`]
/// unmounts (or finds it unmounted), waits briefly for the session to end and
/// joins the thread. Every way out of it past the mount leaves no mount behind.
struct FuseSession {
    mountpoint: PathBuf,
    ours: crate::mountpoint::Ours,
    /// The mount's root (see [`crate::mountpoint::kernel::FuseMount::root`]):
    /// taken for the readiness probe, or dropped, once serving; an open
    /// descriptor on the mount keeps it busy.
    root: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl FuseSession {
    /// Mount `fs` on the checked directory and open its kernel session (not
    /// served yet: its notifier is needed first).
    fn mount(
        mut prepared: crate::mountpoint::Prepared,
        fs: TokenFs,
        config: fuser::Config,
    ) -> Result<(FuseSession, Session<TokenFs>)> {
        let mountpoint = prepared.path.clone();
        let mounted = crate::mountpoint::kernel::mount_fuse(
            &prepared.dir,
            &crate::mountpoint::kernel::FuseOptions {
                source: crate::mountpoint::FSNAME,
                subtype: crate::mountpoint::FSNAME,
            },
        )
        .with_context(|| {
            format!(
                "cannot mount on {} (needs root or CAP_SYS_ADMIN and /dev/fuse)",
                mountpoint.display()
            )
        })?;
        prepared.keep();
        drop(prepared);
        // The directory checked may have been renamed meanwhile (its parent is the
        // user's): say where the mount really is.
        if let Ok(at) = std::fs::read_link(format!("/proc/self/fd/{}", mounted.root.as_raw_fd())) {
            if at != mountpoint {
                tracing::warn!(
                    mountpoint = %mountpoint.display(),
                    mounted_at = %at.display(),
                    "the mountpoint was moved while it was being checked: mounted on the directory checked, now elsewhere"
                );
            }
        }
        let ours = crate::mountpoint::Ours {
            path: mountpoint.clone(),
            id: mounted.id,
        };
        let fuse = match Session::from_fd(fs, mounted.dev, SessionACL::All, config) {
            Ok(fuse) => fuse,
            Err(e) => {
                let _ = crate::mountpoint::kernel::detach(&mounted.root);
                return Err(e).context("the kernel did not start the FUSE session");
            }
        };
        let session = FuseSession {
            mountpoint,
            ours,
            root: Some(mounted.root),
            thread: None,
            ended: None,
        };
        Ok((session, fuse))
    }

    /// Serve `fuse` on its own thread; `liveness` hears when it ends.
    fn serve(
        mut self,
        fuse: Session<TokenFs>,
        liveness: Arc<crate::health::Liveness>,
    ) -> Result<FuseSession> {
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tokenfs-fuse".into())
            .spawn(move || {
                let result = fuse.run();
                liveness.fuse_ended();
                let _ = ended_tx.send(());
                result
            });
        match thread {
            Ok(thread) => {
                self.thread = Some(thread);
                self.ended = Some(ended_rx);
                Ok(self)
            }
            Err(e) => {
                if let Some(root) = &self.root {
                    let _ = crate::mountpoint::kernel::detach(root);
                }
                Err(e).context("cannot start the FUSE thread")
            }
        }
    }

    fn take_root(&mut self) -> std::os::fd::OwnedFd {
        self.root.take().expect("the mount's root is taken once")
    }

    /// Until a signal asks us to stop or the mount is unmounted from outside.
    async fn until_stopped(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> Stop {
        let ended = self.ended.as_mut().expect("serving");
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: unmounting"); Stop::Signal }
            _ = int.recv() => { tracing::info!("SIGINT: unmounting"); Stop::Signal }
            _ = ended => Stop::External,
        }
    }

    /// Unmount (unless unmounted already), give the session
    /// [`SESSION_END_WAIT`] to end and join its thread. `Ok(false)`: a reader
    /// still held a file, the thread is left to end with the process.
    fn stop(mut self, how: Stop, rt: &tokio::runtime::Runtime) -> Result<bool> {
        let mountpoint = &self.mountpoint;
        match how {
            // `tokenfs unmount` (or umount) is the ordinary way to stop a mount: nothing to warn of.
            Stop::External => tracing::info!(
                mountpoint = %mountpoint.display(),
                "unmounted from outside (tokenfs unmount or umount); exiting"
            ),
            Stop::Signal => match crate::mountpoint::unmount_ours(&self.ours)? {
                crate::mountpoint::Unmounted::Detached => {}
                crate::mountpoint::Unmounted::NotOurs => tracing::warn!(
                    mountpoint = %mountpoint.display(),
                    "the mountpoint no longer names this daemon's mount (moved or replaced): \
                     unmounting nothing by path; exiting ends the mount, wherever it is now"
                ),
            },
        }
        // Detached: the session ends as soon as no reader holds a file of it. One that
        // does gets ENOTCONN once we exit, instead of a token nobody refreshes.
        let ended = self.ended.take().expect("serving");
        let ended = matches!(how, Stop::External)
            || rt.block_on(async { tokio::time::timeout(SESSION_END_WAIT, ended).await.is_ok() });
        if !ended {
            tracing::info!("unmounted (a reader still held a file; its next read fails); bye");
            return Ok(false);
        }
        match self.thread.take().expect("serving").join() {
            Ok(result) => result.context("FUSE session ended with an error")?,
            Err(_) => bail!("the FUSE thread panicked"),
        }
        Ok(true)
    }
}

/// One cell per file, in config order. A token exchange whose subject is
/// another file of the mount gets that file's cell (built first) as subject.
pub(crate) fn build_cells(files: Vec<FileConfig>) -> Result<Vec<Arc<Cell>>> {
    // One registry for the mount's sources: files with the same HTTP settings
    // share one client.
    let clients = crate::source::http::Clients::default();
    let mut built: Vec<(String, Arc<Cell>)> = Vec::new();
    let (exchanges, plain): (Vec<_>, Vec<_>) = files
        .into_iter()
        .enumerate()
        .partition(|(_, f)| f.mount_subject().is_some());
    let mut order = Vec::new();
    for (index, file) in plain.into_iter().chain(exchanges) {
        let name = file.name.clone();
        let subject = file.mount_subject().map(|s| {
            let cell = built.iter().find(|(n, _)| n == s).map(|(_, c)| c.clone());
            cell.expect("config validation checked the subject exists and is not an exchange")
        });
        let source: Arc<dyn Source> = match (file.source, subject) {
            (SourceConfig::OAuth(c), Some(cell)) => Arc::new(OAuthSource::with_subject(
                *c,
                Arc::new(CellSubject(cell)),
                &clients,
            )?),
            (SourceConfig::OAuth(c), None) => Arc::new(OAuthSource::new_in(*c, &clients)?),
            (SourceConfig::Get(c), _) => Arc::new(GetSource::new_in(c, &clients)?),
        };
        let source: Arc<dyn Source> = match file.verify {
            Some(v) => Arc::new(
                VerifyingSource::new_in(source, v, &clients)
                    .with_context(|| format!("files.{name}.verify"))?,
            ),
            None => source,
        };
        let cell = Cell::new(
            &name,
            source,
            file.policy,
            Arc::new(SystemClock),
            random_jitter(),
        );
        built.push((name, cell.clone()));
        order.push((index, cell));
    }
    order.sort_by_key(|(index, _)| *index);
    Ok(order.into_iter().map(|(_, cell)| cell).collect())
}

/// `WATCHDOG=1` every `every`, only while the runtime runs this task on time and
/// every file's refresh loop is still alive; otherwise systemd restarts the daemon.
async fn watchdog(notify: Notify, every: Duration, liveness: Arc<crate::health::Liveness>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(why) = liveness.check() {
            tracing::error!("{why}; no longer pinging the watchdog");
            return;
        }
        notify.send_or_warn("WATCHDOG=1");
    }
}

/// `READY=1` once every file serves a token or waits on its user (each is
/// asked once for it); until then `STATUS=` says which file keeps it back and
/// why, so `systemctl status` shows it.
async fn signal_ready(notify: Notify, cells: Vec<Arc<Cell>>, mountpoint: String) {
    const EVERY: Duration = Duration::from_millis(200);
    crate::health::ask_pending(&cells);
    let mut said = String::new();
    loop {
        let not_ready = crate::health::not_ready(&cells);
        if not_ready.is_empty() {
            notify.send_or_warn(&format!(
                "READY=1\nSTATUS=serving {} file(s) on {mountpoint}",
                cells.len()
            ));
            return;
        }
        let status = format!("not ready: {}", crate::health::describe(&not_ready));
        if status != said {
            notify.send_or_warn(&format!("STATUS={status}"));
            said = status;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// A subject token taken through another file's cell, so a stale one is never sent.
struct CellSubject(Arc<Cell>);

#[async_trait::async_trait]
impl Subject for CellSubject {
    async fn subject_token(&self) -> Result<SecretString, SourceError> {
        match self.0.get().await {
            Ok(token) => Ok(token.secret().clone()),
            Err(e) => Err(SourceError::Unavailable(format!(
                "no subject token from file {:?}: {e}",
                self.0.name()
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.0.name())
    }
}

/// glibc gives each thread that allocates its own arena; a long-running daemon
/// whose allocations are tiny does better with two, which keeps its RSS flat.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other
    // thread of this process exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The soft limit on open descriptors raised to the hard one (often 1024 of
/// 524288): a flood of connections must not leave the daemon unable to open a
/// file to save a rotated refresh token, or a socket to reach its upstream.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
    }
}

/// On the platform the mountpoint's parent is the user's home: its owner owns the files.
fn owner_of_parent(prepared: &crate::mountpoint::Prepared) -> Result<Owner> {
    let meta = rustix::fs::fstat(&prepared.parent).with_context(|| {
        format!(
            "cannot stat the parent of {} to find the files' owner",
            prepared.path.display()
        )
    })?;
    Ok(Owner {
        uid: meta.st_uid,
        gid: meta.st_gid,
    })
}

/// Whether any file logs in by the code flow, which `tokenfs consent` completes.
fn has_code_login(files: &[crate::config::FileConfig]) -> bool {
    files.iter().any(|f| code_login(f).is_some())
}

fn code_login(f: &crate::config::FileConfig) -> Option<&crate::source::code::CodeLoginConfig> {
    match &f.source {
        crate::config::SourceConfig::OAuth(c) => match &c.login {
            Some(crate::source::oauth::Login::Code(code)) => Some(code),
            _ => None,
        },
        _ => None,
    }
}

/// The distinct `redirect_listen` addresses: one listener serves every file
/// that names it (the redirect's `state` tells them apart).
fn redirect_listens(files: &[crate::config::FileConfig]) -> Vec<std::net::SocketAddr> {
    let mut addrs: Vec<_> = files
        .iter()
        .filter_map(|f| code_login(f)?.redirect_listen)
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The login socket (owned by the files' owner, 0600: they and root may use
/// it) and the redirect listeners; like metrics, extras that never stop the mount.
fn serve_logins(
    socket: Option<&Path>,
    redirects: Vec<std::net::SocketAddr>,
    cells: &[Arc<Cell>],
    owner: u32,
) {
    use crate::listener::{Listen, Purpose};
    if let Some(socket) = socket {
        if let Err(e) = crate::login::create_socket_dir(socket) {
            tracing::error!(
                "cannot create the directory of the login socket {}: {e}",
                socket.display()
            );
        }
        let purpose = Purpose {
            what: "the login socket",
            serves: "code logins for `tokenfs consent`",
            setting: "RUNTIME_DIRECTORY",
            owner: Some(owner),
        };
        let router = crate::login::socket_router(cells.to_vec());
        tokio::spawn(crate::listener::serve(
            Listen::Unix(socket.to_owned()),
            router,
            purpose,
        ));
    }
    for addr in redirects {
        tokio::spawn(crate::login::serve_redirects(addr, cells.to_vec()));
    }
}

/// Our login socket, removed when the daemon ends (its name has our pid: left
/// behind, nobody else would remove it).
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
