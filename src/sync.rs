//! Locking shared daemon state.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex` even if a holder panicked. Everything the daemon shares
/// behind a mutex (runners, loaders, the DNS queue, metric scrapes) is changed
/// all-or-nothing, so the value a panicking holder left is still consistent;
/// refusing it would stop the data plane's control for good instead.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
