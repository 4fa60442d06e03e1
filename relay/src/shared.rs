//! What the IO workers, the key watcher and the metrics share: the core behind its lock, and the
//! few counters kept outside the core because they are counted outside it (UDP errors, key
//! reloads). The core's own counters are [`wpex_proto::Stats`]; [`crate::metrics`] reads both.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wpex_proto::Relay;

/// The shared core. A panic inside it would poison the lock; the table is still consistent
/// enough to keep relaying, so workers carry on rather than all dying.
pub type SharedRelay = Arc<Mutex<Relay>>;

/// Locks the core, also after a panic elsewhere (see [`SharedRelay`]).
pub fn lock(relay: &SharedRelay) -> MutexGuard<'_, Relay> {
    relay
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// UDP errors are logged at most this often; the rest are only counted.
const IO_WARN_EVERY: Duration = Duration::from_secs(10);

/// The counters kept outside the core.
#[derive(Debug, Default)]
pub struct Counters {
    io_errors: AtomicU64,
    io_last_logged: Mutex<Option<Instant>>,
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Counters {
    /// Counts a UDP error; logs it unless one was logged in the last 10 s, so a dead peer
    /// cannot flood the logs.
    pub fn io_error(&self, what: &'static str, peer: Option<SocketAddr>, error: &io::Error) {
        let total = self.io_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self
            .io_last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= IO_WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(what, ?peer, %error, total, "UDP error (further ones are counted, logged at most every 10 s)");
        }
    }

    /// Counts one re-read of the key file that changed the key set (`ok`) or failed.
    pub fn reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_succeeded
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// UDP receive and send errors so far.
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Key reloads so far, by the label the metrics give them.
    pub fn reloads(&self) -> [(&'static str, u64); 2] {
        [
            ("success", self.reloads_succeeded.load(Ordering::Relaxed)),
            ("failure", self.reloads_failed.load(Ordering::Relaxed)),
        ]
    }
}
