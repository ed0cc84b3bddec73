//! Coalesced acquires: every uncontended acquire waiting on one server at the same moment goes
//! out in one pipeline, `SET NX PX` after `SET NX PX`, with **one** read of the data-loss
//! marker behind them all.
//!
//! The marker read is the data-loss guard of an unfenced acquire (see [`crate::scripts`], "A
//! node that lost its data abstains"): a grant stands only when the marker, read **after** the
//! `SET` on the same connection, shows the node open. The argument needs nothing more than that
//! order, so one read placed after several `SET`s vouches for each of them exactly as a read
//! placed after one would: a loss before a `SET` was noticed a quarantine ago, and a loss after
//! it would have taken the marker too. A pipeline runs in order on one connection; other
//! clients' commands may run between its commands, as they may between a lone `SET` and its
//! `GET`.
//!
//! How batches form: an acquire joins the batch that is still **open** on its server, or opens
//! one. A batch is sent as soon as fewer than [`IN_FLIGHT`] batches of that server are waiting
//! for their replies; until then it stays open and gathers every acquire that arrives. So a
//! lone acquire goes out at once, as one `SET` and one `GET` (the same round trip as before),
//! and under load the server sees one marker read per batch instead of one per lock, and the
//! client sends one pipeline instead of one request per lock.
//!
//! No task is spawned: every waiting acquire also waits for a free slot, and the first one that
//! gets it while its own `SET` is still in the open batch sends the whole batch and hands each
//! member its answer (one whose `SET` already went out just waits for its answer). Cancellation: an acquire dropped while its batch
//! is still open leaves it (its `SET` is never sent); once its batch is taken to be sent, its
//! `SET` may be applied, as a cancelled lone `SET` may, and the caller's cleanup releases it
//! (owner-checked). That release could be ready before the `SET` is on the wire: another
//! member takes the batch and writes it a moment later, or, on a descheduled thread, much
//! later. So every release first waits until no batch holding a `SET` of its key for its owner
//! token is out ([`Coalescer::settled`]; at once in the usual case, and never for another
//! owner's tries), and reaches the server after it on any connection. An acquire dropped while it sends a batch ends
//! that batch: the other members get a retryable error and try again (an applied `SET` of
//! theirs is their own token, which the acquire script takes again). A failure of the whole
//! pipeline (a timeout, a broken connection) is every member's error; a `SET` answered with an
//! error is its own member's error.
//!
//! Releases batch the same way ([`Releases`], the same [`Batcher`] underneath): the releases
//! of one server that arrive while two batches of them are out go together in one
//! [`crate::scripts::RELEASE_MANY`] call, which decides each as its own call would. A lone
//! release is the single call it always was; under 64 tasks this takes the server one script
//! call for many releases, and the client one request (about a fifth of the client's work per
//! lock/unlock cycle in the bench). A release dropped before its batch is sent is never sent,
//! as a call dropped before it reached the connection; one that went out may be applied,
//! harmlessly (owner-checked). A release never waits behind an acquire: the two kinds batch
//! apart.
//!
//! What the caller must not do: send a release for a key while an acquire of it is still
//! **running** on the same backend, not awaited (left to finish in the background). Until that
//! acquire's batch is sent, its `SET` is held back here, so the release would reach the server
//! first, find nothing, and the `SET` landing after it would hold the key until its TTL. A
//! caller that lets acquires go on after deciding without them (RedLock's nodes that answer
//! after the majority did) waits for each to end before releasing that node; an ended acquire
//! was either sent or never will be.
//!
//! # Examples
//! A driver implements [`SetPipeline`] (one pipeline on one connection) and keeps one
//! [`Coalescer`] per server:
//! ```
//! use lock_core::BackendError;
//! use lock_core::coalesce::{Coalescer, SetNx, SetPipeline, SetReplies};
//!
//! struct Fake;
//! impl SetPipeline for Fake {
//!     async fn send_sets(&self, sets: &[SetNx]) -> Result<SetReplies, BackendError> {
//!         // Every SET sets its key; the marker shows the node open.
//!         Ok(SetReplies { sets: sets.iter().map(|_| Ok(true)).collect(), marker: Some("0a1b2c3d4e5f:0".into()) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
//! let sets = Coalescer::new();
//! let set = SetNx { key: "lock:{job}".into(), value: "0123:0".into(), ttl_ms: 5_000 };
//! let (granted, marker) = sets.set_nx_px_then_get(&Fake, set).await?;
//! assert!(granted);
//! assert_eq!(marker.as_deref(), Some("0a1b2c3d4e5f:0"));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, Semaphore, oneshot};

use crate::error::{BackendError, BackendErrorKind};

/// How many batches of one server may wait for their replies at once; the next batch gathers
/// acquires meanwhile. Two keep the connection busy while one batch's replies travel back (one
/// alone left it idle for a round trip: about 10 % fewer cycles under 64 tasks in the bench),
/// and more only make batches smaller.
pub const IN_FLIGHT: usize = 2;

/// One `SET key value NX PX ttl_ms` of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetNx {
    /// The lock's key name.
    pub key: String,
    /// The value to store (`<owner token>:0`).
    pub value: String,
    /// The expiry, in milliseconds.
    pub ttl_ms: u64,
}

/// What a batch's pipeline answered.
#[derive(Debug, Clone)]
pub struct SetReplies {
    /// Per `SET`, in the order sent: whether it set the key, or the error it was answered with.
    pub sets: Vec<Result<bool, BackendError>>,
    /// The node marker's value, read after every `SET` of the batch (`None`: missing).
    pub marker: Option<String>,
}

impl SetReplies {
    /// Reads a pipeline's replies: one per `SET` of `sets`, in order, then the marker's `GET`;
    /// `Some` for a `SET` that set its key (`OK`), `None` for one that did not. `error` maps a
    /// driver error and what it answered (e.g. `SET NX on redis key "lock:{a}" at host:port`,
    /// built from `endpoint`) into a [`BackendError`]. An error reply to one `SET` fails that
    /// `SET` alone; one to the `GET` fails the batch.
    ///
    /// # Errors
    /// The `GET`'s error, or [`BackendErrorKind::Protocol`] when the number of replies is not
    /// one per `SET` plus one.
    ///
    /// ```
    /// use lock_core::BackendError;
    /// use lock_core::coalesce::{SetNx, SetReplies};
    /// let sets = [SetNx { key: "lock:{a}".into(), value: "t:0".into(), ttl_ms: 5_000 }];
    /// let replies: Vec<Result<Option<String>, String>> = vec![Ok(Some("OK".into())), Ok(Some("0a1b2c3d4e5f:0".into()))];
    /// let read = SetReplies::from_pipeline(replies, &sets, "127.0.0.1:6379", |e, what| {
    ///     BackendError::permanent(lock_core::BackendErrorKind::Other, format!("{what}: {e}"))
    /// })?;
    /// assert!(matches!(read.sets[..], [Ok(true)]));
    /// assert_eq!(read.marker.as_deref(), Some("0a1b2c3d4e5f:0"));
    /// # Ok::<(), BackendError>(())
    /// ```
    pub fn from_pipeline<E>(
        mut replies: Vec<Result<Option<String>, E>>,
        sets: &[SetNx],
        endpoint: &str,
        error: impl Fn(E, &str) -> BackendError,
    ) -> Result<Self, BackendError> {
        if replies.len() != sets.len() + 1 {
            return Err(BackendError::permanent(
                BackendErrorKind::Protocol,
                format!(
                    "a pipeline of {} SETs and a GET at {endpoint} was answered with {} replies",
                    sets.len(),
                    replies.len()
                ),
            ));
        }
        let marker = match replies.pop() {
            Some(marker) => {
                marker.map_err(|e| error(e, &format!("GET {} at {endpoint}", crate::scripts::MARKER_KEY)))?
            }
            None => None,
        };
        let sets = replies
            .into_iter()
            .zip(sets)
            .map(|(reply, set)| {
                reply
                    .map(|set| set.is_some())
                    .map_err(|e| error(e, &describe(std::slice::from_ref(set), endpoint)))
            })
            .collect();
        Ok(Self { sets, marker })
    }

    /// Reads the reply of one [`crate::scripts::SET_MANY`] call for `sets` (per `SET`, `OK`
    /// or nil, then the marker), as [`SetReplies::from_pipeline`] reads a pipeline's.
    ///
    /// # Errors
    /// [`BackendErrorKind::Protocol`] when the number of replies is not one per `SET` plus one.
    ///
    /// ```
    /// use lock_core::coalesce::{SetNx, SetReplies};
    /// let set = |key: &str| SetNx { key: key.into(), value: "t:0".into(), ttl_ms: 5_000 };
    /// let sets = [set("lock:{a}"), set("lock:{b}")];
    /// let read = SetReplies::from_script(vec![Some("OK".into()), None, Some("0a1b2c3d4e5f:0".into())], &sets, "h:1")?;
    /// assert!(matches!(read.sets[..], [Ok(true), Ok(false)]));
    /// # Ok::<(), lock_core::BackendError>(())
    /// ```
    pub fn from_script(
        replies: Vec<Option<String>>,
        sets: &[SetNx],
        endpoint: &str,
    ) -> Result<Self, BackendError> {
        let replies: Vec<Result<Option<String>, std::convert::Infallible>> =
            replies.into_iter().map(Ok).collect();
        Self::from_pipeline(replies, sets, endpoint, |never, _| match never {})
    }
}

/// The keys and arguments of one [`crate::scripts::SET_MANY`] call for `sets`: the lock keys
/// and then the node marker; per lock its value and TTL.
///
/// ```
/// use lock_core::coalesce::{set_many_call, SetNx};
/// let sets = [SetNx { key: "lock:{a}".into(), value: "t:0".into(), ttl_ms: 5_000 }];
/// let (keys, args) = set_many_call(&sets);
/// assert_eq!(keys, ["lock:{a}", lock_core::scripts::MARKER_KEY]);
/// assert_eq!(args, ["t:0", "5000"]);
/// ```
pub fn set_many_call(sets: &[SetNx]) -> (Vec<&str>, Vec<String>) {
    let mut keys: Vec<&str> = sets.iter().map(|s| s.key.as_str()).collect();
    keys.push(crate::scripts::MARKER_KEY);
    let args = sets.iter().flat_map(|s| [s.value.clone(), s.ttl_ms.to_string()]).collect();
    (keys, args)
}

/// What a batch is, for error messages: `SET NX on redis key "lock:{a}" at host:port`, or
/// `3 SET NX on redis keys from "lock:{a}" at host:port`.
///
/// ```
/// use lock_core::coalesce::{describe, SetNx};
/// let set = SetNx { key: "lock:{a}".into(), value: "t:0".into(), ttl_ms: 5_000 };
/// assert_eq!(describe(&[set.clone()], "h:1"), r#"SET NX on redis key "lock:{a}" at h:1"#);
/// assert_eq!(describe(&[set.clone(), set], "h:1"), r#"2 SET NX on redis keys from "lock:{a}" at h:1"#);
/// ```
pub fn describe(sets: &[SetNx], endpoint: &str) -> String {
    match sets {
        [one] => format!("SET NX on redis key {:?} at {endpoint}", one.key),
        _ => format!(
            "{} SET NX on redis keys from {:?} at {endpoint}",
            sets.len(),
            sets.first().map_or("", |s| s.key.as_str())
        ),
    }
}

/// A driver's half: send `sets` as `SET key value NX PX ttl` each, in order, then one `GET` of
/// the node marker ([`crate::scripts::MARKER_KEY`]), as one pipeline on **one** connection or
/// as one [`crate::scripts::SET_MANY`] call ([`set_many_call`], [`SetReplies::from_script`]),
/// so the server runs them in that order, bounded by the driver's command timeout. Which is
/// cheaper depends on the client: a pipeline costs redis-rs little more than one command,
/// while fred's work is per command.
pub trait SetPipeline: Send + Sync {
    /// Sends one batch.
    ///
    /// # Errors
    /// A failure of the whole pipeline (timeout, connection), mapped into [`BackendError`]. A
    /// `SET` answered with an error should be reported in [`SetReplies::sets`] instead, so it
    /// fails only its own caller.
    fn send_sets(&self, sets: &[SetNx]) -> impl Future<Output = Result<SetReplies, BackendError>> + Send;
}

type Answer = Result<(bool, Option<String>), BackendError>;

/// Gathers the uncontended acquires of one server into pipelines: see the module docs. Drivers
/// keep one per server, shared by every clone of the backend.
#[derive(Debug)]
pub struct Coalescer {
    batches: Batcher<SetNx, (bool, Option<String>)>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// The identity a `SET` is tracked by in a [`Coalescer`]: its key and its owner token (the
/// value is `<token>:0`).
fn set_id(key: &str, token: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    token.hash(&mut hasher);
    hasher.finish()
}

impl Coalescer {
    /// A coalescer with no batch yet.
    pub fn new() -> Self {
        Self {
            batches: Batcher::tracking(|set| {
                set_id(&set.key, set.value.split_once(':').map_or(set.value.as_str(), |(token, _)| token))
            }),
        }
    }

    /// Returns once no `SET` of the key `key` for the owner `token` (32 hex digits, as stored)
    /// is in a batch that was taken to be sent and has not been answered: a release sent after
    /// it reaches the server after every such `SET`, on any connection.
    /// [`crate::scripts::release`] waits for it, so the release undoing a cancelled acquire
    /// cannot overtake the acquire's `SET` still on its way in another member's batch (see the
    /// module docs). The `SET`s of other owners are not waited for: a holder's release does not
    /// wait for the waiters' tries. At once in the usual case.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn settled(&self, key: &str, token: &str) {
        self.batches.settled(set_id(key, token)).await;
    }

    /// `SET key value NX PX ttl`, sent with the other acquires of this moment, and the node
    /// marker as read after it: `(whether the key was set, the marker)`.
    ///
    /// # Errors
    /// The error of the whole batch, or of this `SET`.
    ///
    /// # Cancel safety
    /// Dropped before its batch is sent, the `SET` is never sent; after, it may be applied (as a
    /// lone `SET` whose reply was lost): the caller undoes it, owner-checked.
    pub async fn set_nx_px_then_get<P: SetPipeline + ?Sized>(&self, pipe: &P, set: SetNx) -> Answer {
        self.batches
            .call(set, |sets| async move {
                let replies = pipe.send_sets(&sets).await?;
                let (last, mut marker) = (replies.sets.len().saturating_sub(1), replies.marker);
                Ok(replies
                    .sets
                    .into_iter()
                    .enumerate()
                    // The last member takes the marker itself (a batch of one copies nothing).
                    .map(|(n, set)| {
                        set.map(|set| (set, if n == last { marker.take() } else { marker.clone() }))
                    })
                    .collect())
            })
            .await
    }
}

/// One release of a [`Releases`] batch (see [`crate::scripts::release`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The lock's key name.
    pub lock: String,
    /// The owner token, as stored (32 hex digits).
    pub token: String,
    /// Whether the release is announced (`false`: a silent discard).
    pub announce: bool,
}

/// The releases of one server, batched: the releases that arrive while [`IN_FLIGHT`] batches
/// of them wait for their replies go out together in one [`crate::scripts::RELEASE_MANY`]
/// call. Drivers keep one per connection, in [`Batches`].
pub type Releases = Batcher<Release, i64>;

/// The batching of one connection: its coalesced acquires and its releases. A driver keeps
/// one per connection the commands of a key go over (one per server, or one per client of a
/// pool) and offers it through [`crate::scripts::ScriptRunner::batches`].
#[derive(Debug, Default)]
pub struct Batches {
    /// The uncontended acquires ([`Coalescer::set_nx_px_then_get`]).
    pub sets: Coalescer,
    /// The releases ([`crate::scripts::release`]).
    pub releases: Releases,
}

/// The batching under [`Coalescer`], for any request `Q` answered with `A`: the calls of one
/// server that arrive while [`IN_FLIGHT`] batches of it wait for their replies gather into
/// one batch, sent by whichever of its members first gets a free slot (no task is spawned).
/// A lone call goes out at once, alone. Drivers keep one per server and kind of request.
///
/// Cancellation: a call dropped while its batch is still open leaves it (it is never sent);
/// once sent, it may be applied. A call dropped while it sends a batch ends that batch: the
/// other members get a retryable error.
///
/// ```
/// use lock_core::coalesce::Batcher;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_core::BackendError> {
/// let doubling: Batcher<u32, u32> = Batcher::new();
/// // The batch's sender gets every member's request and answers each, in order.
/// let answer = doubling.call(21, |batch| async move { Ok(batch.iter().map(|n| Ok(n * 2)).collect()) }).await?;
/// assert_eq!(answer, 42);
/// # Ok(()) }
/// ```
pub struct Batcher<Q, A> {
    open: Mutex<Open<Q, A>>,
    in_flight: Semaphore,
    /// What a request is known by while its batch is out, when tracked ([`Batcher::tracking`]).
    track: Option<fn(&Q) -> u64>,
    /// The requests of each identity in batches taken and not yet ended (answered, or
    /// dropped unanswered). Counted while `open` is locked (in [`Batch::take`]).
    out: InFlight,
}

/// The open batch: its requests and, in the same order, where each member waits for its answer.
struct Open<Q, A> {
    items: Vec<Q>,
    answers: Vec<oneshot::Sender<Result<A, BackendError>>>,
    /// The number of the next member to join; members are numbered in order of arrival.
    next: u64,
    /// The number of the open batch's first member: members numbered below it were sent.
    first: u64,
}

impl<Q, A> Default for Batcher<Q, A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Q, A> std::fmt::Debug for Batcher<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("in_flight", &(IN_FLIGHT - self.in_flight.available_permits()))
            .field("open", &self.open().items.len())
            .finish()
    }
}

impl<Q, A> Batcher<Q, A> {
    /// A batcher with no batch yet.
    pub fn new() -> Self {
        Self {
            open: Mutex::new(Open { items: Vec::new(), answers: Vec::new(), next: 0, first: 0 }),
            in_flight: Semaphore::new(IN_FLIGHT),
            track: None,
            out: InFlight::new(),
        }
    }

    /// A batcher that knows which requests are on their way ([`Batcher::settled`]), each by
    /// the identity `id` gives it (a hash of its key: two requests of one identity are taken
    /// for each other, which only makes [`Batcher::settled`] wait longer).
    ///
    /// ```
    /// use lock_core::coalesce::Batcher;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let batcher: Batcher<u64, u64> = Batcher::tracking(|n| *n);
    /// batcher.settled(7).await; // nothing of 7 is on its way: at once
    /// # }
    /// ```
    pub fn tracking(id: fn(&Q) -> u64) -> Self {
        Self { track: Some(id), ..Self::new() }
    }

    fn open(&self) -> MutexGuard<'_, Open<Q, A>> {
        // Held only for bookkeeping that cannot panic.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once no request of identity `id` is in a batch that was taken to be sent and
    /// has not ended (answered, or dropped unanswered), so a command sent after it reaches the
    /// server after every such request that was sent; at once when none is, or when the
    /// batcher does not track ([`Batcher::tracking`]). A request still in the open batch is
    /// not waited for: it is sent only if its caller still waits for it.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn settled(&self, id: u64) {
        self.out.settled(id).await;
    }

    /// Sends `item` with the other calls of this moment and returns its answer. `send` is how
    /// a batch goes out: it is called (at most once, by the member that sends the batch, which
    /// may be another call's) with the batch's requests in order, and returns one answer per
    /// request, in the same order, or the error of the whole batch.
    ///
    /// # Errors
    /// The error of the whole batch, or this request's own; a protocol error when `send`
    /// answers a different number of requests than it was given; a retryable error when the
    /// call sending the batch was dropped before the replies came.
    pub async fn call<S, F>(&self, item: Q, send: S) -> Result<A, BackendError>
    where
        S: FnOnce(Vec<Q>) -> F,
        F: Future<Output = Result<Vec<Result<A, BackendError>>, BackendError>>,
    {
        let (answer, mut mine) = oneshot::channel();
        let number = {
            let mut open = self.open();
            open.items.push(item);
            open.answers.push(answer);
            open.next += 1;
            open.next - 1
        };
        let slot = tokio::select! {
            biased;
            answer = &mut mine => return answer.unwrap_or_else(|_| Err(lost())),
            slot = self.in_flight.acquire() => slot,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { return Err(lost()) };
        let batch = {
            let mut open = self.open();
            // Only a member of the open batch sends it: one whose request already went out
            // waits for that batch's answer rather than hold its caller for another round trip.
            (open.first <= number).then(|| Batch::take(self, &mut open))
        };
        if let Some((mut batch, items)) = batch {
            let reply = send(items).await;
            batch.answer(reply);
        }
        drop(slot);
        // Ours was in the batch just sent or in an earlier one, which answers us (or fails us,
        // should it be dropped).
        mine.await.unwrap_or_else(|_| Err(lost()))
    }
}

/// A batch being sent: answers every member, and fails them (retryable) if dropped first;
/// ends its tracked requests either way.
struct Batch<'a, Q, A> {
    batcher: &'a Batcher<Q, A>,
    answers: Vec<oneshot::Sender<Result<A, BackendError>>>,
    /// The identities of its requests, when tracked.
    tracked: Vec<u64>,
}

impl<'a, Q, A> Batch<'a, Q, A> {
    /// Closes the open batch, leaving out members that are gone (cancelled before it was
    /// sent), and counts its requests as out (before `open` is unlocked, so before it can be
    /// sent).
    fn take(batcher: &'a Batcher<Q, A>, open: &mut Open<Q, A>) -> (Self, Vec<Q>) {
        open.first = open.next;
        let (mut items, mut answers) = (std::mem::take(&mut open.items), std::mem::take(&mut open.answers));
        if answers.iter().any(oneshot::Sender::is_closed) {
            // Decided once per member, so the two lists stay aligned.
            let gone: Vec<bool> = answers.iter().map(oneshot::Sender::is_closed).collect();
            let mut left = gone.iter();
            items.retain(|_| !left.next().copied().unwrap_or(true));
            let mut left = gone.iter();
            answers.retain(|_| !left.next().copied().unwrap_or(true));
        }
        let tracked: Vec<u64> = batcher.track.map(|id| items.iter().map(id).collect()).unwrap_or_default();
        batcher.out.begin(tracked.iter().copied());
        (Self { batcher, answers, tracked }, items)
    }

    fn answer(&mut self, reply: Result<Vec<Result<A, BackendError>>, BackendError>) {
        let answers = std::mem::take(&mut self.answers);
        match reply {
            Ok(replies) if replies.len() == answers.len() => {
                for (answer, reply) in answers.into_iter().zip(replies) {
                    let _ = answer.send(reply);
                }
            }
            Ok(replies) => {
                let e = BackendError::permanent(
                    BackendErrorKind::Protocol,
                    format!(
                        "a batch of {} requests was answered with {} replies",
                        answers.len(),
                        replies.len()
                    ),
                );
                answers.into_iter().for_each(|answer| drop(answer.send(Err(e.clone()))));
            }
            Err(e) => answers.into_iter().for_each(|answer| drop(answer.send(Err(e.clone())))),
        }
    }
}

impl<Q, A> Drop for Batch<'_, Q, A> {
    fn drop(&mut self) {
        // Not answered: the call sending it was cancelled. Its members try again.
        for answer in self.answers.drain(..) {
            let _ = answer.send(Err(lost()));
        }
        self.batcher.out.end(self.tracked.iter().copied());
    }
}

/// Work in flight, counted per identity (a `u64`, e.g. a hash of a key and an owner token),
/// and a wait until none of one identity is: what [`Batcher::settled`] keeps a release behind
/// its owner's `SET` with, and what RedLock keeps a retried round behind its lease's earlier
/// cleanups with (one identity per lease and node). While nothing is in flight, a wait costs
/// one atomic load and takes no lock.
///
/// ```
/// use lock_core::coalesce::InFlight;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let work = InFlight::new();
/// work.begin([7]);
/// assert!(work.is_out(7) && !work.is_out(8));
/// work.settled(8).await; // nothing of 8 is in flight: at once
/// work.end([7]);
/// work.settled(7).await;
/// assert!(work.is_empty());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct InFlight {
    /// How much work of each identity is in flight (identities with none are absent).
    out: Mutex<HashMap<u64, u32>>,
    /// How many identities have work in flight (`out`'s length).
    busy: AtomicUsize,
    /// Notified whenever work ends.
    ended: Notify,
}

impl InFlight {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    fn out(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        // Held only for bookkeeping that cannot panic.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one piece of work of each identity in `ids` as in flight (an identity given
    /// twice counts twice).
    pub fn begin(&self, ids: impl IntoIterator<Item = u64>) {
        let mut ids = ids.into_iter().peekable();
        if ids.peek().is_none() {
            return;
        }
        let mut out = self.out();
        for id in ids {
            *out.entry(id).or_default() += 1;
        }
        self.busy.store(out.len(), Ordering::SeqCst);
    }

    /// Ends one piece of work of each identity in `ids` (begun with [`InFlight::begin`]) and
    /// wakes the waits.
    pub fn end(&self, ids: impl IntoIterator<Item = u64>) {
        let mut ids = ids.into_iter().peekable();
        if ids.peek().is_none() {
            return;
        }
        {
            let mut out = self.out();
            for id in ids {
                if let Some(n) = out.get_mut(&id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        out.remove(&id);
                    }
                }
            }
            self.busy.store(out.len(), Ordering::SeqCst);
        }
        self.ended.notify_waiters();
    }

    /// Whether work of identity `id` is in flight.
    pub fn is_out(&self, id: u64) -> bool {
        !self.is_empty() && self.out().contains_key(&id)
    }

    /// Whether no work at all is in flight (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// Returns once no work of identity `id` is in flight; at once when none is.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn settled(&self, id: u64) {
        if !self.is_out(id) {
            return;
        }
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.is_out(id) {
                return;
            }
            ended.await;
        }
    }
}

fn lost() -> BackendError {
    BackendError::retryable(
        BackendErrorKind::Other,
        "the call that sent this batch was cancelled before the replies came",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Records each batch; answers after `delay`, `SET`s of keys starting with `taken` refused
    /// and of keys starting with `bad` answered with an error.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        sending: AtomicUsize,
        most: AtomicUsize,
        delay: Duration,
        fail: bool,
    }

    impl Recorder {
        fn new(delay_ms: u64) -> Self {
            Self { delay: Duration::from_millis(delay_ms), ..Default::default() }
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().clone()
        }
    }

    impl SetPipeline for Recorder {
        async fn send_sets(&self, sets: &[SetNx]) -> Result<SetReplies, BackendError> {
            self.batches.lock().unwrap().push(sets.iter().map(|s| s.key.clone()).collect());
            let now = self.sending.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.sending.fetch_sub(1, Ordering::SeqCst);
            if self.fail {
                return Err(BackendError::retryable(BackendErrorKind::Timeout, "no reply"));
            }
            let sets = sets
                .iter()
                .map(|s| {
                    if s.key.starts_with("bad") {
                        Err(BackendError::permanent(BackendErrorKind::Other, "OOM"))
                    } else {
                        Ok(!s.key.starts_with("taken"))
                    }
                })
                .collect();
            Ok(SetReplies { sets, marker: Some("000000000001:0".into()) })
        }
    }

    fn set(key: &str) -> SetNx {
        SetNx { key: key.into(), value: "t:0".into(), ttl_ms: 1_000 }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_acquire_is_sent_at_once_with_the_marker() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(1));
        let started = tokio::time::Instant::now();
        let got = sets.set_nx_px_then_get(&pipe, set("a")).await.unwrap();
        assert_eq!(got, (true, Some("000000000001:0".into())));
        assert_eq!(started.elapsed(), Duration::from_millis(1), "no wait beyond the round trip");
        assert_eq!(pipe.batches(), vec![vec!["a".to_string()]]);
    }

    #[tokio::test(start_paused = true)]
    async fn acquires_arriving_together_share_batches_and_at_most_two_are_in_flight() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(1));
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let got =
            futures::future::join_all(keys.iter().map(|k| sets.set_nx_px_then_get(&pipe, set(k)))).await;
        assert!(got.iter().all(|r| matches!(r, Ok((true, Some(_))))));
        let batches = pipe.batches();
        // The first two go out alone (two free slots); the other eight wait in one batch.
        assert_eq!(batches.len(), 3, "{batches:?}");
        assert_eq!(batches[2].len(), 8);
        let mut all: Vec<String> = batches.concat();
        all.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(all, want, "every SET sent exactly once");
        assert_eq!(pipe.most.load(Ordering::SeqCst), IN_FLIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn each_member_gets_its_own_answer_and_a_set_error_stays_its_own() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(1));
        let (blockers, got) = futures::join!(
            futures::future::join_all(["x", "y"].map(|k| sets.set_nx_px_then_get(&pipe, set(k)))),
            futures::future::join_all(
                ["free", "taken", "bad"].map(|k| sets.set_nx_px_then_get(&pipe, set(k)))
            )
        );
        assert!(blockers.iter().all(Result::is_ok));
        assert!(matches!(got[0], Ok((true, _))));
        assert!(matches!(got[1], Ok((false, _))));
        assert!(matches!(&got[2], Err(e) if e.message().contains("OOM")));
        assert_eq!(pipe.batches()[2], vec!["free", "taken", "bad"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pipeline_fails_every_member() {
        let pipe = Recorder { fail: true, ..Recorder::new(1) };
        let sets = Coalescer::new();
        let got =
            futures::future::join_all((0..4).map(|i| sets.set_nx_px_then_get(&pipe, set(&format!("k{i}")))))
                .await;
        assert!(got.iter().all(|r| matches!(r, Err(e) if e.kind() == BackendErrorKind::Timeout)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_dropped_before_its_batch_is_sent_is_never_sent() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(10));
        let (busy, gone, stays) = futures::join!(
            futures::future::join_all(["x", "y"].map(|k| sets.set_nx_px_then_get(&pipe, set(k)))),
            // Cut off while its batch waits for a free slot.
            tokio::time::timeout(Duration::from_millis(5), sets.set_nx_px_then_get(&pipe, set("gone"))),
            sets.set_nx_px_then_get(&pipe, set("stays"))
        );
        assert!(busy.iter().all(Result::is_ok));
        assert!(gone.is_err(), "cancelled");
        assert!(stays.unwrap().0);
        assert_eq!(pipe.batches()[2], vec!["stays"], "the cancelled SET never went out");
        // Nothing is left waiting, and both slots are free again.
        assert!(sets.batches.open().items.is_empty());
        assert_eq!(sets.batches.in_flight.available_permits(), IN_FLIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_sender_fails_its_batch_retryably_and_frees_its_slot() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(10));
        // "sender" is polled first (`futures::join!` polls in order), so it takes the third
        // batch (with "rider") when a slot frees at 10 ms, then is cut off at 15 ms, before the
        // replies come at 20 ms.
        let (busy, sender, rider) = futures::join!(
            futures::future::join_all(["x", "y"].map(|k| sets.set_nx_px_then_get(&pipe, set(k)))),
            tokio::time::timeout(Duration::from_millis(15), sets.set_nx_px_then_get(&pipe, set("sender"))),
            sets.set_nx_px_then_get(&pipe, set("rider"))
        );
        assert!(busy.iter().all(Result::is_ok));
        assert!(sender.is_err(), "cut off after its batch went out");
        assert!(
            matches!(rider, Err(ref e) if e.is_retryable()),
            "the batch-mate is told to try again: {rider:?}"
        );
        assert_eq!(pipe.batches()[2], vec!["sender", "rider"]);
        assert_eq!(sets.batches.in_flight.available_permits(), IN_FLIGHT);
        assert!(sets.set_nx_px_then_get(&pipe, set("next")).await.unwrap().0, "the coalescer goes on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_whose_set_went_out_does_not_send_the_next_batch() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(10));
        let start = tokio::time::Instant::now();
        let at = |ms: u64, key: &'static str| {
            let (sets, pipe) = (&sets, &pipe);
            async move {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                let got = sets.set_nx_px_then_get(pipe, set(key)).await;
                (got, start.elapsed())
            }
        };
        // x and y fill both slots (until 10 and 13 ms); a and b wait in one batch, which a sends
        // at 10 ms; c arrives at 11 ms. When y's slot frees at 13 ms it goes to b first: b's SET
        // is already out, so b leaves the slot to c instead of sending c's batch itself.
        let (x, y, a, b, c) = futures::join!(at(0, "x"), at(3, "y"), at(4, "a"), at(4, "b"), at(11, "c"));
        for (got, _) in [&x, &y, &a, &b, &c] {
            assert!(got.as_ref().unwrap().0);
        }
        assert_eq!(pipe.batches(), vec![vec!["x"], vec!["y"], vec!["a", "b"], vec!["c"]]);
        assert_eq!(b.1, Duration::from_millis(20), "b is answered with its own batch");
        assert_eq!(c.1, Duration::from_millis(23));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_answered_with_the_wrong_number_of_replies_fails_every_member() {
        let batcher: Batcher<u32, u32> = Batcher::new();
        let short = |batch: Vec<u32>| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(batch.iter().skip(1).map(|n| Ok(*n)).collect())
        };
        let got = futures::future::join_all((0..5).map(|n| batcher.call(n, short))).await;
        // The first two go alone (each answered with nothing), the other three together.
        assert!(got.iter().all(|r| matches!(r, Err(e) if e.kind() == BackendErrorKind::Protocol)), "{got:?}");
        assert_eq!(batcher.in_flight.available_permits(), IN_FLIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_a_taken_batch_holding_the_owners_set_and_no_longer() {
        let (sets, pipe) = (Coalescer::new(), Recorder::new(10));
        let start = tokio::time::Instant::now();
        let (got, (other_at, key_at)) = futures::join!(sets.set_nx_px_then_get(&pipe, set("k")), async {
            tokio::task::yield_now().await;
            sets.settled("other", "t").await;
            // A holder releasing k does not wait for another owner's try of it.
            sets.settled("k", "another-owner").await;
            let other_at = start.elapsed();
            sets.settled("k", "t").await;
            (other_at, start.elapsed())
        });
        assert!(got.unwrap().0);
        assert_eq!(other_at, Duration::ZERO, "nothing of another key or owner is on its way");
        assert_eq!(key_at, Duration::from_millis(10), "until the batch holding k is answered");
        assert!(sets.batches.out.is_empty(), "nothing left counted as out");
        sets.settled("k", "t").await;
        assert_eq!(start.elapsed(), Duration::from_millis(10), "and at once after");
    }

    /// The defect `settled` closes: an acquire cancelled after another member took its `SET`
    /// into a batch, but before that member put the batch on the connection (here the pipe
    /// waits 5 ms before it "writes", as a sender descheduled between the two would), was
    /// undone by a release that reached the server first; the `SET` landing after it held the
    /// key until its TTL. [`crate::scripts::release`] now waits for the batch.
    #[tokio::test(start_paused = true)]
    async fn the_release_undoing_a_cancelled_acquire_reaches_the_server_after_its_set() {
        use crate::scripts::{LuaScript, NodeGuard, ScriptRunner};

        #[derive(Default)]
        struct Server {
            log: Mutex<Vec<String>>,
            batches: Batches,
            guard: Option<NodeGuard>,
        }
        impl SetPipeline for Server {
            async fn send_sets(&self, sets: &[SetNx]) -> Result<SetReplies, BackendError> {
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.log.lock().unwrap().extend(sets.iter().map(|s| format!("SET {}", s.key)));
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(SetReplies {
                    sets: sets.iter().map(|_| Ok(true)).collect(),
                    marker: Some("000000000001:0".into()),
                })
            }
        }
        #[async_trait::async_trait]
        impl ScriptRunner for Server {
            async fn run_ints(
                &self,
                _: &LuaScript,
                keys: &[&str],
                _: &[String],
            ) -> Result<Vec<i64>, BackendError> {
                self.log.lock().unwrap().extend(keys.iter().map(|k| format!("RELEASE {k}")));
                Ok(vec![1; keys.len()])
            }
            async fn run_int(&self, _: &LuaScript, keys: &[&str], _: &[String]) -> Result<i64, BackendError> {
                self.log.lock().unwrap().extend(keys.iter().map(|k| format!("RELEASE {k}")));
                Ok(1)
            }
            fn node_guard(&self) -> Option<&NodeGuard> {
                self.guard.as_ref()
            }
            fn batches(&self, _lock: &str) -> Option<&Batches> {
                Some(&self.batches)
            }
            async fn set_nx_px_then_get(
                &self,
                set: SetNx,
            ) -> Result<Option<(bool, Option<String>)>, BackendError> {
                self.batches.sets.set_nx_px_then_get(self, set).await.map(Some)
            }
        }

        let server = Server { guard: Some(NodeGuard::new(Duration::from_secs(60))), ..Server::default() };
        let acquire = |name: &str| {
            let req = crate::AcquireRequest {
                key: crate::LockKey::new(name).unwrap(),
                token: crate::Token::random(),
                ttl: Duration::from_secs(30),
                fencing: false,
            };
            let server = &server;
            async move { crate::scripts::acquire(server, &req).await.map(|_| req) }
        };
        // x and y fill both slots until 10 ms; "sender" (polled first) then takes the batch
        // holding its SET and "cancelled"'s at 10 ms and writes it at 15 ms; "cancelled" is cut
        // off at 12 ms and undone at once, as a cancelled acquisition is.
        let (x, y, sender, undone) = futures::join!(acquire("x"), acquire("y"), acquire("sender"), async {
            let req = crate::AcquireRequest {
                key: crate::LockKey::new("cancelled").unwrap(),
                token: crate::Token::random(),
                ttl: Duration::from_secs(30),
                fencing: false,
            };
            let cut = tokio::time::timeout(Duration::from_millis(12), crate::scripts::acquire(&server, &req));
            assert!(cut.await.is_err(), "cut off while its batch is out");
            crate::scripts::release(&server, &req.key, &req.token, true).await
        });
        for got in [x, y, sender] {
            got.unwrap();
        }
        undone.unwrap();
        let log = server.log.lock().unwrap().clone();
        let set = log.iter().position(|l| l == "SET lock:{cancelled}");
        let release = log.iter().position(|l| l == "RELEASE lock:{cancelled}");
        assert!(set.is_some() && release.is_some(), "{log:?}");
        assert!(set < release, "the release must reach the server after the SET it undoes: {log:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_tasks_on_two_threads_all_get_their_answer() {
        // The shape of the bench's 64-task loop, with real wake-ups across threads: a lost
        // wake-up would hang a task here.
        let (sets, pipe) = (Arc::new(Coalescer::new()), Arc::new(Recorder::new(0)));
        let tasks = (0..64).map(|t| {
            let (sets, pipe) = (Arc::clone(&sets), Arc::clone(&pipe));
            tokio::spawn(async move {
                for i in 0..200 {
                    let key = format!("k{t}:{i}");
                    let got = tokio::time::timeout(
                        Duration::from_secs(10),
                        sets.set_nx_px_then_get(&*pipe, set(&key)),
                    );
                    assert!(got.await.expect("answered within 10 s").unwrap().0);
                }
            })
        });
        for task in futures::future::join_all(tasks).await {
            task.unwrap();
        }
        assert_eq!(pipe.batches().concat().len(), 64 * 200, "every SET sent exactly once");
    }
}
