//! The fair lock and the semaphore on several nodes in the chaos runner: each key on one node
//! (neither has a RedLock form). Their mutants are in `unsafe_runs`.

use std::sync::Arc;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, BackendErrorKind, Capabilities, ExtendOutcome,
    ExtendRequest, FairBackend, FairOutcome, FairRequest, FencingToken, HoldOutcome, HoldRequest,
    LockBackend, LockKey, Members, ReleaseOutcome, ReleaseWatch, SharedBackend, Token,
};

/// Independent nodes, each lock key on one of them (as a Redis Cluster places keys by slot):
/// how a fair lock runs on several nodes. The run's keys go round the nodes in order, so each
/// node serves its own key; any other key goes by a hash.
pub(crate) struct Sharded {
    nodes: Vec<Arc<dyn LockBackend>>,
    keys: Vec<String>,
}

impl Sharded {
    pub(crate) fn new(nodes: Vec<Arc<dyn LockBackend>>, keys: Vec<String>) -> Self {
        Self { nodes, keys }
    }

    fn node(&self, key: &LockKey) -> &dyn LockBackend {
        let n = self.nodes.len().max(1);
        let i = match self.keys.iter().position(|k| k == key.as_str()) {
            Some(i) => i % n,
            None => {
                key.as_str().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % n
            }
        };
        self.nodes[i].as_ref()
    }
}

fn no_fair() -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, "a node has no fair lock".to_string())
}

#[async_trait]
impl LockBackend for Sharded {
    fn name(&self) -> &str {
        self.nodes.first().map_or("sharded", |n| n.name())
    }
    fn endpoint(&self) -> String {
        self.nodes.iter().map(|n| n.endpoint()).collect::<Vec<_>>().join(",")
    }
    fn capabilities(&self) -> Capabilities {
        self.nodes.first().map(|n| n.capabilities()).unwrap_or_default()
    }
    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.node(&req.key).acquire(req).await
    }
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.node(&req.key).extend(req).await
    }
    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.node(key).release(key, token).await
    }
    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.node(key).discard(key, token).await
    }
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        self.node(key).raise_fence(key, token, fence).await
    }
    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.node(key).watch_releases(key).await
    }
    fn fair(&self) -> Option<&dyn FairBackend> {
        Some(self)
    }
    fn shared(&self) -> Option<&dyn SharedBackend> {
        Some(self)
    }
}

fn no_shared() -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, "a node keeps no semaphores".to_string())
}

#[async_trait]
impl SharedBackend for Sharded {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        self.node(&req.key).shared().ok_or_else(no_shared)?.acquire_hold(req).await
    }
    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.node(&req.key).shared().ok_or_else(no_shared)?.extend_member(set, req).await
    }
    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        self.node(key).shared().ok_or_else(no_shared)?.release_member(set, key, token).await
    }
}

#[async_trait]
impl FairBackend for Sharded {
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        self.node(&req.key).fair().ok_or_else(no_fair)?.fair_acquire(req).await
    }
    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.node(key).fair().ok_or_else(no_fair)?.leave_queue(key, token).await
    }
    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        self.node(key).fair().ok_or_else(no_fair)?.watch_turn(key, token).await
    }
}
