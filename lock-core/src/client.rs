//! The user API: [`LockClient`], [`Mutex`] and [`LockOptions`].

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use crate::backend::{
    AcquireOutcome, AcquireRequest, Hold, HoldOutcome, HoldRequest, LockBackend, Members, ReleaseWatch,
};
use crate::backoff::Backoff;
use crate::config::LockConfig;
use crate::error::{BackendError, LockError};
use crate::lease::{Guard, LeaseCtx, LeaseInner, deadline_error, release_on};
use crate::rw::{RwLock, Semaphore};
use crate::types::{LockKey, Token, validity_deadline};

/// The entry point: a backend plus a validated [`LockConfig`]. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::LockClient;
/// use lock_testkit::MemoryBackend;
///
/// let client = LockClient::new(MemoryBackend::new());
/// let total = client
///     .with_lock("reports:daily", |lease| async move {
///         assert!(lease.is_held());
///         40 + 2
///     })
///     .await?;
/// assert_eq!(total, 42);
/// # Ok(()) }
/// ```
pub struct LockClient<B> {
    backend: Arc<B>,
    ctx: LeaseCtx,
}

impl<B> Clone for LockClient<B> {
    fn clone(&self) -> Self {
        Self { backend: Arc::clone(&self.backend), ctx: self.ctx.clone() }
    }
}

impl<B: LockBackend> std::fmt::Debug for LockClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient")
            .field("backend", &self.backend.name())
            .field("config", &*self.ctx.config)
            .finish()
    }
}

impl<B: LockBackend> LockClient<B> {
    /// A client with the default [`LockConfig`] (fencing off, so any backend fits).
    pub fn new(backend: B) -> Self {
        Self::build(backend, LockConfig::default())
    }

    fn build(backend: B, config: LockConfig) -> Self {
        let backend = Arc::new(backend);
        let dyn_backend: Arc<dyn LockBackend> = backend.clone();
        Self { backend, ctx: LeaseCtx::new(dyn_backend, config) }
    }

    /// A client with a custom configuration.
    ///
    /// # Errors
    /// [`LockError::Unsupported`] when the configuration asks for fencing and the backend
    /// cannot mint fencing tokens.
    pub fn with_config(backend: B, config: LockConfig) -> Result<Self, LockError> {
        if config.fencing() && !backend.capabilities().fencing {
            return Err(LockError::Unsupported {
                backend: backend.name().to_string(),
                feature: "fencing tokens",
            });
        }
        Ok(Self::build(backend, config))
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &LockConfig {
        &self.ctx.config
    }

    /// What the watchdog of this client (and its clones) has sent so far. The watchdog renews
    /// the leases whose renewals fall due close together in one batch
    /// ([`LockBackend::extend_many`]: one round trip per node), so with many held leases
    /// `batches` grows far slower than `renewals`. `worst_lateness` is the most any renewal was
    /// sent after it fell due: a figure to alert on when it nears the TTL's margin (the TTL minus
    /// the renewal interval).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use std::time::Duration;
    /// use lock_core::{LockClient, LockConfig};
    /// use lock_testkit::MemoryBackend;
    /// let config = LockConfig::builder().ttl(Duration::from_secs(3)).build()?;
    /// let client = LockClient::with_config(MemoryBackend::new(), config)?;
    /// let a = client.mutex("a")?.lock().await?;
    /// let b = client.mutex("b")?.lock().await?;
    /// tokio::time::sleep(Duration::from_millis(1_100)).await; // one renewal interval
    /// let stats = client.renewal_stats();
    /// assert_eq!((stats.batches, stats.renewals), (1, 2), "both leases in one batch");
    /// # a.release().await?; b.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn renewal_stats(&self) -> crate::RenewalStats {
        self.ctx.renewer.stats()
    }

    /// A handle on the lock named `key` (after the configured prefix). Cheap; makes no request.
    ///
    /// Locking through one handle (or its clones) while it is held is reentrant; two handles
    /// made by two calls contend, even in one process.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] when the key is empty or too long.
    pub fn mutex(&self, key: impl AsRef<str>) -> Result<Mutex, LockError> {
        self.handle(key.as_ref(), false)
    }

    /// A handle on the **fair** lock named `key`: waiters are served in the order they arrived,
    /// across every process, by a queue kept on the server (see [`FairMutex`]). Cheap; makes no
    /// request. Shares the key with [`LockClient::mutex`]: the two exclude each other, but only
    /// fair waiters queue.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] when the key is empty or too long; [`LockError::Unsupported`]
    /// when the backend has no fair lock ([`LockBackend::fair`]), e.g. a RedLock.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// let locks = LockClient::new(lock_testkit::MemoryBackend::new());
    /// let fair = locks.fair_mutex("payouts")?;
    /// let guard = fair.lock().await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn fair_mutex(&self, key: impl AsRef<str>) -> Result<FairMutex, LockError> {
        if self.backend.fair().is_none() {
            return Err(LockError::Unsupported {
                backend: self.backend.name().to_string(),
                feature: "fair locks",
            });
        }
        Ok(FairMutex { mutex: self.handle(key.as_ref(), true)? })
    }

    /// A handle on the read-write lock named `key`: many readers or one writer, every reader
    /// a lease of its own (see [`RwLock`]).
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] for a bad key; [`LockError::Unsupported`] when the backend
    /// keeps no shared holds ([`LockBackend::shared`]).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// let client = lock_core::LockClient::new(lock_testkit::MemoryBackend::new());
    /// let (a, b, c) = (client.rw_lock("config")?, client.rw_lock("config")?, client.rw_lock("config")?);
    /// let r1 = a.read().await?;
    /// let r2 = b.read().await?; // readers share
    /// assert!(c.try_write().await?.is_none()); // a writer waits for them
    /// r1.release().await?;
    /// r2.release().await?;
    /// assert!(c.try_write().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub fn rw_lock(&self, key: impl AsRef<str>) -> Result<RwLock, LockError> {
        if self.backend.shared().is_none() {
            return Err(LockError::Unsupported {
                backend: self.backend.name().to_string(),
                feature: "read-write locks",
            });
        }
        Ok(RwLock::new(self.ctx.clone(), self.full_key(key.as_ref())?))
    }

    /// A handle on the semaphore named `key` with `permits` permits: at most that many valid
    /// holders at any instant, each permit a lease of its own that expires if its holder dies
    /// (see [`Semaphore`]).
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] for a bad key; [`LockError::Config`] for zero permits;
    /// [`LockError::Unsupported`] when the backend keeps no shared holds, or cannot bound a
    /// semaphore's holders (a RedLock quorum: the error names why).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// let client = lock_core::LockClient::new(lock_testkit::MemoryBackend::new());
    /// let pool = client.semaphore("db-connections", 2)?;
    /// let p1 = pool.acquire().await?;
    /// let p2 = pool.acquire().await?;
    /// assert!(pool.try_acquire().await?.is_none()); // both permits are taken
    /// p1.release().await?;
    /// assert!(pool.try_acquire().await?.is_some());
    /// # drop(p2);
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, key: impl AsRef<str>, permits: u32) -> Result<Semaphore, LockError> {
        if permits == 0 {
            return Err(LockError::Config { field: "permits", reason: "must be at least 1".into() });
        }
        let unsupported =
            |feature| LockError::Unsupported { backend: self.backend.name().to_string(), feature };
        if self.backend.shared().is_none() {
            return Err(unsupported("semaphores"));
        }
        if let Some(reason) = self.backend.semaphore_refused() {
            return Err(unsupported(reason));
        }
        Ok(Semaphore::new(self.ctx.clone(), self.full_key(key.as_ref())?, permits))
    }

    /// The full key of `key`: the configured prefix, then `key`.
    fn full_key(&self, key: &str) -> Result<LockKey, LockError> {
        let prefix = self.ctx.config.key_prefix();
        if prefix.is_empty() {
            LockKey::new(key)
        } else {
            if key.is_empty() {
                return Err(LockError::InvalidKey { reason: "the key is empty".into() });
            }
            LockKey::new(format!("{prefix}{key}"))
        }
    }

    fn handle(&self, key: &str, fair: bool) -> Result<Mutex, LockError> {
        let key = self.full_key(key)?;
        Ok(Mutex {
            inner: Arc::new(MutexInner {
                ctx: self.ctx.clone(),
                key,
                fair,
                gate: tokio::sync::Mutex::new(()),
                current: std::sync::Mutex::new(Weak::new()),
            }),
        })
    }

    /// Takes the lock `key`, runs `body` with the lease, and releases. The body is stopped
    /// (dropped at its next await) if the lease is lost first.
    ///
    /// # Errors
    /// Those of [`Mutex::lock`] and [`Guard::release`], and [`LockError::LeaseLost`] when the
    /// lease was lost before the body finished.
    ///
    /// # Cancel safety
    /// Cancelling drops the body and releases the lock in the background.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// use lock_testkit::MemoryBackend;
    /// let locks = LockClient::new(MemoryBackend::new());
    /// let total = locks.with_lock("ledger", |guard| async move {
    ///     assert!(guard.is_held());
    ///     40 + 2
    /// }).await?;
    /// assert_eq!(total, 42);
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<F, Fut, T>(&self, key: impl AsRef<str>, body: F) -> Result<T, LockError>
    where
        F: FnOnce(Guard) -> Fut,
        Fut: Future<Output = T>,
    {
        let mutex = self.mutex(key)?;
        let guard = mutex.lock().await?;
        let lost = guard.lost();
        let work = body(guard.clone());
        let outcome = tokio::select! {
            biased;
            reason = lost => Err(reason),
            value = work => Ok(value),
        };
        match outcome {
            Ok(value) => guard.release().await.map(|()| value),
            Err(reason) => {
                let key = guard.key().clone();
                drop(guard);
                Err(LockError::LeaseLost { key, reason })
            }
        }
    }
}

/// Per-call options for [`Mutex::lock_with`].
///
/// ```
/// use std::time::Duration;
/// let opts = lock_core::LockOptions::new().timeout(Duration::from_millis(500));
/// assert_eq!(opts.get_timeout(), Some(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) watchdog: Option<bool>,
}

impl LockOptions {
    /// Options that change nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Wait at most this long (instead of the configured acquire timeout).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Turn renewal on or off for this acquisition.
    #[must_use]
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = Some(on);
        self
    }
    /// The timeout set, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

struct MutexInner {
    ctx: LeaseCtx,
    key: LockKey,
    /// A [`FairMutex`]: acquisitions go through the backend's queue.
    fair: bool,
    /// Serialises acquisitions through this handle so clones share one lease, not race.
    gate: tokio::sync::Mutex<()>,
    current: std::sync::Mutex<Weak<LeaseInner>>,
}

/// A handle on one named lock. Cheap to clone; clones share reentrancy.
#[derive(Clone)]
pub struct Mutex {
    inner: Arc<MutexInner>,
}

impl std::fmt::Debug for Mutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex").field("key", &self.inner.key).finish()
    }
}

impl Mutex {
    /// The lock's key (prefix included).
    pub fn key(&self) -> &LockKey {
        &self.inner.key
    }

    /// Takes the lock if it is free right now; never waits for another holder. Reentrant: while
    /// this handle holds the lock, returns another guard on the same lease with no round trip.
    ///
    /// # Errors
    /// [`LockError::Backend`] when the backend fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: an acquisition that may have been applied is released in the background.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// use lock_testkit::MemoryBackend;
    /// let backend = MemoryBackend::new();
    /// let a = LockClient::new(backend.clone()).mutex("job")?;
    /// let b = LockClient::new(backend).mutex("job")?;
    /// let held = a.try_lock().await?.expect("free");
    /// assert!(b.try_lock().await?.is_none(), "another handle does not get it");
    /// held.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<Option<Guard>, LockError> {
        if let Some(guard) = self.reenter() {
            return Ok(Some(guard));
        }
        let Ok(_gate) = self.inner.gate.try_lock() else {
            // Another task is acquiring through this handle right now: not ours yet.
            return Ok(None);
        };
        if let Some(guard) = self.reenter() {
            return Ok(Some(guard));
        }
        let guard = acquire(&self.inner, None, None).await?;
        if let Some(guard) = &guard {
            self.remember(guard);
        }
        Ok(guard)
    }

    /// Waits for the lock up to the configured acquire timeout. Reentrant like
    /// [`Mutex::try_lock`]. Waiters are woken by the backend's release notices when it has
    /// them, else by jittered backoff; every wait is capped by the holder's remaining TTL.
    ///
    /// # Errors
    /// [`LockError::Timeout`] naming the key and the time waited; [`LockError::Backend`] for a
    /// permanent backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future leaves no lock behind; an acquisition that may have
    /// been applied is released in the background.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// use lock_testkit::MemoryBackend;
    /// let mutex = LockClient::new(MemoryBackend::new()).mutex("orders:42")?;
    /// let guard = mutex.lock().await?;
    /// tokio::select! {
    ///     () = async { /* the critical section */ } => {}
    ///     reason = guard.lost() => eprintln!("lost: {reason}"),
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self) -> Result<Guard, LockError> {
        self.lock_with(LockOptions::default()).await
    }

    /// [`Mutex::lock`] with per-call options.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    ///
    /// # Cancel safety
    /// As [`Mutex::lock`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use std::time::Duration;
    /// use lock_core::{LockClient, LockOptions};
    /// use lock_testkit::MemoryBackend;
    /// let mutex = LockClient::new(MemoryBackend::new()).mutex("import")?;
    /// let options = LockOptions::new().timeout(Duration::from_millis(200)).watchdog(false);
    /// let guard = mutex.lock_with(options).await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_with(&self, options: LockOptions) -> Result<Guard, LockError> {
        if let Some(guard) = self.reenter() {
            return Ok(guard);
        }
        let _gate = self.inner.gate.lock().await;
        if let Some(guard) = self.reenter() {
            return Ok(guard);
        }
        let timeout = options.timeout.unwrap_or(self.inner.ctx.config.acquire_timeout());
        match acquire(&self.inner, Some(timeout), options.watchdog).await? {
            Some(guard) => {
                self.remember(&guard);
                Ok(guard)
            }
            // acquire() with a timeout only returns a guard or an error.
            None => {
                Err(LockError::Timeout { key: self.inner.key.clone(), waited: timeout, last_error: None })
            }
        }
    }

    fn reenter(&self) -> Option<Guard> {
        let current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        let inner = current.upgrade()?;
        inner.is_held().then_some(Guard { inner })
    }

    fn remember(&self, guard: &Guard) {
        let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Arc::downgrade(&guard.inner);
    }
}

/// How long a younger waiter lets the oldest waiter of its process try first after a release.
const YIELD_TO_OLDER: Duration = Duration::from_millis(1);

/// What one acquisition asks the backend for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ask {
    /// The mutex: [`LockBackend::acquire`].
    Lock,
    /// A read lock, the write lock or a permit: [`crate::SharedBackend::acquire_hold`].
    Hold(Hold),
}

impl Ask {
    /// Where a granted owner token lives (see [`Hold::members`]).
    fn members(self) -> Option<Members> {
        match self {
            Ask::Lock => None,
            Ask::Hold(hold) => hold.members(),
        }
    }

    /// Whether a refused call still left something behind: a writer recorded as waiting.
    fn queues(self) -> bool {
        matches!(self, Ask::Hold(Hold::Write { wait: Some(_) }))
    }
}

/// Undoes an acquisition that may have been granted (a lost reply, a cancelled call) or left a
/// waiting writer behind, in the background, unless disarmed. Owner-checked, so harmless if
/// nothing was granted.
struct PendingAcquire {
    backend: Arc<dyn LockBackend>,
    key: LockKey,
    token: Token,
    ask: Ask,
    armed: bool,
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = Handle::try_current() {
            let (backend, key, token, ask) =
                (Arc::clone(&self.backend), self.key.clone(), self.token, self.ask);
            rt.spawn(async move {
                let outcome = release_on(backend.as_ref(), ask.members(), &key, &token, false).await;
                debug!(%key, ?outcome, "released an acquisition that was never handed out");
                if let (true, Some(shared)) = (ask.queues(), backend.shared()) {
                    let left = shared.release_member(Members::Writers, &key, &token).await;
                    debug!(%key, outcome = ?left, "a waiting writer gave up");
                }
            });
        }
    }
}

/// One acquisition of `mutex` (a single try when `timeout` is `None`).
async fn acquire(
    mutex: &MutexInner,
    timeout: Option<Duration>,
    watchdog: Option<bool>,
) -> Result<Option<Guard>, LockError> {
    let span =
        debug_span!("acquire", key = %mutex.key, backend = mutex.ctx.backend.name(), fair = mutex.fair);
    if mutex.fair {
        crate::fair::acquire(&mutex.ctx, &mutex.key, timeout, watchdog).instrument(span).await
    } else {
        acquire_inner(&mutex.ctx, &mutex.key, Ask::Lock, timeout, watchdog).instrument(span).await
    }
}

/// One call for `ask`: `hold` is the request of a read, write or permit (built once per
/// acquisition), `None` for the mutex.
async fn ask_once(
    backend: &dyn LockBackend,
    req: &AcquireRequest,
    hold: Option<&HoldRequest>,
) -> Result<HoldOutcome, BackendError> {
    let Some(hold) = hold else {
        return Ok(match backend.acquire(req).await? {
            AcquireOutcome::Acquired(grant) => HoldOutcome::Acquired(grant),
            AcquireOutcome::Held { remaining } => HoldOutcome::Held { remaining },
        });
    };
    match backend.shared() {
        Some(shared) => shared.acquire_hold(hold).await,
        None => Err(crate::backend::no_shared_holds(backend.name())),
    }
}

/// The acquisition loop of the mutex and of the read-write lock and semaphore: one call, and
/// while refused (with a timeout), wait for a release notice or the holder's expiry and call
/// again with the same token.
pub(crate) async fn acquire_inner(
    ctx: &LeaseCtx,
    key: &LockKey,
    ask: Ask,
    timeout: Option<Duration>,
    watchdog: Option<bool>,
) -> Result<Option<Guard>, LockError> {
    let config = &ctx.config;
    let backend = &ctx.backend;
    let start = Instant::now();
    let deadline = timeout.map(|t| start.checked_add(t).unwrap_or(start + Duration::from_secs(86_400 * 365)));
    // One token for the whole call: a retry after a lost reply re-acquires idempotently.
    let token = Token::random();
    let req = AcquireRequest { key: key.clone(), token, ttl: config.ttl(), fencing: config.fencing() };
    let hold = match ask {
        Ask::Lock => None,
        Ask::Hold(hold) => {
            Some(HoldRequest { key: key.clone(), token, ttl: req.ttl, fencing: req.fencing, hold })
        }
    };
    let mut pending =
        PendingAcquire { backend: Arc::clone(backend), key: key.clone(), token, ask, armed: false };
    let mut errored = false;
    let mut backoff = Backoff::new(config.backoff_min(), config.backoff_max());
    let mut watch: Option<ReleaseWatch> = None;
    let mut last_error: Option<BackendError> = None;
    let wake_up = backend.capabilities().wake_up;
    // A permit's release is for one waiter per process; every other release may let several in
    // (readers) or is raced for (a mutex), and wakes them all.
    let wake_one = matches!(ask, Ask::Hold(Hold::Permit { .. }));
    let mut contended = false;
    // When the holder's lease ends, as the last refusal reported it.
    let mut holder_ends: Option<Instant> = None;

    let mut called = false;

    loop {
        let started = Instant::now();
        if let Some(deadline) = deadline
            && started >= deadline
            && called
        {
            // No call that would only be cut off at once (a wait that ran to the deadline):
            // it would tell the caller "did not answer in time" of a lock that was merely
            // held, and a SET it left applied would be undone only in the background.
            crate::telemetry::timed_out(ctx.label());
            return Err(LockError::Timeout { key: key.clone(), waited: started - start, last_error });
        }
        called = true;
        // A grant that arrives after ttl - drift is worthless, so no call waits longer.
        let Some(validity_end) = validity_deadline(started, config.ttl(), config.drift()) else {
            return Err(LockError::Config { field: "ttl", reason: "leaves no validity after drift".into() });
        };
        let call_deadline = deadline.map_or(validity_end, |d| d.min(validity_end));
        pending.armed = true;
        let mut remaining = None;
        let mut held = false;
        match tokio::time::timeout_at(call_deadline, ask_once(backend.as_ref(), &req, hold.as_ref())).await {
            Ok(Ok(HoldOutcome::Acquired(grant))) => {
                let valid_until = grant.valid_until.min(validity_end);
                let now = Instant::now();
                if now < valid_until {
                    pending.armed = false;
                    crate::telemetry::acquired(ctx.label(), now - started, now - start);
                    debug!(fence = ?grant.fence, "acquired");
                    let inner = LeaseInner::start(
                        ctx.clone(),
                        key.clone(),
                        token,
                        ask.members(),
                        grant.fence,
                        started,
                        valid_until,
                        crate::lease::Renew::watchdog(watchdog.unwrap_or(config.watchdog()), started, config),
                        // Not a fair lock: the short release serves it, waited for or not
                        // (it announces the release itself when somebody was refused).
                        false,
                    );
                    return Ok(Some(Guard { inner }));
                }
                // Never hand out a grant whose validity has passed (S2); retry re-acquires.
                errored = true;
                last_error = Some(deadline_error("grant arrived after its validity deadline"));
            }
            Ok(Ok(HoldOutcome::Held { remaining: r })) => {
                if !errored && !ask.queues() {
                    pending.armed = false;
                }
                held = true;
                if !contended {
                    contended = true;
                    crate::telemetry::contended(ctx.label());
                }
                remaining = r;
            }
            Ok(Ok(HoldOutcome::SizeMismatch { permits })) => {
                // Nothing was changed on the server; an earlier call may have been granted.
                if !errored {
                    pending.armed = false;
                }
                let asked = match ask {
                    Ask::Hold(Hold::Permit { permits }) => permits,
                    _ => 0,
                };
                return Err(LockError::PermitsMismatch { key: key.clone(), live: permits, asked });
            }
            Ok(Err(e)) if e.is_retryable() => {
                debug!(error = %e, "acquire failed, will retry");
                errored = true;
                last_error = Some(e);
            }
            Ok(Err(source)) => return Err(LockError::Backend { key: key.clone(), source }),
            Err(_) => {
                errored = true;
                // Cut off by the caller's own timeout: the error seen before says more (e.g. a
                // node in quarantine) than "no answer in time".
                if last_error.is_none() || call_deadline == validity_end {
                    last_error = Some(deadline_error("acquire request did not answer in time"));
                }
            }
        }

        let Some(deadline) = deadline else {
            // try_lock: one attempt, no waiting.
            return match (held, last_error) {
                (false, Some(source)) => Err(LockError::Backend { key: key.clone(), source }),
                _ => Ok(None),
            };
        };
        let now = Instant::now();
        if now >= deadline {
            crate::telemetry::timed_out(ctx.label());
            return Err(LockError::Timeout { key: key.clone(), waited: now - start, last_error });
        }
        if held && wake_up && watch.is_none() {
            // Subscribe first, then retry at once: a release between our attempt and the
            // subscription would otherwise be missed.
            if let Ok(Some(w)) = backend.watch_releases(key).await {
                watch = Some(w);
                continue;
            }
        }
        // Notices wake a waiter at once; the jittered, growing backoff is the safety net for
        // a lost notice and for rounds that no one won (a RedLock split vote leaves no holder
        // to announce a release).
        let mut wait = backoff.next_delay();
        if let Some(r) = remaining {
            holder_ends = now.checked_add(r);
        }
        // The holder's expiry as last reported caps the wait even when this call failed (a
        // timeout under load must not make a waiter sleep its whole backoff past the expiry).
        if let Some(ends) = holder_ends.filter(|e| *e > now) {
            wait = wait.min((ends - now).max(Duration::from_millis(1)));
        }
        if let Ask::Hold(Hold::Write { wait: Some(kept) }) = ask {
            // Call again well before this writer's place among the waiting writers lapses.
            wait = wait.min(kept / 3);
        }
        wait = wait.min(deadline - now);
        let mut closed = false;
        match (&mut watch, held) {
            (Some(w), true) => {
                let until = Instant::now() + wait;
                while w.wait(until.saturating_duration_since(Instant::now())).await {
                    if w.rank() == 0 {
                        break;
                    }
                    if !wake_one {
                        // Woken by a release: the oldest waiter of this process tries at once,
                        // the younger ones a moment later, so they are served in arrival order
                        // rather than in the order the runtime wakes them (which starves some).
                        tokio::time::sleep(YIELD_TO_OLDER.min(deadline - Instant::now().min(deadline))).await;
                        break;
                    }
                    // A permit's release frees one permit: the oldest waiter of this process
                    // asks for it, the younger ones keep waiting (for the next release, or at
                    // most their backoff) instead of each sending a call that would be refused.
                }
                closed = w.is_closed();
            }
            _ => tokio::time::sleep(wait).await,
        }
        if closed {
            // The backend dropped the subscription: subscribe again next time.
            watch = None;
        }
    }
}

/// A handle on one named **fair** lock, made by [`LockClient::fair_mutex`]: waiters are served
/// in the order they arrived, across every process, by a queue the server keeps.
///
/// The same [`Guard`] as [`Mutex`] (watchdog, `lost()`, fencing, reentrancy through the handle
/// and its clones, cancel safety). What differs:
/// - [`FairMutex::lock`] queues the caller on the server (on its first attempt) and is granted
///   the lock only at the head of the queue; newcomers that find the lock free but waiters
///   queued queue behind them (no barging);
/// - a release wakes only the waiter at the head of the queue (its own notice), not every
///   waiter;
/// - a waiter that is cancelled, times out or fails leaves the queue at once (in the
///   background); one whose process dies leaves it at its waiter deadline
///   ([`crate::LockConfigBuilder::waiter_timeout`], default 5 s), and the next is served;
/// - [`FairMutex::try_lock`] succeeds only if the lock is free and nobody is queued.
///
/// Cost: an uncontended lock/unlock is two round trips, as for [`Mutex`]; a waiter renews its
/// place every third of the waiter timeout; a contended acquisition subscribes one channel.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::LockClient;
/// use lock_testkit::MemoryBackend;
/// let store = MemoryBackend::new();
/// let first = LockClient::new(store.clone()).fair_mutex("jobs")?;
/// let held = first.lock().await?;
/// let second = LockClient::new(store.clone()).fair_mutex("jobs")?;
/// let waiter = tokio::spawn(async move { second.lock().await.map(|g| g.fencing_token()) });
/// tokio::time::sleep(std::time::Duration::from_millis(10)).await; // the waiter queues
/// assert!(LockClient::new(store).fair_mutex("jobs")?.try_lock().await?.is_none(), "queued first");
/// held.release().await?; // hands the lock to the head of the queue
/// waiter.await.unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FairMutex {
    mutex: Mutex,
}

impl std::fmt::Debug for FairMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairMutex").field("key", self.mutex.key()).finish()
    }
}

impl FairMutex {
    /// The lock's key (prefix included).
    pub fn key(&self) -> &LockKey {
        self.mutex.key()
    }

    /// Takes the lock if it is free **and nobody is queued**; never waits and never queues.
    /// Reentrant as [`Mutex::try_lock`].
    ///
    /// # Errors
    /// [`LockError::Backend`] when the backend fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: an acquisition that may have been applied is undone in the background.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// let fair = LockClient::new(lock_testkit::MemoryBackend::new()).fair_mutex("job")?;
    /// assert!(fair.try_lock().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<Option<Guard>, LockError> {
        self.mutex.try_lock().await
    }

    /// Queues for the lock and waits for its turn, up to the configured acquire timeout.
    /// Reentrant as [`Mutex::lock`].
    ///
    /// # Errors
    /// [`LockError::Timeout`] naming the key and the time waited (the waiter has left the
    /// queue); [`LockError::Backend`] for a permanent backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future takes the waiter out of the queue (in the background)
    /// and releases a grant whose reply was in flight.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::LockClient;
    /// let fair = LockClient::new(lock_testkit::MemoryBackend::new()).fair_mutex("job")?;
    /// let guard = fair.lock().await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self) -> Result<Guard, LockError> {
        self.mutex.lock().await
    }

    /// [`FairMutex::lock`] with per-call options.
    ///
    /// # Errors
    /// As [`FairMutex::lock`].
    ///
    /// # Cancel safety
    /// As [`FairMutex::lock`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use std::time::Duration;
    /// use lock_core::{LockClient, LockOptions};
    /// let fair = LockClient::new(lock_testkit::MemoryBackend::new()).fair_mutex("job")?;
    /// let guard = fair.lock_with(LockOptions::new().timeout(Duration::from_millis(200))).await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_with(&self, options: LockOptions) -> Result<Guard, LockError> {
        self.mutex.lock_with(options).await
    }
}
