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

/// The `backend` label: the backend's name, made once per client and shared by reference
/// count, so recording a metric copies no string. Without the feature, nothing.
#[cfg(feature = "metrics")]
pub(crate) type Label = std::sync::Arc<str>;
/// The `backend` label: the backend's name, made once per client and shared by reference
/// count, so recording a metric copies no string. Without the feature, nothing.
#[cfg(not(feature = "metrics"))]
pub(crate) type Label = ();

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Label;

    fn label(backend: &Label) -> metrics::SharedString {
        metrics::SharedString::from(Arc::clone(backend))
    }

    pub(crate) fn acquired(backend: &Label, latency: Duration, waited: Duration) {
        metrics::counter!("lock_acquisitions_total", "backend" => label(backend)).increment(1);
        metrics::histogram!("lock_acquire_latency_seconds", "backend" => label(backend)).record(latency);
        metrics::histogram!("lock_wait_seconds", "backend" => label(backend)).record(waited);
    }

    pub(crate) fn contended(backend: &Label) {
        metrics::counter!("lock_contended_waits_total", "backend" => label(backend)).increment(1);
    }

    pub(crate) fn timed_out(backend: &Label) {
        metrics::counter!("lock_timeouts_total", "backend" => label(backend)).increment(1);
    }

    pub(crate) fn renewal(backend: &Label, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        metrics::counter!("lock_renewals_total", "backend" => label(backend), "outcome" => outcome)
            .increment(1);
    }

    pub(crate) fn lost(backend: &Label) {
        metrics::counter!("lock_leases_lost_total", "backend" => label(backend)).increment(1);
    }

    pub(crate) fn background_release(backend: &Label) {
        metrics::counter!("lock_background_releases_total", "backend" => label(backend)).increment(1);
    }

    pub(crate) fn held(backend: &Label, held: Duration) {
        metrics::histogram!("lock_hold_seconds", "backend" => label(backend)).record(held);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) fn acquired(_: &Label, _: Duration, _: Duration) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn contended(_: &Label) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn timed_out(_: &Label) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn renewal(_: &Label, _: bool) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn lost(_: &Label) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn background_release(_: &Label) {}
#[cfg(not(feature = "metrics"))]
pub(crate) fn held(_: &Label, _: Duration) {}
