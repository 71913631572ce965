//! The state machine under an injected clock: no sleeps, no network.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use secrecy::SecretString;

use super::state::{backoff, TOO_SHORT_RETRY};
use super::*;
use crate::source::{Inputs, Issued, LogClaims};
use crate::status::schema::{rfc3339, StateName, Timestamp};

const T0: Duration = Duration::from_secs(1_800_000_000);
const LIFETIME: Duration = Duration::from_secs(300);

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
}

fn issued(now: SystemTime, lifetime: Duration, jti: &str) -> Issued {
    Issued {
        token: SecretString::from(format!("token-{jti}")),
        expires_at: now + lifetime,
        issued_at: now,
        claims: LogClaims {
            sub: Some("alice".into()),
            jti: Some(jti.into()),
        },
    }
}

fn unavailable() -> SourceError {
    SourceError::Unavailable("HTTP 503".into())
}

fn policy() -> Policy {
    Policy::default()
}

/// Start a request at `now` through a read and finish it with `result`.
fn fetch(
    st: &mut State,
    now: SystemTime,
    result: Result<Issued, SourceError>,
) -> Result<Arc<Token>, CellError> {
    assert!(matches!(st.on_read(now, false), Next::Fetch));
    st.finish(result, now, &policy(), 0.5)
}

#[test]
fn empty_cell_fetches_once_then_serves() {
    let mut st = State::default();
    assert_eq!(st.status(at(0)).state, StateName::Empty);
    assert_eq!(
        st.next_refresh(),
        None,
        "issue is lazy: nothing scheduled before a read"
    );
    assert!(matches!(st.on_read(at(0), false), Next::Fetch));
    assert_eq!(st.status(at(0)).state, StateName::Fetching);
    assert!(
        matches!(st.on_read(at(0), false), Next::Wait),
        "second reader shares the request"
    );
    let token = st
        .finish(Ok(issued(at(1), LIFETIME, "a")), at(1), &policy(), 0.5)
        .unwrap();
    assert_eq!(token.bytes(), b"token-a");
    assert_eq!(token.generation, 1);
    assert_eq!(token.obtained_at, at(1));
    match st.on_read(at(2), false) {
        Next::Serve(t) => assert!(Arc::ptr_eq(&t, &token)),
        other => panic!("expected Serve, got {other:?}"),
    }
    assert_eq!(st.status(at(2)).state, StateName::Fresh);
}

#[test]
fn min_valid_bounds_serving() {
    let mut st = State::default();
    let token = fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    assert_eq!(token.valid_until, at(270));
    assert!(matches!(st.on_read(at(269), false), Next::Serve(_)));
    assert!(
        matches!(st.on_read(at(270), false), Next::Fetch),
        "with exactly min_valid left the token must not be served"
    );
}

#[test]
fn refresh_ahead_at_80_percent_with_jitter() {
    for (u, expected) in [(0.5, 240), (0.0, 225), (0.999_999, 255)] {
        let mut st = State::default();
        assert!(matches!(st.on_read(at(0), false), Next::Fetch));
        let t = st
            .finish(Ok(issued(at(0), LIFETIME, "a")), at(0), &policy(), u)
            .unwrap();
        let secs = t.refresh_at.duration_since(at(0)).unwrap().as_secs_f64();
        assert!(
            (secs - expected as f64).abs() < 0.01,
            "u={u}: refresh at {secs}s"
        );
        assert_eq!(st.next_refresh(), Some(t.refresh_at));
    }
}

#[test]
fn refresh_ahead_lands_before_the_deadline_when_min_valid_is_large() {
    // 20 s lifetime, 5 s min_valid: 80 % (16 s) would be after the deadline (15 s).
    let mut st = State::default();
    let p = Policy {
        min_valid: Duration::from_secs(5),
        ..policy()
    };
    assert!(matches!(st.on_read(at(0), false), Next::Fetch));
    let t = st
        .finish(
            Ok(issued(at(0), Duration::from_secs(20), "a")),
            at(0),
            &p,
            0.5,
        )
        .unwrap();
    assert_eq!(t.valid_until, at(15));
    assert_eq!(t.refresh_at, at(0) + Duration::from_millis(14_250));
    assert!(t.refresh_at < t.valid_until);
}

#[test]
fn refresh_start_is_single_flight() {
    let mut st = State::default();
    let t = fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    assert!(!st.try_start_refresh(at(239)), "not due yet");
    assert!(st.try_start_refresh(t.refresh_at));
    assert!(!st.try_start_refresh(t.refresh_at), "already in flight");
    assert_eq!(st.next_refresh(), None);
    // Readers keep getting the valid token while the refresh is in flight.
    assert!(matches!(st.on_read(at(241), false), Next::Serve(_)));
    let t2 = st
        .finish(Ok(issued(at(241), LIFETIME, "b")), at(241), &policy(), 0.5)
        .unwrap();
    assert_eq!(t2.generation, 2);
    match st.on_read(at(242), false) {
        Next::Serve(t) => assert_eq!(t.bytes(), b"token-b"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_refresh_keeps_serving_valid_token_and_backs_off() {
    let mut st = State::default();
    let t = fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    assert!(st.try_start_refresh(at(240)));
    let err = st
        .finish(Err(unavailable()), at(240), &policy(), 0.5)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    match st.on_read(at(241), false) {
        Next::Serve(s) => assert!(Arc::ptr_eq(&s, &t), "still-valid token keeps being served"),
        other => panic!("{other:?}"),
    }
    let status = st.status(at(241));
    assert_eq!(status.state, StateName::Degraded);
    assert!(status.last_error.unwrap().contains("HTTP 503"));
    // Equal jitter with u = 0.5: 1 s base → 0.75 s.
    assert_eq!(
        st.next_refresh(),
        Some(at(240) + Duration::from_millis(750))
    );
}

#[test]
fn no_token_and_failing_upstream_fails_reads_until_backoff_ends() {
    let mut st = State::default();
    assert!(fetch(&mut st, at(0), Err(unavailable())).is_err());
    match st.on_read(at(0), false) {
        Next::Fail(e) => assert_eq!(e.errno(), libc::EIO),
        other => panic!("{other:?}"),
    }
    assert_eq!(st.status(at(0)).state, StateName::Failed);
    assert_eq!(
        st.next_refresh(),
        None,
        "no token was ever served: stay lazy"
    );
    // After the backoff a read asks again.
    assert!(matches!(st.on_read(at(1), false), Next::Fetch));
}

#[test]
fn a_reader_that_waited_gets_the_error_not_a_new_request() {
    let mut st = State::default();
    assert!(matches!(st.on_read(at(0), false), Next::Fetch));
    assert!(matches!(st.on_read(at(0), false), Next::Wait));
    st.finish(Err(unavailable()), at(5), &policy(), 0.5)
        .unwrap_err();
    // Even long after the backoff, the waiter reports what it waited for.
    assert!(matches!(st.on_read(at(100), true), Next::Fail(_)));
    assert!(matches!(st.on_read(at(100), false), Next::Fetch));
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let p = policy();
    assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(500));
    assert_eq!(backoff(&p, 1, 0.5), Duration::from_millis(750));
    assert_eq!(backoff(&p, 2, 0.0), Duration::from_secs(1));
    assert_eq!(backoff(&p, 3, 0.0), Duration::from_secs(2));
    assert_eq!(backoff(&p, 7, 0.0), Duration::from_secs(30));
    assert_eq!(
        backoff(&p, 40, 0.999),
        Duration::from_secs(30) + Duration::from_secs(30).mul_f64(0.999)
    );
    let mut st = State::default();
    let mut now = at(0);
    for n in 1..=8u32 {
        assert!(matches!(st.on_read(now, false), Next::Fetch));
        st.finish(Err(unavailable()), now, &p, 0.0).unwrap_err();
        let retry = st.failure.as_ref().unwrap().retry_at;
        assert_eq!(retry.duration_since(now).unwrap(), backoff(&p, n, 0.0));
        now = retry;
    }
}

#[test]
fn success_clears_the_failure() {
    let mut st = State::default();
    fetch(&mut st, at(0), Err(unavailable())).unwrap_err();
    fetch(&mut st, at(2), Ok(issued(at(2), LIFETIME, "a"))).unwrap();
    let status = st.status(at(3));
    assert_eq!(status.state, StateName::Fresh);
    assert_eq!(status.last_error, None);
    assert_eq!((status.fetches, status.failures), (2, 1));
}

#[test]
fn token_shorter_than_min_valid_is_served_down_to_the_floor_once_nothing_better_is_left() {
    let mut st = State::default();
    let good = fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    assert!(st.try_start_refresh(at(240)));
    // A refresh ahead that brings a token with 20 s left (less than min_valid,
    // more than the floor): the upstream has nothing better, so it is served.
    let short = st
        .finish(
            Ok(issued(at(240), Duration::from_secs(20), "short")),
            at(240),
            &policy(),
            0.5,
        )
        .unwrap();
    assert_ne!(short.generation, good.generation);
    assert_eq!(short.valid_until, at(255), "down to the 5 s floor");
    assert_eq!(
        short.refresh_at,
        at(255),
        "asked again when it may no longer be served"
    );
    let why = st.status(at(241)).below_min_valid.unwrap();
    assert!(why.contains("20s left, less than min_valid (30s)"), "{why}");
    assert_eq!(st.status(at(241)).state, StateName::Fresh);
    assert!(matches!(st.on_read(at(254), false), Next::Serve(_)));

    // At the floor the same token is refused: never served with so little left,
    // and asked for again just after its expiry rather than on the backoff.
    assert!(matches!(st.on_read(at(255), false), Next::Fetch));
    let err = st
        .finish(
            Ok(issued(at(240), Duration::from_secs(20), "short")),
            at(255),
            &policy(),
            0.5,
        )
        .unwrap_err();
    assert!(matches!(err, CellError::TooShort { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(matches!(st.on_read(at(256), false), Next::Fail(_)));
    assert_eq!(st.status(at(256)).below_min_valid, None);
    let retry = at(260) + TOO_SHORT_RETRY;
    assert_eq!(st.next_refresh(), Some(retry));
    assert!(matches!(st.on_read(retry, false), Next::Fetch));
    let fresh = st
        .finish(Ok(issued(retry, LIFETIME, "b")), retry, &policy(), 0.5)
        .unwrap();
    assert_eq!(fresh.below_min_valid, None);
    assert_eq!(st.status(retry).state, StateName::Fresh);
}

#[test]
fn an_upstream_that_only_issues_tokens_at_the_floor_is_asked_on_the_backoff() {
    let mut st = State::default();
    let tiny = || Ok(issued(at(0), Duration::from_secs(5), "tiny"));
    let mut asked = Vec::new();
    let mut now = at(0);
    for _ in 0..4 {
        assert!(matches!(st.on_read(now, false), Next::Fetch));
        st.finish(tiny(), now, &policy(), 0.5).unwrap_err();
        asked.push(now);
        now = st.status(now).retry_at.unwrap().0;
    }
    let gaps: Vec<_> = asked
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap())
        .collect();
    // Twice just after the offered token's expiry, then the backoff.
    assert!(
        gaps[0] <= Duration::from_secs(6) && gaps[1] <= Duration::from_millis(600),
        "{gaps:?}"
    );
    assert!(gaps[2] >= policy().backoff_min, "{gaps:?}");
}

#[test]
fn expired_token_with_upstream_down_is_never_served() {
    let mut st = State::default();
    fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    assert!(st.try_start_refresh(at(240)));
    st.finish(Err(unavailable()), at(240), &policy(), 0.5)
        .unwrap_err();
    assert_eq!(st.status(at(271)).state, StateName::Failed);
    assert!(matches!(st.on_read(at(271), false), Next::Fetch));
    st.finish(Err(unavailable()), at(271), &policy(), 0.5)
        .unwrap_err();
    assert!(matches!(st.on_read(at(271), false), Next::Fail(_)));
}

#[test]
fn consent_errors_map_to_key_errnos() {
    for (expired, errno) in [(false, libc::ENOKEY), (true, libc::EKEYEXPIRED)] {
        let mut st = State::default();
        let err = fetch(
            &mut st,
            at(0),
            Err(SourceError::ConsentRequired {
                url: "http://127.0.0.1/link".into(),
                expired,
                user_code: None,
            }),
        )
        .unwrap_err();
        assert_eq!(err.errno(), errno);
        assert_eq!(st.status(at(0)).state, StateName::ConsentRequired);
    }
}

#[test]
fn timeouts_map_to_etimedout() {
    assert_eq!(
        CellError::ReadTimeout(Duration::from_secs(10)).errno(),
        libc::ETIMEDOUT
    );
    assert_eq!(
        CellError::from(SourceError::Timeout(Duration::from_secs(10))).errno(),
        libc::ETIMEDOUT
    );
}

#[test]
fn status_and_debug_never_show_the_token() {
    let mut st = State::default();
    let t = fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    let json = serde_json::to_string(&st.status(at(1))).unwrap();
    assert!(!json.contains("token-a"), "{json}");
    assert!(json.contains("\"jti\":\"a\""), "{json}");
    assert!(!format!("{t:?}").contains("token-a"));
}

// ---- The async cell, over tokio's paused clock (no real sleeps). ----

/// Wall time that advances with tokio's (paused, auto-advancing) test clock.
struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// A scripted upstream that counts requests and can hold them until released.
struct FakeSource {
    clock: Arc<TokioClock>,
    calls: AtomicUsize,
    gate: tokio::sync::Semaphore,
    script: Mutex<VecDeque<Result<Duration, SourceError>>>,
}

impl FakeSource {
    fn new(clock: Arc<TokioClock>, open: bool) -> Arc<Self> {
        Arc::new(FakeSource {
            clock,
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            }),
            script: Mutex::new(VecDeque::new()),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Source for FakeSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(LIFETIME));
        let now = self.clock.now();
        step.map(|lifetime| issued(now, lifetime, &n.to_string()))
    }
    fn upstream(&self) -> String {
        "fake".into()
    }
}

/// A cell named `token` with the default policy and no jitter.
fn cell_over(source: Arc<dyn Source>, clock: Arc<dyn Clock>) -> Arc<Cell> {
    Cell::new("token", source, policy(), clock, Arc::new(|| 0.5))
}

fn cell_with(open: bool) -> (Arc<Cell>, Arc<FakeSource>, Arc<TokioClock>) {
    let clock = Arc::new(TokioClock {
        base: at(0),
        start: tokio::time::Instant::now(),
    });
    let source = FakeSource::new(clock.clone(), open);
    let cell = cell_over(source.clone(), clock.clone());
    (cell, source, clock)
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_readers_share_one_request() {
    let (cell, source, _) = cell_with(false);
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let c = cell.clone();
            tokio::spawn(async move { c.get().await })
        })
        .collect();
    // Let every reader reach the wait, then release the one request.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    source.gate.add_permits(1);
    for r in readers {
        let token = r.await.unwrap().unwrap();
        assert_eq!(token.generation, 1);
    }
    assert_eq!(source.calls(), 1);
    // One request, one latency observation (the wait for the gate included).
    assert_eq!(cell.latency().snapshot().count, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_readers_share_one_failure() {
    let (cell, source, _) = cell_with(false);
    source.script.lock().unwrap().push_back(Err(unavailable()));
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let c = cell.clone();
            tokio::spawn(async move { c.get().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    source.gate.add_permits(1);
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap_err().errno(), libc::EIO);
    }
    assert_eq!(source.calls(), 1);
    // Within the backoff, reads fail fast without asking again.
    assert!(cell.get().await.is_err());
    assert_eq!(source.calls(), 1);
    // After it, a read asks again and succeeds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.gate.add_permits(1);
    assert_eq!(cell.get().await.unwrap().generation, 1);
    assert_eq!(source.calls(), 2);
    // Failed requests are timed too.
    assert_eq!(cell.latency().snapshot().count, 2);
    assert_eq!(cell.status().failures, 1);
}

#[tokio::test(start_paused = true)]
async fn keep_fresh_refreshes_once_per_lifetime_and_readers_never_wait() {
    let (cell, source, clock) = cell_with(true);
    tokio::spawn(cell.clone().keep_fresh());
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(source.calls(), 0, "nothing is issued before the first read");
    let first = cell.get().await.unwrap();
    // Read every 5 s for 1250 s (four lifetimes and a bit).
    let mut generations = std::collections::BTreeSet::new();
    generations.insert(first.generation);
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = cell
            .peek()
            .expect("a valid token is always ready: readers never wait");
        assert!(t.time_left(clock.now()) > Duration::ZERO);
        assert!(t.expires_at.duration_since(clock.now()).unwrap() >= Duration::from_secs(30));
        generations.insert(t.generation);
    }
    // Refresh at 80 % of 300 s = every 240 s: 5 more tokens in 1250 s, each seen by readers.
    assert_eq!(
        source.calls(),
        6,
        "one request per refresh interval, none per read"
    );
    assert_eq!(
        generations.into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
}

#[tokio::test(start_paused = true)]
async fn keep_fresh_retries_with_backoff_and_recovers() {
    let (cell, source, clock) = cell_with(true);
    tokio::spawn(cell.clone().keep_fresh());
    cell.get().await.unwrap();
    {
        let mut script = source.script.lock().unwrap();
        for _ in 0..4 {
            script.push_back(Err(unavailable()));
        }
    }
    // Refresh at 240 s fails, retries at +0.75, +1.5, +3 (all failing), then +6 s succeeds.
    tokio::time::sleep(Duration::from_secs(240) + Duration::from_millis(100)).await;
    assert_eq!(cell.status().state, StateName::Degraded);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(source.calls(), 1 + 4 + 1);
    let status = cell.status();
    assert_eq!(status.state, StateName::Fresh);
    assert_eq!(status.generation, 2);
    assert!(cell.peek().unwrap().servable(clock.now()));
}

#[test]
fn consent_lets_reads_retry_soon_and_stops_refresh_ahead() {
    let consent = || SourceError::ConsentRequired {
        url: "http://127.0.0.1/link".into(),
        expired: true,
        user_code: None,
    };
    let mut st = State::default();
    fetch(&mut st, at(0), Ok(issued(at(0), LIFETIME, "a"))).unwrap();
    let mut now = at(271);
    for n in 1..=6u32 {
        assert!(matches!(st.on_read(now, false), Next::Fetch), "read {n}");
        st.finish(Err(consent()), now, &policy(), 0.0).unwrap_err();
        let f = st.failure.as_ref().unwrap();
        assert_eq!(
            f.retry_at,
            now + Duration::from_secs(1),
            "reads: one second"
        );
        assert_eq!(st.next_refresh(), None, "background: none, only reads ask");
        now = f.retry_at;
    }
}

/// A wall clock that a test can move freely, e.g. jump by an hour.
struct JumpyClock(Mutex<SystemTime>);

impl Clock for JumpyClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// Issues tokens valid for `LIFETIME` from the (possibly jumped) wall clock.
struct WallSource(Arc<JumpyClock>, AtomicUsize);

#[async_trait::async_trait]
impl Source for WallSource {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let n = self.1.fetch_add(1, Ordering::SeqCst);
        Ok(issued(self.0.now(), LIFETIME, &n.to_string()))
    }
    fn upstream(&self) -> String {
        "wall".into()
    }
}

fn jumpy_cell(start: SystemTime) -> (Arc<Cell>, Arc<WallSource>, Arc<JumpyClock>) {
    let clock = Arc::new(JumpyClock(Mutex::new(start)));
    let source = Arc::new(WallSource(clock.clone(), AtomicUsize::new(0)));
    let cell = cell_over(source.clone(), clock.clone());
    (cell, source, clock)
}

#[tokio::test]
async fn a_wall_clock_jump_forward_never_serves_an_expired_token() {
    let (cell, source, clock) = jumpy_cell(at(0));
    let first = cell.get().await.unwrap();
    // The host clock jumps an hour ahead (e.g. NTP after a suspend): by the wall
    // clock the token is expired, so it is not served; a read fetches a new one.
    *clock.0.lock().unwrap() = at(3600);
    assert!(cell.peek().is_none(), "judged on wall time: expired");
    let second = cell.get().await.unwrap();
    assert_ne!(second.generation, first.generation);
    assert!(second.servable(clock.now()));
    assert_eq!(source.1.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_wall_clock_jump_back_keeps_serving_and_refresh_ahead_still_happens() {
    let (cell, _, clock) = jumpy_cell(at(3600));
    let token = cell.get().await.unwrap();
    // Back by ten minutes: the token's deadline is further away by the wall clock
    // (the upstream judges `exp` by its own clock, so it is still accepted).
    *clock.0.lock().unwrap() = at(3000);
    assert!(Arc::ptr_eq(&cell.peek().unwrap(), &token));
    // Refresh-ahead is due again once the wall clock reaches refresh_at.
    let mut st = cell.lock();
    assert!(!st.try_start_refresh(at(3000)));
    assert!(st.try_start_refresh(token.refresh_at));
}

#[test]
fn timestamps_past_the_year_9999_render_clamped_not_panicking() {
    let far = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400 * 400);
    assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
    let json = serde_json::to_string(&Timestamp(far)).unwrap();
    assert_eq!(json, "\"9999-12-31T23:59:59Z\"");
    assert_eq!(
        rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        "2027-01-15T08:00:00Z"
    );
}

#[test]
fn changed_inputs_end_a_backoff_at_once() {
    let policy = Policy::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mut st = State::default();
    assert!(matches!(st.on_read(t0, false), Next::Fetch));
    let rejected = Err(SourceError::Rejected("invalid_client".into()));
    assert!(st.finish(rejected, t0, &policy, 0.5).is_err());
    let seen = Inputs(vec![Some(t0)]);
    st.failed_with(seen.clone());

    let soon = t0 + Duration::from_millis(100);
    assert_eq!(st.backoff_inputs(soon), Some(&seen));
    assert!(matches!(st.on_read(soon, false), Next::Fail(_)));
    // Other inputs than the failure's: nothing changes.
    st.inputs_changed(&Inputs(vec![None]), soon);
    assert!(matches!(st.on_read(soon, false), Next::Fail(_)));
    st.inputs_changed(&seen, soon);
    assert!(matches!(st.on_read(soon, false), Next::Fetch));
}

#[tokio::test(start_paused = true)]
async fn a_stopped_cell_starts_no_request() {
    let (cell, source, _clock) = cell_with(true);
    let refresh = tokio::spawn(cell.clone().keep_fresh());
    let first = cell.get().await.unwrap();
    source
        .script
        .lock()
        .unwrap()
        .extend((0..100).map(|_| Err(unavailable())));
    // The refresh at 240 s fails and the loop retries on its backoff.
    tokio::time::sleep(Duration::from_secs(245)).await;
    assert_eq!(cell.status().state, StateName::Degraded);
    let calls = source.calls();
    assert!(calls >= 3, "retrying: {calls}");

    cell.stop();
    tokio::time::timeout(Duration::from_secs(1), refresh)
        .await
        .expect("the refresh loop ends at once")
        .unwrap();
    // Still served while servable: stopping asks nobody, it does not drop tokens.
    assert!(Arc::ptr_eq(&cell.get().await.unwrap(), &first));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), calls, "no retry after stop");
    // Expired by now, and past any backoff: a read would ask, but may not.
    let err = cell.get().await.unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert_eq!(
        source.calls(),
        calls,
        "no read-triggered request after stop"
    );
}

/// Panics at its first request (a bug in a source), then issues.
struct PanicsOnce(Arc<TokioClock>, AtomicUsize);

#[async_trait::async_trait]
impl Source for PanicsOnce {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let n = self.1.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            panic!("a bug with {}", "tok-secret");
        }
        Ok(issued(self.0.now(), LIFETIME, &n.to_string()))
    }
    fn upstream(&self) -> String {
        "panics".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_fails_that_read_without_its_message_and_the_cell_recovers() {
    let clock = Arc::new(TokioClock {
        base: at(0),
        start: tokio::time::Instant::now(),
    });
    let source = Arc::new(PanicsOnce(clock.clone(), AtomicUsize::new(0)));
    let cell = cell_over(source.clone(), clock);
    let err = cell.get().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let status = serde_json::to_string(&cell.status()).unwrap();
    assert!(!status.contains("tok-secret"), "{status}");
    assert!(status.contains("a bug in tokenfs"), "{status}");
    // Not left "in flight": after the backoff the next read asks again and serves.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(cell.get().await.is_ok());
    assert_eq!(source.1.load(Ordering::SeqCst), 2);
}
