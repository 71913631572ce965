//! What "healthy" means, decided here once for every probe.
//!
//! - **Liveness** (`/healthz`, systemd's watchdog): the daemon works: its FUSE
//!   session runs and so does every refresh loop. Never tied to an upstream or
//!   to a user's consent: restarting the daemon mends neither, and a liveness
//!   probe that restarted a pod for them would do so forever.
//! - **Readiness** (`/readyz`, `READY=1`, `tokenfs wait`, `tokenfs status`):
//!   every file has served a token, or waits on its user (consent, a login),
//!   which is not a failure. A file whose upstream fails keeps it not ready.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cell::Cell;
use crate::status::schema::{CellStatus, ReportedState, StateName};

/// Whether the daemon's own machinery runs.
#[derive(Debug)]
pub struct Liveness {
    fuse_running: AtomicBool,
    loops_ended: AtomicUsize,
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness {
            fuse_running: AtomicBool::new(true),
            loops_ended: AtomicUsize::new(0),
        })
    }

    /// Held by a refresh loop: dropped (the loop ended, or panicked), the
    /// daemon is no longer alive.
    pub fn refresh_loop(self: &Arc<Self>) -> LoopGuard {
        LoopGuard(self.clone())
    }

    pub fn fuse_ended(&self) {
        self.fuse_running.store(false, Ordering::SeqCst);
    }

    /// `Err` says what stopped.
    pub fn check(&self) -> Result<(), String> {
        if !self.fuse_running.load(Ordering::SeqCst) {
            return Err("the FUSE session ended".into());
        }
        match self.loops_ended.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(format!("{n} refresh loop(s) ended")),
        }
    }
}

pub struct LoopGuard(Arc<Liveness>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.loops_ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// One file's part in readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serves a token (or served one that merely expired unread).
    Ready,
    /// Waits on its user: consent or a login.
    WaitingOnUser,
    /// Not asked for yet, or the first request is in flight.
    Pending,
    /// Its upstream fails: why.
    Failing(String),
}

impl Readiness {
    /// From a file's `.status` state and last error.
    pub fn of(state: StateName, last_error: Option<&str>) -> Readiness {
        match (state, last_error) {
            (StateName::Fresh | StateName::Degraded | StateName::Expired, _) => Readiness::Ready,
            (StateName::ConsentRequired, _) => Readiness::WaitingOnUser,
            (StateName::Empty | StateName::Fetching, None) => Readiness::Pending,
            (_, why) => Readiness::Failing(why.unwrap_or("failed").to_owned()),
        }
    }

    /// From a file's entry in `.status`, as the daemon renders it.
    pub fn of_status(status: &CellStatus) -> Readiness {
        Readiness::of(status.state, status.last_error.as_deref())
    }

    /// From a file's entry in `.status` as a command read it back: a state
    /// this build does not know is failing.
    pub fn of_reported(status: &CellStatus<ReportedState>) -> Readiness {
        match &status.state {
            ReportedState::Known(state) => Readiness::of(*state, status.last_error.as_deref()),
            ReportedState::Unknown(state) => Readiness::Failing(format!("unknown state {state:?}")),
        }
    }

    /// Whether its upstream fails: waiting on the user, or not asked for yet,
    /// is not a failure.
    pub fn failing(&self) -> bool {
        matches!(self, Readiness::Failing(_))
    }

    /// Whether this file lets the mount be ready.
    pub fn ok(&self) -> bool {
        matches!(self, Readiness::Ready | Readiness::WaitingOnUser)
    }
}

/// The files that keep the mount from being ready, and why; empty when ready.
pub fn not_ready(cells: &[Arc<Cell>]) -> Vec<(String, String)> {
    not_ready_of(
        cells
            .iter()
            .map(|c| (c.name().to_owned(), Readiness::of_status(&c.status()))),
    )
}

/// [`not_ready`] over files already judged: the daemon's cells, or the files
/// of a `.status` read from a mount.
pub fn not_ready_of(files: impl IntoIterator<Item = (String, Readiness)>) -> Vec<(String, String)> {
    files
        .into_iter()
        .filter_map(|(name, readiness)| match readiness {
            r if r.ok() => None,
            Readiness::Failing(why) => Some((name, why)),
            _ => Some((name, "no token asked for yet".to_owned())),
        })
        .collect()
}

/// Ask the upstream for every file never asked for, in the background: a
/// readiness check must know whether each file's credentials work, and files
/// are otherwise issued only at their first access.
pub fn ask_pending(cells: &[Arc<Cell>]) {
    for cell in cells {
        if Readiness::of_status(&cell.status()) == Readiness::Pending {
            let cell = cell.clone();
            tokio::spawn(async move {
                let _ = cell.get().await;
            });
        }
    }
}

/// One line: `file: why; file: why`.
pub fn describe(not_ready: &[(String, String)]) -> String {
    not_ready
        .iter()
        .map(|(file, why)| format!("{file}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_on_the_user_is_ready_and_a_failing_upstream_is_not() {
        let of = Readiness::of;
        assert!(of(StateName::Fresh, None).ok());
        assert!(of(StateName::Degraded, Some("upstream unavailable")).ok());
        assert!(of(StateName::ConsentRequired, Some("consent required: open …")).ok());
        assert_eq!(of(StateName::Empty, None), Readiness::Pending);
        assert!(!of(StateName::Empty, None).ok());
        assert_eq!(
            of(StateName::Failed, Some("upstream unavailable: refused")),
            Readiness::Failing("upstream unavailable: refused".into())
        );
        assert!(!of(StateName::Fetching, Some("timed out")).ok());
    }

    #[test]
    fn liveness_ends_with_the_fuse_session_or_any_refresh_loop() {
        let live = Liveness::new();
        let guard = live.refresh_loop();
        assert_eq!(live.check(), Ok(()));
        drop(guard);
        assert_eq!(live.check(), Err("1 refresh loop(s) ended".into()));
        let live = Liveness::new();
        live.fuse_ended();
        assert!(live.check().unwrap_err().contains("FUSE"));
    }
}
