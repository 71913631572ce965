//! Read-path benchmark: what a reader pays for a token from tokenfs, next to a tmpfs
//! file (the floor), a textbook FUSE filesystem (every open reaches the daemon) and a
//! loopback HTTP API proxy; plus the cold read, coalescing of concurrent readers, the
//! daemon's memory and mount-to-first-read time. One run, one machine, one table.
//!
//! `cargo bench --bench readpath`. Needs root and /dev/fuse (otherwise it says so and
//! exits 0). `READPATH_OPS=N` sets the timed reads of the 1-thread runs (default
//! 200,000; the 8-thread runs do N/4 per thread). Targets that are missed are
//! reported as MISS; a broken setup (a mount that fails, wrong bytes) panics. Every
//! mount and child process is removed by guards, also on panic.

#[path = "readpath/daemon.rs"]
mod daemon;
#[path = "readpath/http.rs"]
mod http;
#[path = "readpath/latency.rs"]
mod latency;
#[path = "readpath/naive.rs"]
mod naive;
#[path = "readpath/python.rs"]
mod python;
#[path = "readpath/report.rs"]
mod report;
#[path = "readpath/sys.rs"]
mod sys;

use std::io::Read as _;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tokenfs::issuer::IssuerConfig;

use daemon::{write_config, TokenfsMount, Upstream};
use latency::{Case, Plan, Source};
use report::{Results, HTTP, NAIVE, TMPFS, TOKENFS, TOKENFS_KERNEL_OPENS};

/// Upstream latency for the cold-read run: large enough that the daemon's own
/// overhead is a difference of two clearly non-zero figures.
const COLD_TOKEN_DELAY: Duration = Duration::from_millis(20);
const COLD_RUNS: usize = 10;
/// Long enough that all readers are waiting on the one request before it answers.
const COALESCING_TOKEN_DELAY: Duration = Duration::from_millis(200);
const COALESCING_READERS: usize = 1000;
const RSS_WARM_READS: usize = 1_000_000;
const RSS_FILES: usize = 100;
const RSS_REFRESHES: u64 = 1000;
const RSS_REFRESH_WAIT: Duration = Duration::from_secs(60);
const MOUNT_RUNS: usize = 5;

fn main() {
    if let Some(why) = sys::cannot_run() {
        println!("readpath benchmark skipped: {why}");
        return;
    }
    // Issuers and the loopback HTTP server run here, on as many workers as tokenfs
    // has FUSE threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (latency, one_file_kib, python) = latency_runs(&rt);
    let results = Results {
        latency,
        python,
        cold: cold_read(&rt),
        coalescing: coalescing(&rt),
        memory: daemon_memory(&rt, one_file_kib),
        mount_to_read: mount_to_first_read(&rt),
        mount_runs: MOUNT_RUNS,
    };
    results.print();
}

fn progress(what: &str) {
    eprintln!("readpath: {what}");
}

fn ops_per_run() -> usize {
    std::env::var("READPATH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// A mount against `upstream` with one file, `token`, at default settings
/// (300 s lifetime, `min_valid` 30 s).
fn single_token_config(work: &tempfile::TempDir, upstream: &Upstream) -> std::path::PathBuf {
    write_config(work.path(), &[upstream.file_toml("token", "")])
}

fn python_ops() -> usize {
    std::env::var("READPATH_PY_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Part 1: the same token bytes served five ways, at 1 and 8 reader threads,
/// then Python's readers on tmpfs and both tokenfs read paths. Also returns the
/// RSS (KiB) of that one-file daemon after all those reads.
fn latency_runs(
    rt: &tokio::runtime::Runtime,
) -> (Vec<latency::Measured>, u64, Option<python::PyResults>) {
    let upstream = Upstream::start(rt, IssuerConfig::default());
    let work = tempfile::tempdir().expect("temp dir");
    let tokenfs = TokenfsMount::start(&single_token_config(&work, &upstream));
    let fast_work = tempfile::tempdir().expect("temp dir");
    let fast = TokenfsMount::start_with(
        &single_token_config(&fast_work, &upstream),
        &["--kernel-opens"],
    );
    // The first read issues the token; everything after is warm.
    let token = tokenfs.read("token");
    // Its own token (another issue of the same upstream): each case is checked
    // against the bytes it serves.
    let fast_token = fast.read("token");
    assert!(
        (256..8192).contains(&token.len()),
        "unexpected token size {}",
        token.len()
    );

    let tmpfs = sys::Tmpfs::mount();
    let tmpfs_file = tmpfs.path().join("token");
    sys::write_private(&tmpfs_file, &token, 0o400);
    let naive = naive::NaiveMount::start(&token);
    let server = http::TokenServer::start(rt, &token);

    // tokenfs first: its token must not reach refresh-ahead (~240 s) mid-run.
    let cases = [
        Case {
            name: TOKENFS,
            source: Source::File(tokenfs.path("token")),
        },
        Case {
            name: TOKENFS_KERNEL_OPENS,
            source: Source::File(fast.path("token")),
        },
        Case {
            name: TMPFS,
            source: Source::File(tmpfs_file),
        },
        Case {
            name: NAIVE,
            source: Source::File(naive.file()),
        },
        Case {
            name: HTTP,
            source: Source::Http(server.addr),
        },
    ];
    let ops = ops_per_run();
    let plans = [
        Plan {
            threads: 1,
            warmup: 2000,
            ops,
        },
        Plan {
            threads: 8,
            warmup: 500,
            ops: ops / 4,
        },
    ];
    let mut measured = Vec::new();
    for plan in plans {
        for case in &cases {
            progress(&format!(
                "{} × {} thread(s), {} reads each",
                case.name, plan.threads, plan.ops
            ));
            let expected = if case.name == TOKENFS_KERNEL_OPENS {
                &fast_token
            } else {
                &token
            };
            // The daemon's CPU during the run: what of a read's cost is the
            // daemon's, and what the kernel's.
            let daemon = match case.name {
                TOKENFS => Some(tokenfs.pid()),
                TOKENFS_KERNEL_OPENS => Some(fast.pid()),
                _ => None,
            };
            let before = daemon.map(sys::cpu_time);
            let mut m = latency::measure(case, expected, plan);
            m.daemon_cpu = daemon.zip(before).map(|(pid, b)| sys::cpu_time(pid) - b);
            measured.push(m);
        }
    }
    let python = python::available().map(|version| {
        let targets = [
            python::Target {
                name: TMPFS,
                token: tmpfs.path().join("token"),
                doc: tmpfs.path().join("token"),
                len: token.len(),
            },
            python::Target {
                name: TOKENFS,
                token: tokenfs.path("token"),
                doc: tokenfs.path(".status"),
                len: token.len(),
            },
            python::Target {
                name: TOKENFS_KERNEL_OPENS,
                token: fast.path("token"),
                doc: fast.path(".status"),
                len: fast_token.len(),
            },
        ];
        python::measure(version, &targets, python_ops())
    });
    if python.is_none() {
        progress("no python3: the Python rows are skipped");
    }
    (measured, sys::rss_kib(tokenfs.pid()), python)
}

/// Part 2: a read of an empty cell waits for the upstream; what does tokenfs add?
fn cold_read(rt: &tokio::runtime::Runtime) -> report::Cold {
    let upstream = Upstream::start(
        rt,
        IssuerConfig {
            token_delay: COLD_TOKEN_DELAY,
            ..IssuerConfig::default()
        },
    );
    let work = tempfile::tempdir().expect("temp dir");
    let config = single_token_config(&work, &upstream);
    progress(&format!("cold read × {COLD_RUNS}"));
    // One unmeasured round first: binary and libraries into the page cache.
    let mut reads = Vec::new();
    for run in 0..=COLD_RUNS {
        // `start` waits for `.status`, so mount time is not in the figure.
        let mount = TokenfsMount::start(&config);
        let t = Instant::now();
        let token = mount.read("token");
        let elapsed = t.elapsed();
        assert!(!token.is_empty(), "cold read returned nothing");
        if run > 0 {
            reads.push(elapsed);
        }
    }
    upstream.time_refresh();
    let upstream_alone = (0..COLD_RUNS).map(|_| upstream.time_refresh()).collect();
    report::Cold {
        read: sys::median(reads),
        upstream: sys::median(upstream_alone),
        runs: COLD_RUNS,
    }
}

/// Part 3: many readers of an empty cell, released together, share one request.
fn coalescing(rt: &tokio::runtime::Runtime) -> report::Coalescing {
    let upstream = Upstream::start(
        rt,
        IssuerConfig {
            token_delay: COALESCING_TOKEN_DELAY,
            ..IssuerConfig::default()
        },
    );
    let work = tempfile::tempdir().expect("temp dir");
    let mount = TokenfsMount::start(&single_token_config(&work, &upstream));
    let path = mount.path("token");
    progress(&format!("coalescing: {COALESCING_READERS} readers"));
    let before = upstream.token_requests();
    let start_line = Barrier::new(COALESCING_READERS);
    let reads: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..COALESCING_READERS)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, || {
                        start_line.wait();
                        std::fs::read(&path)
                    })
                    .expect("spawn reader thread")
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader panicked"))
            .collect()
    });
    let after = upstream.token_requests();
    let ok: Vec<&Vec<u8>> = reads.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!ok.is_empty(), "no reader got a token:\n{}", mount.log());
    report::Coalescing {
        readers: COALESCING_READERS,
        upstream_requests: after - before,
        failed_reads: reads.len() - ok.len(),
        identical: ok.iter().all(|b| *b == ok[0]),
    }
}

/// Part 4: the daemon's RSS after many warm reads, then after many refreshes.
fn daemon_memory(rt: &tokio::runtime::Runtime, one_file_kib: u64) -> report::Memory {
    let steady = Upstream::start(rt, IssuerConfig::default());
    // Refresh churn: 100 files of 2 s tokens, each refreshed about every second.
    // (Not 1 s: JWT `exp` is whole seconds, so a 1 s token arrives with 0–1 s left
    // and half of them would be refused for being under min_valid = 500 ms.)
    let churn = Upstream::start(
        rt,
        IssuerConfig {
            lifetime: Duration::from_secs(2),
            ..IssuerConfig::default()
        },
    );
    let mut tables = vec![steady.file_toml("token", "")];
    tables
        .extend((0..RSS_FILES).map(|i| churn.file_toml(&format!("t{i}"), "min_valid = \"500ms\"")));
    let work = tempfile::tempdir().expect("temp dir");
    let mount = TokenfsMount::start(&write_config(work.path(), &tables));
    let token = mount.read("token");
    let at_mount_kib = sys::rss_kib(mount.pid());
    // Issue is lazy: read each churn file once to start its refresh loop, so the
    // measurements below compare a warmed-up daemon with itself.
    for i in 0..RSS_FILES {
        mount.read(&format!("t{i}"));
    }
    let after_issue_kib = sys::rss_kib(mount.pid());

    progress(&format!(
        "RSS: {} warm reads",
        report::thousands(RSS_WARM_READS as u64)
    ));
    warm_reads(&mount.path("token"), token.len(), RSS_WARM_READS);
    let after_reads_kib = sys::rss_kib(mount.pid());

    progress(&format!(
        "RSS: {RSS_REFRESHES} refreshes of {RSS_FILES} files, twice"
    ));
    let t = Instant::now();
    let first = wait_for_refreshes(&churn, &mount, RSS_REFRESHES);
    let refresh_wait = t.elapsed();
    let after_refreshes_kib = sys::rss_kib(mount.pid());
    // A second round tells a leak (keeps growing) from warm-up (flat).
    let second = wait_for_refreshes(&churn, &mount, RSS_REFRESHES);
    report::Memory {
        one_file_kib,
        at_mount_kib,
        after_reads_kib,
        after_issue_kib,
        after_refreshes_kib,
        after_more_refreshes_kib: sys::rss_kib(mount.pid()),
        warm_reads: RSS_WARM_READS,
        refreshes: first,
        more_refreshes: second,
        refresh_wait,
    }
}

/// Wait (bounded) until the issuer has seen `n` more token requests; returns how
/// many it saw. Fewer than `n` is reported with `.status`, not fatal.
fn wait_for_refreshes(upstream: &Upstream, mount: &TokenfsMount, n: u64) -> u64 {
    let base = upstream.token_requests();
    sys::poll(RSS_REFRESH_WAIT, Duration::from_millis(200), || {
        let done = upstream.token_requests() - base;
        (done >= n).then_some(done)
    })
    .unwrap_or_else(|| {
        let status = String::from_utf8_lossy(&mount.read(".status")).into_owned();
        eprintln!("readpath: fewer than {n} refreshes in {RSS_REFRESH_WAIT:?}; .status:\n{status}");
        upstream.token_requests() - base
    })
}

/// `n` open+read+close of `path` from two threads, checking the length each time.
fn warm_reads(path: &std::path::Path, len: usize, n: usize) {
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut buf = Vec::with_capacity(4096);
                for _ in 0..n / 2 {
                    buf.clear();
                    let got = std::fs::File::open(path)
                        .and_then(|mut f| f.read_to_end(&mut buf))
                        .expect("warm read");
                    assert_eq!(got, len, "warm read length");
                }
            });
        }
    });
}

/// Part 5: from spawning the daemon to a reader holding a token.
fn mount_to_first_read(rt: &tokio::runtime::Runtime) -> Duration {
    let upstream = Upstream::start(rt, IssuerConfig::default());
    let work = tempfile::tempdir().expect("temp dir");
    let config = single_token_config(&work, &upstream);
    progress(&format!("mount → first read × {MOUNT_RUNS}"));
    let mut times = Vec::new();
    for run in 0..=MOUNT_RUNS {
        let t = Instant::now();
        let mut mount = TokenfsMount::spawn(&config);
        let token = sys::poll(Duration::from_secs(10), Duration::from_millis(1), || {
            mount.assert_running();
            std::fs::read(mount.path("token"))
                .ok()
                .filter(|b| !b.is_empty())
        });
        let elapsed = t.elapsed();
        assert!(
            token.is_some(),
            "no token within 10 s of spawning:\n{}",
            mount.log()
        );
        // Run 0 is a warm-up, as for the cold reads.
        if run > 0 {
            times.push(elapsed);
        }
    }
    sys::median(times)
}
