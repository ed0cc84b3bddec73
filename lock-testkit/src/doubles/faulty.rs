//! Fault injection around any backend.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::FencingToken;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, BackendErrorKind, Capabilities, ExtendOutcome,
    ExtendRequest, FairBackend, FairOutcome, FairRequest, HoldOutcome, HoldRequest, LockBackend, LockKey,
    Members, ReleaseOutcome, ReleaseWatch, SharedBackend, Token,
};

/// A backend operation that faults can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`LockBackend::acquire`].
    Acquire,
    /// [`LockBackend::extend`] (and each item of `extend_many`).
    Extend,
    /// [`LockBackend::release`] (and `discard`, `release_contended`).
    Release,
    /// [`LockBackend::raise_fence`].
    Fence,
    /// [`LockBackend::watch_releases`].
    Watch,
}

/// What to do to one call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail without reaching the backend.
    Error(BackendError),
    /// Apply the operation, then report a retryable connection error: the reply was lost.
    LoseReply,
    /// Never answer (the call hangs until cancelled).
    Hang,
    /// Wait this long, then apply and answer.
    Delay(Duration),
    /// Apply at once, then wait this long before answering (a slow reply).
    DelayReply(Duration),
}

impl Fault {
    /// A retryable connection error, the usual transient fault.
    pub fn transient() -> Self {
        Fault::Error(BackendError::retryable(BackendErrorKind::Connection, "injected transient fault"))
    }

    /// A permanent error, e.g. a rejected command.
    pub fn permanent() -> Self {
        Fault::Error(BackendError::permanent(BackendErrorKind::Other, "injected permanent fault"))
    }
}

#[derive(Debug, Default)]
struct Plan {
    down: bool,
    once: HashMap<Op, VecDeque<Fault>>,
    always: HashMap<Op, Fault>,
    injected: u64,
}

/// Wraps a backend and injects scripted faults: errors, latency, hangs and lost replies.
/// Clones share one plan.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use lock_core::{LockBackend, AcquireRequest, LockKey, Token};
/// use lock_testkit::{Fault, Faulty, MemoryBackend, Op};
///
/// let store = MemoryBackend::new();
/// let faulty = Faulty::new(store.clone());
/// faulty.inject(Op::Acquire, Fault::LoseReply);
/// let req = AcquireRequest {
///     key: LockKey::new("k").unwrap(),
///     token: Token::random(),
///     ttl: std::time::Duration::from_secs(1),
///     fencing: false,
/// };
/// assert!(faulty.acquire(&req).await.is_err()); // the reply was lost...
/// assert_eq!(store.holder("k"), Some(req.token)); // ...but the lock was taken
/// assert_eq!(faulty.injected(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Faulty<B> {
    inner: B,
    plan: Arc<Mutex<Plan>>,
    alias: Option<String>,
}

impl<B: LockBackend> Faulty<B> {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: B) -> Self {
        Self { inner, plan: Arc::default(), alias: None }
    }

    /// Reports `endpoint` instead of the inner backend's: the same server under another name
    /// (a DNS alias, a second address), which a quorum cannot tell apart by endpoint. Faults
    /// planned on `self` are not shared with the alias.
    #[must_use]
    pub fn alias(&self, endpoint: impl Into<String>) -> Self
    where
        B: Clone,
    {
        Self { inner: self.inner.clone(), plan: Arc::default(), alias: Some(endpoint.into()) }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `fault` to the next call of `op` (faults queue in order).
    pub fn inject(&self, op: Op, fault: Fault) {
        self.plan().once.entry(op).or_default().push_back(fault);
    }

    /// Applies `fault` to every call of `op` until [`Faulty::clear`].
    pub fn inject_always(&self, op: Op, fault: Fault) {
        self.plan().always.insert(op, fault);
    }

    /// Takes the node down: every call fails with a transient connection error, whatever
    /// faults are planned, until [`Faulty::bring_up`].
    pub fn take_down(&self) {
        self.plan().down = true;
    }

    /// Ends [`Faulty::take_down`]; planned faults apply again.
    pub fn bring_up(&self) {
        self.plan().down = false;
    }

    /// Removes every planned fault.
    pub fn clear(&self) {
        let mut plan = self.plan();
        plan.once.clear();
        plan.always.clear();
    }

    /// How many faults have been applied so far.
    pub fn injected(&self) -> u64 {
        self.plan().injected
    }

    fn next_fault(&self, op: Op) -> Option<Fault> {
        let mut plan = self.plan();
        if plan.down {
            plan.injected += 1;
            return Some(Fault::Error(BackendError::retryable(
                BackendErrorKind::Connection,
                "injected: node down",
            )));
        }
        let fault = match plan.once.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(f) => Some(f),
            None => plan.always.get(&op).cloned(),
        };
        if fault.is_some() {
            plan.injected += 1;
        }
        fault
    }

    async fn run<T, F>(&self, op: Op, call: F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        match self.next_fault(op) {
            None => call.await,
            Some(Fault::Error(e)) => Err(e),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                // A request still in flight when the node went down is lost with it.
                if self.plan().down {
                    return Err(BackendError::retryable(BackendErrorKind::Connection, "injected: node down"));
                }
                call.await
            }
            Some(Fault::DelayReply(d)) => {
                let out = call.await;
                tokio::time::sleep(d).await;
                out
            }
            Some(Fault::LoseReply) => {
                let _applied = call.await;
                Err(BackendError::retryable(BackendErrorKind::Connection, "injected: reply lost"))
            }
        }
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Faulty<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn endpoint(&self) -> String {
        self.alias.clone().unwrap_or_else(|| self.inner.endpoint())
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.run(Op::Acquire, self.inner.acquire(req)).await
    }
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.run(Op::Extend, self.inner.extend(req)).await
    }
    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.run(Op::Release, self.inner.release(key, token)).await
    }
    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.run(Op::Release, self.inner.discard(key, token)).await
    }
    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.run(Op::Release, self.inner.release_contended(key, token)).await
    }
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        self.run(Op::Fence, self.inner.raise_fence(key, token, fence)).await
    }
    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.run(Op::Watch, self.inner.watch_releases(key)).await
    }
    async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
        self.inner.node_identity().await
    }
    async fn deployment_facts(&self) -> Result<Vec<lock_core::doctor::NodeFacts>, BackendError> {
        self.inner.deployment_facts().await
    }
    fn fair(&self) -> Option<&dyn FairBackend> {
        self.inner.fair().map(|_| self as &dyn FairBackend)
    }
    fn shared(&self) -> Option<&dyn SharedBackend> {
        self.inner.shared().map(|_| self as &dyn SharedBackend)
    }
    fn semaphore_refused(&self) -> Option<&'static str> {
        self.inner.semaphore_refused()
    }
}

/// The read-write lock and semaphore through the same faults: a read, write or permit acquire
/// counts as [`Op::Acquire`], a member's renewal as [`Op::Extend`], its release as
/// [`Op::Release`].
#[async_trait]
impl<B: LockBackend> SharedBackend for Faulty<B> {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        self.run(Op::Acquire, shared.acquire_hold(req)).await
    }
    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        self.run(Op::Extend, shared.extend_member(set, req)).await
    }
    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        self.run(Op::Release, shared.release_member(set, key, token)).await
    }
}

fn no_shared(backend: &str) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, format!("backend `{backend}` keeps no shared holds"))
}

/// The fair lock through the same faults: a fair acquire counts as [`Op::Acquire`], leaving
/// the queue as [`Op::Release`], a turn subscription as [`Op::Watch`].
#[async_trait]
impl<B: LockBackend> FairBackend for Faulty<B> {
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        self.run(Op::Acquire, fair.fair_acquire(req)).await
    }
    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        self.run(Op::Release, fair.leave_queue(key, token)).await
    }
    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        self.run(Op::Watch, fair.watch_turn(key, token)).await
    }
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        self.inner.fair()?.watch_turn_now(key, token)
    }
}

fn no_fair(backend: &str) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, format!("backend `{backend}` has no fair lock"))
}
