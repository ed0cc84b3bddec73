//! How to unit-test application code against a mocked backend with mockall.

use lock_core::{AcquireOutcome, Capabilities, Grant, Instant, LockClient, ReleaseOutcome};
use lock_testkit::MockBackend;
use mockall::predicate::always;
use std::time::Duration;

/// Application code under test: it must take the lock and release it exactly once.
async fn settle_invoice<B: lock_core::LockBackend>(
    locks: &LockClient<B>,
    id: u32,
) -> Result<u32, lock_core::LockError> {
    locks.with_lock(format!("invoice:{id}"), |_lease| async move { id * 2 }).await
}

#[tokio::test(start_paused = true)]
async fn mock_the_backend_to_assert_calls() {
    let mut backend = MockBackend::new();
    backend.expect_name().return_const("mock".to_string());
    backend.expect_capabilities().return_const(Capabilities::NONE);
    backend.expect_watch_releases().returning(|_| Ok(None));
    backend
        .expect_acquire()
        .withf(|req| req.key.as_str() == "invoice:7" && req.ttl == Duration::from_secs(30))
        .times(1)
        .returning(|req| {
            Ok(AcquireOutcome::Acquired(Grant::from_start(Instant::now(), req.ttl, None).unwrap()))
        });
    backend.expect_release().with(always(), always()).times(1).returning(|_, _| Ok(ReleaseOutcome::Released));

    let locks = LockClient::new(backend);
    assert_eq!(settle_invoice(&locks, 7).await.unwrap(), 14);
}
