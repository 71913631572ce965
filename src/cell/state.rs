//! The pure state machine of a cell: what a read gets, when to refresh, how
//! to back off. Every decision takes `now` from the injected [`Clock`];
//! nothing here sleeps, spawns or does I/O, so `cell/tests.rs` drives it
//! without a runtime.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::source::{Inputs, Issued, LogClaims, SourceError};
use crate::status::schema::{rfc3339, CellStatus, StateName};

/// Wall-clock time, injectable so the state machine is tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A source of uniform randomness in `[0, 1)` for jitter, injectable for tests.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Real jitter.
pub fn random_jitter() -> Jitter {
    Arc::new(crate::random::unit)
}

/// When to refresh and how to back off; per file.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A fresh token has at least this left; one with less is served only while
    /// the upstream has nothing better (see `floor`).
    pub min_valid: Duration,
    /// A token is never served with this little left, nor accepted with it.
    pub floor: Duration,
    /// Refresh ahead once this fraction of the remaining lifetime has passed.
    pub refresh_at: f64,
    /// ± this fraction of the lifetime, so that many mounts do not refresh in step.
    pub jitter: f64,
    /// First retry delay after a failure; doubles per consecutive failure.
    pub backoff_min: Duration,
    /// Retry delay ceiling.
    pub backoff_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_valid: Duration::from_secs(30),
            floor: Duration::from_secs(5),
            refresh_at: 0.8,
            jitter: 0.05,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A token as served: immutable once made, shared by reference.
pub struct Token {
    secret: SecretString,
    /// When the upstream stops accepting it.
    pub expires_at: SystemTime,
    /// When this daemon obtained it (the file's mtime).
    pub obtained_at: SystemTime,
    /// The last instant it may be served: `expires_at - min_valid`, or
    /// `expires_at - floor` for a token the upstream issued with less than
    /// `min_valid` left.
    pub valid_until: SystemTime,
    /// Why it is served with less than `min_valid` left, if it is.
    pub below_min_valid: Option<String>,
    /// When refresh-ahead replaces it.
    pub refresh_at: SystemTime,
    pub claims: LogClaims,
    /// Counts tokens obtained by this cell, from 1.
    pub generation: u64,
}

impl Token {
    /// The token, for a token exchange that uses it as its subject.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The bytes readers get.
    pub fn bytes(&self) -> &[u8] {
        self.secret.expose_secret().as_bytes()
    }

    pub fn servable(&self, now: SystemTime) -> bool {
        now < self.valid_until
    }

    /// Time left until it may no longer be served (zero when past).
    pub fn time_left(&self, now: SystemTime) -> Duration {
        self.valid_until.duration_since(now).unwrap_or_default()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("expires_at", &rfc3339(self.expires_at))
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// What a reader gets instead of a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "upstream issued a token with {}s of lifetime left, not more than min_valid_floor ({}s); \
         it will be asked again once that token has expired",
        left.as_secs(),
        floor.as_secs()
    )]
    TooShort { left: Duration, floor: Duration },
    #[error("no token within the read timeout ({}s); the upstream is still being asked", .0.as_secs())]
    ReadTimeout(Duration),
}

impl CellError {
    /// The errno a reader sees (the README's "Errors a reader sees" table).
    pub fn errno(&self) -> i32 {
        match self {
            CellError::Source(e) => e.errno(),
            CellError::TooShort { .. } => libc::EIO,
            CellError::ReadTimeout(_) => libc::ETIMEDOUT,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Failure {
    error: CellError,
    at: SystemTime,
    /// Before this, reads get `error` without asking the upstream.
    pub(super) retry_at: SystemTime,
    /// When refresh-ahead asks again.
    background_at: SystemTime,
    consecutive: u32,
    /// The source's inputs when the failed request started: once they differ
    /// (a secret file fixed in place), a read asks again before `retry_at`.
    inputs: Option<Inputs>,
}

/// What a read should do now.
#[derive(Debug)]
pub enum Next {
    Serve(Arc<Token>),
    /// Start the one upstream request, then wait for it.
    Fetch,
    /// A request is in flight: wait for it.
    Wait,
    Fail(CellError),
}

/// The pure state machine. Every method takes `now`; nothing here sleeps or does I/O.
#[derive(Debug, Default)]
pub struct State {
    current: Option<Arc<Token>>,
    pub(super) failure: Option<Failure>,
    inflight: bool,
    generation: u64,
    fetches: u64,
    failures: u64,
    last_attempt: Option<SystemTime>,
}

impl State {
    /// The token to serve, if any is servable now.
    pub fn servable(&self, now: SystemTime) -> Option<&Arc<Token>> {
        self.current.as_ref().filter(|t| t.servable(now))
    }

    /// Decide a read. `Fetch` marks the request as in flight; the caller must then
    /// call [`State::finish`] exactly once. A reader that already waited for one
    /// request passes `waited` and gets that request's error instead of starting
    /// another, so a failing upstream is asked once per backoff, not once per reader.
    pub fn on_read(&mut self, now: SystemTime, waited: bool) -> Next {
        if let Some(t) = self.servable(now) {
            return Next::Serve(t.clone());
        }
        if self.inflight {
            return Next::Wait;
        }
        if let Some(f) = &self.failure {
            if waited || now < f.retry_at {
                return Next::Fail(f.error.clone());
            }
        }
        self.start(now);
        Next::Fetch
    }

    /// Record the source's inputs the failed request started with.
    pub fn failed_with(&mut self, inputs: Inputs) {
        if let Some(f) = &mut self.failure {
            f.inputs = Some(inputs);
        }
    }

    /// The inputs of a failure still in its backoff at `now` (`None` if there is
    /// none, it is over, or its inputs were not recorded).
    pub fn backoff_inputs(&self, now: SystemTime) -> Option<&Inputs> {
        self.failure
            .as_ref()
            .filter(|f| now < f.retry_at)
            .and_then(|f| f.inputs.as_ref())
    }

    /// End the backoff of a failure whose inputs were `seen` at once: they changed.
    pub fn inputs_changed(&mut self, seen: &Inputs, now: SystemTime) {
        if let Some(f) = &mut self.failure {
            if f.inputs.as_ref() == Some(seen) {
                f.retry_at = f.retry_at.min(now);
            }
        }
    }

    /// When refresh-ahead should next ask the upstream; `None` while the file was
    /// never read (issue is lazy) or a request is in flight.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        if self.inflight {
            return None;
        }
        let token = self.current.as_ref()?;
        Some(match &self.failure {
            // Waiting on a person: only a read asks again. In the background that
            // would, for a device login, mint a new code each time one expires.
            Some(f)
                if matches!(
                    f.error,
                    CellError::Source(SourceError::ConsentRequired { .. })
                ) =>
            {
                return None
            }
            Some(f) => f.background_at,
            None => token.refresh_at,
        })
    }

    /// Start a refresh-ahead request if one is due and none is in flight.
    pub fn try_start_refresh(&mut self, now: SystemTime) -> bool {
        match self.next_refresh() {
            Some(due) if due <= now => {
                self.start(now);
                true
            }
            _ => false,
        }
    }

    fn start(&mut self, now: SystemTime) {
        self.inflight = true;
        self.last_attempt = Some(now);
    }

    /// Record the outcome of the request started by `on_read` or `try_start_refresh`.
    /// `u` is uniform in `[0, 1)` for jitter.
    pub fn finish(
        &mut self,
        result: Result<Issued, SourceError>,
        now: SystemTime,
        policy: &Policy,
        u: f64,
    ) -> Result<Arc<Token>, CellError> {
        self.inflight = false;
        self.fetches += 1;
        let outcome = result
            .map_err(CellError::from)
            .and_then(|issued| self.accept(issued, now, policy, u));
        match &outcome {
            Ok(token) => {
                self.current = Some(token.clone());
                self.failure = None;
            }
            Err(error) => {
                self.failures += 1;
                let consecutive = self.failure.as_ref().map_or(1, |f| f.consecutive + 1);
                let background_at = now + backoff(policy, consecutive, u);
                // Waiting on a person, not on a struggling upstream: let reads ask again
                // soon, so the first read after consent succeeds; refresh-ahead stops
                // (see `next_refresh`), so nobody consenting costs no requests.
                let (retry_at, background_at) = match error {
                    CellError::Source(SourceError::ConsentRequired { .. }) => {
                        (now + policy.backoff_min, background_at)
                    }
                    // The upstream gave the best it had (Keycloak hands out its stored
                    // token until that is nearly expired, then replaces it): it can do
                    // better just after that token's expiry, not after a backoff. Twice
                    // at most, so an upstream that only ever issues such tokens falls
                    // back to the backoff.
                    CellError::TooShort { left, .. } if consecutive <= 2 => {
                        let after = now + *left + TOO_SHORT_RETRY;
                        (after, after)
                    }
                    _ => (background_at, background_at),
                };
                self.failure = Some(Failure {
                    error: error.clone(),
                    at: now,
                    retry_at,
                    background_at,
                    consecutive,
                    inputs: None,
                });
            }
        }
        outcome
    }

    fn accept(
        &mut self,
        issued: Issued,
        now: SystemTime,
        policy: &Policy,
        u: f64,
    ) -> Result<Arc<Token>, CellError> {
        let left = issued.expires_at.duration_since(now).unwrap_or_default();
        if left <= policy.floor {
            return Err(CellError::TooShort {
                left,
                floor: policy.floor,
            });
        }
        let (valid_until, refresh_at, below_min_valid) = if left <= policy.min_valid {
            // The best the upstream has: serve it down to the floor, and ask again
            // when it may no longer be served.
            let until = issued.expires_at - policy.floor;
            let why = format!(
                "the upstream issued it with {}s left, less than min_valid ({}s): \
                 served until {}s before it expires, then asked again",
                left.as_secs(),
                policy.min_valid.as_secs(),
                policy.floor.as_secs()
            );
            (until, until, Some(why))
        } else {
            // Judge from our own clock, not the upstream's `iat`, so a skewed issuer
            // cannot push refresh-ahead past the deadline.
            let fraction = (policy.refresh_at + policy.jitter * (2.0 * u - 1.0)).clamp(0.0, 1.0);
            // When min_valid is a large part of the lifetime, 80 % of the lifetime
            // can fall after the deadline: then refresh while 5 % of the servable
            // window is left, so readers still do not wait.
            let servable = left - policy.min_valid;
            let refresh_at = now + left.mul_f64(fraction).min(servable.mul_f64(0.95));
            (issued.expires_at - policy.min_valid, refresh_at, None)
        };
        self.generation += 1;
        Ok(Arc::new(Token {
            secret: issued.token,
            expires_at: issued.expires_at,
            obtained_at: now,
            valid_until,
            below_min_valid,
            refresh_at,
            claims: issued.claims,
            generation: self.generation,
        }))
    }

    /// What the user must do, while no token can be served for want of consent:
    /// the URL to open on the first line, and for a device login `code: <code>`
    /// on the second (the code to confirm, or to enter where the URL lacks it).
    pub fn consent_url(&self, now: SystemTime) -> Option<String> {
        if self.servable(now).is_some() {
            return None;
        }
        match &self.failure.as_ref()?.error {
            CellError::Source(SourceError::ConsentRequired { url, user_code, .. }) => {
                Some(match user_code {
                    Some(code) => format!("{url}\ncode: {code}"),
                    None => url.clone(),
                })
            }
            _ => None,
        }
    }

    /// The token last obtained, servable or not.
    pub fn current(&self) -> Option<&Arc<Token>> {
        self.current.as_ref()
    }

    /// The error of the last request, while it is the latest outcome.
    pub fn last_error(&self) -> Option<&CellError> {
        self.failure.as_ref().map(|f| &f.error)
    }

    /// Counts tokens obtained so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Let a read ask the upstream from `now` on, whatever the backoff says:
    /// what the upstream would answer has changed (a login completed).
    pub fn retry_from(&mut self, now: SystemTime) {
        if let Some(f) = &mut self.failure {
            f.retry_at = now;
        }
    }

    /// A snapshot for `.status`; never holds the token.
    pub fn status(&self, now: SystemTime) -> CellStatus {
        let servable = self.servable(now).is_some();
        let state = match (&self.failure, servable) {
            (_, _) if self.inflight && !servable => StateName::Fetching,
            (None, true) => StateName::Fresh,
            (Some(_), true) => StateName::Degraded,
            (Some(f), false) => match &f.error {
                CellError::Source(SourceError::ConsentRequired { .. }) => {
                    StateName::ConsentRequired
                }
                _ => StateName::Failed,
            },
            (None, false) if self.current.is_some() => StateName::Expired,
            (None, false) => StateName::Empty,
        };
        let token = self.current.as_ref();
        CellStatus {
            state,
            generation: self.generation,
            expires_at: token.map(|t| t.expires_at.into()),
            obtained_at: token.map(|t| t.obtained_at.into()),
            refresh_at: self.next_refresh().map(Into::into),
            sub: token.and_then(|t| t.claims.sub.clone()),
            jti: token.and_then(|t| t.claims.jti.clone()),
            last_attempt: self.last_attempt.map(Into::into),
            last_error: self.failure.as_ref().map(|f| f.error.to_string()),
            last_error_at: self.failure.as_ref().map(|f| f.at.into()),
            retry_at: self.failure.as_ref().map(|f| f.retry_at.into()),
            fetches: self.fetches,
            failures: self.failures,
            unsaved_refresh_token: None,
            below_min_valid: self.servable(now).and_then(|t| t.below_min_valid.clone()),
        }
    }
}

/// How long after the expiry of a token refused as too short it is asked for again.
pub(super) const TOO_SHORT_RETRY: Duration = Duration::from_millis(500);

/// Exponential backoff with "equal jitter": half fixed, half random.
pub(super) fn backoff(policy: &Policy, consecutive: u32, u: f64) -> Duration {
    let exp = consecutive.saturating_sub(1).min(20);
    let base = policy
        .backoff_min
        .saturating_mul(1 << exp)
        .min(policy.backoff_max);
    base / 2 + (base / 2).mul_f64(u)
}
