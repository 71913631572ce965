//! `tokenfs exec`, the container entrypoint: the workload runs as a uid with no
//! passwd entry, with no capability and `no_new_privs`, reads its token,
//! receives the signals sent to `exec`, outlives a `kill -9` of the daemon
//! (which `exec` mounts again), and its exit status is `exec`'s, with nothing
//! left mounted.

mod common;

use std::time::Duration;

use common::*;

/// No passwd entry has this uid.
const USER: &str = "4343:4343";

fn exec(dir: &std::path::Path, script: &str) -> Proc {
    let mountpoint = dir.join("home/.api");
    std::fs::create_dir_all(dir.join("home")).unwrap();
    Proc::spawn(
        &[
            "exec",
            "--dev",
            "--mountpoint",
            mountpoint.to_str().unwrap(),
            "--user",
            USER,
            "--",
            "sh",
            "-c",
            script,
        ],
        &[],
    )
}

/// The pid of `exec`'s daemon child (`tokenfs mount …`).
fn daemon_of(exec: &Proc) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", exec.pid(), exec.pid()))
            .ok()?;
    children.split_whitespace().find_map(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<_> = cmdline.split(|b| *b == 0).collect();
        (args.get(1) == Some(&&b"mount"[..])).then(|| pid.parse().ok())?
    })
}

#[test]
fn the_workload_runs_unprivileged_as_a_bare_uid_and_its_status_is_execs() {
    if !fuse_available("the_workload_runs_unprivileged_as_a_bare_uid_and_its_status_is_execs") {
        return;
    }
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains(":4343:"),
        "the test uid must have no passwd entry"
    );
    let tmp = tempdir();
    let mut p = exec(
        tmp.path(),
        "id -u; id -g; id -G; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status; \
         head -c 3 \"$DOMINO_TOKEN_FILE\"; echo; exit 7",
    );
    let status = p.exits_within(Duration::from_secs(60), "the workload's exit");
    assert_eq!(status.code(), Some(7), "{}", p.stderr());
    let out = p.stdout();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(&lines[..3], ["4343", "4343", "4343"], "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("\neyJ\n"), "the token was readable: {out}");
    assert!(
        !is_mounted(&tmp.path().join("home/.api")),
        "nothing left mounted"
    );
}

#[test]
fn signals_reach_the_workload_and_it_outlives_a_killed_daemon() {
    if !fuse_available("signals_reach_the_workload_and_it_outlives_a_killed_daemon") {
        return;
    }
    let tmp = tempdir();
    // Reads every 0.2 s and says how each went; exits 3 on SIGTERM.
    let mut p = exec(
        tmp.path(),
        "trap 'echo got TERM; exit 3' TERM; \
         while :; do if head -c 3 \"$DOMINO_TOKEN_FILE\" >/dev/null 2>&1; then echo ok; \
         else echo fail; fi; sleep 0.2; done",
    );
    let first = eventually(Duration::from_secs(60), "the workload reading", || {
        p.stdout().contains("ok\n").then(|| daemon_of(&p)).flatten()
    });
    // SAFETY: SIGKILL to the daemon this test's exec started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let second = eventually(Duration::from_secs(60), "a new daemon", || {
        daemon_of(&p).filter(|pid| *pid != first)
    });
    let seen = p.stdout().len();
    eventually(Duration::from_secs(30), "reads working again", || {
        p.stdout()[seen..].contains("ok\n").then_some(())
    });
    assert!(p.child_running(), "the workload kept running");

    p.signal(libc::SIGTERM);
    let status = p.exits_within(Duration::from_secs(30), "SIGTERM");
    assert_eq!(status.code(), Some(3), "{}", p.stderr());
    assert!(p.stdout().contains("got TERM"));
    assert!(!is_mounted(&tmp.path().join("home/.api")));
    assert!(
        std::fs::metadata(format!("/proc/{second}")).is_err(),
        "the daemon stopped too"
    );
}
