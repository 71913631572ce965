//! Soak: many concurrent readers on every file, short token lifetimes, the
//! upstream flapping on a schedule. Bounded: 45 s by default; set
//! `TOKENFS_SOAK_SECS` for a longer run. Prints its totals.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FILES: [&str; 3] = ["token", "t2", "t3"];
const MIN_VALID: f64 = 3.0;

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn soak_with_a_flapping_upstream() {
    if !fuse_available("soak_with_a_flapping_upstream") {
        return;
    }
    let secs: u64 = std::env::var("TOKENFS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let up = FaultyUpstream::start(Fault::Ok(10));
    let tmp = tempdir();
    let mut config = std::fs::read_to_string(up.config(tmp.path(), "min_valid = \"3s\"")).unwrap();
    let token_table = config[config.find("[files.token]").unwrap()..].to_owned();
    for name in &FILES[1..] {
        config += &format!(
            "\n{}",
            token_table.replace("[files.token", &format!("[files.{name}"))
        );
    }
    let config_path = tmp.path().join("soak.toml");
    write_file(&config_path, &config, 0o600);
    let mount = Mount::start(&["--config", config_path.to_str().unwrap()]);
    let pid = mount.proc.pid();
    for f in FILES {
        mount.read(f).unwrap();
    }
    let fds_start = fds(pid);
    let rss_start = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(BTreeMap::<i32, u64>::new()));
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let path = mount.path(FILES[i % FILES.len()]);
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut served = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match std::fs::read(&path) {
                        Ok(token) => {
                            let claims: serde_json::Value =
                                jsonwebtoken::dangerous::insecure_decode_claims(&token)
                                    .expect("never a torn or garbage token");
                            let left = claims["exp"].as_f64().unwrap() - now_secs();
                            assert!(
                                left > MIN_VALID - 0.5,
                                "a token with {left:.2}s left was served"
                            );
                            served += 1;
                        }
                        Err(e) => {
                            *errors
                                .lock()
                                .unwrap()
                                .entry(e.raw_os_error().unwrap())
                                .or_default() += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                served
            })
        })
        .collect();

    // Flap: 6 s up, 4 s answering 503, repeatedly; sample the daemon's RSS.
    let start = Instant::now();
    let mut rss_max = rss_start;
    let mut rss_at_third = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let phase = start.elapsed().as_secs() % 10;
        up.set(if phase < 6 {
            Fault::Ok(10)
        } else {
            Fault::Status(503, false)
        });
        std::thread::sleep(Duration::from_millis(250));
        let rss = rss_kib(pid);
        rss_max = rss_max.max(rss);
        if rss_at_third == 0 && start.elapsed() > Duration::from_secs(secs / 3) {
            rss_at_third = rss;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let served: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    up.set(Fault::Ok(10));
    let rss_end = rss_kib(pid);
    // A refresh may be on the wire right now: give it a moment to close its socket.
    let fds_end = eventually(
        Duration::from_secs(10),
        "descriptors back to the start",
        || Some(fds(pid)).filter(|&n| n <= fds_start),
    );
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "soak {secs}s: {served} reads served, errors by errno {errors:?}, {} upstream requests, \
         RSS start {rss_start} KiB / at 1/3 {rss_at_third} KiB / max {rss_max} KiB / end {rss_end} KiB, \
         fds {fds_start} → {fds_end}",
        up.requests()
    );
    assert!(served > 1000 * secs, "{served} reads");
    assert!(
        errors.keys().all(|&e| e == libc::EIO),
        "only EIO while the upstream is down: {errors:?}"
    );
    assert_eq!(fds_end, fds_start, "no leaked descriptors");
    assert!(
        rss_end < rss_at_third + 1024,
        "RSS grew from {rss_at_third} to {rss_end} KiB"
    );
}
