//! The fair lock's contracts ([`lock_core::FairMutex`], [`lock_core::FairBackend`]), each a
//! named `pub async fn`, stamped on a backend with [`crate::fair_suite!`].
//!
//! They run on paused time (Memory) and on real servers alike: every wait is bounded and
//! generous next to a loopback round trip. The crashed-waiter contract,
//! [`crashed_waiter_is_skipped`], takes the crash as an argument (a killed process on a real
//! server, an abandoned queue entry in memory) and is stamped by hand.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use lock_core::{
    FairBackend, FairOutcome, FairRequest, Instant, LockBackend, LockClient, LockConfig, LockError, LockKey,
    ReleaseOutcome, Token,
};

use crate::conformance::unique_key;

const MS: Duration = Duration::from_millis(1);

/// The configuration the contracts use: 10 s TTL, a 2 s waiter timeout, fencing when the
/// backend has it.
pub fn fair_config<B: LockBackend>(b: &B) -> LockConfig {
    LockConfig::builder()
        .ttl(10_000 * MS)
        .acquire_timeout(30_000 * MS)
        .waiter_timeout(2_000 * MS)
        .fencing(b.capabilities().fencing)
        .build()
        .unwrap()
}

fn fair_ops<B: LockBackend>(b: &B) -> &dyn FairBackend {
    b.fair().unwrap_or_else(|| panic!("{}: no fair lock", b.name()))
}

/// How many fair waiters are queued on `key`, as a try (which never queues) reports it.
///
/// # Errors
/// None: a backend error fails the test (this panics).
///
/// # Cancel safety
/// Read-only.
pub async fn queue_len<B: LockBackend>(b: &B, key: &LockKey) -> u64 {
    let probe = FairRequest {
        key: key.clone(),
        token: Token::random(),
        ttl: 10_000 * MS,
        fencing: false,
        wait: None,
    };
    match fair_ops(b).fair_acquire(&probe).await.unwrap() {
        FairOutcome::Waiting { ahead, .. } => ahead,
        FairOutcome::Acquired(_) => {
            fair_ops(b).leave_queue(key, &probe.token).await.unwrap();
            0
        }
    }
}

/// Waits (bounded: 10 s) until `n` waiters are queued on `key`.
///
/// # Errors
/// None: a queue that never reaches `n` fails the test (this panics).
///
/// # Cancel safety
/// Read-only.
pub async fn wait_queued<B: LockBackend>(b: &B, key: &LockKey, n: u64) {
    let until = Instant::now() + 10_000 * MS;
    loop {
        let len = queue_len(b, key).await;
        if len >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{}: {len} waiters queued on {key} after 10 s, expected {n}",
            b.name()
        );
        tokio::time::sleep(5 * MS).await;
    }
}

/// Eight waiters queued one after the other are granted in that order, and a newcomer that
/// finds the lock free while they wait does not barge ahead.
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
/// lock_testkit::fair::waiters_are_served_in_arrival_order(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn waiters_are_served_in_arrival_order<B: LockBackend + Clone>(b: B) {
    let key = unique_key("fair-order");
    let config = fair_config(&b);
    let first = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let held = first.fair_mutex(key.as_str()).unwrap().lock().await.unwrap();
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let client = LockClient::with_config(b.clone(), config.clone()).unwrap();
        let (order, name) = (Arc::clone(&order), key.clone());
        tasks.push(tokio::spawn(async move {
            let guard = client.fair_mutex(name.as_str()).unwrap().lock().await.unwrap();
            order.lock().unwrap().push((i, guard.fencing_token()));
            tokio::time::sleep(2 * MS).await;
            guard.release().await.unwrap();
        }));
        // The next one arrives only once this one is queued.
        wait_queued(&b, &key, i + 1).await;
    }
    // A try never queues and never barges.
    assert!(first.fair_mutex(key.as_str()).unwrap().try_lock().await.unwrap().is_none());
    held.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(20_000 * MS, t).await.expect("every waiter is served").unwrap();
    }
    let order = order.lock().unwrap().clone();
    let served: Vec<u64> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(served, (0..8).collect::<Vec<_>>(), "{}: fair waiters served out of order", b.name());
    if b.capabilities().fencing {
        let fences: Vec<_> = order.iter().map(|(_, f)| f.unwrap()).collect();
        assert!(fences.windows(2).all(|w| w[0] < w[1]), "{}: fencing tokens {fences:?}", b.name());
    }
}

/// `try_lock` on a fair lock succeeds only when the lock is free and nobody is queued.
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
/// lock_testkit::fair::try_lock_refuses_while_waiters_queue(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn try_lock_refuses_while_waiters_queue<B: LockBackend + Clone>(b: B) {
    let key = unique_key("fair-try");
    let config = fair_config(&b);
    let a = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let c = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let held = a.fair_mutex(key.as_str()).unwrap().try_lock().await.unwrap().expect("free and nobody queued");
    assert!(c.fair_mutex(key.as_str()).unwrap().try_lock().await.unwrap().is_none(), "held");
    let waiter = {
        let client = LockClient::with_config(b.clone(), config).unwrap();
        let key = key.clone();
        tokio::spawn(async move { client.fair_mutex(key.as_str()).unwrap().lock().await.unwrap() })
    };
    wait_queued(&b, &key, 1).await;
    // Release without handing the guard to anyone: the lock is free, but the waiter is first.
    held.release().await.unwrap();
    let got = c.fair_mutex(key.as_str()).unwrap().try_lock().await.unwrap();
    let waited =
        tokio::time::timeout(5_000 * MS, waiter).await.expect("the queued waiter is served").unwrap();
    assert!(got.is_none(), "{}: try_lock barged ahead of a queued waiter", b.name());
    waited.release().await.unwrap();
    assert!(c.fair_mutex(key.as_str()).unwrap().try_lock().await.unwrap().is_some(), "free, nobody queued");
}

/// A waiter that is cancelled (its future dropped) or times out leaves the queue at once: the
/// waiter behind it is served on the release, without waiting out a waiter deadline.
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
/// lock_testkit::fair::cancelled_waiter_is_skipped(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn cancelled_waiter_is_skipped<B: LockBackend + Clone>(b: B) {
    let key = unique_key("fair-cancel");
    let config = fair_config(&b);
    let a = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let held = a.fair_mutex(key.as_str()).unwrap().lock().await.unwrap();
    let spawn_waiter = |timeout: Option<Duration>| {
        let client = LockClient::with_config(b.clone(), config.clone()).unwrap();
        let key = key.clone();
        tokio::spawn(async move {
            let m = client.fair_mutex(key.as_str()).unwrap();
            match timeout {
                Some(t) => m.lock_with(lock_core::LockOptions::new().timeout(t)).await,
                None => m.lock().await,
            }
        })
    };
    let cancelled = spawn_waiter(None);
    wait_queued(&b, &key, 1).await;
    let timed_out = spawn_waiter(Some(300 * MS));
    wait_queued(&b, &key, 2).await;
    let last = spawn_waiter(None);
    wait_queued(&b, &key, 3).await;
    cancelled.abort();
    let gave_up = tokio::time::timeout(5_000 * MS, timed_out).await.unwrap().unwrap();
    assert!(matches!(gave_up, Err(LockError::Timeout { .. })), "{gave_up:?}");
    // Both left in the background; only `last` stays.
    let until = Instant::now() + 1_000 * MS;
    while queue_len(&b, &key).await > 1 {
        assert!(Instant::now() < until, "{}: cancelled waiters still queued after 1 s", b.name());
        tokio::time::sleep(5 * MS).await;
    }
    let released = Instant::now();
    held.release().await.unwrap();
    let guard = tokio::time::timeout(1_500 * MS, last)
        .await
        .expect("served without waiting out the cancelled waiters' deadlines (2 s)")
        .unwrap()
        .unwrap();
    assert!(released.elapsed() < 1_500 * MS);
    guard.release().await.unwrap();
}

/// A waiter whose process dies stays queued until its waiter deadline; then the waiter behind
/// it is served, at most the waiter timeout (2 s here) plus a second after the crash. `crash`
/// queues a waiter on the key with [`fair_config`]'s waiter timeout and returns once that waiter
/// is dead without having left the queue (a killed process; in memory, a queue entry never
/// renewed).
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
/// use lock_testkit::{MemoryBackend, fair};
/// let store = MemoryBackend::new();
/// let crash = {
///     let store = store.clone();
///     move |key| async move { fair::abandoned_waiter(&store, &key).await }
/// };
/// fair::crashed_waiter_is_skipped(store, crash).await;
/// # }
/// ```
pub async fn crashed_waiter_is_skipped<B, F, Fut>(b: B, crash: F)
where
    B: LockBackend + Clone,
    F: FnOnce(LockKey) -> Fut,
    Fut: Future<Output = ()>,
{
    let key = unique_key("fair-crash");
    let config = fair_config(&b);
    let a = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let held = a.fair_mutex(key.as_str()).unwrap().lock().await.unwrap();
    crash(key.clone()).await;
    let crashed_at = Instant::now();
    assert!(queue_len(&b, &key).await >= 1, "{}: the crashed waiter is not queued", b.name());
    let behind = {
        let client = LockClient::with_config(b.clone(), config.clone()).unwrap();
        let key = key.clone();
        tokio::spawn(async move { client.fair_mutex(key.as_str()).unwrap().lock().await.unwrap() })
    };
    wait_queued(&b, &key, 2).await;
    held.release().await.unwrap();
    let bound = config.waiter_timeout() + 1_000 * MS;
    let guard = tokio::time::timeout(bound + 1_000 * MS, behind)
        .await
        .unwrap_or_else(|_| panic!("{}: a crashed waiter blocked the queue", b.name()))
        .unwrap();
    let took = crashed_at.elapsed();
    assert!(took <= bound, "{}: served {took:?} after the crash; the bound is {bound:?}", b.name());
    guard.release().await.unwrap();
}

/// A waiter queued on `key` that never calls again (the model of a crashed process): one
/// queueing call with [`fair_config`]'s waiter timeout, then nothing.
///
/// # Errors
/// None: a backend error fails the test (this panics).
///
/// # Cancel safety
/// Test code.
pub async fn abandoned_waiter<B: LockBackend>(b: &B, key: &LockKey) {
    let req = FairRequest {
        key: key.clone(),
        token: Token::random(),
        ttl: 10_000 * MS,
        fencing: false,
        wait: Some(fair_config(b).waiter_timeout()),
    };
    let outcome = fair_ops(b).fair_acquire(&req).await.unwrap();
    assert!(matches!(outcome, FairOutcome::Waiting { .. }), "the lock is held: {outcome:?}");
}

/// A release wakes the head of the queue only: one turn notice, not one per waiter (no herd).
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
/// lock_testkit::fair::release_wakes_only_the_head(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_wakes_only_the_head<B: LockBackend>(b: B) {
    if !b.capabilities().wake_up {
        return;
    }
    let key = unique_key("fair-herd");
    let fair = fair_ops(&b);
    let req = |token| FairRequest {
        key: key.clone(),
        token,
        ttl: 10_000 * MS,
        fencing: false,
        wait: Some(5_000 * MS),
    };
    let holder = Token::random();
    assert!(matches!(fair.fair_acquire(&req(holder)).await.unwrap(), FairOutcome::Acquired(_)));
    let waiters: Vec<Token> = (0..5).map(|_| Token::random()).collect();
    let mut watches = Vec::new();
    for (i, t) in waiters.iter().enumerate() {
        watches.push(fair.watch_turn(&key, t).await.unwrap().expect("wake-up"));
        match fair.fair_acquire(&req(*t)).await.unwrap() {
            FairOutcome::Waiting { ahead, .. } => {
                assert_eq!(ahead, i as u64, "{}: place in the queue", b.name())
            }
            other => panic!("{}: expected to queue, got {other:?}", b.name()),
        }
    }
    assert_eq!(b.release(&key, &holder).await.unwrap(), ReleaseOutcome::Released);
    let mut woken = Vec::new();
    for (i, w) in watches.iter_mut().enumerate() {
        let within = if i == 0 { 2_000 * MS } else { 200 * MS };
        woken.push(w.wait(within).await);
    }
    assert_eq!(
        woken,
        [true, false, false, false, false],
        "{}: the release must wake the head alone",
        b.name()
    );
    // The head takes it; the others are still queued behind it, in order.
    assert!(matches!(fair.fair_acquire(&req(waiters[0])).await.unwrap(), FairOutcome::Acquired(_)));
    assert!(matches!(
        fair.fair_acquire(&req(waiters[2])).await.unwrap(),
        FairOutcome::Waiting { ahead: 1, .. }
    ));
    for t in &waiters[1..] {
        fair.leave_queue(&key, t).await.unwrap();
    }
    // Leaving the queue while another holds the lock wakes no one.
    for w in &mut watches[1..] {
        assert!(!w.wait(50 * MS).await);
    }
    assert_eq!(b.release(&key, &waiters[0]).await.unwrap(), ReleaseOutcome::Released);
}

/// A release hands the lock to the head of the queue at once: before the head calls again, the
/// lock is already its own (a plain mutex on the name cannot slip in), its turn notice says so
/// with a fencing token above the last holder's and the waiter deadline its latest call set
/// (its `Waiting` reply names it), and its next call finds the lock its own with that same
/// token.
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
/// lock_testkit::fair::release_hands_the_lock_to_the_head(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn release_hands_the_lock_to_the_head<B: LockBackend>(b: B) {
    let key = unique_key("fair-hand-over");
    let fair = fair_ops(&b);
    let fencing = b.capabilities().fencing;
    let req =
        |token| FairRequest { key: key.clone(), token, ttl: 10_000 * MS, fencing, wait: Some(5_000 * MS) };
    let holder = Token::random();
    let FairOutcome::Acquired(first) = fair.fair_acquire(&req(holder)).await.unwrap() else {
        panic!("{}: a free lock must be granted", b.name())
    };
    let head = Token::random();
    let mut watch = if b.capabilities().wake_up { fair.watch_turn(&key, &head).await.unwrap() } else { None };
    let FairOutcome::Waiting { ahead: 0, deadline: Some(_), .. } =
        fair.fair_acquire(&req(head)).await.unwrap()
    else {
        panic!("{}: a waiter queued first is at the head, with its deadline", b.name())
    };
    // A waiter renews its place: the hand-over names the deadline its latest call set.
    tokio::time::sleep(5 * MS).await;
    let FairOutcome::Waiting { ahead: 0, deadline: Some(latest), .. } =
        fair.fair_acquire(&req(head)).await.unwrap()
    else {
        panic!("{}: a queued waiter's next call keeps its place, with its deadline", b.name())
    };
    assert_eq!(b.release(&key, &holder).await.unwrap(), ReleaseOutcome::Released);
    let plain =
        lock_core::AcquireRequest { key: key.clone(), token: Token::random(), ttl: 10_000 * MS, fencing };
    assert!(
        matches!(b.acquire(&plain).await.unwrap(), lock_core::AcquireOutcome::Held { .. }),
        "{}: the released lock must already be the head's",
        b.name()
    );
    if let Some(w) = &mut watch {
        // A watch may also wake for nothing (e.g. when its subscription was first confirmed).
        let until = Instant::now() + 2_000 * MS;
        while w.handed_over().is_none() && Instant::now() < until {
            w.wait(until - Instant::now()).await;
        }
        let Some(handed) = w.handed_over() else {
            panic!("{}: the head must be told the lock was handed over", b.name())
        };
        assert_eq!(handed.deadline, latest, "{}: the notice names the head's latest deadline", b.name());
        if let Some(before) = first.fence {
            let fence = handed.fence;
            assert!(fence > before.0, "{}: handed over with fence {fence} after {}", b.name(), before.0);
        }
    }
    let FairOutcome::Acquired(grant) = fair.fair_acquire(&req(head)).await.unwrap() else {
        panic!("{}: the head's next call must find the lock its own", b.name())
    };
    if let (Some(w), Some(fence)) = (&watch, grant.fence) {
        assert_eq!(
            w.handed_over().map(|h| h.fence),
            Some(fence.0),
            "{}: the same token as the notice",
            b.name()
        );
    }
    if let (Some(before), Some(after)) = (first.fence, grant.fence) {
        assert!(after > before, "{}: fence {after:?} after {before:?}", b.name());
    }
    assert_eq!(b.release(&key, &head).await.unwrap(), ReleaseOutcome::Released);
}

/// Through one handle, a fair lock is reentrant (the same lease, no queueing behind itself);
/// fencing tokens rise across fair acquisitions; a fair lock and a plain mutex on one name
/// exclude each other.
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
/// lock_testkit::fair::reentrant_fenced_and_exclusive_with_the_mutex(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn reentrant_fenced_and_exclusive_with_the_mutex<B: LockBackend + Clone>(b: B) {
    let key = unique_key("fair-reenter");
    let config = fair_config(&b);
    let client = LockClient::with_config(b.clone(), config.clone()).unwrap();
    let fair = client.fair_mutex(key.as_str()).unwrap();
    let mut last = None;
    for _ in 0..3 {
        let g = fair.lock().await.unwrap();
        let again = fair.lock().await.unwrap();
        assert_eq!(g.fencing_token(), again.fencing_token(), "re-entry is the same lease");
        assert_eq!(g.hold_count(), 2);
        let other = LockClient::with_config(b.clone(), config.clone()).unwrap();
        assert!(
            other.mutex(key.as_str()).unwrap().try_lock().await.unwrap().is_none(),
            "the mutex is excluded"
        );
        if let Some(f) = g.fencing_token() {
            assert!(last.is_none_or(|l| f > l), "{}: fence {f} after {last:?}", b.name());
            last = Some(f);
        }
        drop(again);
        g.release().await.unwrap();
    }
    let plain = client.mutex(key.as_str()).unwrap().lock().await.unwrap();
    assert!(
        LockClient::with_config(b.clone(), config)
            .unwrap()
            .fair_mutex(key.as_str())
            .unwrap()
            .try_lock()
            .await
            .unwrap()
            .is_none(),
        "the fair lock is excluded by the mutex"
    );
    plain.release().await.unwrap();
}

/// Stamps the fair lock's contracts (all but [`crashed_waiter_is_skipped`]) as `#[tokio::test]`s.
/// `$setup` as in [`crate::conformance_suite!`]; prefix with `paused,` for paused time.
///
/// ```no_run
/// lock_testkit::fair_suite!(paused, async { (lock_testkit::MemoryBackend::new(), ()) });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! fair_suite {
    (paused, $setup:expr) => {
        $crate::fair_suite!(@each [tokio::test(start_paused = true)] $setup);
    };
    ($setup:expr) => {
        $crate::fair_suite!(@each [tokio::test(flavor = "multi_thread", worker_threads = 2)] $setup);
    };
    (@each [$attr:meta] $setup:expr) => {
        $crate::fair_suite!(@one [$attr] $setup;
            waiters_are_served_in_arrival_order,
            try_lock_refuses_while_waiters_queue,
            cancelled_waiter_is_skipped,
            release_wakes_only_the_head,
            release_hands_the_lock_to_the_head,
            reentrant_fenced_and_exclusive_with_the_mutex
        );
    };
    (@one [$attr:meta] $setup:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let (backend, _keep_alive) = $setup.await;
                $crate::fair::$name(backend).await;
            }
        )*
    };
}
