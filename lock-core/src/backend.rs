//! The backend contract: the minimum of atomic primitives, no policy.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::doctor::{Finding, NodeFacts};
use crate::error::BackendError;
use crate::types::{FencingToken, Grant, LockKey, Token};

/// A request to acquire (or re-acquire) a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The lock.
    pub key: LockKey,
    /// The owner token of this acquisition.
    pub token: Token,
    /// How long the backend keeps the lock without renewal.
    pub ttl: Duration,
    /// Whether to mint a fencing token.
    pub fencing: bool,
}

/// The answer to an [`AcquireRequest`]. Contention is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The lock is ours (newly, or again for the same token).
    Acquired(Grant),
    /// Another owner holds the lock.
    Held {
        /// The holder's remaining TTL, when the backend knows it. Waiters cap their wait with it.
        remaining: Option<Duration>,
    },
}

/// A request to acquire a fair lock (see [`FairBackend`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairRequest {
    /// The lock.
    pub key: LockKey,
    /// The owner token of this acquisition; also the waiter's place in the queue.
    pub token: Token,
    /// How long the backend keeps the lock without renewal, once granted.
    pub ttl: Duration,
    /// Whether to mint a fencing token.
    pub fencing: bool,
    /// `Some(t)`: queue this token if it is not its turn, and keep its place for `t` from now
    /// (each call renews it); a waiter that stops calling leaves the queue `t` after its last
    /// call. `None`: a try: grant only if the lock is free and nobody is queued, never queue.
    pub wait: Option<Duration>,
}

/// The answer to a [`FairRequest`]. Contention is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FairOutcome {
    /// The lock is ours (newly, or again for the same token).
    Acquired(Grant),
    /// Not our turn.
    Waiting {
        /// How many waiters are before this one (queued), or in the queue (a try).
        ahead: u64,
        /// How long until the state can change by itself (the holder's TTL, or the head's
        /// waiter deadline), when known; a waiter retries by then at the latest.
        retry_in: Option<Duration>,
        /// The waiter deadline this call set, as the backend names it (server milliseconds in
        /// Redis): a hand-over names the deadline it grants until ([`HandOver::deadline`]),
        /// and the waiter takes only one naming the deadline of its latest call. `None` for a
        /// try (never queued).
        deadline: Option<u64>,
    },
}

/// A hand-over notice (see [`FairBackend`]): the lock was granted to the waiter it names,
/// with `fence`, until the waiter deadline `deadline`.
///
/// A waiter takes it only when `deadline` is the one its latest call set
/// ([`FairOutcome::Waiting::deadline`]): a notice of an earlier grant, one that expired before
/// that call was served, names an earlier deadline, however late it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOver {
    /// The fencing token minted for the grant (0 when the lock has no fencing counter).
    pub fence: u64,
    /// The waiter deadline the grant expires at, as [`FairOutcome::Waiting::deadline`] names it.
    pub deadline: u64,
}

/// A lock store that can serve waiters in arrival order: the fair lock.
///
/// Reached through [`LockBackend::fair`], so a backend that only offers the mutex implements
/// nothing of it. The fair lock shares the mutex's key: [`LockBackend::extend`] renews it and
/// [`LockBackend::release`] frees it, and must then **hand it over** to the head of the queue.
/// A plain mutex and a fair lock on one name exclude each other; only fair waiters queue.
///
/// # Contract
/// - **Hand-over.** Whenever the lock is free and a waiter is at the head of the queue (after
///   a release, a leave, or a call that finds it so), the backend grants it to that waiter at
///   once, in the same atomic step: the head leaves the queue and holds the lock until its
///   waiter deadline (never longer: a dead head blocks the queue no longer than a dead waiter
///   would), with a fencing token minted if the lock has a fencing counter (a fencing waiter
///   creates it when it queues). It then tells that waiter alone, through its
///   [`FairBackend::watch_turn`] subscription, with [`ReleaseWatch::handed_over`] reporting
///   the token and that deadline ([`HandOver`]). The waiter's lease counts from the call that
///   last set its deadline, and it takes the hand-over only when the notice names the deadline
///   that call reported.
/// - **fair_acquire** grants when the lock is free and this token is at the head of the queue
///   (or the queue is empty), and finds the lock its own when a hand-over (or an earlier call
///   whose reply was lost) already granted it: then it refreshes the expiry to `ttl` and
///   returns the same fencing token (minting one if the hand-over could not). It removes the
///   token from the queue when granted. Otherwise, with `wait`, it queues the token once (at
///   the back, on its first call) and renews its waiter deadline; without, it changes nothing.
///   Waiters whose deadline passed are dropped from the queue before anything is decided.
/// - **leave_queue** removes the token from the queue, releases the lock if the token holds it,
///   and hands the lock over when it is free. Idempotent.
/// - **watch_turn** subscribes to the notices for one waiter: one comes when the lock is handed
///   over to it. Subscribe before the call that could miss the notice, as with
///   [`LockBackend::watch_releases`].
#[async_trait]
pub trait FairBackend: Send + Sync {
    /// Acquires `req.key` if it is this token's turn; else queues it (see the trait docs).
    ///
    /// # Errors
    /// Infrastructure failures only; contention is [`FairOutcome::Waiting`].
    ///
    /// # Cancel safety
    /// A cancelled call may have queued the token or granted the lock: callers send
    /// [`FairBackend::leave_queue`] with the same token (the core does).
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError>;

    /// Takes `token` out of the queue of `key`, and releases the lock if the token holds it.
    ///
    /// # Errors
    /// Infrastructure failures only.
    ///
    /// # Cancel safety
    /// Idempotent: a cancelled call can be sent again.
    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;

    /// Subscribes to the "your turn" notices of the waiter `token` on `key`. `Ok(None)`: no
    /// wake-up; waiters poll at their waiter deadline's pace.
    ///
    /// # Errors
    /// When the subscription could not be made; the waiter then polls.
    ///
    /// # Cancel safety
    /// Cancelling drops the subscription being made.
    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError>;

    /// Like [`FairBackend::watch_turn`], but only when it costs nothing: the notices of `key`
    /// already reach this process (another waiter here subscribed them, and the server
    /// confirmed it). Otherwise `None` (the default), and the waiter subscribes after its
    /// first call, then calls again. A watch taken before the first call saves that second
    /// call: no notice for this waiter can be sent before its first call queues it.
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        let _ = (key, token);
        None
    }
}

/// What a [`HoldRequest`] asks for: a read or write lock of a read-write lock, or a permit of
/// a semaphore (see [`SharedBackend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A read lock: shared with other readers, excluded by a writer and by waiting writers.
    Read {
        /// The owner token of the write lock the same handle holds, if any: a downgrade,
        /// granted beside that write lock (and ahead of waiting writers).
        downgrade: Option<Token>,
    },
    /// The write lock: excludes readers and other writers. It is the mutex key of the same
    /// name, so [`LockBackend::extend`] renews it and [`LockBackend::release`] frees it.
    Write {
        /// `Some(t)`: if kept waiting, record this writer among the waiting writers for `t`
        /// from now (each call renews it), so new readers queue behind it. `None`: a try.
        wait: Option<Duration>,
    },
    /// One permit of a semaphore of `permits`.
    Permit {
        /// The semaphore's size. A live semaphore keeps its size: a request with another size
        /// gets [`HoldOutcome::SizeMismatch`].
        permits: u32,
    },
}

impl Hold {
    /// The set this hold's owner token lives in once granted, if any: `None` for the write
    /// lock, which is the mutex key.
    pub fn members(&self) -> Option<Members> {
        match self {
            Hold::Read { .. } => Some(Members::Readers),
            Hold::Write { .. } => None,
            Hold::Permit { .. } => Some(Members::Permits),
        }
    }
}

/// A request for a [`Hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// The read-write lock or semaphore.
    pub key: LockKey,
    /// The owner token of this acquisition.
    pub token: Token,
    /// How long the backend keeps the hold without renewal.
    pub ttl: Duration,
    /// Whether to mint a fencing token (writers) or report the last writer's (readers).
    pub fencing: bool,
    /// What is asked for.
    pub hold: Hold,
}

/// The answer to a [`HoldRequest`]. Contention is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Granted (newly, or again for the same token). A reader's fence is the last fenced
    /// writer's token ([`FencingToken`] 0 when no writer ever fenced).
    Acquired(Grant),
    /// Not now: a writer holds or waits (readers), readers or a writer hold (writers), or every
    /// permit is taken.
    Held {
        /// How long until the state can change by itself, when known.
        remaining: Option<Duration>,
    },
    /// The semaphore is live with another size; nothing changed.
    SizeMismatch {
        /// The size it has.
        permits: u32,
    },
}

/// The sets of owner tokens a [`SharedBackend`] keeps per key, each token with its own expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Members {
    /// A read-write lock's readers. The last one out announces a release.
    Readers,
    /// A read-write lock's waiting writers (a writer leaves when it gives up). The last one
    /// out announces a release (readers queued behind it may enter).
    Writers,
    /// A semaphore's permits. Every release is announced.
    Permits,
}

/// A lock store that can keep shared holds: the read-write lock and the semaphore.
///
/// Reached through [`LockBackend::shared`], so a backend that only offers the mutex implements
/// nothing of it. Three calls cover both primitives, because both keep one set of owner tokens
/// per key, each with its own expiry (a reader's or a permit's lease), on the server's clock.
///
/// # Contract
/// - **acquire_hold** decides in one atomic step:
///   - [`Hold::Write`] takes the mutex key of the same name (as [`LockBackend::acquire`], with
///     a fencing token minted the same way) only when it is free **and** no live reader is
///     left; otherwise, with `wait`, it records the token among the waiting writers until
///     `now + wait`. A grant removes the token from the waiting writers.
///   - [`Hold::Read`] adds the token to the readers (expiring `ttl` from now) unless a writer
///     holds the lock or a live writer waits (so readers cannot starve writers); a downgrade
///     whose write lock is held by that token enters beside it. The grant's fence is the fencing
///     counter's value: the last fenced writer's token.
///   - [`Hold::Permit`] adds the token to the permits when fewer than `permits` live tokens hold
///     one. A semaphore with live permits keeps its size: another size is refused.
///
///   Expired members are dropped before anything is decided. Re-sending a request for a token
///   that already holds refreshes its expiry (a retry after a lost reply).
/// - **extend_member** renews a live member's expiry to `ttl` from now (owner-checked: an
///   absent or expired member is [`ExtendOutcome::NotHeld`]).
/// - **release_member** removes the member; [`Members::Permits`] announce every release on the
///   key's release notices, [`Members::Readers`] and [`Members::Writers`] when the set is left
///   empty. Idempotent.
#[async_trait]
pub trait SharedBackend: Send + Sync {
    /// Acquires a read lock, the write lock or a permit (see the trait docs).
    ///
    /// # Errors
    /// Infrastructure failures only; contention is [`HoldOutcome::Held`].
    ///
    /// # Cancel safety
    /// A cancelled call may have granted the hold, or recorded a waiting writer: callers undo
    /// it with [`SharedBackend::release_member`] (and [`LockBackend::release`] for a writer).
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError>;

    /// Renews a reader's or a permit's expiry.
    ///
    /// # Errors
    /// Infrastructure failures only.
    ///
    /// # Cancel safety
    /// Idempotent: a cancelled call can be sent again.
    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError>;

    /// Removes `token` from `set` of `key`: a reader or a permit released, or a waiting
    /// writer that gave up. [`ReleaseOutcome::NotHeld`] when it was absent or had expired.
    ///
    /// # Errors
    /// Infrastructure failures only.
    ///
    /// # Cancel safety
    /// Idempotent: a cancelled call can be sent again.
    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError>;
}

/// A request to reset a held lock's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendRequest {
    /// The lock.
    pub key: LockKey,
    /// The owner token it must still hold.
    pub token: Token,
    /// The new TTL, counted from when the backend applies it.
    pub ttl: Duration,
}

/// One lease to renew in a batch ([`LockBackend::extend_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// Where the owner token lives: `None` for the lock key (as [`LockBackend::extend`]), or a
    /// set of holders (as [`SharedBackend::extend_member`]: a reader, a permit).
    pub members: Option<Members>,
    /// The lease and its new TTL.
    pub req: ExtendRequest,
}

impl Renewal {
    /// Renewing a lock key (a mutex, a fair lock, a write lock).
    pub fn key(req: ExtendRequest) -> Self {
        Self { members: None, req }
    }
}

/// The answer to an [`ExtendRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// The expiry was reset. `valid_until` is counted from before the request was sent.
    Extended {
        /// The new validity deadline.
        valid_until: Instant,
    },
    /// The key does not hold this token (expired, released or taken over). Nothing was changed.
    NotHeld,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The key held our token and was deleted; waiters were notified.
    Released,
    /// The key did not hold our token; nothing was changed.
    NotHeld,
}

/// What a backend can do beyond the required primitives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Acquire can mint fencing tokens.
    pub fencing: bool,
    /// [`LockBackend::watch_releases`] delivers release notices.
    pub wake_up: bool,
}

impl Capabilities {
    /// No optional capability.
    pub const NONE: Capabilities = Capabilities { fencing: false, wake_up: false };

    /// Builds a capability set.
    pub const fn new(fencing: bool, wake_up: bool) -> Self {
        Self { fencing, wake_up }
    }
}

/// A subscription to the release notices of one key.
///
/// Backends create it from a [`watch::Receiver`] whose value they bump on every release of the
/// key; notices between two waits coalesce into one. The optional `keep` value lives as long as
/// the subscription, so a backend can count subscribers and unsubscribe when the last one goes.
pub struct ReleaseWatch {
    rx: watch::Receiver<u64>,
    _keep: Option<Box<dyn Any + Send + Sync>>,
    rank: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    handover: Option<Box<dyn Fn() -> Option<HandOver> + Send + Sync>>,
    taken: Option<Box<dyn Fn(HandOver) + Send + Sync>>,
}

impl std::fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWatch").field("seen", &*self.rx.borrow()).finish()
    }
}

impl ReleaseWatch {
    /// A subscription on a receiver; the backend bumps the sender's value on every release.
    pub fn new(rx: watch::Receiver<u64>) -> Self {
        Self { rx, _keep: None, rank: None, handover: None, taken: None }
    }

    /// Like [`ReleaseWatch::new`], keeping `keep` alive (e.g. a subscriber count guard).
    pub fn with_keep(rx: watch::Receiver<u64>, keep: impl Any + Send + Sync) -> Self {
        Self { rx, _keep: Some(Box::new(keep)), rank: None, handover: None, taken: None }
    }

    /// Waits, without bound, for a release notice newer than the last one seen. Returns
    /// `false` when the backend closed the subscription (no notice can come any more).
    ///
    /// # Errors
    /// None: a closed subscription is `false`.
    ///
    /// # Cancel safety
    /// Cancel-safe, like [`ReleaseWatch::wait`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (tx, rx) = tokio::sync::watch::channel(0u64);
    /// let mut watch = lock_core::ReleaseWatch::new(rx);
    /// tx.send_modify(|n| *n += 1); // a release
    /// assert!(watch.notified().await);
    /// drop(tx);
    /// assert!(!watch.notified().await, "closed");
    /// # }
    /// ```
    pub async fn notified(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until a release notice newer than the last one seen arrives, or `max` passes.
    /// Returns `true` when woken by a notice.
    ///
    /// # Errors
    /// None: a timeout or a closed subscription is `false`.
    ///
    /// # Cancel safety
    /// Cancel-safe: a notice that arrives after cancellation is seen by the next call.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// let (tx, rx) = tokio::sync::watch::channel(0u64);
    /// let mut watch = lock_core::ReleaseWatch::new(rx);
    /// assert!(!watch.wait(Duration::from_millis(10)).await, "nothing yet");
    /// tx.send_modify(|n| *n += 1);
    /// assert!(watch.wait(Duration::from_secs(1)).await);
    /// # }
    /// ```
    pub async fn wait(&mut self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        match tokio::time::timeout_at(deadline, self.rx.changed()).await {
            Ok(Ok(())) => true,
            // Closed: no notice can come; still wait out the bound, never spin.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                false
            }
            Err(_) => false,
        }
    }

    /// Tells this watch its place among the waiters of this process on the same key (see
    /// [`ReleaseWatch::rank`]).
    #[must_use]
    pub fn with_rank(mut self, rank: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.rank = Some(Box::new(rank));
        self
    }

    /// How many waiters of this process on the same key have waited longer than this one (0
    /// when unknown). After a release notice the oldest waiter tries first and the others a
    /// moment later, so that waiters of one process are served in arrival order instead of
    /// in the order the runtime happens to wake them.
    pub fn rank(&self) -> usize {
        self.rank.as_ref().map_or(0, |r| r())
    }

    /// Tells this watch how to read whether a notice handed the lock over to its waiter (the
    /// fair lock: a release grants the head of the queue and says so on the head's own
    /// channel; see [`ReleaseWatch::handed_over`]).
    ///
    /// ```
    /// use lock_core::HandOver;
    /// let (tx, rx) = tokio::sync::watch::channel(0u64);
    /// let watch = lock_core::ReleaseWatch::new(rx).with_handover(|| Some(HandOver { fence: 7, deadline: 1_000 }));
    /// assert_eq!(watch.handed_over(), Some(HandOver { fence: 7, deadline: 1_000 }));
    /// # drop(tx);
    /// ```
    #[must_use]
    pub fn with_handover(mut self, read: impl Fn() -> Option<HandOver> + Send + Sync + 'static) -> Self {
        self.handover = Some(Box::new(read));
        self
    }

    /// Calls `taken` whenever the waiter takes a hand-over through
    /// [`ReleaseWatch::take_hand_over`] (a wrapper that logs grants, such as the chaos
    /// runner's recording backend). A notice the waiter does not take (one naming an earlier
    /// deadline than its latest call's) is not reported: the lock was not handed to it then.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// use lock_core::HandOver;
    /// let (_tx, rx) = tokio::sync::watch::channel(0u64);
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let log = Arc::clone(&seen);
    /// let watch = lock_core::ReleaseWatch::new(rx)
    ///     .with_handover(|| Some(HandOver { fence: 9, deadline: 1_000 }))
    ///     .on_handover(move |h| log.store(h.fence, Ordering::SeqCst));
    /// assert_eq!(watch.take_hand_over(999), None, "a notice for an earlier deadline");
    /// assert_eq!(seen.load(Ordering::SeqCst), 0, "is not taken, so not reported");
    /// assert_eq!(watch.take_hand_over(1_000).map(|h| h.fence), Some(9));
    /// assert_eq!(seen.load(Ordering::SeqCst), 9);
    /// ```
    #[must_use]
    pub fn on_handover(mut self, taken: impl Fn(HandOver) + Send + Sync + 'static) -> Self {
        self.taken = Some(Box::new(taken));
        self
    }

    /// The hand-over the waiter takes: the latest notice ([`ReleaseWatch::handed_over`]) when
    /// it names `deadline`, the waiter deadline its latest call set (see [`HandOver`]); else
    /// `None`, and the waiter calls again. Reports a taken hand-over to the
    /// [`ReleaseWatch::on_handover`] observer.
    ///
    /// ```
    /// use lock_core::HandOver;
    /// let (_tx, rx) = tokio::sync::watch::channel(0u64);
    /// let watch = lock_core::ReleaseWatch::new(rx).with_handover(|| Some(HandOver { fence: 7, deadline: 5 }));
    /// assert_eq!(watch.take_hand_over(5), Some(HandOver { fence: 7, deadline: 5 }));
    /// assert_eq!(watch.take_hand_over(6), None, "granted until another deadline: not this call's");
    /// ```
    pub fn take_hand_over(&self, deadline: u64) -> Option<HandOver> {
        let handed = self.handed_over().filter(|h| h.deadline == deadline)?;
        if let Some(taken) = &self.taken {
            taken(handed);
        }
        Some(handed)
    }

    /// The latest notice on this watch that handed the lock over to its waiter: the backend
    /// held it for the waiter's token, with this fencing token (0 when the lock has no fencing
    /// counter), until this deadline (see [`HandOver`]: whether it is still the waiter's is
    /// for the waiter to tell). `None` when no notice did, or the backend does not hand over.
    pub fn handed_over(&self) -> Option<HandOver> {
        self.handover.as_ref().and_then(|read| read())
    }

    /// Whether the backend closed this subscription (no notice can come any more).
    pub fn is_closed(&self) -> bool {
        self.rx.has_changed().is_err()
    }
}

/// The atomic primitives a lock store must offer. All policy (waiting, retry, renewal,
/// reentrancy, validity accounting) lives in [`crate::LockClient`].
///
/// # Contract
/// - **acquire** sets `key = token` with expiry `ttl` only if the key is absent. If the key
///   already holds **this token**, it refreshes the expiry and succeeds again with the same
///   fencing token: a retried acquire whose reply was lost must not wait for its own lock.
///   If another token holds the key it returns [`AcquireOutcome::Held`] with the holder's
///   remaining TTL. Contention is `Ok`; `Err` means infrastructure failure.
/// - The returned [`Grant::valid_until`] is counted from an instant sampled **before** the
///   request was sent, minus drift (see [`crate::validity_deadline`]). A backend never returns a
///   grant whose `valid_until` has already passed.
/// - With `fencing` on (and [`Capabilities::fencing`]), every new acquisition of a key gets a
///   token strictly greater than every earlier one for that key; a re-acquire by the same owner
///   gets the same token.
/// - **extend** resets the expiry to `ttl` only if `key == token`, else reports
///   [`ExtendOutcome::NotHeld`] and changes nothing.
/// - **release** deletes the key only if `key == token`, reports whether it did, and, when it
///   did, notifies the key's release watchers that were refused the lock after they subscribed
///   (a backend may notify more: the Memory backend notifies every watcher, a Redis release
///   announces itself only when somebody was refused the lock).
/// - All three are idempotent for the same arguments (drivers resend commands after
///   reconnects).
/// - **discard** is release without the notice, for partial grants that never formed a lock.
/// - **raise_fence** (with [`Capabilities::fencing`]) raises the key's counter to at least a
///   given token and records it on the owner's lock; idempotent.
/// - **watch_releases** (optional, when [`Capabilities::wake_up`]) subscribes to release
///   notices. It must be subscribed before the caller retries acquire, so a release between
///   the retry and the wait is not missed, and a retry refused after it entitles the watcher
///   to the notice of the holder's release. The default returns `None`, and waiters fall back to
///   a jittered, bounded sleep.
///
/// The trait is object-safe: `Arc<dyn LockBackend>` is itself a backend.
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `"redis-rs"`.
    fn name(&self) -> &str;

    /// The identity of the server(s) behind this backend, used to reject the same node listed
    /// twice in a quorum. Two backends talking to the same server must return the same string.
    fn endpoint(&self) -> String;

    /// The optional capabilities of this backend.
    fn capabilities(&self) -> Capabilities;

    /// Acquires `req.key` for `req.token` if it is free or already ours.
    ///
    /// # Errors
    /// Infrastructure failures only; contention is [`AcquireOutcome::Held`].
    ///
    /// # Cancel safety
    /// A cancelled acquire may still have been applied: callers release it with the same token (the core does).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// assert!(matches!(backend.acquire(&req).await?, AcquireOutcome::Acquired(_)));
    /// let other = AcquireRequest { token: Token::random(), ..req.clone() };
    /// assert!(matches!(backend.acquire(&other).await?, AcquireOutcome::Held { .. }));
    /// # Ok(()) }
    /// ```
    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError>;

    /// Resets the expiry of a lock this token holds.
    ///
    /// # Errors
    /// Infrastructure failures only; a lost lock is [`ExtendOutcome::NotHeld`].
    ///
    /// # Cancel safety
    /// A cancelled extend may or may not have been applied; either way the holder's promised validity is unchanged.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// let ext = ExtendRequest { key, token, ttl: Duration::from_secs(10) };
    /// assert!(matches!(backend.extend(&ext).await?, ExtendOutcome::Extended { .. }));
    /// # Ok(()) }
    /// ```
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError>;

    /// Renews many leases at once: the watchdog's batch (see
    /// [`crate::LockClient::renewal_stats`]). Each renewal is decided alone, exactly as
    /// [`LockBackend::extend`] (or [`SharedBackend::extend_member`] for a member of a set) would
    /// decide it: an owner mismatch on one key is that renewal's [`ExtendOutcome::NotHeld`] and
    /// changes nothing for the others. The answers are in request order, one per renewal.
    ///
    /// The default sends every renewal at once, concurrently, through those two methods; the
    /// Redis drivers send one script call per few hundred keys that share a node (one per slot
    /// in a Cluster), and RedLock one batch per node.
    ///
    /// # Errors
    /// Per renewal, as [`LockBackend::extend`].
    ///
    /// # Cancel safety
    /// As [`LockBackend::extend`], per renewal.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// let mine = ExtendRequest { key: key.clone(), token, ttl: Duration::from_secs(10) };
    /// let theirs = ExtendRequest { token: Token::random(), ..mine.clone() };
    /// let answers = backend.extend_many(&[Renewal::key(mine), Renewal::key(theirs)]).await;
    /// assert!(matches!(answers[0], Ok(ExtendOutcome::Extended { .. })));
    /// assert!(matches!(answers[1], Ok(ExtendOutcome::NotHeld)));
    /// # Ok(()) }
    /// ```
    async fn extend_many(&self, renewals: &[Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
        futures::future::join_all(renewals.iter().map(|r| extend_on(self, r.members, &r.req))).await
    }

    /// Deletes the lock if this token holds it, and notifies waiters.
    ///
    /// # Errors
    /// Infrastructure failures only; a lock that was not ours is [`ReleaseOutcome::NotHeld`].
    ///
    /// # Cancel safety
    /// A cancelled release may or may not have been applied; it is owner-checked and idempotent, so sending it again is safe.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// assert_eq!(backend.release(&key, &token).await?, ReleaseOutcome::Released);
    /// assert_eq!(backend.release(&key, &token).await?, ReleaseOutcome::NotHeld);
    /// # Ok(()) }
    /// ```
    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError>;

    /// Deletes the key if this token holds it, **without** notifying waiters: for partial
    /// acquisitions that never formed a lock (a failed RedLock round), whose cleanup must not
    /// wake every waiter for nothing. The default calls [`LockBackend::release`].
    ///
    /// # Errors
    /// As [`LockBackend::release`].
    ///
    /// # Cancel safety
    /// As [`LockBackend::release`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// assert_eq!(backend.discard(&key, &token).await?, ReleaseOutcome::Released);
    /// # Ok(()) }
    /// ```
    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.release(key, token).await
    }

    /// [`LockBackend::release`] of a lock that fair waiters are likely queued for: the core
    /// calls it for every fair lock; its answer and guarantees are `release`'s. A backend whose
    /// release first tries a cheaper form that serves every lock but one with fair waiters
    /// queued (the Redis drivers, see [`crate::scripts::release`]) sends its full release at
    /// once, so a hand-over costs no extra round trip. The default calls
    /// [`LockBackend::release`].
    ///
    /// # Errors
    /// As [`LockBackend::release`].
    ///
    /// # Cancel safety
    /// As [`LockBackend::release`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// assert_eq!(backend.release_contended(&key, &token).await?, ReleaseOutcome::Released);
    /// # Ok(()) }
    /// ```
    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.release(key, token).await
    }

    /// Raises the fencing counter of `key` to at least `fence`, and records `fence` as the
    /// fencing token of the acquisition when `token` holds the key. RedLock writes the token it
    /// hands out back to a majority with this, so every later majority sees at least it.
    ///
    /// # Errors
    /// Infrastructure failures; the default reports that the backend has no fencing.
    ///
    /// # Cancel safety
    /// Idempotent: a cancelled call can be sent again.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// backend.acquire(&req).await?;
    /// backend.raise_fence(&key, &token, FencingToken(100)).await?;
    /// # Ok(()) }
    /// ```
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        let _ = (key, token, fence);
        Err(BackendError::permanent(
            crate::BackendErrorKind::Other,
            format!("backend `{}` does not support fencing tokens", self.name()),
        ))
    }

    /// Subscribes to release notices for `key`. `Ok(None)` means the backend has no wake-up
    /// and waiters sleep with jittered backoff instead (the default).
    ///
    /// # Errors
    /// When the subscription could not be made; waiters then fall back to sleeping.
    ///
    /// # Cancel safety
    /// Cancelling drops the subscription being made; nothing is left subscribed.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// let _ = req;
    /// let mut watch = backend.watch_releases(&key).await?.expect("memory has wake-up");
    /// assert!(!watch.wait(Duration::from_millis(1)).await, "no release yet");
    /// # Ok(()) }
    /// ```
    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        let _ = key;
        Ok(None)
    }

    /// The fair lock of this backend, when it has one (see [`FairBackend`]); `None` (the
    /// default) makes [`crate::LockClient::fair_mutex`] return [`crate::LockError::Unsupported`].
    ///
    /// # Examples
    /// ```
    /// use lock_core::LockBackend;
    /// assert!(lock_testkit::MemoryBackend::new().fair().is_some());
    /// ```
    fn fair(&self) -> Option<&dyn FairBackend> {
        None
    }

    /// The read-write lock and semaphore of this backend, when it has them (see
    /// [`SharedBackend`]); `None` (the default) makes [`crate::LockClient::rw_lock`] and
    /// [`crate::LockClient::semaphore`] return [`crate::LockError::Unsupported`].
    ///
    /// # Examples
    /// ```
    /// use lock_core::LockBackend;
    /// assert!(lock_testkit::MemoryBackend::new().shared().is_some());
    /// ```
    fn shared(&self) -> Option<&dyn SharedBackend> {
        None
    }

    /// Why this backend refuses semaphores although it has a [`SharedBackend`]: `Some(reason)`
    /// for one that keeps read-write locks safely but cannot bound a semaphore's holders (a
    /// RedLock quorum; [`crate::LockClient::semaphore`] then returns
    /// [`crate::LockError::Unsupported`] naming the reason). `None` (the default): semaphores
    /// work wherever [`LockBackend::shared`] does.
    fn semaphore_refused(&self) -> Option<&'static str> {
        None
    }

    /// The identity of the server's data, when the backend can read one: the node id from the
    /// marker that guards against data loss ([`crate::scripts::NodeGuard`]). Two backends that
    /// reach the same server under different names return the same id, so a RedLock counts one
    /// vote for them, not two. `Ok(None)`: unknown (no marker yet, or no such notion; the
    /// default).
    ///
    /// # Errors
    /// A server that cannot be reached.
    ///
    /// # Cancel safety
    /// Read-only: cancelling it changes nothing.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use lock_core::LockBackend;
    /// let store = lock_testkit::MemoryBackend::new();
    /// let id = store.node_identity().await?;
    /// assert_eq!(id, store.clone().node_identity().await?); // clones share one store
    /// # Ok(()) }
    /// ```
    async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    /// What the backend can read about the servers behind it, for the deployment doctor
    /// ([`crate::doctor`]). The default reports nothing (e.g. an in-memory backend).
    ///
    /// # Errors
    /// A server that cannot be reached at all.
    ///
    /// # Cancel safety
    /// Read-only: cancelling it changes nothing.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use std::time::Duration;
    /// use lock_core::*;
    /// let backend = lock_testkit::MemoryBackend::new();
    /// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
    /// let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(5), fencing: true };
    /// let _ = (req, key, token);
    /// assert!(backend.deployment_facts().await?.is_empty());
    /// # Ok(()) }
    /// ```
    async fn deployment_facts(&self) -> Result<Vec<NodeFacts>, BackendError> {
        Ok(Vec::new())
    }

    /// Runs the deployment doctor: reads [`LockBackend::deployment_facts`] and returns every
    /// [`Finding`] (eviction policy, replicas, duplicate or even RedLock nodes, persistence, server
    /// version), worst first, each with a fix. An empty list means nothing was found.
    ///
    /// # Errors
    /// A server that cannot be reached at all.
    ///
    /// # Cancel safety
    /// Read-only: cancelling it changes nothing.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
    /// use lock_core::LockBackend;
    /// let findings = lock_testkit::MemoryBackend::new().check_deployment().await?;
    /// assert!(findings.is_empty()); // nothing to read in memory
    /// # Ok(()) }
    /// ```
    async fn check_deployment(&self) -> Result<Vec<Finding>, BackendError> {
        Ok(crate::doctor::check(&self.deployment_facts().await?))
    }
}

/// The error for a shared hold (a reader, a permit) on a backend without [`SharedBackend`].
pub(crate) fn no_shared_holds(backend: &str) -> BackendError {
    BackendError::permanent(
        crate::BackendErrorKind::Other,
        format!("backend `{backend}` keeps no read locks or permits"),
    )
}

/// Renews one lease wherever its owner token lives: the lock key ([`LockBackend::extend`]) or
/// a set of holders ([`SharedBackend::extend_member`]).
pub(crate) async fn extend_on<B: LockBackend + ?Sized>(
    backend: &B,
    members: Option<Members>,
    req: &ExtendRequest,
) -> Result<ExtendOutcome, BackendError> {
    match (members, backend.shared()) {
        (None, _) => backend.extend(req).await,
        (Some(set), Some(shared)) => shared.extend_member(set, req).await,
        (Some(_), None) => Err(no_shared_holds(backend.name())),
    }
}

macro_rules! forward_backend {
    ($($ptr:tt)*) => {
        #[async_trait]
        impl<T: LockBackend + ?Sized> LockBackend for $($ptr)*<T> {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn endpoint(&self) -> String {
                (**self).endpoint()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
                (**self).acquire(req).await
            }
            async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
                (**self).extend(req).await
            }
            async fn extend_many(&self, renewals: &[Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
                (**self).extend_many(renewals).await
            }
            async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
                (**self).release(key, token).await
            }
            async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
                (**self).discard(key, token).await
            }
            async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
                (**self).release_contended(key, token).await
            }
            async fn raise_fence(
                &self,
                key: &LockKey,
                token: &Token,
                fence: FencingToken,
            ) -> Result<(), BackendError> {
                (**self).raise_fence(key, token, fence).await
            }
            async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
                (**self).watch_releases(key).await
            }
            async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
                (**self).node_identity().await
            }
            fn fair(&self) -> Option<&dyn FairBackend> {
                (**self).fair()
            }
            fn shared(&self) -> Option<&dyn SharedBackend> {
                (**self).shared()
            }
            fn semaphore_refused(&self) -> Option<&'static str> {
                (**self).semaphore_refused()
            }
            async fn deployment_facts(&self) -> Result<Vec<NodeFacts>, BackendError> {
                (**self).deployment_facts().await
            }
        }
    };
}

forward_backend!(Arc);
forward_backend!(Box);
