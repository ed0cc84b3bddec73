//! The read-write lock and the semaphore: shared holds, each a lease of its own.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{Instrument, debug_span};

use crate::backend::Hold;
use crate::client::{Ask, LockOptions, acquire_inner};
use crate::error::LockError;
use crate::lease::{Guard, LeaseCtx, LeaseInner};
use crate::types::LockKey;

/// A handle on one named read-write lock, made by [`crate::LockClient::rw_lock`]: many
/// readers or one writer, across every process. Cheap to clone; clones share reentrancy.
///
/// Every guard is a [`Guard`], with everything a mutex guard has: a watchdog that renews it, a
/// [`Guard::lost`] that resolves at the local validity deadline, cancel safety, and release on
/// drop. Each reader is a lease of its own (its own owner token and expiry on the server), so
/// a crashed reader's hold ends with its TTL and never blocks writers for longer.
///
/// - **Writers are not starved.** A writer kept waiting is recorded on the server among the
///   waiting writers (for [`crate::LockConfig::waiter_timeout`], renewed by each of its calls),
///   and new readers queue behind it while it waits; the readers already in finish, the last
///   one's release wakes the writer. This is writer preference, as in most read-write locks: a
///   steady stream of writers, one always waiting, holds readers back for as long as it lasts.
///   A writer that dies while waiting stops blocking readers at its waiter deadline.
/// - **Fencing** (with [`crate::LockConfigBuilder::fencing`]): a write lock gets a token
///   greater than every earlier writer's (the same counter as the mutex of the same name); a
///   read lock gets the token of the **last fenced writer** (0 if none; over a RedLock quorum,
///   the highest counter among the nodes that granted it: at least the last writer's token and
///   below every later writer's). A resource that stores the token of the last write it
///   accepted can refuse a read whose token is lower: that reader took its lock before a write
///   the resource has since seen, so what it read may be older than data the resource already
///   holds.
/// - **Reentrancy**, per handle (and its clones), as for [`crate::Mutex`]: a second `read()`
///   while a read guard is held clones it; a second `write()` clones the write guard. A
///   `read()` while this handle holds the write lock is granted at once, as a reader of its own
///   beside the write lock (a **downgrade**: release the write guard and the read lock remains).
///   A `write()` while this handle holds a read lock is refused with [`LockError::Upgrade`],
///   never a deadlock.
/// - The write lock **is** the mutex of the same name: a [`crate::Mutex`] of that name excludes
///   writers, but does not wait for readers. Use one primitive per name.
///
/// Cost: an uncontended read or write lock/unlock is two round trips, as for the mutex.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::{LockClient, LockError};
/// let client = LockClient::new(lock_testkit::MemoryBackend::new());
/// let cache = client.rw_lock("cache:users")?;
/// let write = cache.write().await?;
/// let read = cache.read().await?; // a downgrade: granted beside the write lock
/// write.release().await?; // other readers may enter now; writers wait for `read`
/// assert!(matches!(cache.write().await, Err(LockError::Upgrade { .. })));
/// read.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock {
    inner: Arc<RwInner>,
}

struct RwInner {
    ctx: LeaseCtx,
    key: LockKey,
    /// One acquisition at a time through this handle, so reentrancy sees what the last one got.
    gate: tokio::sync::Mutex<()>,
    read: std::sync::Mutex<Weak<LeaseInner>>,
    write: std::sync::Mutex<Weak<LeaseInner>>,
}

impl std::fmt::Debug for RwLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock").field("key", &self.inner.key).finish()
    }
}

/// The held guard in `slot`, if any.
fn held(slot: &std::sync::Mutex<Weak<LeaseInner>>) -> Option<Guard> {
    let current = slot.lock().unwrap_or_else(|p| p.into_inner());
    let inner = current.upgrade()?;
    inner.is_held().then_some(Guard { inner })
}

fn remember(slot: &std::sync::Mutex<Weak<LeaseInner>>, guard: &Guard) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&guard.inner);
}

/// Runs one acquisition, or returns the timeout error when it ended without a guard.
async fn take(
    ctx: &LeaseCtx,
    key: &LockKey,
    ask: Ask,
    timeout: Option<Duration>,
    watchdog: Option<bool>,
) -> Result<Option<Guard>, LockError> {
    let span = debug_span!("acquire", %key, backend = ctx.backend.name(), ?ask);
    acquire_inner(ctx, key, ask, timeout, watchdog).instrument(span).await
}

/// Enters the handle's gate: waits for it, or for a try (`wait` false) gives up (`None`) while
/// another task acquires through the handle.
async fn enter(gate: &tokio::sync::Mutex<()>, wait: bool) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    if wait { Some(gate.lock().await) } else { gate.try_lock().ok() }
}

fn timed_out(key: &LockKey, waited: Duration) -> LockError {
    LockError::Timeout { key: key.clone(), waited, last_error: None }
}

impl RwLock {
    pub(crate) fn new(ctx: LeaseCtx, key: LockKey) -> Self {
        Self {
            inner: Arc::new(RwInner {
                ctx,
                key,
                gate: tokio::sync::Mutex::new(()),
                read: std::sync::Mutex::new(Weak::new()),
                write: std::sync::Mutex::new(Weak::new()),
            }),
        }
    }

    /// The lock's key (prefix included).
    pub fn key(&self) -> &LockKey {
        &self.inner.key
    }

    /// Takes a read lock, waiting up to the configured acquire timeout.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when a writer held or waited for the whole timeout;
    /// [`LockError::Backend`] for a permanent backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a read lock granted to a cancelled call is released in the background.
    pub async fn read(&self) -> Result<Guard, LockError> {
        self.read_with(LockOptions::default()).await
    }

    /// [`RwLock::read`] with per-call options (timeout, watchdog).
    ///
    /// # Errors
    /// As [`RwLock::read`].
    ///
    /// # Cancel safety
    /// As [`RwLock::read`].
    pub async fn read_with(&self, options: LockOptions) -> Result<Guard, LockError> {
        let timeout = options.timeout.unwrap_or(self.inner.ctx.config.acquire_timeout());
        self.acquire_read(Some(timeout), options.watchdog)
            .await?
            .ok_or_else(|| timed_out(self.key(), timeout))
    }

    /// One attempt at a read lock: `None` when a writer holds it or waits for it.
    ///
    /// # Errors
    /// [`LockError::Backend`] when the backend failed.
    ///
    /// # Cancel safety
    /// As [`RwLock::read`].
    pub async fn try_read(&self) -> Result<Option<Guard>, LockError> {
        self.acquire_read(None, None).await
    }

    /// Takes the write lock, waiting up to the configured acquire timeout.
    ///
    /// # Errors
    /// [`LockError::Upgrade`] when this handle holds a read lock; [`LockError::Timeout`] when
    /// readers or a writer held it for the whole timeout; [`LockError::Backend`] for a
    /// permanent backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a write lock granted to a cancelled call is released, and its place among
    /// the waiting writers given up, in the background.
    pub async fn write(&self) -> Result<Guard, LockError> {
        self.write_with(LockOptions::default()).await
    }

    /// [`RwLock::write`] with per-call options (timeout, watchdog).
    ///
    /// # Errors
    /// As [`RwLock::write`].
    ///
    /// # Cancel safety
    /// As [`RwLock::write`].
    pub async fn write_with(&self, options: LockOptions) -> Result<Guard, LockError> {
        let timeout = options.timeout.unwrap_or(self.inner.ctx.config.acquire_timeout());
        self.acquire_write(Some(timeout), options.watchdog)
            .await?
            .ok_or_else(|| timed_out(self.key(), timeout))
    }

    /// One attempt at the write lock: `None` when readers or a writer hold it. A try is not
    /// recorded as a waiting writer.
    ///
    /// # Errors
    /// [`LockError::Upgrade`] when this handle holds a read lock; [`LockError::Backend`] when
    /// the backend failed.
    ///
    /// # Cancel safety
    /// As [`RwLock::write`].
    pub async fn try_write(&self) -> Result<Option<Guard>, LockError> {
        self.acquire_write(None, None).await
    }

    async fn acquire_read(
        &self,
        timeout: Option<Duration>,
        watchdog: Option<bool>,
    ) -> Result<Option<Guard>, LockError> {
        let inner = &self.inner;
        if let Some(guard) = held(&inner.read) {
            return Ok(Some(guard));
        }
        let Some(_gate) = enter(&inner.gate, timeout.is_some()).await else { return Ok(None) };
        if let Some(guard) = held(&inner.read) {
            return Ok(Some(guard));
        }
        let downgrade = held(&inner.write).map(|w| w.inner.token());
        let guard =
            take(&inner.ctx, &inner.key, Ask::Hold(Hold::Read { downgrade }), timeout, watchdog).await?;
        if let Some(guard) = &guard {
            remember(&inner.read, guard);
        }
        Ok(guard)
    }

    async fn acquire_write(
        &self,
        timeout: Option<Duration>,
        watchdog: Option<bool>,
    ) -> Result<Option<Guard>, LockError> {
        let inner = &self.inner;
        let upgrade = || LockError::Upgrade { key: inner.key.clone() };
        if let Some(guard) = held(&inner.write) {
            return Ok(Some(guard));
        }
        if held(&inner.read).is_some() {
            return Err(upgrade());
        }
        let Some(_gate) = enter(&inner.gate, timeout.is_some()).await else { return Ok(None) };
        if let Some(guard) = held(&inner.write) {
            return Ok(Some(guard));
        }
        if held(&inner.read).is_some() {
            return Err(upgrade());
        }
        let wait = timeout.map(|_| inner.ctx.config.waiter_timeout());
        let guard = take(&inner.ctx, &inner.key, Ask::Hold(Hold::Write { wait }), timeout, watchdog).await?;
        if let Some(guard) = &guard {
            remember(&inner.write, guard);
        }
        Ok(guard)
    }
}

/// A handle on one named semaphore, made by [`crate::LockClient::semaphore`]: at most
/// `permits` valid holders at any instant, across every process. Cheap to clone.
///
/// Every permit is a [`Guard`] and a lease of its own (Redisson's `RPermitExpirableSemaphore`,
/// not its `RSemaphore`, whose permits leak when a holder dies): it has an owner token and an
/// expiry on the server, a watchdog renews it, [`Guard::lost`] resolves at its local validity
/// deadline, and a holder that dies gives its permit back at its TTL. Each
/// [`Semaphore::acquire`] takes another permit (no reentrancy: a semaphore counts holds).
///
/// **Its size is fixed while any permit is held.** Every handle of one name must use the same
/// size; a handle with another size gets [`LockError::PermitsMismatch`] while permits are held
/// (the holders were promised the size they used), and sets the new size once none is.
///
/// A permit's release wakes one waiter per process (the one that has waited longest there),
/// not every waiter: the others keep waiting for the next release, so a release costs one call
/// per waiting process, not one per waiter.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::{LockClient, LockError};
/// let client = LockClient::new(lock_testkit::MemoryBackend::new());
/// let permit = client.semaphore("exports", 3)?.acquire().await?;
/// let other_size = client.semaphore("exports", 5)?;
/// assert!(matches!(other_size.acquire().await, Err(LockError::PermitsMismatch { live: 3, asked: 5, .. })));
/// permit.release().await?;
/// assert!(other_size.try_acquire().await?.is_some()); // no permit held: the size may change
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    ctx: LeaseCtx,
    key: LockKey,
    permits: u32,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore").field("key", &self.key).field("permits", &self.permits).finish()
    }
}

impl Semaphore {
    pub(crate) fn new(ctx: LeaseCtx, key: LockKey, permits: u32) -> Self {
        Self { ctx, key, permits }
    }

    /// The semaphore's key (prefix included).
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The number of permits this handle was made with.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    fn ask(&self) -> Ask {
        Ask::Hold(Hold::Permit { permits: self.permits })
    }

    /// Takes a permit, waiting up to the configured acquire timeout.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when every permit stayed taken; [`LockError::PermitsMismatch`]
    /// when the live semaphore has another size; [`LockError::Backend`] for a permanent
    /// backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a permit granted to a cancelled call is released in the background.
    pub async fn acquire(&self) -> Result<Guard, LockError> {
        self.acquire_with(LockOptions::default()).await
    }

    /// [`Semaphore::acquire`] with per-call options (timeout, watchdog).
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    ///
    /// # Cancel safety
    /// As [`Semaphore::acquire`].
    pub async fn acquire_with(&self, options: LockOptions) -> Result<Guard, LockError> {
        let timeout = options.timeout.unwrap_or(self.ctx.config.acquire_timeout());
        take(&self.ctx, &self.key, self.ask(), Some(timeout), options.watchdog)
            .await?
            .ok_or_else(|| timed_out(&self.key, timeout))
    }

    /// One attempt at a permit: `None` when every permit is taken.
    ///
    /// # Errors
    /// [`LockError::PermitsMismatch`] and [`LockError::Backend`] as [`Semaphore::acquire`].
    ///
    /// # Cancel safety
    /// As [`Semaphore::acquire`].
    pub async fn try_acquire(&self) -> Result<Option<Guard>, LockError> {
        take(&self.ctx, &self.key, self.ask(), None, None).await
    }
}
