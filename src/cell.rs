//! One cell per token file: the state machine between a [`Source`] and readers.
//!
//! Empty → (first read) → fetching → fresh → (refresh-ahead) → fresh …; a failed
//! fetch leaves a still-valid token in service and backs off with jitter. At most one
//! upstream request is in flight per cell; readers that arrive meanwhile share it.
//!
//! [`State`] (in `cell/state.rs`) is pure logic over an injected clock; [`Cell`]
//! adds the tokio plumbing: the one request in flight, the refresh-ahead loop.
//!
//! Only the cell's decisions (servable or not, when to refresh, how long to back
//! off) and the views built on them (`fs`) use that clock. Sources read the
//! system's: what they stamp (`issued_at`, an expiry from `expires_in`) must be
//! comparable with the upstream's own wall-clock times, such as a JWT's `exp`.

pub mod histogram;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::Instrument;

use crate::source::code::{LoginError, Redirect};
use crate::source::{Source, SourceError};
use crate::status::schema::CellStatus;
use crate::sync::lock;
use histogram::Histogram;
pub use state::{random_jitter, CellError, Clock, Jitter, Next, Policy, State, SystemClock, Token};

/// An error as the log shows it: a consent URL without its `state`, which
/// only the file's owner may see (with it, someone else who logs in at the
/// upstream could hand the daemon their own grant for the user's file).
fn loggable(error: &CellError) -> String {
    match error {
        CellError::Source(SourceError::ConsentRequired {
            url,
            expired,
            user_code,
        }) => SourceError::ConsentRequired {
            url: crate::source::code::without_state(url),
            expired: *expired,
            user_code: user_code.clone(),
        }
        .to_string(),
        other => other.to_string(),
    }
}

/// A token file's cell: [`State`] behind a mutex, plus the one-request-at-a-time
/// fetch and the refresh-ahead loop.
pub struct Cell {
    name: String,
    pub(crate) source: Arc<dyn Source>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    jitter: Jitter,
    state: Mutex<State>,
    /// Bumped after every finished request; readers waiting on a fetch watch it.
    finished: watch::Sender<u64>,
    /// Upstream request durations, for `.metrics`.
    latency: Histogram,
    /// Reads the daemon answered (the kernel's page cache serves the rest).
    reads: AtomicU64,
    /// Set once by [`Cell::stop`]; the refresh-ahead loop watches it.
    stopped: watch::Sender<bool>,
}

/// Why a request to the upstream started, for the refresh span.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// A reader found no servable token.
    Read,
    /// The refresh-ahead loop: the token reached its refresh time.
    Ahead,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Read => "read",
            Trigger::Ahead => "ahead",
        }
    }
}

impl Cell {
    pub fn new(
        name: impl Into<String>,
        source: Arc<dyn Source>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        jitter: Jitter,
    ) -> Arc<Cell> {
        Arc::new(Cell {
            name: name.into(),
            source,
            policy,
            clock,
            jitter,
            state: Mutex::new(State::default()),
            finished: watch::channel(0).0,
            latency: Histogram::default(),
            reads: AtomicU64::new(0),
            stopped: watch::channel(false).0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn upstream(&self) -> String {
        self.source.upstream()
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way
        // that serves a wrong token (every field is written last), so keep going.
        lock(&self.state)
    }

    /// The token to serve now, without waiting: the read path's fast case.
    pub fn peek(&self) -> Option<Arc<Token>> {
        self.lock().servable(self.clock.now()).cloned()
    }

    /// A servable token, asking the upstream if none is cached. Concurrent callers
    /// share one request; a caller that waited for a failed request gets its error
    /// rather than starting another.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<Token>, CellError> {
        let mut finished = self.finished.subscribe();
        let mut waited = false;
        loop {
            if !waited {
                self.end_backoff_if_inputs_changed();
            }
            let next = self.lock().on_read(self.clock.now(), waited);
            match next {
                Next::Serve(token) => return Ok(token),
                Next::Fail(error) => return Err(error),
                Next::Fetch => {
                    let cell = self.clone();
                    tokio::spawn(async move { cell.fetch(Trigger::Read).await });
                }
                Next::Wait => {}
            }
            // The sender lives in `self`, so this only ends when a request finishes.
            let _ = finished.changed().await;
            waited = true;
        }
    }

    /// A failure in its backoff whose source's inputs changed since (a secret
    /// file rewritten) may be fixed: the read asks at once. The files are
    /// stat'ed only while a backoff lasts, and outside the lock.
    fn end_backoff_if_inputs_changed(&self) {
        let now = self.clock.now();
        let Some(recorded) = self.lock().backoff_inputs(now).cloned() else {
            return;
        };
        if self.source.inputs() != recorded {
            tracing::info!(file = %self.name, "its inputs changed since the last failure: asking again now");
            self.lock().inputs_changed(&recorded, now);
        }
    }

    /// Run the request that `on_read` or `try_start_refresh` marked as in flight,
    /// in a `refresh` span that ends up holding its outcome, latency and the new
    /// token's `exp`/`jti` (never the token).
    async fn fetch(self: Arc<Self>, trigger: Trigger) {
        let span = tracing::info_span!(
            "refresh",
            file = %self.name,
            source = %self.source.upstream(),
            trigger = trigger.as_str(),
            outcome = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            exp = tracing::field::Empty,
            jti = tracing::field::Empty,
        );
        let source = self.source.clone();
        let inputs = source.inputs();
        let started = Instant::now();
        // Checked here, where every request starts, so that neither a read nor
        // the refresh-ahead loop reaches the upstream once shutdown began; the
        // request is still finished, so nobody waits on it.
        let result = if self.is_stopped() {
            Err(SourceError::Unavailable(STOPPING.into()))
        } else {
            let issuing = async move { source.issue().await }.instrument(span.clone());
            crate::source::detached(issuing)
                .await
                .unwrap_or_else(|e| Err(SourceError::Unavailable(e)))
        };
        let latency = started.elapsed();
        self.latency.observe(latency);
        let now = self.clock.now();
        let (outcome, before, short_before) = {
            let mut st = self.lock();
            let before = st.last_error().cloned();
            // The expiry of a short token already served, to warn once per token.
            let short_before = st
                .current()
                .filter(|t| t.below_min_valid.is_some())
                .map(|t| t.expires_at);
            let outcome = st.finish(result, now, &self.policy, (self.jitter)());
            if outcome.is_err() {
                st.failed_with(inputs);
            }
            (outcome, before, short_before)
        };
        span.record("latency_ms", latency.as_millis() as u64);
        span.record(
            "outcome",
            match &outcome {
                Ok(_) => "ok",
                Err(CellError::Source(SourceError::ConsentRequired { .. })) => "consent_required",
                Err(_) => "error",
            },
        );
        span.in_scope(|| match &outcome {
            Ok(token) => {
                span.record(
                    "exp",
                    tracing::field::display(humantime::format_rfc3339_seconds(token.expires_at)),
                );
                span.record("jti", token.claims.jti.as_deref().unwrap_or("-"));
                tracing::info!(
                    sub = token.claims.sub.as_deref().unwrap_or("-"),
                    refresh_at = %humantime::format_rfc3339_seconds(token.refresh_at),
                    "token obtained"
                );
                match &token.below_min_valid {
                    Some(why) if short_before != Some(token.expires_at) => {
                        tracing::warn!("serving a token below min_valid: {why}")
                    }
                    _ => {}
                }
            }
            // Once per change of state at warn, so a failing upstream or a consent
            // nobody gives does not flood the log at every retry.
            Err(error) if before.as_ref() == Some(error) => {
                tracing::debug!("token request failed again: {}", loggable(error))
            }
            Err(error @ CellError::Source(SourceError::ConsentRequired { .. })) => {
                tracing::warn!(
                    "{} (the URL is also in {}.consent-url); reads fail until then",
                    loggable(error),
                    self.name
                )
            }
            Err(error) => {
                let serving = self.lock().servable(now).is_some();
                tracing::warn!(
                    still_serving_cached = serving,
                    "token request failed: {error}"
                )
            }
        });
        self.finished.send_modify(|n| *n += 1);
    }

    /// Keep the token fresh ahead of its expiry, once it was first read. Runs
    /// until [`Cell::stop`].
    pub async fn keep_fresh(self: Arc<Self>) {
        // Bound each sleep so a wall-clock jump is noticed soon.
        const MAX_SLEEP: Duration = Duration::from_secs(30);
        let mut finished = self.finished.subscribe();
        let mut stopped = self.stopped.subscribe();
        loop {
            if *stopped.borrow_and_update() {
                return;
            }
            let due = self.lock().next_refresh();
            let Some(due) = due else {
                tokio::select! {
                    _ = finished.changed() => {}
                    _ = stopped.changed() => {}
                }
                continue;
            };
            let wait = due.duration_since(self.clock.now()).unwrap_or_default();
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                    _ = finished.changed() => {}
                    _ = stopped.changed() => {}
                }
                continue;
            }
            let started = self.lock().try_start_refresh(self.clock.now());
            if started {
                self.clone().fetch(Trigger::Ahead).await;
            }
        }
    }

    /// Stop asking the upstream: the refresh-ahead loop ends and no request
    /// starts from now on (a read that would need one fails; a servable token
    /// is still served). For shutdown, which must not leave retries running
    /// against the upstream while the mount is torn down.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Subscribe to "a request finished" (success or failure).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Complete this file's code login with the browser's redirect; the next
    /// read asks the upstream at once instead of after the consent backoff.
    pub async fn complete_login(&self, redirect: Redirect) -> Result<(), LoginError> {
        let done = self.source.complete_login(&self.name, redirect).await;
        // Logged in, or declined (a new URL is due): either way what a read
        // would get from the upstream has changed.
        if matches!(done, Ok(()) | Err(LoginError::Declined { .. })) {
            let now = self.clock.now();
            self.lock().retry_from(now);
        }
        done
    }

    /// Whether this file's code login waits for a redirect carrying `state`.
    pub fn login_waits_for(&self, state: &str) -> bool {
        self.source.login_waits_for(state)
    }

    /// See [`State::consent_url`].
    pub fn consent_url(&self) -> Option<String> {
        self.lock().consent_url(self.clock.now())
    }

    /// Counts tokens obtained so far; changes exactly when the served token does.
    pub fn generation(&self) -> u64 {
        self.lock().generation()
    }

    pub fn status(&self) -> CellStatus {
        let mut status = self.lock().status(self.clock.now());
        status.unsaved_refresh_token = self.source.unsaved_refresh_token();
        status
    }

    /// Count a read the daemon answered with this file's token.
    pub fn note_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}

/// What a read that needs the upstream gets once its cell is stopped.
const STOPPING: &str = "tokenfs is shutting down";

/// [`Cell::stop`] for every cell: the first step of shutdown.
pub fn stop_all(cells: &[Arc<Cell>]) {
    for cell in cells {
        cell.stop();
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("name", &self.name)
            .field("upstream", &self.source.upstream())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
