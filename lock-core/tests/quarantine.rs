//! The data-loss quarantine and clock-based fence counters on the Memory model, on paused time:
//! no grant during the quarantine, grants right after it, every client sees the same one, the
//! holder of a lost lease is told, a timeout names the quarantine, and fencing tokens keep
//! rising across the loss.

use std::time::Duration;

use lock_core::{BackendErrorKind, Instant, LockClient, LockConfig, LockError, LockOptions, LostReason};
use lock_testkit::MemoryBackend;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn config() -> LockConfig {
    LockConfig::builder()
        .ttl(2 * SEC)
        .renew_interval(500 * MS)
        .retry_backoff(10 * MS, 100 * MS)
        .fencing(true)
        .build()
        .unwrap()
}

fn names_quarantine(e: &LockError) -> bool {
    match e {
        LockError::Backend { source, .. } | LockError::Timeout { last_error: Some(source), .. } => {
            source.kind() == BackendErrorKind::Quarantined
        }
        _ => false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_wiped_store_grants_nothing_for_its_quarantine_then_grants_at_once() {
    let store = MemoryBackend::with_quarantine(5 * SEC);
    let a = LockClient::with_config(store.clone(), config()).unwrap();
    let held = a.mutex("q").unwrap().lock().await.unwrap();
    let before = held.fencing_token().unwrap();
    store.wipe();
    let reason =
        tokio::time::timeout(SEC, held.lost()).await.expect("the holder is told at its next renewal");
    assert!(matches!(reason, LostReason::NotOwner), "{reason}");

    let noticed = Instant::now();
    let err = a.mutex("q").unwrap().try_lock().await.unwrap_err();
    assert!(names_quarantine(&err), "{err}");
    // Another client, which never used the store, sees the same quarantine.
    let b = LockClient::with_config(store.clone(), config()).unwrap();
    let err = b.mutex("other-key").unwrap().try_lock().await.unwrap_err();
    assert!(names_quarantine(&err), "{err}");
    // A timeout inside the quarantine ends on time and names it.
    let err = b.mutex("q").unwrap().lock_with(LockOptions::new().timeout(SEC)).await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }) && names_quarantine(&err), "{err}");
    assert_eq!(Instant::now() - noticed, SEC, "the waiter stopped exactly at its timeout");
    // A waiter gets the lock at the quarantine's end, not before.
    let guard = b.mutex("q").unwrap().lock_with(LockOptions::new().timeout(10 * SEC)).await.unwrap();
    let at = Instant::now() - noticed;
    assert!(at >= 5 * SEC && at <= 5 * SEC + 100 * MS, "granted {at:?} after the loss was noticed");
    assert!(guard.fencing_token().unwrap() > before, "the re-created counter went back");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_quarantine_is_never_below_the_noticing_ttl() {
    let store = MemoryBackend::with_quarantine(10 * MS);
    store.wipe();
    let locks = LockClient::with_config(store, config()).unwrap();
    let start = Instant::now();
    let guard = locks.mutex("q").unwrap().lock_with(LockOptions::new().timeout(10 * SEC)).await.unwrap();
    assert!(Instant::now() - start >= 2 * SEC, "the 2 s TTL is the floor of a 10 ms quarantine");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn declaring_fresh_lifts_the_quarantine() {
    let store = MemoryBackend::with_quarantine(60 * SEC);
    store.wipe();
    let locks = LockClient::with_config(store.clone(), config()).unwrap();
    assert!(names_quarantine(&locks.mutex("q").unwrap().try_lock().await.unwrap_err()));
    store.declare_fresh();
    locks.mutex("q").unwrap().try_lock().await.unwrap().expect("free").release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fencing_tokens_keep_rising_across_wipes() {
    let store = MemoryBackend::with_quarantine(2 * SEC);
    let locks = LockClient::with_config(store.clone(), config()).unwrap();
    let mutex = locks.mutex("fence").unwrap();
    let mut last = 0;
    for round in 0..5 {
        let guard = mutex.lock_with(LockOptions::new().timeout(10 * SEC)).await.unwrap();
        let fence = guard.fencing_token().unwrap().0;
        assert!(fence > last, "round {round}: {fence} after {last}");
        last = fence;
        guard.release().await.unwrap();
        store.wipe();
    }
}

#[tokio::test(start_paused = true)]
async fn an_old_snapshot_is_the_loss_the_marker_cannot_see() {
    // The control: counters rolled back with the marker kept, on a store minting from the bare
    // counter (the replaced design), give a token that goes back.
    let store = MemoryBackend::with_counter_only_fences(lock_core::scripts::DEFAULT_QUARANTINE);
    let locks = LockClient::with_config(store.clone(), config()).unwrap();
    let first = locks.mutex("snap").unwrap().lock().await.unwrap();
    let before = first.fencing_token().unwrap();
    first.release().await.unwrap();
    store.restore_old_snapshot();
    let again = locks.mutex("snap").unwrap().try_lock().await.unwrap().expect("no quarantine: unseen");
    assert!(
        again.fencing_token().unwrap() <= before,
        "the control must show the blind spot (a token handed out again)"
    );
}

#[tokio::test(start_paused = true)]
async fn an_old_snapshot_does_not_send_tokens_back() {
    // The clock floor: a rolled-back counter still mints above every earlier token.
    let store = MemoryBackend::new();
    let locks = LockClient::with_config(store.clone(), config()).unwrap();
    let mut before = 0;
    for _ in 0..3 {
        let g = locks.mutex("snap").unwrap().lock().await.unwrap();
        before = g.fencing_token().unwrap().0;
        g.release().await.unwrap();
    }
    store.restore_old_snapshot();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let again = locks.mutex("snap").unwrap().try_lock().await.unwrap().expect("no quarantine: unseen");
    assert!(again.fencing_token().unwrap().0 > before, "the clock floor must keep tokens rising");
}
