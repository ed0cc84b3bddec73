//! Tests of core policy on `MemoryBackend` and `Faulty`, all on paused tokio time: no sleeps
//! in wall-clock time, no flakiness.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    BackendError, BackendErrorKind, Instant, LockBackend, LockClient, LockConfig, LockError, LockOptions,
    LostReason, Token,
};
use lock_testkit::{Fault, Faulty, MemoryBackend, Op};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// ttl 3 s, renew every 1 s, drift 32 ms, timeout 5 s.
fn config() -> LockConfig {
    LockConfig::builder()
        .ttl(3 * SEC)
        .renew_interval(SEC)
        .acquire_timeout(5 * SEC)
        .retry_backoff(10 * MS, 100 * MS)
        .fencing(true)
        .build()
        .unwrap()
}

fn client<B: LockBackend>(backend: B) -> LockClient<B> {
    LockClient::with_config(backend, config()).unwrap()
}

/// Lets spawned tasks (background releases, watchdogs) run without moving the clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn renewal_happens_on_schedule() {
    let store = MemoryBackend::new();
    let guard = client(store.clone()).mutex("sched").unwrap().lock().await.unwrap();
    let t0 = Instant::now();
    let first_deadline = guard.valid_until();
    for n in 1..=5u32 {
        tokio::time::sleep_until(t0 + SEC * n + MS).await;
        assert_eq!(store.op_counts().extend, u64::from(n), "renewal {n} should have happened at {n}s");
    }
    assert!(guard.is_held());
    assert!(guard.valid_until() > first_deadline + 4 * SEC, "each renewal moves valid_until");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lost_fires_exactly_at_deadline_when_renewals_hang() {
    let faulty = Faulty::new(MemoryBackend::new());
    faulty.inject_always(Op::Extend, Fault::Hang);
    let guard = client(faulty.clone()).mutex("hang").unwrap().lock().await.unwrap();
    let deadline = guard.valid_until();
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::Expired), "{reason:?}");
    assert_eq!(Instant::now(), deadline, "lost must fire exactly at the validity deadline");
    assert!(!guard.is_held());
    assert!(faulty.injected() >= 1, "the hang was really injected");
}

#[tokio::test(start_paused = true)]
async fn lost_immediately_on_owner_mismatch() {
    let store = MemoryBackend::new();
    let guard = client(store.clone()).mutex("mismatch").unwrap().lock().await.unwrap();
    let t0 = Instant::now();
    // Another owner takes the key (e.g. after a failover lost ours).
    store.evict("mismatch");
    store.force_hold("mismatch", Token::random(), 30 * SEC).unwrap();
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::NotOwner), "{reason:?}");
    assert_eq!(Instant::now() - t0, SEC, "lost at the first renewal, long before the deadline");
    tokio::time::sleep(5 * SEC).await;
    assert_eq!(store.op_counts().extend, 1, "the watchdog stops at the first owner mismatch");
}

#[tokio::test(start_paused = true)]
async fn permanent_renewal_error_means_lost_now() {
    let faulty = Faulty::new(MemoryBackend::new());
    let guard = client(faulty.clone()).mutex("perm").unwrap().lock().await.unwrap();
    faulty.inject(Op::Extend, Fault::permanent());
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::Backend(_)), "{reason:?}");
    assert!(guard.remaining() > SEC, "signalled at once, not at the deadline");
}

#[tokio::test(start_paused = true)]
async fn transient_renewal_errors_are_retried_until_success() {
    let faulty = Faulty::new(MemoryBackend::new());
    let guard = client(faulty.clone()).mutex("transient").unwrap().lock().await.unwrap();
    for _ in 0..3 {
        faulty.inject(Op::Extend, Fault::transient());
    }
    tokio::time::sleep(10 * SEC).await;
    assert!(guard.is_held(), "transient errors must be retried, not treated as loss");
    assert_eq!(faulty.injected(), 3);
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_extend_never_releases_or_shortens_the_lease() {
    let faulty = Faulty::new(MemoryBackend::new());
    let guard = client(faulty.clone()).mutex("no-shorten").unwrap().lock().await.unwrap();
    let promised = guard.valid_until();
    faulty.inject_always(Op::Extend, Fault::transient());
    tokio::time::sleep(2500 * MS).await;
    assert_eq!(guard.valid_until(), promised, "a failed renewal must not move valid_until");
    assert!(guard.is_held(), "still held until the promised deadline");
    assert_eq!(faulty.inner().op_counts().release, 0, "a failed extend must never release");
    assert!(faulty.inner().holder("no-shorten").is_some(), "the key must still be ours");
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::Expired));
    assert_eq!(Instant::now(), promised);
}

#[tokio::test(start_paused = true)]
async fn no_renewal_after_release() {
    let store = MemoryBackend::new();
    let guard = client(store.clone()).mutex("rel").unwrap().lock().await.unwrap();
    tokio::time::sleep(1500 * MS).await;
    let renewed = store.op_counts().extend;
    assert_eq!(renewed, 1);
    guard.release().await.unwrap();
    tokio::time::sleep(30 * SEC).await;
    assert_eq!(store.op_counts().extend, renewed, "renewed after release");
    assert_eq!(store.holder("rel"), None);
}

#[tokio::test(start_paused = true)]
async fn no_renewal_after_drop_and_drop_releases_in_background() {
    let store = MemoryBackend::new();
    let guard = client(store.clone()).mutex("drop").unwrap().lock().await.unwrap();
    assert!(store.holder("drop").is_some());
    let before = Instant::now();
    drop(guard);
    assert_eq!(Instant::now(), before, "drop never blocks");
    settle().await;
    assert_eq!(store.holder("drop"), None, "drop releases in the background");
    assert_eq!(store.op_counts().release, 1);
    tokio::time::sleep(30 * SEC).await;
    assert_eq!(store.op_counts().extend, 0, "renewed after drop");
}

#[tokio::test(start_paused = true)]
async fn no_grant_is_handed_out_after_its_validity() {
    let faulty = Faulty::new(MemoryBackend::new());
    // The first grant's reply arrives after the whole TTL: it must not be handed out.
    faulty.inject(Op::Acquire, Fault::DelayReply(4 * SEC));
    let client = client(faulty.clone());
    let mutex = client.mutex("late").unwrap();
    let err = mutex.try_lock().await.unwrap_err();
    assert!(
        matches!(err, LockError::Backend { ref source, .. } if source.kind() == BackendErrorKind::Timeout),
        "{err}"
    );
    // lock() retries with the same token and gets a fresh, valid grant.
    faulty.inject(Op::Acquire, Fault::DelayReply(4 * SEC));
    let guard = mutex.lock_with(LockOptions::new().timeout(20 * SEC)).await.unwrap();
    assert!(guard.valid_until() > Instant::now(), "handed-out grant must be valid");
    assert!(guard.remaining() > 2 * SEC, "the grant came from the fresh attempt");
    assert!(faulty.inner().op_counts().acquire >= 3);
}

#[tokio::test(start_paused = true)]
async fn reentrancy_counts_per_handle() {
    let store = MemoryBackend::new();
    let client = client(store.clone());
    let mutex = client.mutex("reentrant").unwrap();
    let outer = mutex.lock().await.unwrap();
    let inner = mutex.lock().await.unwrap();
    let via_clone = mutex.clone().try_lock().await.unwrap().expect("a clone of the handle re-enters");
    assert_eq!(outer.hold_count(), 3);
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    assert_eq!(store.op_counts().acquire, 1, "re-entry makes no round trip");
    // Two different handles on the same key contend, even in one process.
    assert!(client.mutex("reentrant").unwrap().try_lock().await.unwrap().is_none());
    inner.release().await.unwrap();
    via_clone.release().await.unwrap();
    assert!(store.holder("reentrant").is_some(), "still held by the outer guard");
    assert_eq!(store.op_counts().release, 0);
    outer.release().await.unwrap();
    assert_eq!(store.holder("reentrant"), None, "released with the last guard");
    assert_eq!(store.op_counts().release, 1);
}

#[tokio::test(start_paused = true)]
async fn try_lock_never_waits() {
    let store = MemoryBackend::new();
    let _held = client(store.clone()).mutex("busy").unwrap().lock().await.unwrap();
    let before = Instant::now();
    let got = client(store.clone()).mutex("busy").unwrap().try_lock().await.unwrap();
    assert!(got.is_none());
    assert_eq!(Instant::now(), before, "try_lock waited");
    assert_eq!(store.op_counts().acquire, 2, "one attempt only");
}

#[tokio::test(start_paused = true)]
async fn lock_times_out_with_key_and_wait_in_the_error() {
    let store = MemoryBackend::new();
    let _held = client(store.clone()).mutex("orders:42").unwrap().lock().await.unwrap();
    let start = Instant::now();
    let err = client(store.clone())
        .mutex("orders:42")
        .unwrap()
        .lock_with(LockOptions::new().timeout(2 * SEC))
        .await
        .unwrap_err();
    match &err {
        LockError::Timeout { key, waited, .. } => {
            assert_eq!(key.as_str(), "orders:42");
            assert_eq!(*waited, 2 * SEC);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(Instant::now() - start, 2 * SEC);
    assert_eq!(err.to_string(), "timed out after 2s waiting for lock \"orders:42\"");
}

#[tokio::test(start_paused = true)]
async fn cancelling_lock_while_waiting_leaves_nothing_behind() {
    let store = MemoryBackend::new();
    let holder = client(store.clone()).mutex("cancel").unwrap().lock().await.unwrap();
    let waiter = client(store.clone()).mutex("cancel").unwrap();
    let res = tokio::time::timeout(500 * MS, waiter.lock()).await;
    assert!(res.is_err(), "the waiter should still be waiting");
    holder.release().await.unwrap();
    settle().await;
    assert_eq!(store.holder("cancel"), None);
    assert_eq!(store.subscriber_count(), 0, "the cancelled waiter's subscription is gone");
}

#[tokio::test(start_paused = true)]
async fn cancelling_lock_with_an_acquire_in_flight_releases_it() {
    let faulty = Faulty::new(MemoryBackend::new());
    // The request is applied on the server, but the reply is slow; the caller gives up.
    faulty.inject(Op::Acquire, Fault::DelayReply(SEC));
    let mutex = client(faulty.clone()).mutex("inflight").unwrap();
    let res = tokio::time::timeout(100 * MS, mutex.lock()).await;
    assert!(res.is_err());
    assert!(faulty.inner().holder("inflight").is_some(), "the acquire was applied");
    settle().await;
    assert_eq!(faulty.inner().holder("inflight"), None, "the orphaned acquisition was released");
    tokio::time::sleep(10 * SEC).await;
    assert_eq!(faulty.inner().op_counts().extend, 0, "no renewal task was left behind");
}

#[tokio::test(start_paused = true)]
async fn lost_reply_on_acquire_does_not_wait_for_its_own_lock() {
    let faulty = Faulty::new(MemoryBackend::new());
    faulty.inject(Op::Acquire, Fault::LoseReply);
    let start = Instant::now();
    let guard = client(faulty.clone()).mutex("own").unwrap().lock().await.unwrap();
    assert!(Instant::now() - start < SEC, "waited for its own lock to expire");
    let counter = faulty.inner().fence_counter("own");
    assert_eq!(guard.fencing_token().map(|f| f.0), Some(counter), "the retry re-used the first acquisition");
}

#[tokio::test(start_paused = true)]
async fn waiter_is_woken_by_release_not_by_polling() {
    let store = MemoryBackend::new();
    let slow_backoff = LockConfig::builder()
        .ttl(30 * SEC)
        .acquire_timeout(60 * SEC)
        .retry_backoff(10 * SEC, 10 * SEC)
        .build()
        .unwrap();
    let holder = LockClient::with_config(store.clone(), slow_backoff.clone()).unwrap();
    let guard = holder.mutex("wake").unwrap().lock().await.unwrap();
    let waiter = LockClient::with_config(store.clone(), slow_backoff).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("wake").unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(3 * SEC).await;
    let released_at = Instant::now();
    guard.release().await.unwrap();
    let acquired_at = task.await.unwrap();
    assert_eq!(acquired_at, released_at, "the waiter must wake on the release, not after its 10s backoff");
}

#[tokio::test(start_paused = true)]
async fn wait_is_capped_by_the_holders_remaining_ttl() {
    let store = MemoryBackend::new();
    let long_backoff = LockConfig::builder()
        .ttl(2 * SEC)
        .acquire_timeout(60 * SEC)
        .retry_backoff(20 * SEC, 20 * SEC)
        .build()
        .unwrap();
    // The holder crashed: no release, no renewal; the key just expires.
    store.force_hold("crashed", Token::random(), 2 * SEC).unwrap();
    let start = Instant::now();
    let guard =
        LockClient::with_config(store, long_backoff).unwrap().mutex("crashed").unwrap().lock().await.unwrap();
    assert_eq!(Instant::now() - start, 2 * SEC, "picked up when the holder's ttl ran out");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_lock_stops_the_body_when_the_lease_is_lost() {
    let faulty = Faulty::new(MemoryBackend::new());
    faulty.inject_always(Op::Extend, Fault::Hang);
    let start = Instant::now();
    let err = client(faulty)
        .with_lock("body", |_lease| async { std::future::pending::<()>().await })
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::LeaseLost { reason: LostReason::Expired, .. }), "{err}");
    assert_eq!(Instant::now() - start, 3 * SEC - 32 * MS, "stopped exactly at the deadline");
}

#[tokio::test(start_paused = true)]
async fn with_lock_returns_the_body_value_and_releases() {
    let store = MemoryBackend::new();
    let v = client(store.clone())
        .with_lock("value", |lease| async move { lease.fencing_token().map(|f| f.0) })
        .await
        .unwrap();
    assert_eq!(v, Some(store.fence_counter("value")));
    assert_eq!(store.holder("value"), None);
}

#[tokio::test(start_paused = true)]
async fn max_hold_time_stops_renewal() {
    let store = MemoryBackend::new();
    let config = LockConfig::builder().ttl(3 * SEC).renew_interval(SEC).max_hold(5 * SEC).build().unwrap();
    let guard =
        LockClient::with_config(store.clone(), config).unwrap().mutex("cap").unwrap().lock().await.unwrap();
    let start = Instant::now();
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::MaxHoldReached), "{reason:?}");
    assert!(Instant::now() - start <= 5 * SEC, "held past the maximum hold time");
    tokio::time::sleep(10 * SEC).await;
    assert_eq!(store.holder("cap"), None, "the key is gone on the server too");
}

#[tokio::test(start_paused = true)]
async fn release_after_expiry_says_not_held() {
    let store = MemoryBackend::new();
    let config = LockConfig::builder().ttl(SEC).watchdog(false).build().unwrap();
    let guard =
        LockClient::with_config(store.clone(), config).unwrap().mutex("late").unwrap().lock().await.unwrap();
    tokio::time::sleep(2 * SEC).await;
    store.force_hold("late", Token::random(), 10 * SEC).unwrap();
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
    assert!(err.to_string().contains("no longer held"), "{err}");
    assert!(store.holder("late").is_some(), "someone else's lock was left alone");
}

#[tokio::test(start_paused = true)]
async fn user_extend_moves_validity_and_detects_loss() {
    let store = MemoryBackend::new();
    let guard = client(store.clone()).mutex("ext").unwrap().lock().await.unwrap();
    guard.extend(20 * SEC).await.unwrap();
    assert!(guard.remaining() > 19 * SEC);
    store.evict("ext");
    let err = guard.extend(20 * SEC).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
    assert!(matches!(guard.lost().await, LostReason::NotOwner));
    let err = guard.extend(Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, LockError::Config { field: "ttl", .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fencing_needs_a_capable_backend() {
    let mut mock = lock_testkit::MockBackend::new();
    mock.expect_capabilities().return_const(lock_core::Capabilities::NONE);
    mock.expect_name().return_const("mock".to_string());
    let err = LockClient::with_config(mock, config()).unwrap_err();
    assert_eq!(err.to_string(), "backend `mock` does not support fencing tokens");
}

#[tokio::test(start_paused = true)]
async fn permanent_acquire_error_is_returned_at_once() {
    let faulty = Faulty::new(MemoryBackend::new());
    faulty.inject(
        Op::Acquire,
        Fault::Error(BackendError::permanent(BackendErrorKind::WrongType, "key holds a list")),
    );
    let start = Instant::now();
    let err = client(faulty).mutex("wrong").unwrap().lock().await.unwrap_err();
    assert_eq!(Instant::now(), start);
    assert_eq!(err.to_string(), "backend error on lock \"wrong\": wrong type: key holds a list");
}

#[tokio::test(start_paused = true)]
async fn transient_acquire_errors_end_in_a_timeout_naming_the_last_error() {
    let faulty = Faulty::new(MemoryBackend::new());
    faulty.inject_always(Op::Acquire, Fault::transient());
    let err =
        client(faulty).mutex("down").unwrap().lock_with(LockOptions::new().timeout(SEC)).await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { last_error: Some(_), .. }), "{err}");
    assert!(err.to_string().contains("injected transient fault"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_past_the_timeout_ends_in_a_timeout_without_a_call_at_the_deadline() {
    let store = MemoryBackend::new();
    store.force_hold("busy", Token::random(), 30 * SEC).unwrap();
    // Each call takes 5 ms: one sent with no time left would be cut off and reported as
    // "did not answer in time", of a lock that was only held.
    let faulty = Faulty::new(store.clone());
    faulty.inject_always(Op::Acquire, Fault::Delay(5 * MS));
    // A fixed retry delay, so no call starts within 5 ms before the deadline (a jittered one
    // did in about 1 run of 25, and was cut off mid-call, as it should be): the calls start
    // at 0, 5, 110, ..., 950 ms, and the wait after the last ends at the deadline.
    let config = LockConfig::builder()
        .ttl(3 * SEC)
        .renew_interval(SEC)
        .retry_backoff(100 * MS, 100 * MS)
        .fencing(true)
        .build()
        .unwrap();
    let locks = LockClient::with_config(faulty, config).unwrap();
    let start = Instant::now();
    let err = locks.mutex("busy").unwrap().lock_with(LockOptions::new().timeout(SEC)).await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { last_error: None, .. }), "held all along: {err}");
    assert_eq!(Instant::now() - start, SEC, "it gives up at the deadline, not after one more call");
    let calls = store.op_counts().acquire;
    settle().await;
    tokio::time::sleep(SEC).await;
    assert_eq!(store.op_counts().acquire, calls, "no call left running past the deadline");
}

#[tokio::test(start_paused = true)]
async fn mutual_exclusion_16_tasks_by_100_increments() {
    lock_testkit::conformance::mutual_exclusion_race(MemoryBackend::new()).await;
}

#[tokio::test(start_paused = true)]
async fn arc_dyn_backend_works_with_the_client() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let guard = LockClient::new(backend).mutex("dyn").unwrap().lock().await.unwrap();
    guard.release().await.unwrap();
}

#[test]
fn invalid_keys_are_rejected() {
    let client = LockClient::new(MemoryBackend::new());
    let err = client.mutex("").unwrap_err();
    assert_eq!(err.to_string(), "invalid lock key: the key is empty");
    let err = client.mutex("x".repeat(lock_core::MAX_KEY_LEN + 1)).unwrap_err();
    assert!(err.to_string().contains("the maximum is 4096"), "{err}");
    assert!(client.mutex("x".repeat(lock_core::MAX_KEY_LEN)).is_ok());
    let prefixed = LockClient::with_config(
        MemoryBackend::new(),
        LockConfig::builder().key_prefix("app:").build().unwrap(),
    )
    .unwrap();
    assert!(prefixed.mutex("").is_err(), "a prefix does not make an empty key valid");
    assert_eq!(prefixed.mutex("k").unwrap().key().as_str(), "app:k");
}

/// The watchdog's batch (issue 14): leases due close together are renewed in one
/// `extend_many` call, and an owner mismatch on one key ends that lease alone.
#[tokio::test(start_paused = true)]
async fn a_batch_in_which_one_key_was_taken_over_loses_only_that_lease() {
    let store = MemoryBackend::new();
    let client = client(store.clone());
    let mut guards = Vec::new();
    for k in ["batch-a", "batch-b", "batch-c"] {
        guards.push(client.mutex(k).unwrap().lock().await.unwrap());
        tokio::time::sleep(10 * MS).await; // due 10 ms apart: one window
    }
    store.evict("batch-b");
    store.force_hold("batch-b", Token::random(), 30 * SEC).unwrap();
    let reason = guards[1].lost().await;
    assert!(matches!(reason, LostReason::NotOwner), "{reason:?}");
    tokio::time::sleep(4_500 * MS).await;
    assert!(guards[0].is_held() && guards[2].is_held(), "the other leases of the batch are kept");
    let stats = client.renewal_stats();
    // 3 renewals in the first batch (1 s), then 2 in each of the next four (2 s to 5 s).
    assert_eq!((stats.batches, stats.renewals), (5, 11), "{stats:?}");
    assert_eq!(store.op_counts().extend, 11);
    assert_eq!(stats.worst_lateness, Duration::ZERO, "paused time: nothing is late");
    for g in [guards.remove(2), guards.remove(0)] {
        g.release().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn leases_due_far_apart_are_renewed_in_batches_of_their_own() {
    let store = MemoryBackend::new();
    let client = client(store.clone());
    let a = client.mutex("apart-a").unwrap().lock().await.unwrap();
    tokio::time::sleep(500 * MS).await; // more than the window (an eighth of the interval)
    let b = client.mutex("apart-b").unwrap().lock().await.unwrap();
    tokio::time::sleep(1_600 * MS).await;
    let stats = client.renewal_stats();
    assert_eq!((stats.batches, stats.renewals), (3, 3), "a at 1 s and 2 s, b at 1.5 s: {stats:?}");
    a.release().await.unwrap();
    b.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_batch_loses_each_lease_at_its_own_deadline() {
    let faulty = Faulty::new(MemoryBackend::new());
    let client = client(faulty.clone());
    let first = client.mutex("hang-a").unwrap().lock().await.unwrap();
    tokio::time::sleep(50 * MS).await;
    let second = client.mutex("hang-b").unwrap().lock().await.unwrap();
    faulty.inject_always(Op::Extend, Fault::Hang);
    let (d1, d2) = (first.valid_until(), second.valid_until());
    assert!(d2 > d1);
    first.lost().await;
    assert_eq!(Instant::now(), d1, "the first lease is lost at its own deadline");
    assert!(second.is_held(), "the second is not lost with it");
    second.lost().await;
    assert_eq!(Instant::now(), d2);
    assert_eq!(client.renewal_stats().batches, 1, "both were in one batch");
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_stops_when_nothing_is_held_and_starts_again() {
    let store = MemoryBackend::new();
    let client = client(store.clone());
    let g = client.mutex("again").unwrap().lock().await.unwrap();
    tokio::time::sleep(1_100 * MS).await;
    g.release().await.unwrap();
    tokio::time::sleep(5 * SEC).await;
    assert_eq!(store.op_counts().extend, 1, "no renewal after the release");
    let g = client.mutex("again").unwrap().lock().await.unwrap();
    tokio::time::sleep(2_100 * MS).await;
    assert_eq!(store.op_counts().extend, 3, "the next lease is renewed again");
    g.release().await.unwrap();
}

/// Every fair lock's lease is released through `release_contended` (fair waiters are likely
/// queued: the Redis drivers then send their full release, which hands the lock over, at once,
/// with no short first try); every other lock through `release`, waited for or not (the short
/// release announces a lock plain waiters were refused). A dropped guard's background release
/// follows the same rule.
#[tokio::test(start_paused = true)]
async fn only_fair_locks_release_through_the_full_form() {
    let backend = MemoryBackend::new();
    let counts = |b: &MemoryBackend| (b.op_counts().release, b.op_counts().release_contended);
    let locks = client(backend.clone());

    // At the first try: the plain release.
    locks.mutex("k").unwrap().lock().await.unwrap().release().await.unwrap();
    assert_eq!(counts(&backend), (1, 0));

    // Waited for: refused once while another handle held it. The short release announces a
    // lock plain waiters were refused, so the waiter's release is the plain one too.
    let first = locks.mutex("k").unwrap().lock().await.unwrap();
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.mutex("k").unwrap().lock().await.unwrap() })
    };
    tokio::time::sleep(50 * MS).await;
    first.release().await.unwrap();
    let second = waiter.await.unwrap();
    assert_eq!(counts(&backend), (2, 0), "the first holder got it at once");
    second.release().await.unwrap();
    assert_eq!(counts(&backend), (3, 0), "a mutex waiter's release is the plain one");

    // A fair lock, even uncontended: its release hands the lock over in the same call.
    locks.fair_mutex("f").unwrap().lock().await.unwrap().release().await.unwrap();
    assert_eq!(counts(&backend), (4, 1));

    // Dropped: the background release of a fair lock is the full one too.
    drop(locks.fair_mutex("f").unwrap().lock().await.unwrap());
    settle().await;
    assert_eq!(counts(&backend), (5, 2));
    drop(locks.mutex("k").unwrap().lock().await.unwrap());
    settle().await;
    assert_eq!(counts(&backend), (6, 2), "a dropped mutex guard's release is the plain one");
}

/// A hand-over notice is taken only when it names the waiter deadline of the waiter's latest
/// call. Here the notice of a grant made on the deadline of the waiter's second call is read
/// only during its third call (the waiter was descheduled, or the notice was slow), and that
/// third call was served after the grant had expired: it queued the waiter again, with a new
/// deadline. The grant is gone, so the notice must not make a lease (before the fix it did,
/// with its validity counted from the third call: a holder the server no longer knew); the
/// waiter calls again, and holds the lock only when the server grants it.
#[tokio::test(start_paused = true)]
async fn a_hand_over_notice_naming_an_earlier_deadline_makes_no_lease() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use lock_core::{Capabilities, FairOutcome, FencingToken, Grant, HandOver, ReleaseOutcome, ReleaseWatch};
    use lock_testkit::{MockBackend, MockFair, MockFairOps};

    let (notices, rx) = tokio::sync::watch::channel(0u64);
    let handed: Arc<Mutex<Option<HandOver>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    // What a recording wrapper (the chaos runner's) is told the waiter took.
    let taken: Arc<Mutex<Vec<HandOver>>> = Arc::default();
    let taken_log = Arc::clone(&taken);
    let mut lock = MockBackend::new();
    lock.expect_name().return_const("mock".to_string());
    lock.expect_capabilities().return_const(Capabilities::new(true, true));
    lock.expect_release().times(1).returning(|_, _| Ok(ReleaseOutcome::Released));
    let mut fair = MockFairOps::new();
    let read = Arc::clone(&handed);
    let watch = Mutex::new(Some(
        ReleaseWatch::new(rx)
            .with_handover(move || *read.lock().unwrap_or_else(|p| p.into_inner()))
            .on_handover(move |h| taken_log.lock().unwrap().push(h)),
    ));
    fair.expect_watch_turn().times(1).returning(move |_, _| Ok(watch.lock().unwrap().take()));
    let (seen, told) = (Arc::clone(&calls), Arc::clone(&handed));
    fair.expect_fair_acquire().returning(move |req| {
        let waiting = |d| Ok(FairOutcome::Waiting { ahead: 0, retry_in: None, deadline: Some(d) });
        match seen.fetch_add(1, Ordering::SeqCst) + 1 {
            // Queued; queued again after subscribing (deadline 2).
            n @ (1 | 2) => waiting(n),
            // The notice of the grant made on deadline 2 arrives now; the call itself was
            // served after that grant expired, and queued the waiter again.
            3 => {
                *told.lock().unwrap() = Some(HandOver { fence: 5, deadline: 2 });
                notices.send_modify(|n| *n += 1);
                waiting(3)
            }
            _ => Ok(FairOutcome::Acquired(
                Grant::from_start(Instant::now(), req.ttl, Some(FencingToken(9))).unwrap(),
            )),
        }
    });
    let locks = client(MockFair { lock, fair });
    let guard =
        locks.fair_mutex("stale").unwrap().lock_with(LockOptions::new().watchdog(false)).await.unwrap();
    assert_eq!(
        guard.fencing_token(),
        Some(FencingToken(9)),
        "the lease is the server's grant, not the stale notice's"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4, "the stale notice woke the waiter, which called again");
    assert_eq!(*taken.lock().unwrap(), Vec::new(), "a stale notice is not reported as taken");
    guard.release().await.unwrap();
}
