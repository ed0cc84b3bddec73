//! Unit-testing application code without Redis: the backend is a `mockall` mock, so a test can
//! script exactly what the lock server answers (here: "held by someone else", so the job skips).
//!
//! ```text
//! cargo run -p lock-examples --example mock_backend
//! ```
//! No server needed. In a real crate this `main` would be a `#[tokio::test]`.

use std::time::Duration;

use lock_core::{AcquireOutcome, Capabilities, LockBackend, LockClient, LockError};
use lock_testkit::MockBackend;

/// Application code under test: runs the nightly job unless another instance holds the lock.
async fn run_nightly_job<B: LockBackend>(locks: &LockClient<B>) -> Result<&'static str, LockError> {
    match locks.mutex("jobs:nightly")?.try_lock().await? {
        Some(guard) => {
            guard.release().await?;
            Ok("ran")
        }
        None => Ok("skipped: another instance holds the lock"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut mock = MockBackend::new();
    mock.expect_name().return_const("mock".to_string());
    mock.expect_capabilities().return_const(Capabilities::NONE);
    mock.expect_acquire()
        .times(1)
        .withf(|req| req.key.as_str() == "jobs:nightly")
        .returning(|_| Ok(AcquireOutcome::Held { remaining: Some(Duration::from_secs(20)) }));
    mock.expect_release().never();

    let outcome = run_nightly_job(&LockClient::new(mock)).await?;
    assert_eq!(outcome, "skipped: another instance holds the lock");
    println!("application code tested against a mocked backend: {outcome}");
    Ok(())
}
