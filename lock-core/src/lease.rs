//! The held lock: [`Guard`], the [`Lease`] trait, and the watchdog that renews it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::backend::{
    ExtendOutcome, ExtendRequest, LockBackend, Members, ReleaseOutcome, extend_on, no_shared_holds,
};
use crate::backoff::Backoff;
use crate::config::{LockConfig, MAX_TTL, MIN_TTL};
use crate::error::{BackendError, BackendErrorKind, LockError, LostReason};
use crate::renew::Renewer;
use crate::types::{FencingToken, LockKey, Token, default_drift, validity_deadline};

/// How many times an explicit release retries a transient backend error before giving up
/// (the key then expires by its TTL).
const RELEASE_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
enum Status {
    Held,
    Lost(LostReason),
    Released,
}

#[derive(Debug, Clone)]
struct State {
    valid_until: Instant,
    status: Status,
    /// Renewal has stopped for good at the maximum hold time: expiry then means MaxHoldReached.
    capped: bool,
}

/// What the guards and the watchdog of one acquisition share.
#[derive(Debug)]
pub(crate) struct Shared {
    key: LockKey,
    /// The metrics' keys (the backend's name), for metrics only: without the feature no lease
    /// pays for them.
    #[cfg(feature = "metrics")]
    backend: crate::telemetry::Label,
    #[cfg(feature = "metrics")]
    acquired_at: Instant,
    token: Token,
    /// Where the owner token lives: `None` for the lock key itself (a mutex, a fair lock, a
    /// write lock), else a set of holders (a reader, a permit).
    members: Option<Members>,
    fence: Option<FencingToken>,
    max_hold_until: Option<Instant>,
    /// The lease's state; every change is announced on `changed`. (A mutex and one `Notify`
    /// instead of a watch channel: a watch channel costs about 400 bytes per lease, and a
    /// client may hold 100,000 of them.)
    state: std::sync::Mutex<State>,
    changed: Notify,
    /// Renewal has stopped: the lease is being released (or was dropped).
    stopped: AtomicBool,
    /// Fair waiters are likely queued for this lock (a fair lock): released by
    /// [`LockBackend::release_contended`], which hands it over in one call.
    fair: bool,
}

impl Shared {
    /// The backend's name as the metrics' label.
    pub(crate) fn backend_name(&self) -> &crate::telemetry::Label {
        #[cfg(feature = "metrics")]
        return &self.backend;
        #[cfg(not(feature = "metrics"))]
        &()
    }

    fn held_for(&self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.acquired_at.elapsed();
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot(&self) -> State {
        self.state().clone()
    }

    /// Applies `change` to the state; when it reports a change, wakes every `lost()` waiting.
    fn modify(&self, change: impl FnOnce(&mut State) -> bool) -> bool {
        let changed = change(&mut self.state());
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Marks the lease released (no guard is left to observe it).
    fn set_released(&self) {
        self.modify(|s| {
            s.status = Status::Released;
            true
        });
    }

    pub(crate) fn key(&self) -> &LockKey {
        &self.key
    }

    pub(crate) fn token(&self) -> Token {
        self.token
    }

    pub(crate) fn members(&self) -> Option<Members> {
        self.members
    }

    pub(crate) fn max_hold_until(&self) -> Option<Instant> {
        self.max_hold_until
    }

    /// Renewal has stopped: the lease is being released, or was dropped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The validity deadline, while the lease is held and renewal has not stopped.
    pub(crate) fn renewable(&self) -> Option<Instant> {
        if self.is_stopped() {
            return None;
        }
        let s = self.state();
        matches!(s.status, Status::Held).then_some(s.valid_until)
    }

    /// Renewal has stopped for good at the maximum hold time: expiry then means MaxHoldReached.
    pub(crate) fn cap(&self) {
        self.state().capped = true;
    }

    /// Marks the lease lost if it is still held. Returns whether this call marked it.
    pub(crate) fn mark_lost(&self, reason: LostReason) -> bool {
        let marked = self.modify(|s| {
            if matches!(s.status, Status::Held) {
                s.status = Status::Lost(reason.clone());
                true
            } else {
                false
            }
        });
        if marked {
            warn!(key = %self.key, %reason, "lease lost");
            crate::telemetry::lost(self.backend_name());
        }
        marked
    }

    /// Marks the lease lost if its deadline has passed; returns the reason it ended, if it has.
    pub(crate) fn expire_if_due(&self, now: Instant) -> Option<LostReason> {
        let s = self.snapshot();
        match s.status {
            Status::Lost(r) => Some(r),
            Status::Released => None,
            Status::Held if now >= s.valid_until => {
                let reason = if s.capped { LostReason::MaxHoldReached } else { LostReason::Expired };
                self.mark_lost(reason);
                match self.snapshot().status {
                    Status::Lost(r) => Some(r),
                    _ => None,
                }
            }
            Status::Held => None,
        }
    }

    pub(crate) fn set_valid_until(&self, valid_until: Instant) {
        self.modify(|s| {
            if matches!(s.status, Status::Held) && s.valid_until != valid_until {
                s.valid_until = valid_until;
                true
            } else {
                false
            }
        });
    }

    fn is_held(&self) -> bool {
        let s = self.state();
        matches!(s.status, Status::Held) && Instant::now() < s.valid_until
    }

    /// Resolves when the lease is lost: at once if the backend reported it, or exactly at the
    /// validity deadline if no renewal moved it, whatever renewal calls are doing (S5).
    async fn lost(self: Arc<Self>) -> LostReason {
        loop {
            // Registered before the state is read, so a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let valid_until = {
                let s = self.state();
                match &s.status {
                    Status::Lost(r) => return r.clone(),
                    // Released leases have no guard left to observe them; never resolve.
                    Status::Released => None,
                    Status::Held => Some(s.valid_until),
                }
            };
            match valid_until {
                None => std::future::pending::<()>().await,
                Some(deadline) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(deadline) => {
                            if let Some(reason) = self.expire_if_due(Instant::now()) {
                                return reason;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How a new lease is renewed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Renew {
    /// Not at all: it ends at its validity deadline.
    Off,
    /// By the client's renewal scheduler (the watchdog), from this instant on.
    From(Instant),
    /// Once, at this instant, then no more: a lease granted for less than its TTL (a fair
    /// lock handed over, capped by its waiter deadline) without a watchdog, renewed to its TTL.
    Once(Instant),
}

impl Renew {
    /// The usual choice: the watchdog from a renewal interval after `started`, or none.
    pub(crate) fn watchdog(on: bool, started: Instant, config: &LockConfig) -> Self {
        if on { Renew::From(started + config.renew_interval()) } else { Renew::Off }
    }
}

/// The parts of the client a lease needs.
#[derive(Clone)]
pub(crate) struct LeaseCtx {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) config: Arc<LockConfig>,
    /// Renews the leases of this client in batches (one per client; clones share it).
    pub(crate) renewer: Arc<Renewer>,
    /// The metrics' keys with the backend's name, shared by every lease (not built per event).
    #[cfg(feature = "metrics")]
    pub(crate) name: crate::telemetry::Label,
}

impl LeaseCtx {
    /// The backend's name as the metrics' label (made once per client).
    pub(crate) fn label(&self) -> &crate::telemetry::Label {
        #[cfg(feature = "metrics")]
        return &self.name;
        #[cfg(not(feature = "metrics"))]
        &()
    }

    pub(crate) fn new(backend: Arc<dyn LockBackend>, config: LockConfig) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            name: crate::telemetry::label(backend.name()),
            backend,
            config: Arc::new(config),
            renewer: Arc::default(),
        }
    }
}

/// One acquisition: dropped when the last [`Guard`] on it goes.
pub(crate) struct LeaseInner {
    shared: Arc<Shared>,
    ctx: LeaseCtx,
    released: AtomicBool,
    runtime: Option<Handle>,
}

impl LeaseInner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        ctx: LeaseCtx,
        key: LockKey,
        token: Token,
        members: Option<Members>,
        fence: Option<FencingToken>,
        acquired_at: Instant,
        valid_until: Instant,
        renew: Renew,
        fair: bool,
    ) -> Arc<Self> {
        let max_hold_until = ctx.config.max_hold().and_then(|d| acquired_at.checked_add(d));
        let state = std::sync::Mutex::new(State { valid_until, status: Status::Held, capped: false });
        let shared = Arc::new(Shared {
            key,
            #[cfg(feature = "metrics")]
            backend: Arc::clone(&ctx.name),
            #[cfg(feature = "metrics")]
            acquired_at,
            token,
            members,
            fence,
            max_hold_until,
            state,
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
            fair,
        });
        let runtime = Handle::try_current().ok();
        if let Some(rt) = &runtime {
            let lease = Arc::downgrade(&shared);
            match renew {
                Renew::Off => {}
                Renew::From(first) => ctx.renewer.schedule(&ctx, rt, lease, first, false),
                Renew::Once(at) => ctx.renewer.schedule(&ctx, rt, lease, at, true),
            }
        }
        Arc::new(Self { shared, ctx, released: AtomicBool::new(false), runtime })
    }

    pub(crate) fn is_held(&self) -> bool {
        self.shared.is_held()
    }

    /// The owner token of this acquisition.
    pub(crate) fn token(&self) -> Token {
        self.shared.token
    }

    /// Stops renewal: the scheduler drops the lease at its next turn, and ignores the answer
    /// of a renewal in flight.
    fn stop_watchdog(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
    }

    async fn release_now(&self) -> Result<(), LockError> {
        self.stop_watchdog();
        crate::telemetry::held(self.shared.backend_name(), self.shared.held_for());
        let key = &self.shared.key;
        let before = self.shared.snapshot().status;
        let mut backoff = Backoff::new(self.ctx.config.backoff_min(), self.ctx.config.backoff_max());
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let shared = &self.shared;
            match release_on(self.ctx.backend.as_ref(), shared.members, key, &shared.token, shared.fair).await
            {
                Err(e) if e.is_retryable() && attempt < RELEASE_ATTEMPTS => {
                    debug!(%key, error = %e, "release failed, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        };
        // Only now: if this future is dropped mid-release, Drop still releases in the background.
        self.released.store(true, Ordering::SeqCst);
        self.shared.set_released();
        debug!(%key, ?result, "released");
        match result {
            Ok(ReleaseOutcome::Released) => match before {
                Status::Lost(reason) => Err(LockError::LeaseLost { key: key.clone(), reason }),
                _ => Ok(()),
            },
            Ok(ReleaseOutcome::NotHeld) => Err(LockError::NotHeld { key: key.clone() }),
            Err(source) => Err(LockError::Backend { key: key.clone(), source }),
        }
    }
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        self.stop_watchdog();
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.set_released();
        crate::telemetry::held(self.shared.backend_name(), self.shared.held_for());
        crate::telemetry::background_release(self.shared.backend_name());
        let backend = Arc::clone(&self.ctx.backend);
        let key = self.shared.key.clone();
        let token = self.shared.token;
        let (members, fair) = (self.shared.members, self.shared.fair);
        let runtime = self.runtime.clone().or_else(|| Handle::try_current().ok());
        match runtime {
            // Never block in Drop: hand the release to the runtime (S8).
            Some(rt) => {
                rt.spawn(async move {
                    match release_on(backend.as_ref(), members, &key, &token, fair).await {
                        Ok(outcome) => debug!(%key, ?outcome, "background release"),
                        Err(e) => {
                            warn!(%key, error = %e, "background release failed; the key expires by its ttl")
                        }
                    }
                });
            }
            None => warn!(%key, "guard dropped outside a tokio runtime; the key expires by its ttl"),
        }
    }
}

/// Releases a lease (announced) wherever its owner token lives; a lock fair waiters are likely
/// queued for (`fair`) by [`LockBackend::release_contended`].
pub(crate) async fn release_on(
    backend: &dyn LockBackend,
    members: Option<Members>,
    key: &LockKey,
    token: &Token,
    fair: bool,
) -> Result<ReleaseOutcome, BackendError> {
    match (members, backend.shared()) {
        (None, _) if fair => backend.release_contended(key, token).await,
        (None, _) => backend.release(key, token).await,
        (Some(set), Some(shared)) => shared.release_member(set, key, token).await,
        (Some(_), None) => Err(no_shared_holds(backend.name())),
    }
}

/// A held lock. Cloning a guard is a reentrant acquisition of the same lease; the backend is
/// released when the last clone is released or dropped.
///
/// Dropping the last guard stops renewal and spawns a best-effort release on the runtime that
/// acquired it; it never blocks. Prefer [`Guard::release`] to learn whether the lock was still
/// held.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::LockClient;
/// use lock_testkit::MemoryBackend;
///
/// let client = LockClient::new(MemoryBackend::new());
/// let guard = client.mutex("orders:42")?.lock().await?;
/// assert!(guard.is_held());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping a guard releases the lock at once"]
#[derive(Clone)]
pub struct Guard {
    pub(crate) inner: Arc<LeaseInner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.shared.snapshot();
        f.debug_struct("Guard")
            .field("key", &self.inner.shared.key)
            .field("fence", &self.inner.shared.fence)
            .field("valid_until", &s.valid_until)
            .field("status", &s.status)
            .finish()
    }
}

impl Guard {
    /// The lock's key (prefix included).
    pub fn key(&self) -> &LockKey {
        &self.inner.shared.key
    }

    /// The fencing token of this acquisition, when fencing is on.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        self.inner.shared.fence
    }

    /// The instant until which the lock is safely held, as last confirmed.
    pub fn valid_until(&self) -> Instant {
        self.inner.shared.snapshot().valid_until
    }

    /// Time left until [`Guard::valid_until`]; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// Whether the lease is still held: not lost, not released, and within its validity.
    pub fn is_held(&self) -> bool {
        self.inner.is_held()
    }

    /// A future that resolves when the lease is lost, with the reason. It resolves exactly at
    /// the validity deadline when no renewal moved it, without waiting for a network error.
    /// It does not borrow the guard, so it can be spawned or `select!`ed against the work.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only observes state.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        Arc::clone(&self.inner.shared).lost()
    }

    /// Resets the lock's expiry to `ttl` from now (owner-checked), and moves
    /// [`Guard::valid_until`] to match, even if that is earlier than before.
    ///
    /// # Errors
    /// [`LockError::Config`] for a TTL out of range, [`LockError::NotHeld`] when the backend no
    /// longer holds the lock for us (the lease is then marked lost), [`LockError::LeaseLost`]
    /// when it was already lost, [`LockError::Backend`] on infrastructure failure (the lease is
    /// left as it was).
    ///
    /// # Cancel safety
    /// Cancelling may leave the server's expiry reset without `valid_until` moved, which is
    /// the conservative direction.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use std::time::Duration;
    /// use lock_core::LockClient;
    /// use lock_testkit::MemoryBackend;
    /// let guard = LockClient::new(MemoryBackend::new()).mutex("long")?.lock().await?;
    /// guard.extend(Duration::from_secs(60)).await?;
    /// assert!(guard.remaining() > Duration::from_secs(30));
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        let shared = &self.inner.shared;
        let config = &self.inner.ctx.config;
        let key = &shared.key;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(LockError::Config {
                field: "ttl",
                reason: format!("is {ttl:?}; it must be from {MIN_TTL:?} to {MAX_TTL:?}"),
            });
        }
        if let Some(reason) = shared.expire_if_due(Instant::now()) {
            return Err(LockError::LeaseLost { key: key.clone(), reason });
        }
        let mut ttl = ttl;
        if let Some(cap) = shared.max_hold_until {
            ttl = ttl.min(cap.saturating_duration_since(Instant::now()));
        }
        let drift = config.drift().max(default_drift(ttl));
        let started = Instant::now();
        let req = ExtendRequest { key: key.clone(), token: shared.token, ttl };
        match extend_on(self.inner.ctx.backend.as_ref(), shared.members, &req).await {
            Ok(ExtendOutcome::Extended { valid_until }) => {
                match validity_deadline(started, ttl, drift) {
                    Some(mine) => shared.set_valid_until(mine.min(valid_until)),
                    None => {
                        shared.mark_lost(LostReason::MaxHoldReached);
                    }
                }
                Ok(())
            }
            Ok(ExtendOutcome::NotHeld) => {
                shared.mark_lost(LostReason::NotOwner);
                Err(LockError::NotHeld { key: key.clone() })
            }
            Err(source) => Err(LockError::Backend { key: key.clone(), source }),
        }
    }

    /// Releases this guard. When it is the last guard on the lease, the lock is deleted on the
    /// backend (owner-checked) and renewal stops; otherwise only this reentrant hold ends.
    ///
    /// # Errors
    /// - [`LockError::NotHeld`]: the backend no longer held the lock for us (it expired or was
    ///   taken over): the critical section may have overlapped another holder's.
    /// - [`LockError::LeaseLost`]: the lease had been lost locally (deadline passed) before the
    ///   release; the key was cleaned up anyway.
    /// - [`LockError::Backend`]: the release failed after retries; the key expires by its TTL.
    ///
    /// # Cancel safety
    /// Cancelling the release falls back to the background release of `Drop`.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::{LockClient, LockError};
    /// use lock_testkit::MemoryBackend;
    /// let memory = MemoryBackend::new();
    /// let guard = LockClient::new(memory.clone()).mutex("k")?.lock().await?;
    /// memory.evict("k"); // as if it had expired and been taken over
    /// assert!(matches!(guard.release().await, Err(LockError::NotHeld { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<(), LockError> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.release_now().await,
            Err(inner) => {
                let shared = &inner.shared;
                match shared.expire_if_due(Instant::now()) {
                    Some(reason) => Err(LockError::LeaseLost { key: shared.key.clone(), reason }),
                    None => Ok(()),
                }
            }
        }
    }

    /// How many guards (reentrant holds) share this lease.
    pub fn hold_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

/// A held lock as application code sees it, whatever the backend. Implemented by [`Guard`];
/// write functions against `impl Lease` to test them with any lease.
#[async_trait]
pub trait Lease: Send + Sync {
    /// The lock's key.
    fn key(&self) -> &LockKey;
    /// The fencing token, when fencing is on.
    fn fencing_token(&self) -> Option<FencingToken>;
    /// The instant until which the lock is safely held.
    fn valid_until(&self) -> Instant;
    /// Time left until `valid_until`.
    fn remaining(&self) -> Duration;
    /// Whether the lease is still held.
    fn is_held(&self) -> bool;
    /// Resolves when the lease is lost.
    async fn lost(&self) -> LostReason;
    /// Resets the expiry to `ttl` from now.
    ///
    /// # Errors
    /// As [`Guard::extend`].
    async fn extend(&self, ttl: Duration) -> Result<(), LockError>;
    /// Releases the lease.
    ///
    /// # Errors
    /// As [`Guard::release`].
    async fn release(self) -> Result<(), LockError>
    where
        Self: Sized;
}

#[async_trait]
impl Lease for Guard {
    fn key(&self) -> &LockKey {
        Guard::key(self)
    }
    fn fencing_token(&self) -> Option<FencingToken> {
        Guard::fencing_token(self)
    }
    fn valid_until(&self) -> Instant {
        Guard::valid_until(self)
    }
    fn remaining(&self) -> Duration {
        Guard::remaining(self)
    }
    fn is_held(&self) -> bool {
        Guard::is_held(self)
    }
    async fn lost(&self) -> LostReason {
        Guard::lost(self).await
    }
    async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        Guard::extend(self, ttl).await
    }
    async fn release(self) -> Result<(), LockError> {
        Guard::release(self).await
    }
}

/// Keeps BackendErrorKind in use for the timeout error built by the client.
pub(crate) fn deadline_error(what: &str) -> crate::BackendError {
    crate::BackendError::retryable(BackendErrorKind::Timeout, what.to_string())
}
