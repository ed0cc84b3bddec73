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

/// The `backend` label: every metric's key with the backend's name, made once per client and
/// shared by reference count, so recording a metric builds no key and copies no string.
/// Without the feature, nothing.
#[cfg(feature = "metrics")]
pub(crate) type Label = std::sync::Arc<on::Keys>;
/// The `backend` label: every metric's key with the backend's name, made once per client and
/// shared by reference count, so recording a metric builds no key and copies no string.
/// Without the feature, nothing.
#[cfg(not(feature = "metrics"))]
pub(crate) type Label = ();

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    use metrics::{Key, Level, Metadata};

    /// What the `metrics!` macros would pass: this module, at the info level.
    static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    /// Every metric's key for one backend. The macros would build a key (a label list on the
    /// heap) on each call; these are built once and borrowed, and each call asks the recorder
    /// installed at that moment, as the macros do, so a recorder installed after the client
    /// was made still sees every event.
    #[derive(Debug)]
    pub(crate) struct Keys {
        acquisitions: Key,
        acquire_latency: Key,
        wait: Key,
        contended: Key,
        timeouts: Key,
        renewals_ok: Key,
        renewals_failed: Key,
        lost: Key,
        background_releases: Key,
        hold: Key,
    }

    /// The label of a client of the backend named `backend`.
    pub(crate) fn label(backend: &str) -> super::Label {
        let backend: metrics::SharedString = std::sync::Arc::<str>::from(backend).into();
        let key =
            |name: &'static str| Key::from_parts(name, vec![metrics::Label::new("backend", backend.clone())]);
        let renewals = |outcome: &'static str| {
            Key::from_parts(
                "lock_renewals_total",
                vec![
                    metrics::Label::new("backend", backend.clone()),
                    metrics::Label::new("outcome", outcome),
                ],
            )
        };
        std::sync::Arc::new(Keys {
            acquisitions: key("lock_acquisitions_total"),
            acquire_latency: key("lock_acquire_latency_seconds"),
            wait: key("lock_wait_seconds"),
            contended: key("lock_contended_waits_total"),
            timeouts: key("lock_timeouts_total"),
            renewals_ok: renewals("ok"),
            renewals_failed: renewals("failed"),
            lost: key("lock_leases_lost_total"),
            background_releases: key("lock_background_releases_total"),
            hold: key("lock_hold_seconds"),
        })
    }

    fn count(key: &Key) {
        metrics::with_recorder(|r| r.register_counter(key, &META).increment(1));
    }

    fn record(key: &Key, value: Duration) {
        metrics::with_recorder(|r| r.register_histogram(key, &META).record(value));
    }

    pub(crate) fn acquired(keys: &Keys, latency: Duration, waited: Duration) {
        count(&keys.acquisitions);
        record(&keys.acquire_latency, latency);
        record(&keys.wait, waited);
    }

    pub(crate) fn contended(keys: &Keys) {
        count(&keys.contended);
    }

    pub(crate) fn timed_out(keys: &Keys) {
        count(&keys.timeouts);
    }

    pub(crate) fn renewal(keys: &Keys, ok: bool) {
        count(if ok { &keys.renewals_ok } else { &keys.renewals_failed });
    }

    pub(crate) fn lost(keys: &Keys) {
        count(&keys.lost);
    }

    pub(crate) fn background_release(keys: &Keys) {
        count(&keys.background_releases);
    }

    pub(crate) fn held(keys: &Keys, held: Duration) {
        record(&keys.hold, held);
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
