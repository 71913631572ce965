//! Small OS helpers: privileges, mounts, secret files, RSS, bounded polling.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why this machine cannot run the benchmark, if it cannot: mounting FUSE and tmpfs
/// needs root (mount(2) directly, no fusermount) and /dev/fuse.
pub fn cannot_run() -> Option<String> {
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    (!(root && fuse)).then(|| format!("needs root and /dev/fuse (root: {root}, /dev/fuse: {fuse})"))
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// Whether `path` is a mountpoint right now (field 5 of /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|line| line.split(' ').nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// Detach `path` (`umount -l`): never blocks, even when the filesystem's daemon is
/// gone or a file is still open.
pub fn detach(path: &Path) {
    let c = c_path(path);
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// A tmpfs mounted on a fresh temp dir; unmounted on drop. The floor of the
/// comparison: what a file sink on tmpfs gives a reader.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let (src, fstype, opts) = (c"tmpfs", c"tmpfs", c"size=1m,mode=0755");
        let target = c_path(dir.path());
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount -t tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(self.dir.path()) {
            detach(self.dir.path());
        }
    }
}

/// Create `path` with mode `mode` from the start (never briefly world-readable).
pub fn write_private(path: &Path, content: &[u8], mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(content).expect("write");
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Call `f` every `every` until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The median of a few samples (the upper one of the middle two).
pub fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "median of no samples");
    v.sort();
    v[v.len() / 2]
}

/// User plus system CPU time a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command (which may hold spaces), from field 3 on.
    let after = &stat[stat.rfind(')').expect("comm in /proc/<pid>/stat") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
