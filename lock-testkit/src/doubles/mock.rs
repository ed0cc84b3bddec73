//! A [`mockall`] mock of [`LockBackend`], for unit tests that assert calls.

#![allow(missing_docs)]

use async_trait::async_trait;
use lock_core::FencingToken;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, Capabilities, ExtendOutcome, ExtendRequest, LockBackend,
    LockKey, ReleaseOutcome, ReleaseWatch, Token,
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
        async fn extend_many(&self, reqs: &[ExtendRequest]) -> Vec<Result<ExtendOutcome, BackendError>>;
        async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
        async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;
        async fn raise_fence(&self, key: &LockKey, token: &Token, fence: FencingToken) -> Result<(), BackendError>;
        async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError>;
        async fn node_identity(&self) -> Result<Option<u64>, BackendError>;
    }
}
