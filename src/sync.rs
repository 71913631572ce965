//! Locking that survives a panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, recovering it if a thread panicked while holding it. A panic while
/// answering one request (a bug) must not take every later request, and with
/// them the whole mount, down; no state under these locks is left half-changed
/// by a panic, since each is updated by one assignment.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
