//! Sentinel contracts: a backend that finds its primary through Redis Sentinel locks, waits,
//! renews and releases as on one server, and follows a failover. Each is a named
//! `pub async fn` over a [`SentinelGroup`]; [`crate::sentinel_suite!`] stamps them on a backend
//! built from the master name and the sentinels' URLs.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lock_core::scripts::RedisKeys;
use lock_core::{Instant, LockBackend, LockClient, LockConfig, LockKey, LockOptions};

use crate::SentinelGroup;
use crate::resp::Resp;

const MS: Duration = Duration::from_millis(1);

/// How long a backend may take to reach the new primary once the sentinels name it.
pub const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

fn exists_on(group: &SentinelGroup, key: &str) -> bool {
    let redis_key = RedisKeys::for_key(&LockKey::new(key).unwrap()).lock;
    group.primary().unwrap().cmd(&["EXISTS", &redis_key]).unwrap() == Resp::Int(1)
}

/// Lock, wait, renew and release through the sentinels: a lease with a 1 s TTL held 2.5 s is
/// kept by the watchdog, a waiter with a 10 s backoff is woken within 100 ms of the release
/// (the subscriber found the primary too), and the key is on the primary the sentinels name.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B) {
/// let group = lock_testkit::SentinelGroup::start().unwrap();
/// lock_testkit::failover::lock_wait_renew_release(backend, &group).await;
/// # }
/// ```
pub async fn lock_wait_renew_release<B: LockBackend + Clone>(backend: B, group: &SentinelGroup) {
    assert!(backend.endpoint().starts_with("sentinel["), "endpoint {:?}", backend.endpoint());
    let config = LockConfig::builder()
        .fencing(true)
        .ttl(1_000 * MS)
        .renew_interval(250 * MS)
        .acquire_timeout(10_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let guard = holder.mutex("sentinel:basic").unwrap().lock().await.unwrap();
    assert!(exists_on(group, "sentinel:basic"), "the lock is not on the primary the sentinels name");
    let waiter = LockClient::with_config(backend, config).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("sentinel:basic").unwrap().lock().await.unwrap();
        let at = Instant::now();
        let fence = g.fencing_token();
        g.release().await.unwrap();
        (at, fence)
    });
    tokio::time::sleep(2_500 * MS).await;
    assert!(guard.is_held(), "the watchdog did not keep a 1 s lease for 2.5 s");
    let first = guard.fencing_token();
    let released = Instant::now();
    guard.release().await.unwrap();
    let (acquired, fence) =
        tokio::time::timeout(5_000 * MS, task).await.expect("the waiter never got it").unwrap();
    let gap = acquired.saturating_duration_since(released);
    assert!(gap < 100 * MS, "the waiter acquired {gap:?} after the release: it was not woken");
    assert!(fence > first, "fencing tokens went backwards: {fence:?} after {first:?}");
    assert!(!exists_on(group, "sentinel:basic"), "the key was left behind after release");
}

/// A forced failover while a lease is held and a waiter waits. Before it the lock and its
/// fencing counter have replicated (`WAIT`), and the replica's script cache is flushed (the
/// promoted server answers `NOSCRIPT` until the backend sends the script again). Then:
/// the holder either keeps its lease (the key replicated, so renewals land on the new primary)
/// or is told it is lost by its deadline, never both holding and overlapped: the waiter gets
/// the lock only after the holder released or lost it; the backend reaches the new primary
/// within [`FOLLOW_WITHIN`] of the sentinels naming it; fencing tokens keep rising across the
/// failover; and release notices still wake a waiter within 100 ms.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B) {
/// let group = lock_testkit::SentinelGroup::start().unwrap();
/// lock_testkit::failover::failover_is_followed(backend, &group).await;
/// # }
/// ```
pub async fn failover_is_followed<B: LockBackend + Clone>(backend: B, group: &SentinelGroup) {
    let config = LockConfig::builder()
        .fencing(true)
        .ttl(3_000 * MS)
        .renew_interval(500 * MS)
        .acquire_timeout(20_000 * MS)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let guard = holder.mutex("sentinel:failover").unwrap().lock().await.unwrap();
    let first = guard.fencing_token();
    group.sync_replica().unwrap();
    let flushed = group.replica().unwrap().cmd(&["SCRIPT", "FLUSH"]).unwrap();
    assert_eq!(flushed, Resp::Simple("OK".into()));

    let waiter = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let waiting = tokio::spawn(async move {
        let g = waiter.mutex("sentinel:failover").unwrap().lock().await.unwrap();
        let at = Instant::now();
        let fence = g.fencing_token();
        g.release().await.unwrap();
        (at, fence)
    });
    let old = group.primary().unwrap().addr();
    let new = tokio::task::block_in_place(|| group.failover()).unwrap();
    assert_ne!(old, new, "the failover did not move the primary");
    let named = Instant::now();

    // The backend reaches the new primary: a fresh key lands there within FOLLOW_WITHIN.
    let probe = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let g = probe
        .mutex("sentinel:probe")
        .unwrap()
        .lock_with(LockOptions::new().timeout(FOLLOW_WITHIN))
        .await
        .unwrap_or_else(|e| panic!("the backend did not reach the new primary {new}: {e}"));
    assert!(named.elapsed() < FOLLOW_WITHIN, "took {:?} to follow the failover", named.elapsed());
    assert_eq!(group.primary().unwrap().addr(), new);
    assert!(exists_on(group, "sentinel:probe"), "the probe lock is not on the new primary {new}");
    assert!(g.fencing_token() > first, "fencing went backwards across the failover");
    g.release().await.unwrap();

    // Kept (renewed on the new primary) or lost by its deadline; either way never overlapped.
    tokio::time::sleep(1_000 * MS).await;
    let kept = guard.is_held();
    let holder_done = Instant::now();
    if kept {
        guard.release().await.unwrap();
    } else {
        let told = tokio::time::timeout(100 * MS, guard.lost()).await;
        assert!(told.is_ok(), "a lease neither held nor reported lost");
    }
    let (acquired, fence) =
        tokio::time::timeout(20_000 * MS, waiting).await.expect("the waiter never got the lock").unwrap();
    assert!(
        acquired >= holder_done || !kept,
        "the waiter acquired while the holder still held its lease across the failover"
    );
    assert!(fence > first, "fencing went backwards across the failover: {fence:?} after {first:?}");

    // Release notices reach waiters through the new primary.
    let slow = LockConfig::builder()
        .ttl(10_000 * MS)
        .acquire_timeout(15_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), slow.clone()).unwrap();
    let guard = holder.mutex("sentinel:notice").unwrap().lock().await.unwrap();
    let waiter = LockClient::with_config(backend, slow).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("sentinel:notice").unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(500 * MS).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let at = tokio::time::timeout(12_000 * MS, task).await.expect("the waiter never woke").unwrap();
    let gap = at.saturating_duration_since(released);
    assert!(gap < 100 * MS, "after the failover a waiter acquired {gap:?} after the release: not woken");
}

/// The doctor reports a backend that reaches its primary through Sentinel with the `sentinel`
/// warning, whose fix names fencing and RedLock.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend>(backend: B) {
/// lock_testkit::failover::doctor_warns_about_sentinel(backend).await;
/// # }
/// ```
pub async fn doctor_warns_about_sentinel<B: LockBackend>(backend: B) {
    let findings = backend.check_deployment().await.unwrap();
    let finding = findings.iter().find(|f| f.code == "sentinel").unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(finding.severity, lock_core::doctor::Severity::Warning);
    assert!(finding.fix.contains("fencing") && finding.fix.contains("RedLock"), "{finding}");
}

/// Stamps the Sentinel contracts on a backend built by `$connect(master_name, sentinel_urls)`,
/// an async fn returning the backend (panicking on error), as one `#[tokio::test]` each: each
/// test starts its own [`SentinelGroup`] on free loopback ports. See
/// `lock-redis-rs/tests/sentinel.rs` and `lock-fred/tests/sentinel.rs`.
#[macro_export]
macro_rules! sentinel_suite {
    ($connect:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_wait_renew_release() {
            let group = $crate::SentinelGroup::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(group.master_name().to_string(), group.sentinel_urls()).await;
            $crate::failover::lock_wait_renew_release(backend, &group).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn failover_is_followed() {
            let group = $crate::SentinelGroup::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(group.master_name().to_string(), group.sentinel_urls()).await;
            $crate::failover::failover_is_followed(backend, &group).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn doctor_warns_about_sentinel() {
            let group = $crate::SentinelGroup::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(group.master_name().to_string(), group.sentinel_urls()).await;
            $crate::failover::doctor_warns_about_sentinel(backend).await;
        }
    };
}
