//! The fault matrix: for each fault of the upstream, with a valid token cached and
//! then with none, what readers get, how often the upstream is asked, and whether
//! service resumes by itself. Runs every fault at once (one mount each) and prints
//! the matrix as a table.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 10 s tokens with min_valid 3 s: refreshed ahead at ~6.6 s, unservable at 7 s.
const LIFETIME: u64 = 10;
const MIN_VALID: f64 = 3.0;

#[derive(Debug)]
struct Outcome {
    fault: Fault,
    /// Reads while the cached token was still valid, all of which got it.
    cached_reads: u64,
    /// The errno once nothing valid was cached.
    errno_without_token: i32,
    /// Upstream requests over the fault window (about 12 s).
    requests: u64,
    /// Seconds from healing the upstream to the next good read.
    healed_after: f64,
}

fn run(fault: Fault) -> Outcome {
    let up = FaultyUpstream::start(Fault::Ok(LIFETIME));
    let tmp = tempdir();
    let config = up.config(
        tmp.path(),
        &format!("min_valid = \"{}s\"", MIN_VALID as u64),
    );
    let mount = Mount::start(&["--config", config.to_str().unwrap()]);
    let cached = mount.read("token").unwrap();
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&cached).unwrap();
    let deadline = claims["exp"].as_f64().unwrap() - MIN_VALID;

    up.set(fault);
    let before = up.requests();
    let window_end = Instant::now() + Duration::from_secs(12);
    let mut cached_reads = 0;
    let mut errno_without_token = 0;
    while Instant::now() < window_end {
        let started = now_secs();
        match mount.read("token") {
            Ok(token) => {
                // A valid cached token keeps being served; nothing else ever is.
                assert_eq!(
                    token, cached,
                    "{fault:?}: served something other than the cached token"
                );
                assert!(
                    started < deadline,
                    "{fault:?}: the cached token was served past its deadline"
                );
                cached_reads += 1;
            }
            Err(e) => {
                assert!(
                    now_secs() >= deadline - 0.5,
                    "{fault:?}: a read failed while a valid token was cached: {e}"
                );
                errno_without_token = e.raw_os_error().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = up.requests() - before;

    up.set(Fault::Ok(LIFETIME));
    let healing = Instant::now();
    let healed = eventually(Duration::from_secs(40), "service to resume", || {
        mount.read("token").ok()
    });
    assert_ne!(healed, cached);
    Outcome {
        fault,
        cached_reads,
        errno_without_token,
        requests,
        healed_after: healing.elapsed().as_secs_f64(),
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EIO => "EIO",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        0 => "-",
        _ => "other",
    }
}

#[test]
fn fault_matrix() {
    if !fuse_available("fault_matrix") {
        return;
    }
    let faults = [
        Fault::Refuse,
        Fault::Status(500, false),
        Fault::Status(502, false),
        Fault::Status(503, true),
        Fault::Hang,
        Fault::Drip,
        Fault::InvalidJson,
        Fault::EmptyBody,
        Fault::Oversize,
        Fault::MissingFields,
        Fault::NonJwt,
        Fault::ExpiredJwt,
        Fault::ShortJwt,
        Fault::InvalidGrant,
        Fault::BadSignature,
        Fault::UnknownKid,
        Fault::AlgNone,
        Fault::IssuedInFuture,
        Fault::NotYetValid,
    ];
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let runs: Vec<_> = faults.iter().map(|&f| s.spawn(move || run(f))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });

    eprintln!(
        "\n{:<22} {:>13} {:>15} {:>14} {:>13}",
        "fault", "cached: reads", "none: errno", "requests/12s", "healed after"
    );
    for o in &outcomes {
        eprintln!(
            "{:<22} {:>13} {:>15} {:>14} {:>12.1}s",
            format!("{:?}", o.fault),
            o.cached_reads,
            errno_name(o.errno_without_token),
            o.requests,
            o.healed_after
        );
    }
    for o in &outcomes {
        let expected = match o.fault {
            Fault::Hang | Fault::Drip => libc::ETIMEDOUT,
            _ => libc::EIO,
        };
        assert!(
            o.cached_reads > 0,
            "{:?}: the cached token was served during the fault",
            o.fault
        );
        assert_eq!(
            o.errno_without_token, expected,
            "{:?}: errno without a valid token",
            o.fault
        );
        // Backoff: 0.5–1 s, doubling; reads inside it do not ask. About 5 in 12 s.
        assert!(
            o.requests <= 8,
            "{:?}: {} requests in 12 s: not backing off",
            o.fault,
            o.requests
        );
        // A refused connection never reaches the upstream's request counter.
        assert!(
            o.requests >= 1 || o.fault == Fault::Refuse,
            "{:?}: the upstream was asked",
            o.fault
        );
    }
}

#[test]
fn kill_9_at_any_point_never_corrupts_the_persisted_refresh_token() {
    if !fuse_available("kill_9_at_any_point_never_corrupts_the_persisted_refresh_token") {
        return;
    }
    // Rotation on every refresh, refreshes about every second: kill -9 lands at
    // all points of the request / persist cycle.
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens", "--lifetime", "3s"]);
    let tmp = tempdir();
    let rotated = tmp.path().join("rotated");
    let config = issuer.config(
        tmp.path(),
        "",
        &format!(
            "min_valid = \"1s\"\nrotated_refresh_token_file = \"{}\"",
            rotated.display()
        ),
    );
    let strays = || -> Vec<String> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".rotated.tmp."))
            .collect()
    };
    let (mut restarts, mut lost) = (0, 0);
    let mut left_by_the_killed: Vec<String> = Vec::new();
    for round in 0..9u64 {
        let mut mount = Mount::start(&["--config", config.to_str().unwrap()]);
        // A kill between writing and renaming the temp file leaves it; the next
        // start removes it (it holds a live secret). A running daemon keeps one
        // empty temp file of its own ready, for its next save.
        let now = strays();
        assert!(
            now.len() <= 1 && now.iter().all(|s| !left_by_the_killed.contains(s)),
            "temp files left after a restart: {now:?} (the killed daemon left {left_by_the_killed:?})"
        );
        if let Err(e) = mount.read("token") {
            // Only possible if the previous kill fell between the upstream
            // rotating the token and our rename: report it.
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
            lost += 1;
            break;
        }
        if round == 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(700 + 137 * round));
        mount.proc.signal(libc::SIGKILL);
        mount
            .proc
            .wait_exit(Duration::from_secs(10))
            .expect("killed");
        restarts += 1;
        left_by_the_killed = strays();
        // Whatever the moment, the file is whole: one token, 0600.
        let persisted = std::fs::read_to_string(&rotated).unwrap();
        assert!(
            !persisted.is_empty() && !persisted.contains(char::is_whitespace),
            "{persisted:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&rotated).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    eprintln!("{restarts} kill -9 / restart cycles; {lost} lost the refresh token");
    assert_eq!(
        lost, 0,
        "a restart after kill -9 could not use the persisted refresh token"
    );
}
