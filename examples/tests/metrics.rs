//! lock-core's `metrics` feature records what it says: every counter and histogram, with the
//! backend's name as the only label.

use std::time::Duration;

use lock_core::{LockClient, LockConfig, LockOptions};
use lock_testkit::{Fault, Faulty, MemoryBackend, Op};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_metric_is_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let faulty = Faulty::new(MemoryBackend::new());
    let config = LockConfig::builder().ttl(Duration::from_millis(300)).build().unwrap();
    let locks = LockClient::with_config(faulty.clone(), config.clone()).unwrap();
    let guard = locks.mutex("a").unwrap().lock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // one renewal, ok
    faulty.inject_always(Op::Extend, Fault::Hang);
    let other = LockClient::with_config(faulty.clone(), config).unwrap();
    let timed_out =
        other.mutex("a").unwrap().lock_with(LockOptions::new().timeout(Duration::from_millis(20))).await;
    assert!(timed_out.is_err());
    guard.lost().await; // the hanging renewal fails at the deadline
    tokio::time::sleep(Duration::from_millis(1)).await; // let the watchdog count its failure
    drop(guard); // background release
    faulty.clear();
    let again = other.mutex("a").unwrap().lock().await.unwrap();
    again.release().await.unwrap();

    let snapshot = snapshotter.snapshot().into_hashmap();
    let count = |name: &str, extra: Option<(&str, &str)>| -> u64 {
        snapshot
            .iter()
            .filter(|(k, _)| {
                k.key().name() == name
                    && k.key().labels().any(|l| l.key() == "backend" && l.value() == "memory")
                    && extra.is_none_or(|(ek, ev)| k.key().labels().any(|l| l.key() == ek && l.value() == ev))
            })
            .map(|(_, (_, _, v))| match v {
                DebugValue::Counter(n) => *n,
                DebugValue::Histogram(h) => h.len() as u64,
                DebugValue::Gauge(_) => 0,
            })
            .sum()
    };
    assert_eq!(count("lock_acquisitions_total", None), 2);
    assert_eq!(count("lock_timeouts_total", None), 1);
    assert!(count("lock_contended_waits_total", None) >= 1, "the timed-out call waited");
    assert!(count("lock_renewals_total", Some(("outcome", "ok"))) >= 1);
    assert!(count("lock_renewals_total", Some(("outcome", "failed"))) >= 1);
    assert_eq!(count("lock_leases_lost_total", None), 1);
    assert_eq!(count("lock_background_releases_total", None), 1);
    assert_eq!(count("lock_acquire_latency_seconds", None), 2);
    assert_eq!(count("lock_wait_seconds", None), 2);
    assert_eq!(count("lock_hold_seconds", None), 2);
}
