//! Who may do what to the mount, with real uids; path and handle abuse; the
//! daemon's own hardening.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

const OWNER: u32 = 4242;
const OTHER: u32 = 4343;
/// Not the owner, but a member of the owner's group.
const GROUP_MEMBER: u32 = 4444;

/// Each operation, run by `python3` as some uid, prints `OK` or the errno name.
const OPS: &str = r#"
import errno, mmap, os, sys
d = sys.argv[1]
t = os.path.join(d, "token")
def run(name, f):
    try:
        f()
        print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
def read():
    with open(t, "rb") as f:
        assert len(f.read()) > 0
def write():
    with open(t, "r+b") as f:
        f.write(b"x")
def create():
    open(os.path.join(d, "new"), "wb").close()
def mmap_write():
    with open(t, "r+b") as f:
        mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_WRITE)
run("read", read)
run("stat", lambda: os.stat(t))
run("list", lambda: os.listdir(d))
run("write", write)
run("create", create)
run("unlink", lambda: os.unlink(t))
run("rename", lambda: os.rename(t, os.path.join(d, "t2")))
run("chmod", lambda: os.chmod(t, 0o644))
run("chown", lambda: os.chown(t, 0, 0))
run("setxattr", lambda: os.setxattr(t, "user.x", b"1"))
run("truncate", lambda: os.truncate(t, 0))
run("mmap_write", mmap_write)
"#;

fn matrix_row(
    dir: &std::path::Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> BTreeMap<String, String> {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(OPS).arg(dir);
    if uid != 0 {
        let groups = groups.to_vec();
        // std applies uid()/gid() before pre_exec, and setgroups needs root: do all
        // three here, in the only order that works.
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (op, result) = l.split_once(' ').unwrap();
            (op.to_owned(), result.to_owned())
        })
        .collect()
}

#[test]
fn permission_matrix_with_real_uids() {
    if !fuse_available("permission_matrix_with_real_uids") {
        return;
    }
    let issuer = DevIssuer::start(&[]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), &format!("uid = {OWNER}\ngid = {OWNER}"), "");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let before = mount.read("token").unwrap();

    let rows = [
        ("owner", matrix_row(&mount.dir, OWNER, OWNER, &[OWNER])),
        (
            "group member",
            matrix_row(&mount.dir, GROUP_MEMBER, GROUP_MEMBER, &[OWNER]),
        ),
        ("other user", matrix_row(&mount.dir, OTHER, OTHER, &[OTHER])),
        ("root", matrix_row(&mount.dir, 0, 0, &[])),
    ];
    // Print the matrix as a table: who × operation.
    let ops: Vec<_> = rows[0].1.keys().cloned().collect();
    eprintln!(
        "{:<13} {}",
        "who",
        ops.iter().map(|o| format!("{o:<11}")).collect::<String>()
    );
    for (who, row) in &rows {
        eprintln!(
            "{who:<13} {}",
            ops.iter()
                .map(|o| format!("{:<11}", row[o]))
                .collect::<String>()
        );
    }

    let writes = [
        "write",
        "create",
        "unlink",
        "rename",
        "chmod",
        "chown",
        "setxattr",
        "truncate",
        "mmap_write",
    ];
    for (who, row) in &rows {
        let may_read = matches!(*who, "owner" | "root");
        for op in ["read", "stat", "list"] {
            let expected = if may_read { "OK" } else { "EACCES" };
            assert_eq!(row[op], expected, "{who} {op}");
        }
        for op in writes {
            // Those who cannot reach the directory are stopped by its mode first;
            // everyone else by the read-only mount. Never OK.
            let expected: &[&str] = if may_read {
                &["EROFS"]
            } else {
                &["EACCES", "EROFS"]
            };
            assert!(
                expected.contains(&row[op].as_str()),
                "{who} {op}: {}",
                row[op]
            );
        }
    }
    assert_eq!(mount.read("token").unwrap(), before, "nothing changed");
}

#[test]
fn path_and_handle_abuse() {
    if !fuse_available("path_and_handle_abuse") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let mount = Mount::start(&["--dev"]);
    let token = mount.read("token").unwrap();

    for name in [
        "nope",
        "token.consent-url",
        "..token",
        "token/",
        ".status/x",
        "token\u{1F600}",
    ] {
        let e = errno(std::fs::metadata(mount.path(name)));
        assert!(
            e == libc::ENOENT || e == libc::ENOTDIR,
            "{name:?}: errno {e}"
        );
    }
    // Long names are looked up (and not found); a path longer than PATH_MAX is
    // refused before it reaches the daemon.
    assert_eq!(
        errno(std::fs::metadata(mount.path(&"a".repeat(255)))),
        libc::ENOENT
    );
    assert_eq!(
        errno(std::fs::metadata(mount.path(&"a".repeat(1024)))),
        libc::ENOENT
    );
    assert_eq!(
        errno(std::fs::metadata(mount.path(&"a".repeat(5000)))),
        libc::ENAMETOOLONG
    );
    // `..` leaves the mount, as anywhere else.
    assert_eq!(
        std::fs::canonicalize(mount.path("..")).unwrap(),
        mount.dir.parent().unwrap().canonicalize().unwrap()
    );

    let file = std::fs::File::open(mount.path("token")).unwrap();
    let mut buf = vec![0u8; 64];
    assert_eq!(
        file.read_at(&mut buf, 1 << 40).unwrap(),
        0,
        "huge offset: EOF"
    );
    assert_eq!(
        file.read_at(&mut buf, token.len() as u64).unwrap(),
        0,
        "offset at EOF"
    );
    assert_eq!(file.read_at(&mut [], 0).unwrap(), 0, "zero-size read");
    let n = file.read_at(&mut buf, 10).unwrap();
    assert_eq!(
        &buf[..n],
        &token[10..10 + n],
        "a read at an offset is a slice of the same token"
    );

    // Thousands of open handles, all reading the same whole token.
    let handles: Vec<_> = (0..2000)
        .map(|_| std::fs::File::open(mount.path("token")).unwrap())
        .collect();
    for h in handles.iter().step_by(97) {
        let mut whole = vec![0u8; 4096];
        let n = h.read_at(&mut whole, 0).unwrap();
        assert_eq!(&whole[..n], token.as_slice());
    }
    drop(handles);
    assert_eq!(mount.read("token").unwrap(), token, "still served");
    // The daemon answered all that without a new upstream request.
    assert_eq!(mount.file_status("token")["fetches"], 1);
}

#[test]
fn the_daemon_cannot_dump_core() {
    if !fuse_available("the_daemon_cannot_dump_core") {
        return;
    }
    let mount = Mount::start(&["--dev"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", mount.proc.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<_> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}
