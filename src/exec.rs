//! `tokenfs exec`: a container's entrypoint in one command. It runs the
//! daemon (`tokenfs mount`, as a child, so that one that dies can be started
//! again), waits until the mount is ready, and runs the workload as the user:
//! numeric ids (no passwd entry is needed), no supplementary groups, no
//! capabilities (none permitted, effective, inheritable, ambient or in the
//! bounding set) and `no_new_privs`, so a setuid binary cannot bring root
//! back. Signals reach the workload; its exit ends everything, with its status.
//!
//! Written here rather than with `setpriv`/`su-exec`: those need a passwd
//! entry for `--init-groups`, or leave the bounding set, and none restarts a
//! daemon that dies under a running workload.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::ExecArgs;
use crate::fs::Owner;

/// How long the daemon has to unmount and exit on SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// How often the supervisor looks at its children and pending signals.
const TICK: Duration = Duration::from_millis(100);
/// The signals passed on to the workload.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

pub fn run(args: ExecArgs) -> Result<u8> {
    anyhow::ensure!(
        args.user.uid != 0,
        "--user {}:{} is root: the workload must run as the user, without the daemon's \
         privileges",
        args.user.uid,
        args.user.gid
    );
    let signals = Signals::block()?;
    let daemon_cmd = DaemonCommand::new(&args)?;
    let mut daemon = daemon_cmd.spawn()?;
    crate::ops::wait_until(
        &args.mountpoint,
        args.timeout,
        Some(daemon.id() as i32),
        false,
    )
    .context("the mount did not become ready; the workload was not started")
    .inspect_err(|_| stop(&mut daemon))?;
    let token_file = args.mountpoint.join("token");
    let mut workload =
        spawn_workload(&args.command, args.user, &token_file).inspect_err(|_| stop(&mut daemon))?;
    tracing::info!(
        pid = workload.id(),
        uid = args.user.uid,
        gid = args.user.gid,
        "workload started"
    );
    let status = loop {
        if let Some(status) = workload
            .try_wait()
            .context("cannot wait for the workload")?
        {
            break status;
        }
        if let Some(died) = daemon.try_wait().context("cannot wait for the daemon")? {
            // The workload keeps running: a new daemon detaches the dead mount
            // and mounts again; reads fail (ENOTCONN) only meanwhile.
            tracing::error!(%died, "the daemon exited under the workload; mounting again");
            daemon = daemon_cmd.spawn()?;
            let pid = Some(daemon.id() as i32);
            if let Err(e) = crate::ops::wait_until(&args.mountpoint, args.timeout, pid, true) {
                tracing::error!("{e:#}; trying again");
            }
            continue;
        }
        for sig in signals.pending() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(workload.id() as i32, sig) };
        }
        std::thread::sleep(TICK);
    };
    stop(&mut daemon);
    Ok(exit_code(status))
}

/// The shell's convention: the exit code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// SIGTERM (it unmounts), then SIGKILL past [`STOP_WAIT`].
fn stop(daemon: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = daemon.try_wait() {
            return;
        }
        std::thread::sleep(TICK);
    }
    tracing::error!("the daemon did not stop within {STOP_WAIT:?}; killing it");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// `tokenfs mount` as this binary, with the same config and the user as owner.
struct DaemonCommand {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl DaemonCommand {
    fn new(args: &ExecArgs) -> Result<DaemonCommand> {
        let exe = std::env::current_exe().context("cannot find the tokenfs binary")?;
        let mut argv: Vec<OsString> = vec!["mount".into(), args.mountpoint.clone().into()];
        match (&args.config, args.dev) {
            (Some(config), _) => argv.extend(["--config".into(), config.clone().into()]),
            (None, true) => argv.push("--dev".into()),
            (None, false) => {}
        }
        argv.extend([
            "--owner".into(),
            format!("{}:{}", args.user.uid, args.user.gid).into(),
        ]);
        Ok(DaemonCommand { exe, args: argv })
    }

    fn spawn(&self) -> Result<Child> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args);
        // Its signals are ours to send: a Ctrl-C meant for the workload must not
        // unmount under it.
        cmd.process_group(0);
        unblock_signals_in_child(&mut cmd);
        cmd.spawn().context("cannot start `tokenfs mount`")
    }
}

fn spawn_workload(command: &[OsString], user: Owner, token_file: &Path) -> Result<Child> {
    let last_cap = last_capability();
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    cmd.env("DOMINO_TOKEN_FILE", token_file);
    unblock_signals_in_child(&mut cmd);
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // capset, setgroups, setresgid, setresuid), on values computed before.
    unsafe {
        cmd.pre_exec(move || drop_privileges(user, last_cap));
    }
    cmd.spawn()
        .with_context(|| format!("cannot start the workload {:?}", command[0]))
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// In the child, before exec: no way back to root, and no capability left.
fn drop_privileges(user: Owner, last_cap: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers and a stack struct.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        for cap in 0..=last_cap {
            check(libc::prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0,
                0,
                0,
            ))?;
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(user.gid, user.gid, user.gid))?;
        // From root to another uid the kernel clears the permitted and
        // effective sets; the inheritable set is cleared explicitly below.
        check(libc::setresuid(user.uid, user.uid, user.uid))?;
        let header = libc_cap_header();
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    CapHeader {
        version: 0x2008_0522,
        pid: 0,
    }
}

/// The forwarded signals, blocked in this process and collected with
/// `sigtimedwait`, so none is lost between two looks.
struct Signals(libc::sigset_t);

impl Signals {
    fn block() -> Result<Signals> {
        // SAFETY: sigset manipulation on a local, then sigprocmask for this
        // (still single-threaded) process.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in FORWARDED {
                libc::sigaddset(&mut set, sig);
            }
            check(libc::pthread_sigmask(
                libc::SIG_BLOCK,
                &set,
                std::ptr::null_mut(),
            ))
            .context("cannot block signals")?;
            Ok(Signals(set))
        }
    }

    /// Signals that arrived since the last look.
    fn pending(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // SAFETY: sigtimedwait on our set with a zero timeout; no info wanted.
            let sig = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &zero) };
            if sig <= 0 {
                return out;
            }
            out.push(sig);
        }
    }
}

/// Children start with the signal mask of their parent: give them a clean one.
fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: sigprocmask is async-signal-safe; the set is built in the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check(libc::pthread_sigmask(
                libc::SIG_SETMASK,
                &set,
                std::ptr::null_mut(),
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
