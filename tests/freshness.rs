//! The fast read path keeps freshness: the kernel serves warm reads
//! from its page cache, and the TTLs and invalidations tokenfs hands it make sure no
//! reader ever gets a stale, torn or mis-sized token, even if the daemon dies.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Lifetime left on `token` now, from its `exp` claim.
fn left(token: &[u8]) -> f64 {
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token).expect("a whole JWT");
    claims["exp"].as_f64().unwrap() - now_secs()
}

#[test]
fn tight_read_loops_across_refreshes_never_get_a_stale_torn_or_missized_token() {
    if !fuse_available("tight_read_loops_across_refreshes_never_get_a_stale_torn_or_missized_token")
    {
        return;
    }
    tight_read_loops(&[]);
}

/// The same with opens in the kernel, where the daemon sees no open at all.
#[test]
fn with_kernel_opens_tight_read_loops_never_get_a_stale_torn_or_missized_token() {
    if !fuse_available(
        "with_kernel_opens_tight_read_loops_never_get_a_stale_torn_or_missized_token",
    ) {
        return;
    }
    tight_read_loops(&["--kernel-opens"]);
}

fn tight_read_loops(options: &[&str]) {
    // 10 s tokens, 3 s min_valid: a new token every ~6.6 s.
    const MIN: f64 = 3.0;
    let issuer = DevIssuer::start(&["--lifetime", "10s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"3s\"");
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(options);
    let mount = Mount::start(&args);
    let certs = format!("{}/protocol/openid-connect/certs", issuer.realm_url);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop, seen) = (mount.path("token"), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut last = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let size_before = std::fs::metadata(&path).unwrap().len();
                    let token = std::fs::read(&path).unwrap();
                    let size_after = std::fs::metadata(&path).unwrap().len();
                    if size_before == size_after {
                        assert_eq!(
                            size_before,
                            token.len() as u64,
                            "stat size equals the bytes read"
                        );
                    }
                    if token != last {
                        let l = left(&token);
                        assert!(l > MIN - 0.5, "read {reads}: a token with {l:.2}s left");
                        seen.lock().unwrap().insert(token.clone());
                        last = token;
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let tokens = seen.lock().unwrap().clone();
    for token in &tokens {
        // A torn token would not verify.
        verify_jwt(std::str::from_utf8(token).unwrap(), &certs);
    }
    let requests = issuer.token_requests();
    eprintln!(
        "{options:?}: {reads} reads in 30 s by 2 tight loops, {} tokens, {requests} upstream requests",
        tokens.len()
    );
    assert!(
        tokens.len() >= 4,
        "the token changed across refreshes: {} tokens",
        tokens.len()
    );
    // Every token obtained was seen, except perhaps one that landed as the readers stopped.
    assert!(
        (0..=1).contains(&(requests - tokens.len() as u64)),
        "{} tokens seen for {requests} requests",
        tokens.len()
    );
    assert!(reads > 1000 * requests);
    let read_path = if options.contains(&"--kernel-opens") {
        "read path: kernel page cache, opens in the kernel"
    } else {
        "read path: kernel page cache (auto-inval-data, TTL bounded by token deadlines), opens answered by the daemon"
    };
    assert!(mount.proc.stderr().contains(read_path), "{read_path}");
}

#[test]
fn after_kill_9_a_read_past_the_deadline_fails_instead_of_serving_the_cached_token() {
    if !fuse_available(
        "after_kill_9_a_read_past_the_deadline_fails_instead_of_serving_the_cached_token",
    ) {
        return;
    }
    // 20 s tokens, 15 s min_valid: the kernel may cache for 5 s at most.
    let issuer = DevIssuer::start(&["--lifetime", "20s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"15s\"");
    let mut mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let token = mount.read("token").unwrap();
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    let deadline = claims["exp"].as_f64().unwrap() - 15.0;

    mount.proc.signal(libc::SIGKILL);
    mount
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    // Until the deadline the kernel may still answer from its cache, but only with
    // this token; after it, never.
    let mut cached = 0;
    let failed = eventually(Duration::from_secs(15), "reads to fail", || {
        match mount.read("token") {
            Ok(t) => {
                assert_eq!(t, token);
                assert!(
                    now_secs() < deadline + 0.5,
                    "the cached token was served past its deadline"
                );
                cached += 1;
                None
            }
            Err(e) => Some(e.raw_os_error().unwrap()),
        }
    });
    assert_eq!(
        failed,
        libc::ENOTCONN,
        "Transport endpoint is not connected"
    );
    eprintln!("{cached} reads served from the kernel cache after kill -9, then ENOTCONN");
    // Stays failed: the cache is gone for good.
    assert_eq!(errno(mount.read("token")), libc::ENOTCONN);
}

#[test]
fn mmap_reads_the_current_token() {
    if !fuse_available("mmap_reads_the_current_token") {
        return;
    }
    let issuer = DevIssuer::start(&["--lifetime", "10s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"3s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);

    let map = |path: &std::path::Path| -> Vec<u8> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a read-only private mapping of `len` bytes of an open file,
        // copied out and unmapped before the file is closed.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(
                addr,
                libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            let bytes = std::slice::from_raw_parts(addr as *const u8, len).to_vec();
            libc::munmap(addr, len);
            bytes
        }
    };
    let first = mount.read("token").unwrap();
    assert_eq!(map(&mount.path("token")), first);
    // After a refresh, a new mapping shows a newer token, whole and fresh.
    eventually(Duration::from_secs(20), "a refresh", || {
        Some(()).filter(|_| mount.read("token").unwrap() != first)
    });
    let mapped = eventually(Duration::from_secs(5), "the mapping to follow", || {
        Some(map(&mount.path("token"))).filter(|m| *m != first)
    });
    let certs = format!("{}/protocol/openid-connect/certs", issuer.realm_url);
    verify_jwt(std::str::from_utf8(&mapped).unwrap(), &certs);
    assert!(left(&mapped) > 2.5, "at least min_valid left");
}

#[test]
fn a_held_descriptor_reread_with_pread_sees_the_refreshed_token() {
    if !fuse_available("a_held_descriptor_reread_with_pread_sees_the_refreshed_token") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let issuer = DevIssuer::start(&["--lifetime", "10s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"3s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let held = std::fs::File::open(mount.path("token")).unwrap();
    let pread = || {
        let mut buf = vec![0u8; 8192];
        let n = held.read_at(&mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    };
    let first = pread();
    assert_eq!(first, mount.read("token").unwrap());
    // The refresh invalidates the kernel's pages and attributes, so even a
    // descriptor opened before it reads the new token, whole.
    let second = eventually(Duration::from_secs(20), "pread to see a refresh", || {
        Some(pread()).filter(|t| *t != first)
    });
    let certs = format!("{}/protocol/openid-connect/certs", issuer.realm_url);
    verify_jwt(std::str::from_utf8(&second).unwrap(), &certs);
    assert!(left(&second) > 2.5);
}

#[test]
fn the_direct_io_fallback_serves_whole_fresh_tokens() {
    if !fuse_available("the_direct_io_fallback_serves_whole_fresh_tokens") {
        return;
    }
    let issuer = DevIssuer::start(&["--lifetime", "10s"]);
    let tmp = tempdir();
    let config = issuer.config(tmp.path(), "", "min_valid = \"3s\"");
    let mount = Mount::start(&["--config", config.to_str().unwrap(), "--direct-io"]);
    let certs = format!("{}/protocol/openid-connect/certs", issuer.realm_url);
    let first = mount.read("token").unwrap();
    assert_eq!(
        std::fs::metadata(mount.path("token")).unwrap().len(),
        first.len() as u64
    );
    // Byte-at-a-time reads on one open file stay within one token, across a refresh.
    let mut held = std::fs::File::open(mount.path("token")).unwrap();
    let second = eventually(Duration::from_secs(20), "a refresh", || {
        Some(mount.read("token").unwrap()).filter(|t| *t != first)
    });
    verify_jwt(std::str::from_utf8(&second).unwrap(), &certs);
    let mut slow = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut held, &mut byte).unwrap() == 1 {
        slow.push(byte[0]);
    }
    assert_eq!(
        slow, first,
        "the open file kept the token it was opened with"
    );
    // Held past its token's deadline, a descriptor re-read from the start gets a
    // servable token, never the expired one.
    let mut late = std::fs::File::open(mount.path("token")).unwrap();
    let pinned = mount.read("token").unwrap();
    let deadline = left(&pinned) - 3.0;
    std::thread::sleep(Duration::from_secs_f64(deadline.max(0.0) + 0.5));
    let mut again = Vec::new();
    std::io::Read::read_to_end(&mut late, &mut again).unwrap();
    assert!(left(&again) > 2.5, "a token with {:.1}s left", left(&again));
    verify_jwt(std::str::from_utf8(&again).unwrap(), &certs);
    assert!(mount
        .proc
        .stderr()
        .contains("read path: direct I/O (--direct-io)"));
}
