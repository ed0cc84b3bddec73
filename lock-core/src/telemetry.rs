//! Metrics through the `metrics` facade, behind the optional `metrics` feature; without it
//! every function here is empty and compiles away. Names (all with a `backend` label, never the
//! key, to keep cardinality bounded):
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `lock_acquisitions_total` | counter | locks handed out |
//! | `lock_contended_waits_total` | counter | `lock()` calls that found the lock held and waited |
//! | `lock_timeouts_total` | counter | `lock()` calls that gave up |
//! | `lock_renewals_total{outcome="ok"\|"failed"}` | counter | watchdog renewals |
//! | `lock_leases_lost_total` | counter | leases lost while held |
//! | `lock_background_releases_total` | counter | releases handed to the runtime by `Drop` |
//! | `lock_acquire_latency_seconds` | histogram | the successful acquire call (one round trip or one quorum round) |
//! | `lock_wait_seconds` | histogram | from asking to getting, waits included |
//! | `lock_hold_seconds` | histogram | from acquisition to release |

#[cfg(not(feature = "metrics"))]
use std::time::Duration;

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    pub(crate) fn acquired(backend: &str, latency: Duration, waited: Duration) {
        let backend = backend.to_string();
        metrics::counter!("lock_acquisitions_total", "backend" => backend.clone()).increment(1);
        metrics::histogram!("lock_acquire_latency_seconds", "backend" => backend.clone()).record(latency);
        metrics::histogram!("lock_wait_seconds", "backend" => backend).record(waited);
    }

    pub(crate) fn contended(backend: &str) {
        metrics::counter!("lock_contended_waits_total", "backend" => backend.to_string()).increment(1);
    }

    pub(crate) fn timed_out(backend: &str) {
        metrics::counter!("lock_timeouts_total", "backend" => backend.to_string()).increment(1);
    }

    pub(crate) fn renewal(backend: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        metrics::counter!("lock_renewals_total", "backend" => backend.to_string(), "outcome" => outcome)
            .increment(1);
    }

    pub(crate) fn lost(backend: &str) {
        metrics::counter!("lock_leases_lost_total", "backend" => backend.to_string()).increment(1);
    }

    pub(crate) fn background_release(backend: &str) {
        metrics::counter!("lock_background_releases_total", "backend" => backend.to_string()).increment(1);
    }

    pub(crate) fn held(backend: &str, held: Duration) {
        metrics::histogram!("lock_hold_seconds", "backend" => backend.to_string()).record(held);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) fn acquired(_: &str, _: Duration, _: Duration) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn contended(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn timed_out(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn renewal(_: &str, _: bool) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn lost(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn background_release(_: &str) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn held(_: &str, _: Duration) {}
