//! The fair lock's contracts on the in-memory backend, on paused time.

use std::time::Duration;

use lock_core::{Guard, Instant, LockClient, LockConfig, LockKey, LockOptions};
use lock_testkit::{MemoryBackend, OpCounts, fair};

lock_testkit::fair_suite!(paused, async { (MemoryBackend::new(), ()) });

#[tokio::test(start_paused = true)]
async fn crashed_waiter_is_skipped() {
    let store = MemoryBackend::new();
    let crash = {
        let store = store.clone();
        move |key| async move { fair::abandoned_waiter(&store, &key).await }
    };
    fair::crashed_waiter_is_skipped(store, crash).await;
}

/// A fair lock "handed" on `store` under `config`: one holder, one waiter (taking it with
/// `options`) that queues behind it, the holder's release. Returns the waiter's guard, handed
/// over by that release, and the operation counts just before the release.
async fn hand_over(store: &MemoryBackend, config: LockConfig, options: LockOptions) -> (Guard, OpCounts) {
    let client = LockClient::with_config(store.clone(), config).unwrap();
    let first = client.fair_mutex("handed").unwrap().lock().await.unwrap();
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.fair_mutex("handed").unwrap().lock_with(options).await })
    };
    while fair::queue_len(store, &LockKey::new("handed").unwrap()).await == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = store.op_counts();
    first.release().await.unwrap();
    (waiter.await.unwrap().unwrap(), before)
}

/// TTL 30 s, a waiter timeout of `waiter_timeout`.
fn config(waiter_timeout: Duration) -> lock_core::LockConfigBuilder {
    LockConfig::builder()
        .ttl(Duration::from_secs(30))
        .waiter_timeout(waiter_timeout)
        .acquire_timeout(Duration::from_secs(60))
}

/// A waiter whose lock was handed over holds it from its last call, capped by its waiter
/// deadline on the server; the watchdog renews it to the full TTL a third of the way there.
#[tokio::test(start_paused = true)]
async fn a_handed_over_lease_is_renewed_to_the_full_ttl() {
    let store = MemoryBackend::new();
    let (guard, before) =
        hand_over(&store, config(Duration::from_secs(2)).build().unwrap(), LockOptions::default()).await;
    assert_eq!(store.op_counts().fair_acquire, before.fair_acquire, "handed over without another call");
    let left = guard.valid_until() - Instant::now();
    assert!(left <= Duration::from_secs(2), "capped by the waiter deadline: {left:?}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(guard.is_held(), "renewed before the waiter deadline");
    assert!(guard.valid_until() - Instant::now() > Duration::from_secs(15), "renewed to the full TTL");
    guard.release().await.unwrap();
}

/// Without a watchdog nothing would renew a grant capped by the waiter deadline, so a
/// handed-over lease is renewed once, a third of the way to its capped validity, to the full
/// TTL: the caller asked for a TTL's validity, and gets it without a call on the hand-off's
/// path (and a short hold sends no renewal at all).
#[tokio::test(start_paused = true)]
async fn without_a_watchdog_a_handed_over_lease_is_renewed_once_to_the_full_ttl() {
    let store = MemoryBackend::new();
    let no_watchdog = LockOptions::default().watchdog(false);
    let (guard, before) =
        hand_over(&store, config(Duration::from_secs(2)).build().unwrap(), no_watchdog).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.op_counts().extend, before.extend, "nothing sent for a short hold");
    assert!(guard.valid_until() - Instant::now() <= Duration::from_secs(2), "capped at first");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = store.op_counts();
    assert_eq!(after.fair_acquire, before.fair_acquire, "handed over without another call");
    assert_eq!(after.extend, before.extend + 1, "one renewal, a third of the way");
    assert!(guard.valid_until() - Instant::now() > Duration::from_secs(25), "the full TTL");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(store.op_counts().extend, after.extend, "and no more: there is no watchdog");
    assert!(guard.is_held());
    guard.release().await.unwrap();
}

/// The first renewal of a handed-over lease is due a third of the way to the end of its
/// validity, not of its waiter timeout: with a drift that eats most of a short waiter timeout,
/// a renewal due a third of the timeout after the last call would come after the lease ended.
#[tokio::test(start_paused = true)]
async fn a_handed_over_lease_with_little_validity_is_renewed_in_time() {
    let store = MemoryBackend::new();
    let config = config(Duration::from_millis(400)).drift(Duration::from_millis(300)).build().unwrap();
    let (guard, _) = hand_over(&store, config, LockOptions::default()).await;
    assert!(guard.valid_until() - Instant::now() <= Duration::from_millis(100), "little validity");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guard.is_held(), "renewed before its validity ended");
    guard.release().await.unwrap();
}
