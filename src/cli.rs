//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// The mountpoint the platform's clients expect (`DOMINO_TOKEN_FILE` lives under it).
pub const DEFAULT_MOUNTPOINT: &str = "/var/lib/domino/home/.api";
/// Where `mount` looks for its config when neither `--config` nor `--dev` is given.
pub const DEFAULT_CONFIG: &str = "/etc/tokenfs/config.toml";
/// The user `--dev` and `dev-issuer` issue tokens for unless told otherwise.
pub const DEV_USER: &str = "dev-user";

#[derive(Debug, Parser)]
#[command(
    name = "tokenfs",
    version,
    about = "Serve short-lived credentials (platform JWT, Azure token) as read-only files",
    long_about = "tokenfs mounts a read-only FUSE filesystem whose files hold short-lived \
credentials. Reading a file issues or refreshes its token on demand, so the content is never \
stale, and long-lived secrets (client secrets, refresh tokens) never leave the daemon.\n\n\
Try it with no other service:\n  mkdir /tmp/api && tokenfs mount --dev /tmp/api\n  \
cat /tmp/api/token\n\nLogging: set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=tokenfs=trace); \
logs go to stderr and never contain tokens or secrets."
)]
pub struct Cli {
    /// Where and how to log: `text` on stderr for people, `json` on stderr (one
    /// object per line) for log collectors, `journald` straight to the systemd
    /// journal with structured fields (FILE, JTI, EXP, OUTCOME, ...; falls back to
    /// text on stderr if the journal socket is missing). Never a token or secret.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TOKENFS_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process's arguments, as `Cli::parse`, with one rule clap cannot
    /// say: `mount --dev` ignores a `TOKENFS_CONFIG` from the environment, and
    /// refuses a `--config` given on the command line.
    pub fn parse_args() -> Cli {
        Self::parse_from_iter(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    pub fn parse_from_iter<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Mount(args), Some(("mount", sub))) =
            (&mut cli.command, matches.subcommand())
        {
            if args.dev {
                match sub.value_source("config") {
                    Some(ValueSource::CommandLine) => {
                        return Err(command.error(
                            clap::error::ErrorKind::ArgumentConflict,
                            "--config cannot be used with --dev (--dev needs no config file)",
                        ))
                    }
                    _ => args.config = None,
                }
            }
        }
        Ok(cli)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    Journald,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the filesystem and serve tokens (stays in the foreground; SIGTERM or
    /// SIGINT unmounts and exits 0).
    Mount(MountArgs),
    /// Show the state of every file of a running mount (from its `.status`). Exit
    /// code: 0 every file serves a token, waits on its user (consent, a login) or
    /// was not read yet; 1 some file's upstream fails; 2 not mounted or `.status`
    /// unreadable.
    Status(StatusArgs),
    /// Validate a config and obtain one token per file, without mounting. Prints
    /// sub/exp/jti per file (never a token). Exit code 0 if every file worked, else 1.
    /// Note: with refresh-token rotation this uses (and persists) the rotated token,
    /// taking turns with the daemons that share it: safe beside a running one.
    Check(CheckArgs),
    /// Log in for one file of a config (`login = "device"` or `"code"`) from a
    /// terminal, before any mount: prints the URL (and code) to approve, waits (for
    /// a code login: for the address the browser landed on, pasted on stdin), and
    /// saves the refresh token where the file's config reads it. Exit code 0 once
    /// logged in, else 1.
    Login(LoginArgs),
    /// Complete a file's code login (`login = "code"`) on a running mount: give the
    /// address the browser landed on after the login; the daemon checks it is from
    /// the login the file's `.consent-url` shows and redeems it. Root and the files'
    /// owner may run it. Exit code 0 once logged in, else 1.
    Consent(ConsentArgs),
    /// Detach a tokenfs (a reader holding a file keeps it until closing it); its
    /// daemon then exits.
    Unmount(StatusArgs),
    /// The container entrypoint in one command: mount, wait until ready, run
    /// COMMAND as --user with no capabilities (no passwd entry needed) and
    /// DOMINO_TOKEN_FILE set, forward signals to it, remount if the daemon dies,
    /// and on COMMAND's exit unmount and exit with its status.
    Exec(ExecArgs),
    /// Wait until a tokenfs on the mountpoint is ready: it answers, and every file
    /// serves a token or waits on its user (consent, a login); each file not asked
    /// for yet is read once to find out. For a container entrypoint that starts
    /// the workload once credentials work. Exit code 0 when ready; 1 on timeout
    /// (naming each file not ready and why) or when the daemon given by --pid
    /// exited first.
    Wait(WaitArgs),
    /// Run the embedded Keycloak-compatible issuer alone. For development and tests only.
    DevIssuer(DevIssuerArgs),
    /// Print the shell completion script for SHELL to stdout
    ///
    /// Install it where the shell looks for completions (the .deb installs bash, zsh
    /// and fish ones), e.g.:
    ///   bash  tokenfs completions bash > /usr/share/bash-completion/completions/tokenfs
    ///   zsh   tokenfs completions zsh > /usr/local/share/zsh/site-functions/_tokenfs
    ///   fish  tokenfs completions fish > ~/.config/fish/completions/tokenfs.fish
    /// elvish and powershell: evaluate the output from the shell's startup file.
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Write the man pages (roff): tokenfs(1) to stdout, or with --dir every page.
    ///
    /// Without --dir, tokenfs(1) goes to stdout (read it with `tokenfs man | man -l -`).
    /// With --dir DIR, tokenfs.1 and one page per command (tokenfs-mount.1,
    /// tokenfs-status.1, ...) are written into DIR, created if missing, and each path
    /// written is printed; e.g. `tokenfs man --dir /usr/local/share/man/man1`.
    Man(ManArgs),
}

#[cfg(feature = "dev-issuer")]
pub use crate::issuer::DevIssuerArgs;

/// A build without the development issuer still knows the command, to say so.
#[cfg(not(feature = "dev-issuer"))]
#[derive(Debug, Args)]
pub struct DevIssuerArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ignored: Vec<std::ffi::OsString>,
}

/// What `mount --dev` and `dev-issuer` say in a build without the issuer.
pub const NO_DEV_ISSUER: &str = "this build of tokenfs has no development issuer (built \
    without the dev-issuer feature): --dev and dev-issuer are unavailable";

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount on; created if missing (its parent must exist).
    #[arg(default_value = DEFAULT_MOUNTPOINT, env = "TOKENFS_MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Config file (TOML) [default: /etc/tokenfs/config.toml]. Not with --dev;
    /// with --dev a TOKENFS_CONFIG in the environment is ignored.
    // No `conflicts_with = "dev"`: clap applies it to the environment's value
    // too, and a shell that exports TOKENFS_CONFIG must still run `--dev`.
    // `Cli::parse_args` refuses only an explicit --config with --dev.
    #[arg(long, env = "TOKENFS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Serve tokens from an embedded development issuer on a loopback port, with no
    /// config and no other service. Never use this in production.
    #[arg(long)]
    pub dev: bool,

    /// The files' owner, UID:GID, over the config's `mount.uid`/`mount.gid` and the
    /// default (the owner of the mountpoint's parent directory).
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<crate::fs::Owner>,

    /// Serve every read from the daemon instead of the kernel's page cache (slower;
    /// the automatic fallback when the kernel lacks the needed FUSE capabilities).
    #[arg(long)]
    pub direct_io: bool,

    /// Let the kernel open the files without asking the daemon (FUSE no-open), so
    /// that a warm open+read costs about what it costs on tmpfs instead of one
    /// round trip to the daemon. The price: a file without a token (before its
    /// first read, before consent, during an outage) can then only be shown by
    /// fetching one, so `stat`, `ls -l` and other walks ask the upstream and fail
    /// with the read's errno.
    #[arg(long, conflicts_with = "direct_io")]
    pub kernel_opens: bool,

    /// Also serve the metrics (the text of `.metrics`) at http://ADDR/metrics,
    /// liveness at /healthz (200 while the daemon works) and readiness at /readyz
    /// (200 once every file serves a token or waits on its user). ADDR is a port
    /// (bound on 127.0.0.1), IP:PORT, or unix:/PATH (a socket only root can use,
    /// in a directory only root writes). Off by default; no authentication: any
    /// local user can connect to a TCP port, and one that binds it first answers
    /// in our place, so prefer a socket or a port below 1024.
    #[arg(long, value_name = "ADDR", env = "TOKENFS_METRICS_LISTEN")]
    pub metrics_listen: Option<crate::listener::Listen>,

    /// With --dev: lifetime of the tokens the embedded issuer issues.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration, requires = "dev")]
    pub dev_lifetime: Duration,

    /// With --dev: lifetime of the Azure tokens (`azure-token`) the embedded issuer issues.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "dev")]
    pub dev_azure_lifetime: Duration,

    /// With --dev: start with no offline token; `token.consent-url` shows a device
    /// login (open it, answer Yes) and the first read after it is served.
    #[arg(long, requires = "dev")]
    pub dev_login: bool,

    /// With --dev: the user the embedded issuer issues tokens for (the user
    /// `tokenfs dev-issuer` also defaults to).
    #[arg(long, requires = "dev", default_value = DEV_USER)]
    pub dev_user: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The tokenfs mountpoint.
    #[arg(default_value = DEFAULT_MOUNTPOINT, env = "TOKENFS_MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The tokenfs mountpoint.
    #[arg(default_value = DEFAULT_MOUNTPOINT, env = "TOKENFS_MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// The daemon's PID (e.g. `$!` after `tokenfs mount ... &`): fail at once if it
    /// exits instead of waiting for the timeout.
    #[arg(long)]
    pub pid: Option<i32>,

    /// Only wait until the daemon answers (liveness, e.g. a kubelet exec probe),
    /// whatever its files' upstreams and consents.
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (TOML) [default: /etc/tokenfs/config.toml].
    #[arg(long, env = "TOKENFS_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// How long to wait for each file's upstream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// The files' owner, UID:GID (as `mount --owner`): a group-readable secret
    /// file is accepted only if its group is none of this owner's [default: the
    /// config's mount.uid/mount.gid, else the owner of the mountpoint's parent].
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner, env = "TOKENFS_USER")]
    pub owner: Option<crate::fs::Owner>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The file to log in for (a `[files.NAME]` of the config).
    pub file: String,

    /// Config file (TOML) [default: /etc/tokenfs/config.toml].
    #[arg(long, env = "TOKENFS_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// How long to wait for the approval.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// The files' owner, UID:GID (as `mount --owner`): a group-readable secret
    /// file is accepted only if its group is none of this owner's [default: the
    /// config's mount.uid/mount.gid, else the owner of the mountpoint's parent].
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner, env = "TOKENFS_USER")]
    pub owner: Option<crate::fs::Owner>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Config file (TOML) [default: /etc/tokenfs/config.toml].
    #[arg(long, conflicts_with = "dev")]
    pub config: Option<PathBuf>,

    /// Serve tokens from the embedded development issuer (as `mount --dev`).
    #[arg(long)]
    pub dev: bool,

    /// Where to mount.
    #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
    pub mountpoint: PathBuf,

    /// Run COMMAND as UID:GID (numbers; no passwd entry needed), with no
    /// supplementary groups and no capabilities; the files belong to it.
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner, env = "TOKENFS_USER")]
    pub user: crate::fs::Owner,

    /// How long to wait for the mount to be ready before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// The workload and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// `UID:GID`, both numbers, neither 0 for a workload (that would be root).
fn parse_owner(s: &str) -> Result<crate::fs::Owner, String> {
    let (uid, gid) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not UID:GID (e.g. 12574:12574)"))?;
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("{s:?} is not UID:GID: {n:?} is not a number"))
    };
    Ok(crate::fs::Owner {
        uid: number(uid)?,
        gid: number(gid)?,
    })
}

#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// The file: its path in the mount (e.g. ~/.api/azure-token), or its name
    /// (e.g. azure-token) on the mount at --mountpoint.
    pub file: PathBuf,

    /// The address the browser landed on (copy it from the address bar; the page
    /// itself may fail to load), or `-` to read it from stdin.
    pub url: String,

    /// The tokenfs mountpoint, when FILE is a name.
    #[arg(long, default_value = DEFAULT_MOUNTPOINT, env = "TOKENFS_MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page (tokenfs.1, tokenfs-COMMAND.1) into this directory instead of
    /// tokenfs.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
