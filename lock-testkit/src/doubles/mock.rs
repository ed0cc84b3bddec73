//! A [`mockall`] mock of [`LockBackend`], for unit tests that assert calls.

#![allow(missing_docs)]

use async_trait::async_trait;
use lock_core::FencingToken;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, Capabilities, ExtendOutcome, ExtendRequest, FairBackend,
    FairOutcome, FairRequest, HoldOutcome, HoldRequest, LockBackend, LockKey, Members, ReleaseOutcome,
    ReleaseWatch, SharedBackend, Token,
};

mockall::mock! {
    /// A mock backend: set expectations with `expect_acquire()`, `expect_release()`, ...
    pub Backend {}

    #[async_trait]
    impl LockBackend for Backend {
        fn name(&self) -> &str;
        fn endpoint(&self) -> String;
        fn capabilities(&self) -> Capabilities;
        async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError>;
        async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError>;
        async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
        async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
        async fn raise_fence(&self, key: &LockKey, token: &Token, fence: FencingToken) -> Result<(), BackendError>;
        async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError>;
        async fn node_identity(&self) -> Result<Option<u64>, BackendError>;
    }
}

mockall::mock! {
    /// A mock of the fair lock's operations ([`FairBackend`]): `expect_fair_acquire()`,
    /// `expect_leave_queue()`, `expect_watch_turn()`. Pair it with a [`MockBackend`] in a
    /// [`MockFair`].
    pub FairOps {}

    #[async_trait]
    impl FairBackend for FairOps {
        async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError>;
        async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
        async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError>;
    }
}

mockall::mock! {
    /// A mock of the read-write lock's and semaphore's operations ([`SharedBackend`]):
    /// `expect_acquire_hold()`, `expect_extend_member()`, `expect_release_member()`. Pair it
    /// with a [`MockBackend`] in a [`MockShared`].
    pub SharedOps {}

    #[async_trait]
    impl SharedBackend for SharedOps {
        async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError>;
        async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError>;
        async fn release_member(&self, set: Members, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
    }
}

/// A mocked backend with a fair lock: the mutex operations go to `lock`, the fair ones to
/// `fair` ([`LockBackend::fair`] returns it).
///
/// ```
/// use lock_core::{LockBackend, LockClient};
/// use lock_testkit::{MockBackend, MockFair, MockFairOps};
/// let mut lock = MockBackend::new();
/// lock.expect_name().return_const("mock".to_string());
/// let backend = MockFair { lock, fair: MockFairOps::new() };
/// assert!(backend.fair().is_some());
/// assert!(LockClient::new(backend).fair_mutex("k").is_ok());
/// ```
pub struct MockFair {
    /// The mutex operations.
    pub lock: MockBackend,
    /// The fair lock's operations.
    pub fair: MockFairOps,
}

/// A mocked backend with a read-write lock and a semaphore: the mutex operations go to `lock`,
/// the shared holds to `shared` ([`LockBackend::shared`] returns it).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::{HoldOutcome, LockClient};
/// use lock_testkit::{MockBackend, MockShared, MockSharedOps};
/// let mut lock = MockBackend::new();
/// lock.expect_name().return_const("mock".to_string());
/// lock.expect_capabilities().return_const(lock_core::Capabilities::new(false, false));
/// let mut shared = MockSharedOps::new();
/// shared.expect_acquire_hold().times(1).returning(|_| Ok(HoldOutcome::Held { remaining: None }));
/// let client = LockClient::new(MockShared { lock, shared });
/// assert!(client.semaphore("k", 2)?.try_acquire().await?.is_none());
/// # Ok(()) }
/// ```
pub struct MockShared {
    /// The mutex operations (a write lock's renewal and release go here too).
    pub lock: MockBackend,
    /// The shared holds' operations.
    pub shared: MockSharedOps,
}

/// Forwards the mutex operations of a pairing to its `lock` mock.
macro_rules! forward_lock {
    ($ty:ty, $($extra:tt)*) => {
        #[async_trait]
        impl LockBackend for $ty {
            fn name(&self) -> &str {
                self.lock.name()
            }
            fn endpoint(&self) -> String {
                self.lock.endpoint()
            }
            fn capabilities(&self) -> Capabilities {
                self.lock.capabilities()
            }
            async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
                self.lock.acquire(req).await
            }
            async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
                self.lock.extend(req).await
            }
            async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
                self.lock.release(key, token).await
            }
            async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
                self.lock.discard(key, token).await
            }
            async fn raise_fence(
                &self,
                key: &LockKey,
                token: &Token,
                fence: FencingToken,
            ) -> Result<(), BackendError> {
                self.lock.raise_fence(key, token, fence).await
            }
            async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
                self.lock.watch_releases(key).await
            }
            async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
                self.lock.node_identity().await
            }
            $($extra)*
        }
    };
}

forward_lock!(
    MockFair,
    fn fair(&self) -> Option<&dyn FairBackend> {
        Some(&self.fair)
    }
);

forward_lock!(
    MockShared,
    fn shared(&self) -> Option<&dyn SharedBackend> {
        Some(&self.shared)
    }
);
