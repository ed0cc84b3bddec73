//! The shared conformance suite: each [`LockBackend`] contract is a named `pub async fn`.
//!
//! Run all of them for a backend with one line, [`crate::conformance_suite!`]. Each function
//! uses fresh random keys, so one server can serve every test at once. They panic (assert) on
//! a broken contract: this module is test code.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, ExtendOutcome, ExtendRequest, FencingToken, Grant, Instant, LockBackend,
    LockClient, LockConfig, LockKey, ReleaseOutcome, Renewal, Token,
};

const MS: Duration = Duration::from_millis(1);

/// A fresh key with a random suffix, so tests never collide on a shared server.
pub fn unique_key(name: &str) -> LockKey {
    LockKey::new(format!("conformance:{name}:{:016x}", rand::random::<u64>())).unwrap()
}

fn req(key: &LockKey, token: Token, ttl: Duration, fencing: bool) -> AcquireRequest {
    AcquireRequest { key: key.clone(), token, ttl, fencing }
}

async fn must_acquire<B: LockBackend>(b: &B, r: &AcquireRequest) -> Grant {
    match b.acquire(r).await {
        Ok(AcquireOutcome::Acquired(g)) => g,
        other => panic!("{}: expected {} to be granted, got {other:?}", b.name(), r.key),
    }
}

async fn must_be_held<B: LockBackend>(b: &B, key: &LockKey) -> Option<Duration> {
    match b.acquire(&req(key, Token::random(), 10_000 * MS, false)).await {
        Ok(AcquireOutcome::Held { remaining }) => remaining,
        other => panic!("{}: expected {key} to be held by another owner, got {other:?}", b.name()),
    }
}

/// A free key is granted; the validity is counted from before the request and is in the future.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::acquire_free_key_is_granted(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn acquire_free_key_is_granted<B: LockBackend>(b: B) {
    let key = unique_key("free");
    let ttl = 10_000 * MS;
    let before = Instant::now();
    let grant = must_acquire(&b, &req(&key, Token::random(), ttl, false)).await;
    assert!(grant.valid_until <= before + ttl, "validity must be counted from before the request");
    assert!(grant.valid_until > Instant::now(), "a grant must not be handed out already expired");
    assert_eq!(grant.fence, None, "no fence was asked for");
}

/// A key held by another owner is reported as held with its remaining TTL (contention is Ok).
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::acquire_held_key_reports_remaining_ttl(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn acquire_held_key_reports_remaining_ttl<B: LockBackend>(b: B) {
    let key = unique_key("held");
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
    let remaining = must_be_held(&b, &key).await;
    if let Some(r) = remaining {
        assert!(r > Duration::ZERO && r <= 10_000 * MS, "remaining ttl {r:?} out of range");
    }
}

/// Acquiring again with the same token refreshes the expiry and succeeds with the same fence.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::acquire_is_idempotent_for_the_same_token(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn acquire_is_idempotent_for_the_same_token<B: LockBackend>(b: B) {
    let fencing = b.capabilities().fencing;
    let key = unique_key("idempotent");
    let token = Token::random();
    let first = must_acquire(&b, &req(&key, token, 300 * MS, fencing)).await;
    let second = must_acquire(&b, &req(&key, token, 10_000 * MS, fencing)).await;
    assert_eq!(first.fence, second.fence, "a re-acquire by the same owner keeps its fence");
    assert!(second.valid_until > first.valid_until);
    tokio::time::sleep(600 * MS).await;
    let remaining = must_be_held(&b, &key).await;
    if let Some(r) = remaining {
        assert!(r > 5_000 * MS, "the re-acquire refreshed the ttl to 10s, yet {r:?} remain");
    }
}

/// The owner's release deletes the key and another owner can take it.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::release_by_owner_frees_the_key(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_by_owner_frees_the_key<B: LockBackend>(b: B) {
    let key = unique_key("release");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 10_000 * MS, false)).await;
    assert_eq!(b.release(&key, &token).await.unwrap(), ReleaseOutcome::Released);
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
}

/// A release by another token changes nothing and says so.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::release_by_other_owner_is_refused(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_by_other_owner_is_refused<B: LockBackend>(b: B) {
    let key = unique_key("release-other");
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
    assert_eq!(b.release(&key, &Token::random()).await.unwrap(), ReleaseOutcome::NotHeld);
    must_be_held(&b, &key).await;
}

/// Releasing twice: the second release reports not held (idempotent, no error).
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::release_twice_reports_not_held(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_twice_reports_not_held<B: LockBackend>(b: B) {
    let key = unique_key("release-twice");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 10_000 * MS, false)).await;
    assert_eq!(b.release(&key, &token).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(b.release(&key, &token).await.unwrap(), ReleaseOutcome::NotHeld);
}

/// A key expires after its TTL and is free for the next owner.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::key_expires_after_ttl(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn key_expires_after_ttl<B: LockBackend>(b: B) {
    let key = unique_key("expiry");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 100 * MS, false)).await;
    tokio::time::sleep(300 * MS).await;
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
    assert_eq!(
        b.release(&key, &token).await.unwrap(),
        ReleaseOutcome::NotHeld,
        "expired owner must not release"
    );
}

/// The owner's extend moves the expiry; the validity is counted from before the request.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::extend_by_owner_moves_expiry(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn extend_by_owner_moves_expiry<B: LockBackend>(b: B) {
    let key = unique_key("extend");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 200 * MS, false)).await;
    let before = Instant::now();
    let ttl = 10_000 * MS;
    match b.extend(&ExtendRequest { key: key.clone(), token, ttl }).await.unwrap() {
        ExtendOutcome::Extended { valid_until } => {
            assert!(valid_until <= before + ttl && valid_until > Instant::now());
        }
        ExtendOutcome::NotHeld => panic!("{}: owner could not extend {key}", b.name()),
    }
    tokio::time::sleep(400 * MS).await;
    must_be_held(&b, &key).await;
}

/// Another token's extend changes nothing and reports not held.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::extend_by_other_owner_is_refused(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn extend_by_other_owner_is_refused<B: LockBackend>(b: B) {
    let key = unique_key("extend-other");
    must_acquire(&b, &req(&key, Token::random(), 200 * MS, false)).await;
    let other = ExtendRequest { key: key.clone(), token: Token::random(), ttl: 10_000 * MS };
    assert_eq!(b.extend(&other).await.unwrap(), ExtendOutcome::NotHeld);
    tokio::time::sleep(400 * MS).await;
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
}

/// Extending an expired lock fails and does not resurrect it.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::extend_after_expiry_is_refused(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn extend_after_expiry_is_refused<B: LockBackend>(b: B) {
    let key = unique_key("extend-expired");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 100 * MS, false)).await;
    tokio::time::sleep(300 * MS).await;
    let r = ExtendRequest { key: key.clone(), token, ttl: 10_000 * MS };
    assert_eq!(b.extend(&r).await.unwrap(), ExtendOutcome::NotHeld);
    must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, false)).await;
}

/// `extend_many` (the watchdog's batch) answers like `extend`, one answer per renewal in
/// request order, each decided alone: in a batch of 300 (more than one script call of the Redis
/// drivers), a key taken over by another owner and a key that is gone answer
/// [`ExtendOutcome::NotHeld`] and change nothing, while every other lease is renewed.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::extend_many_answers_in_order(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn extend_many_answers_in_order<B: LockBackend>(b: B) {
    const N: usize = 300;
    let (taken, gone) = (7, 150);
    let mut renewals = Vec::with_capacity(N);
    for i in 0..N {
        let key = unique_key(&format!("many-{i}"));
        let mine = Token::random();
        if i != gone {
            let owner = if i == taken { Token::random() } else { mine };
            // Long enough that the first of 300 acquires still holds when the last is taken
            // (a debug build on 2 busy cores once took longer than 600 ms for 300 RedLock
            // acquires over 5 nodes), short enough that only a renewal keeps it past the sleep.
            must_acquire(&b, &req(&key, owner, 2_000 * MS, false)).await;
        }
        renewals.push(Renewal::key(ExtendRequest { key, token: mine, ttl: 10_000 * MS }));
    }
    let answers = b.extend_many(&renewals).await;
    assert_eq!(answers.len(), N, "one answer per renewal");
    for (i, answer) in answers.iter().enumerate() {
        if i == taken || i == gone {
            assert!(matches!(answer, Ok(ExtendOutcome::NotHeld)), "renewal {i}: {answer:?}");
        } else {
            assert!(matches!(answer, Ok(ExtendOutcome::Extended { .. })), "renewal {i}: {answer:?}");
        }
    }
    // The renewed leases outlive their first TTL; the one taken over was left to its owner.
    tokio::time::sleep(2_300 * MS).await;
    for (i, r) in renewals.iter().enumerate() {
        let other = AcquireRequest {
            key: r.req.key.clone(),
            token: Token::random(),
            ttl: 1_000 * MS,
            fencing: false,
        };
        let free = matches!(b.acquire(&other).await.unwrap(), AcquireOutcome::Acquired(_));
        assert_eq!(free, i == taken || i == gone, "key {i} after the first TTL");
    }
}

/// With fencing, every new acquisition of a key gets a strictly greater token, across
/// releases and expiries. Without the capability, no token is minted.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::fencing_tokens_strictly_increase(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn fencing_tokens_strictly_increase<B: LockBackend>(b: B) {
    let key = unique_key("fence");
    if !b.capabilities().fencing {
        let g = must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, true)).await;
        assert_eq!(g.fence, None, "a backend without fencing must not invent tokens");
        return;
    }
    let mut last: Option<FencingToken> = None;
    for round in 0..5 {
        let token = Token::random();
        let ttl = if round % 2 == 0 { 10_000 * MS } else { 100 * MS };
        let g = must_acquire(&b, &req(&key, token, ttl, true)).await;
        let fence = g.fence.expect("fencing asked for and supported");
        assert!(last.is_none_or(|l| fence > l), "fence {fence} after {last:?}");
        last = Some(fence);
        if round % 2 == 0 {
            b.release(&key, &token).await.unwrap();
        } else {
            tokio::time::sleep(300 * MS).await;
        }
    }
}

/// `raise_fence` lifts the counter (never lowers it) and records the token on the owner's
/// lock, so a re-acquire returns it and the next owner gets a greater one.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::raise_fence_lifts_the_counter(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn raise_fence_lifts_the_counter<B: LockBackend>(b: B) {
    let key = unique_key("raise");
    let token = Token::random();
    if !b.capabilities().fencing {
        assert!(b.raise_fence(&key, &token, FencingToken(5)).await.is_err());
        return;
    }
    let first = must_acquire(&b, &req(&key, token, 10_000 * MS, true)).await.fence.unwrap();
    let raised = FencingToken(first.0 + 10);
    b.raise_fence(&key, &token, raised).await.unwrap();
    b.raise_fence(&key, &token, FencingToken(1)).await.unwrap(); // never lowers
    let again = must_acquire(&b, &req(&key, token, 10_000 * MS, true)).await.fence;
    assert_eq!(again, Some(raised), "a re-acquire returns the raised token");
    b.release(&key, &token).await.unwrap();
    let next = must_acquire(&b, &req(&key, Token::random(), 10_000 * MS, true)).await.fence.unwrap();
    assert!(next > raised, "the next owner's token {next} must exceed the raised {raised}");
}

/// A release wakes the key's watchers that were refused the lock after they subscribed (a
/// waiter subscribes, then retries, as `LockClient` does); backends without wake-up say so by
/// returning `None`. (A Redis release announces itself only when somebody was refused the
/// lock: see `lock_core::scripts`.)
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::release_notifies_watchers(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_notifies_watchers<B: LockBackend>(b: B) {
    let key = unique_key("wake");
    let token = Token::random();
    must_acquire(&b, &req(&key, token, 10_000 * MS, false)).await;
    let watch = b.watch_releases(&key).await.unwrap();
    if !b.capabilities().wake_up {
        assert!(watch.is_none(), "no wake-up capability, yet a watch was returned");
        return;
    }
    let mut watch = watch.expect("wake-up capability promises a watch");
    let other = b.watch_releases(&unique_key("wake-other")).await.unwrap();
    // The watcher's retry after subscribing is refused.
    let refused = b.acquire(&req(&key, Token::random(), 10_000 * MS, false)).await.unwrap();
    assert!(matches!(refused, AcquireOutcome::Held { .. }), "{refused:?}");
    assert_eq!(b.release(&key, &token).await.unwrap(), ReleaseOutcome::Released);
    assert!(watch.wait(5_000 * MS).await, "the release notice never arrived");
    let mut other = other.expect("wake-up capability promises a watch");
    assert!(!other.wait(50 * MS).await, "a release of one key must not wake another key's watchers");
}

/// Keys with braces, spaces, unicode and 1 KiB length are distinct locks that work.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::awkward_keys_work(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn awkward_keys_work<B: LockBackend>(b: B) {
    let long = "k".repeat(1024);
    let names = ["{braces}", "}starts-with-close", "a}b{c", "with space", "ünïcødé-🔒", long.as_str()];
    for name in names {
        let key = LockKey::new(format!("{name}{:08x}", rand::random::<u32>())).unwrap();
        let token = Token::random();
        must_acquire(&b, &req(&key, token, 10_000 * MS, b.capabilities().fencing)).await;
        must_be_held(&b, &key).await;
        assert_eq!(b.release(&key, &token).await.unwrap(), ReleaseOutcome::Released, "key {name:?}");
    }
}

/// Locks on distinct keys do not interfere.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::distinct_keys_are_independent(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn distinct_keys_are_independent<B: LockBackend>(b: B) {
    let (a, c) = (unique_key("indep-a"), unique_key("indep-b"));
    must_acquire(&b, &req(&a, Token::random(), 10_000 * MS, false)).await;
    must_acquire(&b, &req(&c, Token::random(), 10_000 * MS, false)).await;
}

/// Mutual exclusion through [`LockClient`]: 16 tasks each do 100 read-yield-write increments of
/// a non-atomic counter under the lock; the total is exactly 1600.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// lock_testkit::conformance::mutual_exclusion_race(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn mutual_exclusion_race<B: LockBackend + Clone>(b: B) {
    let config = LockConfig::builder()
        .ttl(10_000 * MS)
        .acquire_timeout(120_000 * MS)
        .retry_backoff(MS, 20 * MS)
        .build()
        .unwrap();
    let key = unique_key("race");
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = LockClient::with_config(b.clone(), config.clone()).unwrap();
        let key = key.clone();
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mutex = client.mutex(key.as_str()).unwrap();
            for _ in 0..100 {
                let guard = mutex.lock().await.unwrap();
                let seen = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.store(seen + 1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 1600, "an increment was lost: two holders overlapped");
}

/// Runs every conformance contract as its own `#[tokio::test]` for a backend.
///
/// `$setup` is an expression evaluated afresh in each test, yielding a future of
/// `(backend, keep_alive)`: the backend (which must be `Clone`) and anything that must live as
/// long as the test, such as the server it talks to. Prefix with `paused,` to run on paused tokio time (in-memory
/// backends only: real servers need real time).
///
/// ```no_run
/// lock_testkit::conformance_suite!(paused, async { (lock_testkit::MemoryBackend::new(), ()) });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (paused, $setup:expr) => {
        $crate::__conformance_tests!([tokio::test(start_paused = true)] $setup);
    };
    ($setup:expr) => {
        $crate::__conformance_tests!([tokio::test(flavor = "multi_thread", worker_threads = 2)] $setup);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ([$attr:meta] $setup:expr) => {
        $crate::__conformance_tests!(@each [$attr] $setup;
            acquire_free_key_is_granted,
            acquire_held_key_reports_remaining_ttl,
            acquire_is_idempotent_for_the_same_token,
            release_by_owner_frees_the_key,
            release_by_other_owner_is_refused,
            release_twice_reports_not_held,
            key_expires_after_ttl,
            extend_by_owner_moves_expiry,
            extend_by_other_owner_is_refused,
            extend_after_expiry_is_refused,
            extend_many_answers_in_order,
            fencing_tokens_strictly_increase,
            raise_fence_lifts_the_counter,
            release_notifies_watchers,
            awkward_keys_work,
            distinct_keys_are_independent,
            mutual_exclusion_race
        );
    };
    (@each [$attr:meta] $setup:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let (backend, _keep_alive) = $setup.await;
                $crate::conformance::$name(backend).await;
            }
        )*
    };
}
