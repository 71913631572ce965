//! Python's readers, and the round trips the daemon answers without the
//! upstream, timed inside one `python3` per case (so interpreter start-up is
//! not in the figure): `perf_counter_ns` around each of N calls, after a warm-up.
//!
//! Python <= 3.13 asks `isatty` (an `ioctl`) at every buffered `open()`, and the
//! kernel forwards every ioctl on a FUSE file to the daemon, so the ioctl row is
//! the price of that question alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One Python reader or request, as it is called in the timed loop.
pub struct Op {
    pub label: &'static str,
    /// The name in [`SCRIPT`]'s table.
    key: &'static str,
}

pub const READERS: [Op; 3] = [
    Op {
        label: "open(p).read()",
        key: "read",
    },
    Op {
        label: "open(p).readline().rstrip()",
        key: "readline",
    },
    Op {
        label: "open(p,'rb',buffering=0).read()",
        key: "rb0",
    },
];

/// Requests the daemon answers itself. On tmpfs they are the kernel's own.
pub const ROUND_TRIPS: [Op; 3] = [
    Op {
        label: "os.open+os.close   (OPEN)",
        key: "openclose",
    },
    Op {
        label: "os.fstat(.status)  (GETATTR)",
        key: "fstat",
    },
    Op {
        label: "ioctl TCGETS→ENOTTY (IOCTL)",
        key: "ioctl",
    },
];

/// `argv`: token path, TTL-0 document path, reader, iterations, expected length.
/// Prints the p50 and the mean in ns.
const SCRIPT: &str = r#"
import errno, fcntl, os, sys, termios, time
path, doc, key, n, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
full = open(path, 'rb', buffering=0).read()
if len(full) != want: raise SystemExit(f'{path}: {len(full)} bytes, not {want}')
line = full.decode().split('\n')[0].rstrip()
expect = {'read': full.decode(), 'readline': line, 'rb0': full}
held = os.open(path, os.O_RDONLY)
held_doc = os.open(doc, os.O_RDONLY)
def read(): return open(path).read()
def readline(): return open(path).readline().rstrip()
def rb0(): return open(path, 'rb', buffering=0).read()
def openclose(): os.close(os.open(path, os.O_RDONLY))
def fstat(): os.fstat(held_doc)
def ioctl():
    try:
        fcntl.ioctl(held, termios.TCGETS, bytes(64))
    except OSError as e:
        if e.errno != errno.ENOTTY: raise
        return
    raise SystemExit('TCGETS on a token file did not fail with ENOTTY')
f = {'read': read, 'readline': readline, 'rb0': rb0, 'openclose': openclose, 'fstat': fstat, 'ioctl': ioctl}[key]
for _ in range(min(n, 2000)):
    if f() != expect.get(key): raise SystemExit(f'{key}: wrong content')
clock, ns = time.perf_counter_ns, [0] * n
for i in range(n):
    t = clock(); f(); ns[i] = clock() - t
ns.sort()
print(ns[n // 2], sum(ns) // n)
"#;

/// Where one column of the table reads.
pub struct Target {
    pub name: &'static str,
    pub token: PathBuf,
    /// A file with attribute TTL 0 (`.status`), so each `fstat` reaches the
    /// daemon; on tmpfs, the token file.
    pub doc: PathBuf,
    /// The token's length there (each mount issued its own).
    pub len: usize,
}

/// p50 and mean of one op against one target.
#[derive(Clone, Copy)]
pub struct Timing {
    pub p50: Duration,
    pub mean: Duration,
}

pub struct PyResults {
    pub version: String,
    pub iterations: usize,
    pub targets: Vec<&'static str>,
    /// Per op (readers, then round trips), per target.
    pub rows: Vec<(&'static str, Vec<Timing>)>,
}

pub fn available() -> Option<String> {
    let out = Command::new("python3").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(op: &Op, target: &Target, n: usize, want: usize) -> Timing {
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args([path_arg(&target.token), path_arg(&target.doc)])
        .args([op.key.to_owned(), n.to_string(), want.to_string()])
        .output()
        .expect("spawn python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3 {} on {}: {}{}",
        op.key,
        target.name,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    let (p50, mean) = (fields.next().unwrap(), fields.next().unwrap());
    Timing {
        p50: Duration::from_nanos(p50),
        mean: Duration::from_nanos(mean),
    }
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_owned()
}

/// Every op against every target, `n` timed calls each.
pub fn measure(version: String, targets: &[Target], n: usize) -> PyResults {
    let rows = READERS
        .iter()
        .chain(ROUND_TRIPS.iter())
        .map(|op| {
            let timings = targets
                .iter()
                .map(|t| {
                    crate::progress(&format!("python {} on {}, {n} calls", op.key, t.name));
                    run(op, t, n, t.len)
                })
                .collect();
            (op.label, timings)
        })
        .collect();
    PyResults {
        version,
        iterations: n,
        targets: targets.iter().map(|t| t.name).collect(),
        rows,
    }
}
