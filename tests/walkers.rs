//! Walking the mount never trips: before consent, before the first read and
//! during an outage, `ls -l`, `stat`, `find`, `du`, `tar` and Python's `exists`
//! see every file, without a single upstream request; only reading a file that
//! has no token fails, with the contract's errno. Real mounts, real tools.
//! Not under `--kernel-opens`, which trades this for tmpfs-speed opens.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::process::Command;
use std::time::Duration;

use common::*;

fn sh(script: &str, dir: &std::path::Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every walker succeeds on `dir` and lists `names`; `ls -l` shows no `?`.
fn assert_walkers_succeed(dir: &std::path::Path, names: &[&str]) {
    let ls = sh("ls -la .", dir);
    let listing = text(&ls.stdout);
    assert!(ls.status.success(), "ls -l: {}{listing}", text(&ls.stderr));
    assert!(!listing.contains('?'), "{listing}");
    for name in names {
        assert!(listing.contains(&format!(" {name}\n")), "{name}: {listing}");
        let stat = sh(&format!("stat -c '%s %a' {name}"), dir);
        assert!(stat.status.success(), "stat {name}: {}", text(&stat.stderr));
    }
    for walker in ["find . -type f", "du -a .", "ls -lR ."] {
        let out = sh(walker, dir);
        assert!(out.status.success(), "{walker}: {}", text(&out.stderr));
    }
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, pathlib, sys\n\
             for n in sys.argv[1:]:\n\
             \x20   assert os.path.exists(n) and pathlib.Path(n).exists(), n\n\
             \x20   assert os.path.isfile(n), n\n\
             print('ok')",
        )
        .args(names)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(text(&py.stdout), "ok\n", "{}", text(&py.stderr));
}

#[test]
fn before_consent_every_walker_succeeds_and_only_reading_fails() {
    if !fuse_available("before_consent_every_walker_succeeds_and_only_reading_fails") {
        return;
    }
    let mount = Mount::start(&["--dev"]);
    let stats = || mount.issuer_stats();
    let before = stats();
    assert_walkers_succeed(&mount.dir, &["token", "azure-token", ".status"]);
    // Before its first read a file is an empty stand-in: the walk asked nothing.
    assert_eq!(
        std::fs::metadata(mount.path("azure-token")).unwrap().len(),
        0
    );
    assert_eq!(std::fs::metadata(mount.path("token")).unwrap().len(), 0);
    assert_eq!(stats(), before, "a walk reached the issuer");

    // GNU tar does not open a file whose size is 0: it archives the stand-ins
    // as empty files, and asks nothing either.
    let tar = sh("tar -cf /dev/null .", &mount.dir);
    assert!(tar.status.success(), "tar: {}", text(&tar.stderr));
    assert_eq!(stats(), before, "tar reached the issuer");

    assert_eq!(errno(mount.read("azure-token")), libc::ENOKEY);
    assert!(mount.path("azure-token.consent-url").exists());
    // A read by `cat` to a file (copy_file_range, no read(2)) gets the whole token.
    let copied = mount.dir.parent().unwrap().join("copied");
    let cat = sh(&format!("cat token > {}", copied.display()), &mount.dir);
    assert!(cat.status.success(), "{}", text(&cat.stderr));
    let token = mount.read("token").unwrap();
    assert_eq!(std::fs::read(&copied).unwrap(), token);
    assert_eq!(token.iter().filter(|&&b| b == b'.').count(), 2);
    let meta = std::fs::metadata(mount.path("token")).unwrap();
    assert_eq!(meta.len(), token.len() as u64);
    assert_eq!(meta.mode() & 0o777, 0o400);

    // Still no `?` once a file serves and the other waits on consent.
    assert_walkers_succeed(
        &mount.dir,
        &[
            "token",
            "token.expires",
            "azure-token",
            "azure-token.consent-url",
        ],
    );
}

#[test]
fn during_an_outage_walkers_succeed_without_asking_and_reads_fail() {
    if !fuse_available("during_an_outage_walkers_succeed_without_asking_and_reads_fail") {
        return;
    }
    // 4 s tokens with min_valid 2 s: unservable 2 s after issue.
    let up = FaultyUpstream::start(Fault::Ok(4));
    let tmp = tempdir();
    let config = up.config(tmp.path(), "min_valid = \"2s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let token = mount.read("token").unwrap();
    assert_eq!(
        std::fs::metadata(mount.path("token")).unwrap().len(),
        token.len() as u64
    );

    up.set(Fault::Status(503, false));
    let errno = eventually(Duration::from_secs(15), "reads failing", || {
        match mount.read("token") {
            Ok(t) => {
                assert_eq!(t, token, "only the cached token is ever served");
                std::thread::sleep(Duration::from_millis(200));
                None
            }
            Err(e) => Some(e.raw_os_error().unwrap()),
        }
    });
    assert_eq!(errno, libc::EIO);

    let asked = up.requests();
    assert_walkers_succeed(&mount.dir, &["token", ".status"]);
    assert_eq!(std::fs::metadata(mount.path("token")).unwrap().len(), 0);
    assert_eq!(up.requests(), asked, "a walk reached the upstream");

    // Healed: the next read serves a new token whole, and stat agrees with it.
    up.set(Fault::Ok(60));
    let healed = eventually(Duration::from_secs(15), "reads healing", || {
        mount.read("token").ok()
    });
    assert_ne!(healed, token);
    assert_eq!(
        std::fs::metadata(mount.path("token")).unwrap().len(),
        healed.len() as u64
    );
}
