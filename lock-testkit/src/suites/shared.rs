//! The read-write lock's and the semaphore's contracts ([`lock_core::RwLock`],
//! [`lock_core::Semaphore`], [`lock_core::SharedBackend`]), each a named `pub async fn`, stamped
//! on a backend with [`crate::rw_suite!`] and [`crate::semaphore_suite!`].
//!
//! They run on paused time (Memory) and on real servers alike: every wait is bounded and
//! generous next to a loopback round trip.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use lock_core::{
    Hold, HoldOutcome, HoldRequest, Instant, LockBackend, LockClient, LockConfig, LockError, LockKey,
    LockOptions, SharedBackend, Token,
};

use crate::conformance::unique_key;

const MS: Duration = Duration::from_millis(1);

/// The configuration the contracts use: 10 s TTL, a 2 s waiter timeout, fencing when the
/// backend has it.
pub fn shared_config<B: LockBackend>(b: &B) -> LockConfig {
    LockConfig::builder()
        .ttl(10_000 * MS)
        .acquire_timeout(30_000 * MS)
        .waiter_timeout(2_000 * MS)
        .fencing(b.capabilities().fencing)
        .build()
        .unwrap()
}

fn client<B: LockBackend + Clone>(b: &B) -> LockClient<B> {
    LockClient::with_config(b.clone(), shared_config(b)).unwrap()
}

fn shared_ops<B: LockBackend>(b: &B) -> &dyn SharedBackend {
    b.shared().unwrap_or_else(|| panic!("{}: no read-write lock or semaphore", b.name()))
}

/// Takes a hold straight from the backend with `ttl` and never renews it: a holder that
/// crashed right after its grant.
async fn crashed_holder<B: LockBackend>(b: &B, key: &LockKey, hold: Hold, ttl: Duration) {
    let req = HoldRequest { key: key.clone(), token: Token::random(), ttl, fencing: false, hold };
    let outcome = shared_ops(b).acquire_hold(&req).await.unwrap();
    assert!(matches!(outcome, HoldOutcome::Acquired(_)), "{}: {outcome:?}", b.name());
}

/// Polls (bounded: `within`) until `probe` holds; fails the test with `what` otherwise.
async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    while !probe().await {
        assert!(Instant::now() < until, "{what} (waited {within:?})");
        tokio::time::sleep(5 * MS).await;
    }
}

/// Whether a fresh handle's `try_read` is refused now (a writer holds or waits).
async fn readers_refused<B: LockBackend + Clone>(b: &B, key: &LockKey) -> bool {
    match client(b).rw_lock(key.as_str()).unwrap().try_read().await.unwrap() {
        Some(guard) => {
            guard.release().await.unwrap();
            false
        }
        None => true,
    }
}

/// Readers share: three handles hold read locks at once, each its own lease.
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
/// lock_testkit::shared::readers_share(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn readers_share<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-share");
    let mut guards = Vec::new();
    for _ in 0..3 {
        let guard = client(&b).rw_lock(key.as_str()).unwrap().try_read().await.unwrap();
        guards.push(guard.unwrap_or_else(|| panic!("{}: a reader was refused beside readers", b.name())));
    }
    assert!(guards.iter().all(lock_core::Guard::is_held));
    for g in guards {
        g.release().await.unwrap();
    }
}

/// A writer excludes readers and writers; a writer's release wakes a waiting reader; a reader
/// excludes writers until the last one leaves.
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
/// lock_testkit::shared::writer_excludes_readers_and_writers(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn writer_excludes_readers_and_writers<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-excl");
    let (a, c, d) = (client(&b), client(&b), client(&b));
    let write = a.rw_lock(key.as_str()).unwrap().write().await.unwrap();
    assert!(
        c.rw_lock(key.as_str()).unwrap().try_read().await.unwrap().is_none(),
        "{}: read beside a writer",
        b.name()
    );
    assert!(
        d.rw_lock(key.as_str()).unwrap().try_write().await.unwrap().is_none(),
        "{}: two writers",
        b.name()
    );
    let reader = {
        let (c, key) = (c.clone(), key.clone());
        tokio::spawn(async move { c.rw_lock(key.as_str()).unwrap().read().await.unwrap() })
    };
    tokio::time::sleep(50 * MS).await;
    assert!(!reader.is_finished(), "{}: a reader entered while the writer held", b.name());
    let released = Instant::now();
    write.release().await.unwrap();
    let read = tokio::time::timeout(2_000 * MS, reader)
        .await
        .expect("the writer's release wakes the reader")
        .unwrap();
    assert!(released.elapsed() < 2_000 * MS);
    assert!(
        d.rw_lock(key.as_str()).unwrap().try_write().await.unwrap().is_none(),
        "{}: a writer beside a reader",
        b.name()
    );
    read.release().await.unwrap();
    let w = d.rw_lock(key.as_str()).unwrap().try_write().await.unwrap();
    assert!(w.is_some(), "{}: the last reader left, the writer must enter", b.name());
}

/// Writers are not starved: once a writer waits, new readers queue behind it; the readers
/// already in finish, the writer enters, then the queued readers.
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
/// lock_testkit::shared::writer_not_starved_by_a_stream_of_readers(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn writer_not_starved_by_a_stream_of_readers<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-starve");
    let first = client(&b).rw_lock(key.as_str()).unwrap().read().await.unwrap();
    let events = Arc::new(StdMutex::new(Vec::new()));
    let writer = {
        let (c, key, events) = (client(&b), key.clone(), Arc::clone(&events));
        tokio::spawn(async move {
            let w = c.rw_lock(key.as_str()).unwrap().write().await.unwrap();
            events.lock().unwrap().push("writer");
            tokio::time::sleep(20 * MS).await;
            w.release().await.unwrap();
        })
    };
    // The writer is recorded as waiting: new readers are refused although only readers hold.
    eventually(5_000 * MS, "a waiting writer must hold new readers back", || readers_refused(&b, &key)).await;
    let mut stream = Vec::new();
    for _ in 0..6 {
        let (c, key, events) = (client(&b), key.clone(), Arc::clone(&events));
        stream.push(tokio::spawn(async move {
            let r = c.rw_lock(key.as_str()).unwrap().read().await.unwrap();
            events.lock().unwrap().push("reader");
            r.release().await.unwrap();
        }));
        tokio::time::sleep(10 * MS).await;
    }
    assert!(
        events.lock().unwrap().is_empty(),
        "{}: nothing may enter before the first reader leaves",
        b.name()
    );
    first.release().await.unwrap();
    tokio::time::timeout(5_000 * MS, writer).await.expect("the writer is served").unwrap();
    for r in stream {
        tokio::time::timeout(5_000 * MS, r).await.expect("the queued readers are served").unwrap();
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.first(),
        Some(&"writer"),
        "{}: readers overtook a waiting writer: {events:?}",
        b.name()
    );
    assert_eq!(events.len(), 7);
}

/// A reader that dies without releasing blocks writers only until its TTL: the writer enters
/// then.
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
/// lock_testkit::shared::crashed_reader_expires(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn crashed_reader_expires<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-crash");
    let crashed = Instant::now();
    crashed_holder(&b, &key, Hold::Read { downgrade: None }, 1_000 * MS).await;
    let rw = client(&b).rw_lock(key.as_str()).unwrap();
    assert!(rw.try_write().await.unwrap().is_none(), "{}: the reader is still live", b.name());
    let w = rw.write_with(LockOptions::new().timeout(5_000 * MS)).await.unwrap();
    let waited = crashed.elapsed();
    assert!(waited >= 900 * MS && waited < 3_500 * MS, "{}: the writer entered after {waited:?}", b.name());
    w.release().await.unwrap();
}

/// A permit holder that dies without releasing gives its permit back at its TTL.
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
/// lock_testkit::shared::crashed_permit_holder_expires(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn crashed_permit_holder_expires<B: LockBackend + Clone>(b: B) {
    let key = unique_key("sem-crash");
    let crashed = Instant::now();
    crashed_holder(&b, &key, Hold::Permit { permits: 1 }, 1_000 * MS).await;
    let sem = client(&b).semaphore(key.as_str(), 1).unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none(), "{}: the permit is still live", b.name());
    let p = sem.acquire_with(LockOptions::new().timeout(5_000 * MS)).await.unwrap();
    let waited = crashed.elapsed();
    assert!(waited >= 900 * MS && waited < 3_500 * MS, "{}: the permit came back after {waited:?}", b.name());
    p.release().await.unwrap();
}

/// Never more than N holders: 32 tasks take a semaphore of 4 permits three times each; the
/// number holding at once never exceeds 4 (and reaches it: the check is not vacuous).
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
/// lock_testkit::shared::permits_never_exceed_n_under_32_tasks(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn permits_never_exceed_n_under_32_tasks<B: LockBackend + Clone>(b: B) {
    const N: usize = 4;
    let key = unique_key("sem-32");
    let (holding, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, key, holding, most) = (client(&b), key.clone(), Arc::clone(&holding), Arc::clone(&most));
        tasks.push(tokio::spawn(async move {
            let sem = c.semaphore(key.as_str(), N as u32).unwrap();
            for _ in 0..3 {
                let permit = sem.acquire().await.unwrap();
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(5 * MS).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(60_000 * MS, t).await.expect("every task is served").unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= N, "{}: {most} holders of {N} permits at once", b.name());
    assert_eq!(most, N, "{}: 32 tasks never filled the {N} permits: the check would be vacuous", b.name());
}

/// Cancel safety: a writer cancelled while it waits stops holding readers back at once (not at
/// its waiter deadline), and a permit acquisition cancelled while it waits leaks no permit.
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
/// lock_testkit::shared::cancelled_acquisitions_leave_nothing_behind(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn cancelled_acquisitions_leave_nothing_behind<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-cancel");
    let read = client(&b).rw_lock(key.as_str()).unwrap().read().await.unwrap();
    let writer = {
        let (c, key) = (client(&b), key.clone());
        tokio::spawn(async move { c.rw_lock(key.as_str()).unwrap().write().await })
    };
    eventually(5_000 * MS, "the writer must be recorded as waiting", || readers_refused(&b, &key)).await;
    writer.abort();
    // The waiter timeout is 2 s: readers must be let in well before it.
    eventually(1_000 * MS, "a cancelled writer still held readers back", || async {
        !readers_refused(&b, &key).await
    })
    .await;
    read.release().await.unwrap();

    let key = unique_key("sem-cancel");
    let sem = client(&b).semaphore(key.as_str(), 1).unwrap();
    let held = sem.acquire().await.unwrap();
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire().await })
    };
    tokio::time::sleep(50 * MS).await;
    waiter.abort();
    held.release().await.unwrap();
    let until = Instant::now() + 1_000 * MS;
    let permit = loop {
        if let Some(p) = sem.try_acquire().await.unwrap() {
            break p;
        }
        assert!(Instant::now() < until, "{}: a cancelled acquisition kept the permit", b.name());
        tokio::time::sleep(5 * MS).await;
    };
    permit.release().await.unwrap();
}

/// Fencing: every writer's token is greater than every earlier writer's and every earlier
/// reader's; a reader's token is at least the last writer's (exactly it on one deployment). On a
/// backend without fencing, no guard carries a token.
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
/// lock_testkit::shared::writer_fencing_is_monotonic(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn writer_fencing_is_monotonic<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-fence");
    let rw = client(&b).rw_lock(key.as_str()).unwrap();
    let fencing = b.capabilities().fencing;
    // The last token seen, a writer's or a reader's: every writer is above it.
    let mut last = None;
    for _ in 0..3 {
        let w = rw.write().await.unwrap();
        let fence = w.fencing_token();
        w.release().await.unwrap();
        let r = rw.read().await.unwrap();
        let read = r.fencing_token();
        r.release().await.unwrap();
        match (fencing, fence, read) {
            (true, Some(f), Some(rf)) => {
                assert!(last.is_none_or(|l| l < f), "{}: writer token {f:?} after {last:?}", b.name());
                // Exactly the last writer's on one deployment; over a quorum, the highest
                // counter among the nodes that granted it, which is at least that.
                assert!(rf >= f, "{}: a reader's token {rf:?} is below the last writer's {f:?}", b.name());
                last = Some(rf);
            }
            (false, None, None) => {}
            other => panic!("{}: fencing {fencing}, writer and reader tokens {other:?}", b.name()),
        }
    }
}

/// Reentrancy per handle: a read while the handle holds the write lock is granted (a
/// downgrade: the read lock stays when the write lock is released); a write while it holds a
/// read lock is refused with [`LockError::Upgrade`] at once, never a deadlock.
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
/// lock_testkit::shared::upgrade_refused_downgrade_allowed(lock_testkit::MemoryBackend::new()).await;
/// # }
/// ```
pub async fn upgrade_refused_downgrade_allowed<B: LockBackend + Clone>(b: B) {
    let key = unique_key("rw-grade");
    let (mine, other) =
        (client(&b).rw_lock(key.as_str()).unwrap(), client(&b).rw_lock(key.as_str()).unwrap());
    let write = mine.write().await.unwrap();
    assert_eq!(mine.write().await.unwrap().hold_count(), 2, "a second write through the handle reenters");
    let read = tokio::time::timeout(1_000 * MS, mine.read()).await.expect("a downgrade never waits").unwrap();
    assert!(other.try_read().await.unwrap().is_none(), "{}: the write lock still excludes others", b.name());
    write.release().await.unwrap();
    assert!(read.is_held());
    let theirs = other.try_read().await.unwrap().expect("after the downgrade, readers share");
    let started = Instant::now();
    assert!(
        matches!(mine.write().await, Err(LockError::Upgrade { .. })),
        "{}: an upgrade must be refused",
        b.name()
    );
    assert!(started.elapsed() < 500 * MS, "refused at once");
    assert!(other.try_write().await.unwrap_or(None).is_none());
    theirs.release().await.unwrap();
    read.release().await.unwrap();
    assert!(other.try_write().await.unwrap().is_some(), "{}: all readers left", b.name());
}

/// Stamps the read-write lock's contracts as `#[tokio::test]`s. `$setup` as in
/// [`crate::conformance_suite!`]; prefix with `paused,` for paused time.
///
/// ```no_run
/// lock_testkit::rw_suite!(paused, async { (lock_testkit::MemoryBackend::new(), ()) });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! rw_suite {
    (paused, $setup:expr) => {
        $crate::rw_suite!(@each [tokio::test(start_paused = true)] $setup);
    };
    ($setup:expr) => {
        $crate::rw_suite!(@each [tokio::test(flavor = "multi_thread", worker_threads = 2)] $setup);
    };
    (@each [$attr:meta] $setup:expr) => {
        $crate::shared_stamp!(@one [$attr] $setup;
            readers_share,
            writer_excludes_readers_and_writers,
            writer_not_starved_by_a_stream_of_readers,
            crashed_reader_expires,
            writer_fencing_is_monotonic,
            upgrade_refused_downgrade_allowed
        );
    };
}

/// Stamps the semaphore's contracts, and the cancel-safety contract of both primitives, as
/// `#[tokio::test]`s. `$setup` as in [`crate::conformance_suite!`]; prefix with `paused,` for
/// paused time.
///
/// ```no_run
/// lock_testkit::semaphore_suite!(paused, async { (lock_testkit::MemoryBackend::new(), ()) });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! semaphore_suite {
    (paused, $setup:expr) => {
        $crate::semaphore_suite!(@each [tokio::test(start_paused = true)] $setup);
    };
    ($setup:expr) => {
        $crate::semaphore_suite!(@each [tokio::test(flavor = "multi_thread", worker_threads = 2)] $setup);
    };
    (@each [$attr:meta] $setup:expr) => {
        $crate::shared_stamp!(@one [$attr] $setup;
            crashed_permit_holder_expires,
            permits_never_exceed_n_under_32_tasks,
            cancelled_acquisitions_leave_nothing_behind
        );
    };
}

/// The stamping behind [`crate::rw_suite!`] and [`crate::semaphore_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! shared_stamp {
    (@one [$attr:meta] $setup:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let (backend, _keep_alive) = $setup.await;
                $crate::shared::$name(backend).await;
            }
        )*
    };
}
