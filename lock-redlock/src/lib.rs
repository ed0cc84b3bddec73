#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lock_core::deadline;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, BackendErrorKind, Capabilities, ExtendOutcome,
    ExtendRequest, FencingToken, Grant, Hold, HoldOutcome, HoldRequest, Instant, LockBackend, LockError,
    LockKey, Members, ReleaseOutcome, ReleaseWatch, Renewal, SharedBackend, Token, default_drift,
    validity_deadline,
};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The per-node deadline, as a fraction of the TTL, when none is configured: `ttl / 20`.
pub const DEFAULT_NODE_TIMEOUT_DIVISOR: u32 = 20;

/// The smallest per-node deadline used with the default (for very short TTLs).
pub const MIN_NODE_TIMEOUT: Duration = Duration::from_millis(2);

/// Options for [`RedLock::with_options`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedLockOptions {
    node_timeout: Option<Duration>,
    repair: bool,
}

impl RedLockOptions {
    /// The defaults: per-node deadline `ttl / 20`, no repair.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fixed deadline for every request to one node. It must be above zero; at call time it
    /// is capped at the request's TTL. Default: `ttl / 20` (at least 2 ms).
    #[must_use]
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// Re-take the key on nodes that lost it (e.g. restarted empty), during a successful
    /// extension, while a majority still holds it. Off by default: a re-taken node gets no
    /// fencing write-back, and a node that restarted empty has lost its fencing counter
    /// anyway, which is the unsafe deployment the crate docs warn about. A release of the
    /// lease while a re-take is on its way releases each node after the re-take ended; a
    /// release that began before the extension was decided leaves the lease un-repaired.
    #[must_use]
    pub fn repair(mut self, on: bool) -> Self {
        self.repair = on;
        self
    }
}

/// What a RedLock knows of one node's data identity ([`LockBackend::node_identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Not asked yet, or the last ask failed.
    Unknown,
    /// The node's id.
    Known(u64),
    /// The node reported none (no marker yet, or no such notion); asked again after this.
    Absent(Instant),
}

/// How long a node without an identity is not asked again.
/// How many node timeouts a release that answered late may go on in the background: with the
/// default node timeout (ttl/20) that is the TTL, after which the key has expired anyway.
const BACKGROUND_RELEASE_LIMIT: u32 = DEFAULT_NODE_TIMEOUT_DIVISOR;
const IDENTITY_RECHECK: Duration = Duration::from_secs(10);

struct Inner<B> {
    nodes: Vec<Arc<B>>,
    ids: Vec<std::sync::Mutex<Identity>>,
    endpoints: Arc<[String]>,
    quorum: usize,
    options: RedLockOptions,
    endpoint: String,
    capabilities: Capabilities,
    /// The fencing token of each lease this client handed out, while it is valid: a
    /// re-acquire by the same owner shows it again (see [`RedLock::fence_of`]).
    handed: std::sync::Mutex<std::collections::HashMap<(LockKey, Token), (FencingToken, Instant)>>,
    /// The acquires (and repairs) of each lease still out when its round was decided, per
    /// node: a release of the lease waits on that node until its call is done (see [`Late`]);
    /// and, with `repair`, the leases whose release began (see [`Pending::released`]).
    late: std::sync::Mutex<Pending>,
    /// The cleanups of failed rounds still out: a later round of the same lease waits for
    /// them node by node (see [`Cleanups`]).
    cleanups: Arc<Cleanups>,
}

/// The cleanups of failed rounds still out, per lease and node.
///
/// The lock policy calls again with the **same** owner token after a failed round (a retry
/// re-acquires idempotently), and a failed round releases its partial grants with that token.
/// Such a release may reach its node after the next round's grant there: it can go on in the
/// background past the round's deadline (a stalled node), and the node's backend may hold it
/// back on the client before sending it (behind a full batch of releases, or behind the wait
/// that keeps a release after a `SET` of its owner, which the next round's `SET` now is). Landing
/// after the grant, it deletes the key the new round counted: the holder keeps fewer nodes than
/// a majority while it believes it holds the lock, and another client can win one. So a round
/// sends nothing to a node until every earlier cleanup of its lease there ended (answered, or
/// dropped: one dropped before it was sent never will be, one sent queues ahead of the round's
/// call), within the round's own deadline; nor does a repair's re-take of the lease's key.
#[derive(Debug, Default)]
struct Cleanups(lock_core::coalesce::InFlight);

impl Cleanups {
    /// Counts a cleanup of lease `(key, token)` on each of `n` nodes as out from now: one
    /// [`CleanupOut`] per node, which ends it when dropped. Called before anything of the
    /// cleanup runs, and before the caller could start another round.
    fn begin(self: &Arc<Self>, key: &LockKey, token: &Token, n: usize) -> Vec<Option<CleanupOut>> {
        let ids: Vec<u64> = (0..n).map(|node| cleanup_id(key, token, node)).collect();
        self.0.begin(ids.iter().copied());
        ids.into_iter().map(|id| Some(CleanupOut { cleanups: Arc::clone(self), id })).collect()
    }

    /// Returns once no cleanup of lease `(key, token)` is out on node `node`; at once when
    /// none is (one atomic load when no lease has any).
    async fn ended(&self, key: &LockKey, token: &Token, node: usize) {
        // `settled` checks this too; checked first, a round's node call skips the hash.
        if self.0.is_empty() {
            return;
        }
        self.0.settled(cleanup_id(key, token, node)).await;
    }
}

/// One node's call of a failed round's cleanup, counted in [`Cleanups`] until dropped.
#[derive(Debug)]
struct CleanupOut {
    cleanups: Arc<Cleanups>,
    id: u64,
}

impl Drop for CleanupOut {
    fn drop(&mut self) {
        self.cleanups.0.end([self.id]);
    }
}

/// What [`Cleanups`] knows a lease's cleanup on one node by: a hash of the lease's key and
/// owner token and the node (two taken for each other only make a round wait longer).
fn cleanup_id(key: &LockKey, token: &Token, node: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    token.hash(&mut hasher);
    node.hash(&mut hasher);
    hasher.finish()
}

/// What [`Inner::late`] keeps, under one lock so that a release and a repair of one lease
/// are ordered: whichever takes it first, the other sees it.
#[derive(Default)]
struct Pending {
    late: std::collections::HashMap<(LockKey, Token), Late>,
    /// With `repair`: each lease whose release began, in that order, with when. A renewal
    /// round decided after that (it was sent before) re-takes nothing for the lease: the
    /// re-take could land after the release and hold the key on that node until its TTL. Kept
    /// [`RELEASED_KEPT`]: `released_order` drops them from the front as they age.
    released: std::collections::HashMap<(LockKey, Token), Instant>,
    released_order: std::collections::VecDeque<(Instant, (LockKey, Token))>,
}

impl Pending {
    /// Notes the release of lease `id` now, and forgets those older than [`RELEASED_KEPT`].
    fn released(&mut self, id: (LockKey, Token)) {
        let now = Instant::now();
        while let Some((at, _)) = self.released_order.front()
            && now.saturating_duration_since(*at) >= RELEASED_KEPT
        {
            if let Some((at, old)) = self.released_order.pop_front()
                && self.released.get(&old) == Some(&at)
            {
                self.released.remove(&old);
            }
        }
        self.released.insert(id.clone(), now);
        self.released_order.push_back((now, id));
    }

    /// Whether the release of lease `id` began (within [`RELEASED_KEPT`]).
    fn was_released(&self, id: &(LockKey, Token)) -> bool {
        self.released.contains_key(id)
    }
}

/// How long a release keeps a repair from re-taking its lease ([`Pending::released`]): far
/// longer than a renewal round is decided in (its nodes' timeout); a round decided later
/// still (its task descheduled that long) may re-take a key its TTL then frees.
const RELEASED_KEPT: Duration = Duration::from_secs(5);

/// Above this many remembered leases, expired ones are dropped at the next grant.
const HANDED_SWEEP: usize = 1024;

/// A RedLock quorum over N backends; itself a [`LockBackend`]. Cheap to clone.
///
/// Mix drivers through `Arc<dyn LockBackend>`: `RedLock<Arc<dyn LockBackend>>`.
///
/// # No fair lock
/// [`lock_core::LockClient::fair_mutex`] on a RedLock returns [`lock_core::LockError::Unsupported`]
/// (`"fair locks"`). A fair lock per node keeps its own queue in the order its enqueues arrived,
/// and the nodes of a quorum can disagree on that order: a waiter's enqueue reaches them at
/// different moments, or misses a node that was down. With three waiters A, B, C and three
/// nodes ordering them ABC, BCA and CAB, each waiter is at the head on one node only: no one
/// can gather a majority of grants, and the queue stalls until waiter deadlines expire, then
/// the same can happen again. Mutual exclusion would hold (a grant still needs a majority), but
/// neither FIFO order nor progress would. A fair quorum lock needs one order every node agrees
/// on, such as a ticket the client draws once and uses as the queue position on every node;
/// until that is built and proven, the fair lock is single-node (or Cluster) only.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use lock_core::{LockClient, LockError};
/// use lock_redlock::RedLock;
/// use lock_testkit::MemoryBackend;
/// let nodes = vec![MemoryBackend::new(), MemoryBackend::new(), MemoryBackend::new()];
/// let locks = LockClient::new(RedLock::new(nodes).unwrap());
/// let err = locks.fair_mutex("jobs").unwrap_err();
/// assert!(matches!(err, LockError::Unsupported { feature: "fair locks", .. }), "{err}");
/// # }
/// ```
pub struct RedLock<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for RedLock<B> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<B> std::fmt::Debug for RedLock<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedLock")
            .field("nodes", &self.inner.endpoints)
            .field("quorum", &self.inner.quorum)
            .finish()
    }
}

/// One node's answer in a round.
type Answer<T> = (usize, Result<T, BackendError>);

fn quorum_error(what: &str, failures: &[(String, BackendError)]) -> BackendError {
    let detail: Vec<String> = failures.iter().map(|(node, e)| format!("{node}: {e}")).collect();
    let message = format!("{what}; failed nodes: [{}]", detail.join("; "));
    if failures.iter().any(|(_, e)| e.is_retryable()) || failures.is_empty() {
        BackendError::retryable(BackendErrorKind::Quorum, message)
    } else {
        BackendError::permanent(BackendErrorKind::Quorum, message)
    }
}

impl<B: LockBackend> RedLock<B> {
    /// A quorum over `nodes` with the default options.
    ///
    /// # Errors
    /// [`LockError::Config`] for zero nodes or the same node listed twice.
    pub fn new(nodes: Vec<B>) -> Result<Self, LockError> {
        Self::with_options(nodes, RedLockOptions::default())
    }

    /// A quorum over `nodes`.
    ///
    /// # Errors
    /// [`LockError::Config`] for zero nodes, the same node listed twice (two backends with the
    /// same [`LockBackend::endpoint`]), or a zero per-node deadline.
    pub fn with_options(nodes: Vec<B>, options: RedLockOptions) -> Result<Self, LockError> {
        if nodes.is_empty() {
            return Err(LockError::Config {
                field: "nodes",
                reason: "a RedLock needs at least one node".into(),
            });
        }
        if options.node_timeout.is_some_and(|t| t.is_zero()) {
            return Err(LockError::Config { field: "node_timeout", reason: "must be above zero".into() });
        }
        let endpoints: Vec<String> = nodes.iter().map(LockBackend::endpoint).collect();
        for (i, e) in endpoints.iter().enumerate() {
            if let Some(j) = endpoints[..i].iter().position(|other| other == e) {
                return Err(LockError::Config {
                    field: "nodes",
                    reason: format!(
                        "node {i} and node {j} are the same server ({e}); a quorum needs distinct nodes"
                    ),
                });
            }
        }
        let capabilities = Capabilities::new(
            nodes.iter().all(|n| n.capabilities().fencing),
            nodes.iter().any(|n| n.capabilities().wake_up),
        );
        let mut sorted = endpoints.clone();
        sorted.sort();
        let endpoint = format!("redlock[{}]", sorted.join(","));
        let quorum = nodes.len() / 2 + 1;
        let ids = nodes.iter().map(|_| std::sync::Mutex::new(Identity::Unknown)).collect();
        let nodes = nodes.into_iter().map(Arc::new).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                nodes,
                ids,
                endpoints: endpoints.into(),
                quorum,
                options,
                endpoint,
                capabilities,
                handed: std::sync::Mutex::default(),
                late: std::sync::Mutex::default(),
                cleanups: Arc::default(),
            }),
        })
    }

    /// How many nodes must agree: `N / 2 + 1`.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Never true: construction rejects zero nodes.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> impl Iterator<Item = &B> {
        self.inner.nodes.iter().map(|n| &**n)
    }

    fn identity(&self, i: usize) -> Identity {
        self.inner.ids.get(i).map_or(Identity::Unknown, |m| *m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks node `i` for its data identity unless it is known (one round trip, on first
    /// contact only).
    async fn learn_identity(&self, i: usize, node: &B) {
        match self.identity(i) {
            Identity::Known(_) => return,
            Identity::Absent(since) if since.elapsed() < IDENTITY_RECHECK => return,
            _ => {}
        }
        let learned = match node.node_identity().await {
            Ok(Some(id)) => Identity::Known(id),
            Ok(None) => Identity::Absent(Instant::now()),
            Err(_) => Identity::Unknown,
        };
        if let Some(m) = self.inner.ids.get(i) {
            *m.lock().unwrap_or_else(|p| p.into_inner()) = learned;
        }
        if let Identity::Known(id) = learned {
            for (j, e) in self.inner.endpoints.iter().enumerate() {
                if j != i && self.identity(j) == learned {
                    warn!(
                        node = %self.inner.endpoints[i], same_as = %e, id,
                        "two RedLock nodes are the same server; they count as one vote"
                    );
                }
            }
        }
    }

    /// The votes of the nodes at `indices`: one per distinct server (nodes with the same data
    /// identity count once; nodes of unknown identity count one each).
    fn votes(&self, indices: impl Iterator<Item = usize>) -> usize {
        // A handful of nodes: a short list on the stack (read once per answer of a round, so
        // no allocation), spilling to the heap past 16 distinct servers.
        let (mut seen, mut len, mut spilled) = ([0u64; 16], 0, Vec::new());
        let mut unknown = 0;
        for i in indices {
            match self.identity(i) {
                Identity::Known(id) => {
                    if !seen[..len].contains(&id) && !spilled.contains(&id) {
                        match seen.get_mut(len) {
                            Some(slot) => {
                                *slot = id;
                                len += 1;
                            }
                            None => spilled.push(id),
                        }
                    }
                }
                _ => unknown += 1,
            }
        }
        len + spilled.len() + unknown
    }

    fn node_timeout(&self, ttl: Duration) -> Duration {
        let default = (ttl / DEFAULT_NODE_TIMEOUT_DIVISOR).max(MIN_NODE_TIMEOUT);
        self.inner.options.node_timeout.unwrap_or(default).min(ttl).max(Duration::from_millis(1))
    }

    /// Sends one request to every node at once, each bounded by `deadline`. Answers are read
    /// as they come with [`FanOut::recv`]; the calls run on the reading task (no task and no
    /// cross-thread wake-up per node), and those still in flight when the [`FanOut`] is dropped
    /// finish in one background task, whether or not anyone still listens.
    fn fan_out<T, F, Fut>(&self, deadline: Duration, call: F) -> FanOut<T>
    where
        T: Send + 'static,
        F: Fn(usize, Arc<B>) -> Fut,
        Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let calls = FuturesUnordered::new();
        let until = Instant::now() + deadline;
        for (i, node) in self.inner.nodes.iter().enumerate() {
            let fut = call(i, Arc::clone(node));
            // The round's deadline bounds every node call (the FanOut drops those still out
            // then, even in the background), so the nodes arm no timer of their own.
            let call: NodeCall<T> = Box::pin(deadline::bounded_by(until, async move { (i, fut.await) }));
            calls.push(call);
        }
        FanOut::new(calls, until, deadline, Arc::clone(&self.inner.endpoints))
    }

    /// Releases `key` on every node, concurrently; waits for each answer up to `deadline`.
    /// `how` says which release each node sends ([`How::Silent`] for the partial grants of a
    /// failed round).
    ///
    /// A node that answers later is not cancelled: its call finishes in the background (as the
    /// acquire's fan-out does), so a slow node frees the key when its answer lands instead of
    /// keeping it until its TTL. The call is bounded by [`BACKGROUND_RELEASE_LIMIT`] node
    /// timeouts: past that the key has long expired.
    ///
    /// `to` says which nodes are skipped, and for which the release waits for the end of this
    /// lease's acquire, still out when its round was decided (see [`Late`]; within the same
    /// deadline).
    async fn release_all(
        &self,
        key: &LockKey,
        token: &Token,
        deadline: Duration,
        how: How,
        to: ReleaseTo<'_>,
        members: Option<Members>,
    ) -> Vec<Answer<ReleaseOutcome>> {
        let ReleaseTo { skip, mut late, mut outs } = to;
        let is_late: Vec<bool> = (0..self.inner.nodes.len()).map(|i| late.still_out(i)).collect();
        let limit = deadline.saturating_mul(BACKGROUND_RELEASE_LIMIT);
        let until = Instant::now() + deadline;
        // Polled here, on the caller's task (no task per node); only the calls still in flight
        // at the deadline move to one background task. The deadline bounds each call (and
        // `limit` those that go on in the background), so the nodes arm no timer of their own.
        let mut calls: FuturesUnordered<_> = self
            .inner
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.get(*i).copied().unwrap_or(false))
            .map(|(i, node)| {
                let (key, token, node) = (key.clone(), *token, Arc::clone(node));
                let acquiring = late.take(i);
                // Ends the node's cleanup when this call ends, answered or dropped.
                let out = outs.get_mut(i).and_then(Option::take);
                deadline::bounded_by(until, async move {
                    let _out = out;
                    if let Some(acquiring) = acquiring {
                        // Ends when the acquire is answered or dropped: either way, a release
                        // sent now queues behind its command, or there is none.
                        let _ = acquiring.await;
                    }
                    // Called on `B` itself: through the `Arc`'s forwarding impl each call would
                    // box one more future.
                    let node: &B = &node;
                    let answer = match (members, node.shared()) {
                        (None, _) => match how {
                            How::Announced => node.release(&key, &token).await,
                            How::Contended => node.release_contended(&key, &token).await,
                            How::Silent => node.discard(&key, &token).await,
                        },
                        (Some(set), Some(shared)) => shared.release_member(set, &key, &token).await,
                        (Some(_), None) => Err(no_shared(node)),
                    };
                    (i, answer)
                })
            })
            .collect();
        // The skipped nodes' cleanups end now: nothing goes to them.
        drop(outs);
        let mut answers = Vec::with_capacity(calls.len());
        let mut waiting: Vec<usize> =
            (0..self.inner.nodes.len()).filter(|i| !skip.get(*i).copied().unwrap_or(false)).collect();
        let timer = tokio::time::sleep_until(until);
        tokio::pin!(timer);
        let mut released = 0;
        loop {
            tokio::select! {
                next = calls.next() => match next {
                    Some((i, answer)) => {
                        waiting.retain(|w| *w != i);
                        released += usize::from(matches!(answer, Ok(ReleaseOutcome::Released)));
                        answers.push((i, answer));
                    }
                    None => break,
                },
                () = &mut timer => break,
            }
            // A majority released: the nodes whose release still waits for their late acquire
            // are not waited for (usually that acquire is answered a moment later); their
            // releases go on in the background.
            if released >= self.inner.quorum && waiting.iter().all(|w| is_late.get(*w) == Some(&true)) {
                break;
            }
        }
        if !calls.is_empty() {
            for i in waiting {
                let why = if is_late.get(i) == Some(&true) {
                    "release goes on in the background, after this node's late acquire"
                } else {
                    "release did not answer in time (it goes on in the background)"
                };
                answers.push((i, Err(BackendError::retryable(BackendErrorKind::Timeout, why))));
            }
            tokio::spawn(tokio::time::timeout(limit, async move { while calls.next().await.is_some() {} }));
        }
        answers
    }

    /// Writes `fence` back to the nodes; succeeds once a majority confirmed.
    async fn write_back(
        &self,
        req: &AcquireRequest,
        fence: FencingToken,
        deadline: Duration,
    ) -> Result<(), BackendError> {
        let (key, token) = (req.key.clone(), req.token);
        let mut answers = self.fan_out(deadline, move |_, node| {
            let key = key.clone();
            async move { B::raise_fence(&node, &key, &token, fence).await }
        });
        let n = self.inner.nodes.len();
        let (mut ok, mut failures) = (0, Vec::new());
        while let Some((i, answer)) = answers.recv().await {
            match answer {
                Ok(()) => ok += 1,
                Err(e) => failures.push((self.inner.endpoints[i].clone(), e)),
            }
            if ok >= self.inner.quorum {
                return Ok(());
            }
            if n - failures.len() < self.inner.quorum {
                break;
            }
        }
        Err(quorum_error(&format!("fencing token {fence} was not written back to a majority"), &failures))
    }

    /// Cleans up a failed round: waits for every node to answer (each is bounded by its
    /// deadline), then releases the key on every node, so nothing is left behind.
    /// Nodes that answered `Held` hold another owner's key, not ours: they are skipped.
    /// Counts the cleanup of a failed round of `req`'s lease as out on every node, from now
    /// until each node's call of it ends (see [`Cleanups`]).
    fn begin_cleanup(&self, req: &AcquireRequest) -> Vec<Option<CleanupOut>> {
        self.inner.cleanups.begin(&req.key, &req.token, self.inner.nodes.len())
    }

    async fn fail_round(
        &self,
        req: &AcquireRequest,
        members: Option<Members>,
        mut answers: FanOut<HoldOutcome>,
        deadline: Duration,
        mut clean: Vec<bool>,
        outs: Vec<Option<CleanupOut>>,
    ) {
        while let Some((i, answer)) = answers.recv().await {
            if matches!(answer, Ok(HoldOutcome::Held { .. }))
                && let Some(c) = clean.get_mut(i)
            {
                *c = true;
            }
        }
        // Silently: these partial grants never formed a lock, so no waiter should wake for them
        // (announcing them would wake every waiter, whose failed rounds announce again: a storm).
        let to = ReleaseTo::except(&clean).counted(outs);
        let released = self.release_all(&req.key, &req.token, deadline, How::Silent, to, members).await;
        debug!(key = %req.key, ?released, "failed round cleaned up");
    }

    /// One quorum round for the mutex (`hold` `None`) or a read or write lock: every node asked
    /// at once, decided at a majority of grants or once a majority can no longer grant.
    async fn round(&self, req: &AcquireRequest, hold: Option<Hold>) -> Result<HoldOutcome, BackendError> {
        let started = Instant::now();
        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let deadline = self.node_timeout(req.ttl);
        let Some(valid_until) = validity_deadline(started, req.ttl, default_drift(req.ttl)) else {
            return Err(BackendError::permanent(
                BackendErrorKind::Other,
                "the ttl leaves no validity after drift",
            ));
        };
        let request = req.clone();
        let this = self.clone();
        let answers = self.fan_out(deadline, move |i, node| {
            let request = request.clone();
            let this = this.clone();
            async move {
                // Nothing goes to a node before an earlier round's cleanup of this lease there
                // ended (see `Cleanups`); the round's deadline bounds the wait.
                this.inner.cleanups.ended(&request.key, &request.token, i).await;
                this.learn_identity(i, &node).await;
                node_acquire(node.as_ref(), &request, hold).await
            }
        });
        // If this future is dropped before the round is decided, the guard cleans up.
        let mut round = Round {
            this: self.clone(),
            req: req.clone(),
            members: hold.and_then(|h| h.members()),
            deadline,
            answers: Some(answers),
            clean: vec![false; n],
        };
        let (mut granted, mut held, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((i, answer)) = round.recv().await {
            match answer {
                Ok(HoldOutcome::Acquired(grant)) => granted.push((i, grant)),
                Ok(HoldOutcome::Held { remaining }) => {
                    held.push(remaining);
                    round.clean[i] = true;
                }
                Ok(HoldOutcome::SizeMismatch { .. }) => {
                    failures.push((self.inner.endpoints[i].clone(), size_mismatch()))
                }
                Err(e) => failures.push((self.inner.endpoints[i].clone(), e)),
            }
            if self.votes(granted.iter().map(|(i, _)| *i)) >= quorum
                || n - held.len() - failures.len() < quorum
            {
                break;
            }
        }

        let answers = round.take();
        let clean = std::mem::take(&mut round.clean);
        let in_time = Instant::now() < valid_until;
        let votes = self.votes(granted.iter().map(|(i, _)| *i));
        if votes >= quorum && in_time {
            let reader = matches!(hold, Some(Hold::Read { .. }));
            let fence = if req.fencing && reader {
                // A reader's token is the last fenced writer's: written back to a majority, so
                // any majority of readers' grants includes a node that has it; none is minted.
                granted.iter().filter_map(|(_, g)| g.fence).max()
            } else if req.fencing {
                let top = granted.iter().filter_map(|(_, g)| g.fence).max();
                let Some(top) = top else {
                    self.fail_round(req, round.members, answers, deadline, clean, self.begin_cleanup(req))
                        .await;
                    return Err(BackendError::permanent(
                        BackendErrorKind::Protocol,
                        "fencing was asked for, but no granting node minted a token",
                    ));
                };
                // A re-acquire of a lease that is still valid shows the token it was handed out
                // with: a node that granted late minted its own (higher) token, and until the
                // write-back reaches it, it reports that one instead. Mutual exclusion means
                // nobody else acquired in between, so the old token is still the newest.
                let fence = self.fence_of(&req.key, &req.token).unwrap_or(top);
                if let Err(e) = self.write_back(req, fence, deadline).await {
                    self.fail_round(req, round.members, answers, deadline, clean, self.begin_cleanup(req))
                        .await;
                    return Err(e);
                }
                Some(fence)
            } else {
                None
            };
            if Instant::now() < valid_until {
                if let (Some(f), false) = (fence, reader) {
                    self.remember(&req.key, &req.token, f, valid_until);
                }
                // Nodes that grant after the decision are part of this lease, not orphans: its
                // extensions and its release reach all N nodes. Keeping them lets the lease
                // survive more node failures. Their calls finish in the background, and the
                // lease's release waits for each before it releases that node.
                let late = answers.finish_in_background();
                if !late.is_empty() {
                    self.remember_late(&req.key, &req.token, late);
                }
                if let Some(Hold::Write { wait: Some(_) }) = hold {
                    // A node that refused this writer may still list it among its waiting
                    // writers, holding new readers back there until the record's deadline.
                    let granted_at: Vec<bool> =
                        (0..n).map(|i| granted.iter().any(|(g, _)| *g == i)).collect();
                    let (this, key, token) = (self.clone(), req.key.clone(), req.token);
                    tokio::spawn(async move {
                        let writers = Some(Members::Writers);
                        let left = this
                            .release_all(
                                &key,
                                &token,
                                deadline,
                                How::Announced,
                                ReleaseTo::except(&granted_at),
                                writers,
                            )
                            .await;
                        debug!(%key, answers = ?left, "the writer left the other nodes' waiting writers");
                    });
                }
                return Ok(HoldOutcome::Acquired(Grant { valid_until, fence }));
            }
        }

        self.fail_round(req, round.members, answers, deadline, clean, self.begin_cleanup(req)).await;
        if votes >= quorum {
            return Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!("a majority granted {}, but only after the validity had passed", req.key),
            ));
        }
        if !held.is_empty() {
            return Ok(HoldOutcome::Held { remaining: self.blocking_ttl(&mut held) });
        }
        Err(quorum_error(
            &format!(
                "no majority ({quorum} of {n}) granted {}: {} granted ({votes} distinct server(s))",
                req.key,
                granted.len()
            ),
            &failures,
        ))
    }

    /// Extends one lease on every node, decided at a majority either way: the lock key
    /// (`members` `None`) or a member of a set (a reader). A batch of one
    /// ([`RedLock::extend_batch`]), so a single renewal and the watchdog's batches are decided
    /// by the same code.
    async fn extend_quorum(
        &self,
        req: &ExtendRequest,
        members: Option<Members>,
    ) -> Result<ExtendOutcome, BackendError> {
        let renewal = Renewal { members, req: req.clone() };
        self.extend_batch(std::slice::from_ref(&renewal)).await.pop().unwrap_or_else(|| {
            Err(BackendError::permanent(BackendErrorKind::Protocol, "a renewal batch came back empty"))
        })
    }

    /// Renews a batch on every node at once, one [`LockBackend::extend_many`] per node, and
    /// decides each renewal at a majority either way: extended by a majority of distinct
    /// servers (validity counted from before the first request), refused by more than a
    /// minority, else unknown (the lease stays as it is and is retried until its deadline).
    /// Stops waiting once every renewal is decided; a slow node holds a batch up for its node
    /// timeout at most.
    async fn extend_batch(&self, renewals: &[Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
        let started = Instant::now();
        let (n, m, quorum) = (self.inner.nodes.len(), renewals.len(), self.inner.quorum);
        let Some(shortest) = renewals.iter().map(|r| r.req.ttl).min() else { return Vec::new() };
        let batch: Arc<[Renewal]> = renewals.into();
        let mut answers = self.fan_out(self.node_timeout(shortest), move |_, node| {
            let batch = Arc::clone(&batch);
            async move { Ok(B::extend_many(&node, &batch).await) }
        });
        let mut extended: Vec<Vec<usize>> = vec![Vec::new(); m];
        let mut not_held: Vec<Vec<usize>> = vec![Vec::new(); m];
        let mut failures: Vec<Vec<(String, BackendError)>> = vec![Vec::new(); m];
        let decided = |extended: &[usize], not_held: &[usize]| {
            self.votes(extended.iter().copied()) >= quorum || not_held.len() > n - quorum
        };
        while let Some((i, answer)) = answers.recv().await {
            let endpoint = &self.inner.endpoints[i];
            let mut per_node = match answer {
                Ok(per_node) => per_node.into_iter(),
                Err(e) => vec![Err(e); m].into_iter(),
            };
            for j in 0..m {
                match per_node.next() {
                    Some(Ok(ExtendOutcome::Extended { .. })) => extended[j].push(i),
                    Some(Ok(ExtendOutcome::NotHeld)) => not_held[j].push(i),
                    Some(Err(e)) => failures[j].push((endpoint.clone(), e)),
                    None => failures[j].push((
                        endpoint.clone(),
                        BackendError::retryable(
                            BackendErrorKind::Protocol,
                            "a renewal batch came back short",
                        ),
                    )),
                }
            }
            if (0..m).all(|j| decided(&extended[j], &not_held[j])) {
                break;
            }
        }
        let mut out = Vec::with_capacity(m);
        let mut owed = Vec::new();
        for (j, r) in renewals.iter().enumerate() {
            let req = &r.req;
            out.push(if self.votes(extended[j].iter().copied()) >= quorum {
                if self.inner.options.repair && r.members.is_none() {
                    owed.push((j, req.clone(), std::mem::take(&mut not_held[j])));
                }
                Ok(match validity_deadline(started, req.ttl, default_drift(req.ttl)) {
                    Some(valid_until) => {
                        self.renewed(&req.key, &req.token, valid_until);
                        ExtendOutcome::Extended { valid_until }
                    }
                    None => ExtendOutcome::NotHeld,
                })
            } else if not_held[j].len() > n - quorum {
                Ok(ExtendOutcome::NotHeld)
            } else {
                // Unknown: the lease stays as it is and its watchdog retries until its deadline.
                Err(quorum_error(&format!("no majority extended {}", req.key), &failures[j]))
            });
        }
        if !owed.is_empty() {
            self.repair_batch(owed, answers);
        }
        out
    }

    /// The time until enough holders expire for a majority to be free: among the nodes held
    /// by others, the `need`-th smallest remaining TTL.
    fn blocking_ttl(&self, held: &mut [Option<Duration>]) -> Option<Duration> {
        let n = self.inner.nodes.len();
        let need = (self.inner.quorum + held.len()).checked_sub(n)?.max(1);
        if held.iter().any(Option::is_none) {
            return None;
        }
        held.sort();
        held.get(need - 1).copied().flatten()
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for RedLock<B> {
    fn name(&self) -> &str {
        "redlock"
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint.clone()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        Ok(match self.round(req, None).await? {
            HoldOutcome::Acquired(grant) => AcquireOutcome::Acquired(grant),
            HoldOutcome::Held { remaining } => AcquireOutcome::Held { remaining },
            HoldOutcome::SizeMismatch { .. } => return Err(size_mismatch()),
        })
    }

    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.extend_quorum(req, None).await
    }

    async fn extend_many(&self, renewals: &[Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
        self.extend_batch(renewals).await
    }

    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.release_quorum(key, token, How::Announced, None).await
    }

    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.release_quorum(key, token, How::Contended, None).await
    }

    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.release_quorum(key, token, How::Silent, None).await
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        let req =
            AcquireRequest { key: key.clone(), token: *token, ttl: Duration::from_secs(2), fencing: true };
        self.write_back(&req, fence, self.node_timeout(req.ttl)).await?;
        // The lease now shows the raised token (never a lower one).
        let mut handed = self.inner.handed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((shown, _)) = handed.get_mut(&(key.clone(), *token)) {
            *shown = (*shown).max(fence);
        }
        Ok(())
    }

    /// Read-write locks, when every node keeps them (see [`SharedBackend`] on `RedLock`).
    fn shared(&self) -> Option<&dyn SharedBackend> {
        self.inner.nodes.iter().all(|n| n.shared().is_some()).then_some(self as &dyn SharedBackend)
    }

    fn semaphore_refused(&self) -> Option<&'static str> {
        Some(SEMAPHORE_REFUSED)
    }

    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        if !self.inner.capabilities.wake_up {
            return Ok(None);
        }
        let watches = join_all(self.inner.nodes.iter().map(|n| n.watch_releases(key))).await;
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut forwarders = Vec::new();
        for w in watches.into_iter().flatten().flatten() {
            let tx = Arc::clone(&tx);
            let mut w = w;
            forwarders.push(
                tokio::spawn(async move {
                    while w.notified().await {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                })
                .abort_handle(),
            );
        }
        if forwarders.is_empty() {
            return Ok(None);
        }
        Ok(Some(ReleaseWatch::with_keep(rx, AbortOnDrop(forwarders))))
    }

    /// Every node's facts, marked as quorum members, so the doctor also judges the quorum as a
    /// whole (duplicate servers, an even count, persistence). A node that cannot be read is
    /// reported as such rather than failing the whole check.
    async fn deployment_facts(&self) -> Result<Vec<lock_core::doctor::NodeFacts>, BackendError> {
        let answers = join_all(self.inner.nodes.iter().map(|n| n.deployment_facts())).await;
        let mut facts = Vec::new();
        for (node, answer) in self.inner.nodes.iter().zip(answers) {
            match answer {
                Ok(node_facts) => facts.extend(node_facts),
                Err(e) => facts.push(lock_core::doctor::NodeFacts {
                    endpoint: node.endpoint(),
                    unreadable: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
        for f in &mut facts {
            f.quorum_member = true;
        }
        Ok(facts)
    }
}

impl<B: LockBackend> RedLock<B> {
    /// The fencing token this client handed out with the lease `(key, token)`, while that
    /// lease is valid (as far as this client's grants and extensions go).
    fn fence_of(&self, key: &LockKey, token: &Token) -> Option<FencingToken> {
        let handed = self.inner.handed.lock().unwrap_or_else(|p| p.into_inner());
        handed.get(&(key.clone(), *token)).filter(|(_, until)| Instant::now() < *until).map(|(f, _)| *f)
    }

    fn remember(&self, key: &LockKey, token: &Token, fence: FencingToken, valid_until: Instant) {
        let mut handed = self.inner.handed.lock().unwrap_or_else(|p| p.into_inner());
        if handed.len() >= HANDED_SWEEP {
            let now = Instant::now();
            handed.retain(|_, (_, until)| *until > now);
        }
        handed.insert((key.clone(), *token), (fence, valid_until));
    }

    /// An extension moved the lease's validity: its token stays remembered that long.
    fn renewed(&self, key: &LockKey, token: &Token, valid_until: Instant) {
        let mut handed = self.inner.handed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, until)) = handed.get_mut(&(key.clone(), *token)) {
            *until = (*until).max(valid_until);
        }
    }

    fn forget(&self, key: &LockKey, token: &Token) {
        self.inner.handed.lock().unwrap_or_else(|p| p.into_inner()).remove(&(key.clone(), *token));
    }

    /// Keeps the signals of a decided round's late acquires until the lease is released.
    fn remember_late(&self, key: &LockKey, token: &Token, late: Late) {
        let mut pending = self.inner.late.lock().unwrap_or_else(|p| p.into_inner());
        Self::sweep(&mut pending);
        pending.late.insert((key.clone(), *token), late);
    }

    /// Drops what needs keeping no more, once enough piled up: leases whose late calls all
    /// ended (a release then waits for nothing), so leases never released here do not pile up.
    fn sweep(pending: &mut Pending) {
        if pending.late.len() >= HANDED_SWEEP {
            pending.late.retain(|_, late| !late.ended());
        }
    }

    /// What a release of the lease waits for, taken; with `repair`, the release is noted so a
    /// repair decided from now on leaves the lease alone.
    fn take_late(&self, key: &LockKey, token: &Token) -> Late {
        let mut pending = self.inner.late.lock().unwrap_or_else(|p| p.into_inner());
        let id = (key.clone(), *token);
        if self.inner.options.repair {
            pending.released(id.clone());
        }
        pending.late.remove(&id).unwrap_or_else(Late::none)
    }

    async fn release_quorum(
        &self,
        key: &LockKey,
        token: &Token,
        how: How,
        members: Option<Members>,
    ) -> Result<ReleaseOutcome, BackendError> {
        self.forget(key, token);
        let late = self.take_late(key, token);
        let deadline = self.node_timeout(Duration::from_secs(2));
        let answers = self.release_all(key, token, deadline, how, ReleaseTo::after(late), members).await;
        let released = answers.iter().filter(|(_, a)| matches!(a, Ok(ReleaseOutcome::Released))).count();
        let failures: Vec<(String, BackendError)> = answers
            .into_iter()
            .filter_map(|(i, a)| a.err().map(|e| (self.inner.endpoints[i].clone(), e)))
            .collect();
        if released >= self.inner.quorum {
            Ok(ReleaseOutcome::Released)
        } else if released + failures.len() >= self.inner.quorum {
            Err(quorum_error(&format!("could not tell whether a majority still held {key}"), &failures))
        } else {
            Ok(ReleaseOutcome::NotHeld)
        }
    }

    /// Re-takes the key on nodes that lost it (e.g. restarted empty) while a majority still
    /// holds it (the `repair` option), for the renewals of a batch that a majority extended:
    /// `owed` holds each one's index in the batch, its request and the nodes that said it lost
    /// it before the decision; the nodes that answer after it are read from `late`.
    fn repair_batch(
        &self,
        owed: Vec<(usize, ExtendRequest, Vec<usize>)>,
        late: FanOut<Vec<Result<ExtendOutcome, BackendError>>>,
    ) {
        let this = self.clone();
        // A release of one of these leases while its repair is on its way would reach a node
        // before the re-take, and the re-take landing after it would hold the key there until
        // its TTL: each lease's release waits for its repair to end, as for a late acquire
        // (see `Late`). A signal already kept for the lease (its acquire's) is awaited first.
        let n = self.inner.nodes.len();
        let mut repairs = Vec::with_capacity(owed.len());
        let owed: Vec<_> = {
            let mut pending = self.inner.late.lock().unwrap_or_else(|p| p.into_inner());
            Self::sweep(&mut pending);
            owed.into_iter()
                .filter(|(_, req, _)| {
                    let id = (req.key.clone(), req.token);
                    // Its release began (this round was sent before): nothing to re-take.
                    if pending.was_released(&id) {
                        return false;
                    }
                    let before = pending.late.remove(&id).unwrap_or_else(Late::none);
                    let (ends, signals): (Vec<_>, Vec<_>) = (0..n)
                        .map(|_| tokio::sync::oneshot::channel::<()>())
                        .map(|(end, signal)| (end, Some(signal)))
                        .unzip();
                    pending.late.insert(id, Late(signals));
                    repairs.push((before, ends));
                    true
                })
                .collect()
        };
        if owed.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let mut owed = owed;
            let mut late = late;
            while let Some((i, answer)) = late.recv().await {
                let Ok(per_node) = answer else { continue };
                for (j, _, missing) in &mut owed {
                    if matches!(per_node.get(*j), Some(Ok(ExtendOutcome::NotHeld))) {
                        missing.push(i);
                    }
                }
            }
            for ((_, req, missing), (mut before, ends)) in owed.into_iter().zip(repairs) {
                for i in 0..n {
                    if let Some(acquiring) = before.take(i) {
                        let _ = acquiring.await;
                    }
                }
                this.retake(&req, missing).await;
                // Ends the signals: a release waiting for this repair goes on.
                drop(ends);
            }
        });
    }

    /// Re-takes `req`'s key on the `missing` nodes (for the same owner; no fencing write-back).
    async fn retake(&self, req: &ExtendRequest, missing: Vec<usize>) {
        let acquire = AcquireRequest { key: req.key.clone(), token: req.token, ttl: req.ttl, fencing: false };
        for i in missing {
            if let Some(node) = self.inner.nodes.get(i) {
                // A failed round's cleanup of the lease still out there would delete the
                // re-take, as it would a round's grant (see `Cleanups`).
                self.inner.cleanups.ended(&acquire.key, &acquire.token, i).await;
                match B::acquire(node, &acquire).await {
                    Ok(outcome) => debug!(key = %acquire.key, node = i, ?outcome, "repair"),
                    Err(e) => warn!(key = %acquire.key, node = i, error = %e, "repair failed"),
                }
            }
        }
    }
}

/// One node's call of a fan-out, answering with the node's index.
type NodeCall<T> = std::pin::Pin<Box<dyn Future<Output = Answer<T>> + Send>>;

/// The calls of one fan-out ([`RedLock::fan_out`]), polled by whoever reads the answers.
/// Dropped with calls still in flight, it lets them finish in one background task (their
/// answers unread): a node that grants after the decision is part of the lease, and a release
/// that answers late still frees its node.
struct FanOut<T: Send + 'static> {
    calls: FuturesUnordered<NodeCall<T>>,
    /// Answers that came in while every call was being started, or timeouts not yet read.
    ready: std::collections::VecDeque<Answer<T>>,
    started: bool,
    /// One deadline for every node's call (one timer per fan-out, not one per node).
    deadline: Instant,
    limit: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Which nodes have not answered yet.
    pending: Vec<bool>,
    endpoints: Arc<[String]>,
}

impl<T: Send + 'static> FanOut<T> {
    fn new(
        calls: FuturesUnordered<NodeCall<T>>,
        deadline: Instant,
        limit: Duration,
        endpoints: Arc<[String]>,
    ) -> Self {
        let pending = vec![true; calls.len()];
        Self {
            calls,
            ready: std::collections::VecDeque::new(),
            started: false,
            deadline,
            limit,
            timer: None,
            pending,
            endpoints,
        }
    }

    fn empty() -> Self {
        Self::new(FuturesUnordered::new(), Instant::now(), Duration::ZERO, Arc::from(Vec::new()))
    }

    fn answered(&mut self, answer: Answer<T>) -> Answer<T> {
        if let Some(p) = self.pending.get_mut(answer.0) {
            *p = false;
        }
        answer
    }

    /// The next answer, or `None` once every node answered. The first call starts every
    /// node's call before it returns any answer, so each node is asked before the round can be
    /// decided (a node that answers at once would otherwise be read before the next is asked).
    /// A node that has not answered by the deadline answers a timeout (its call is dropped).
    async fn recv(&mut self) -> Option<Answer<T>> {
        if !self.started {
            self.started = true;
            // Polls until every call is pending or done (FuturesUnordered returns at the first
            // ready one); the wakers it registers are its own, so nothing is missed.
            while let Some(Some(answer)) = self.calls.next().now_or_never() {
                let answer = self.answered(answer);
                self.ready.push_back(answer);
            }
        }
        if let Some(answer) = self.ready.pop_front() {
            return Some(answer);
        }
        if self.calls.is_empty() {
            return None;
        }
        let deadline = self.deadline;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        tokio::select! {
            biased;
            answer = self.calls.next() => answer.map(|a| self.answered(a)),
            () = timer.as_mut() => {
                // Past the deadline: the nodes still out answer a timeout, and their calls go.
                self.calls = FuturesUnordered::new();
                let limit = self.limit;
                for (i, pending) in std::mem::take(&mut self.pending).into_iter().enumerate() {
                    if pending {
                        let endpoint = self.endpoints.get(i).map_or("?", String::as_str);
                        self.ready.push_back((
                            i,
                            Err(BackendError::retryable(
                                BackendErrorKind::Timeout,
                                format!("node {endpoint} did not answer within {limit:?}"),
                            )),
                        ));
                    }
                }
                self.ready.pop_front()
            }
        }
    }
}

impl<T: Send + 'static> FanOut<T> {
    /// Lets the calls still out finish in one background task, whether or not anyone still
    /// listens, and answers a signal per node whose call was still out: it ends when that call
    /// is answered, or is dropped at the deadline.
    fn finish_in_background(mut self) -> Late {
        self.detach(true)
    }

    /// Moves the calls still out to one background task, bounded by the same deadline as when
    /// they were read; with `signal`, a [`Late`] tells when each ends (the senders drop with
    /// the task at the latest, which ends every signal).
    fn detach(&mut self, signal: bool) -> Late {
        if self.calls.is_empty() {
            return Late::none();
        }
        let (mut ends, signals): (Vec<_>, Vec<_>) = if signal {
            self.pending
                .iter()
                .map(|pending| match pending.then(tokio::sync::oneshot::channel) {
                    Some((end, signal)) => (Some(end), Some(signal)),
                    None => (None, None),
                })
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let mut calls = std::mem::take(&mut self.calls);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(tokio::time::timeout_at(self.deadline, async move {
                while let Some((i, _)) = calls.next().await {
                    if let Some(end) = ends.get_mut(i) {
                        end.take();
                    }
                }
            }));
        }
        Late(signals)
    }
}

/// Which nodes a release goes to, and when ([`RedLock::release_all`]).
struct ReleaseTo<'a> {
    /// Nodes skipped (`true`); missing entries are not.
    skip: &'a [bool],
    /// Nodes released only once the lease's late acquire there ended.
    late: Late,
    /// Per node, what counts this release as a cleanup out until its call there ends (see
    /// [`Cleanups`]); dropped at once for a node skipped.
    outs: Vec<Option<CleanupOut>>,
}

impl<'a> ReleaseTo<'a> {
    /// Every node but those marked in `skip`, at once.
    fn except(skip: &'a [bool]) -> Self {
        Self { skip, late: Late::none(), outs: Vec::new() }
    }

    /// Every node, each after its late acquire (if any) ended.
    fn after(late: Late) -> Self {
        Self { skip: &[], late, outs: Vec::new() }
    }

    /// The same, counted as a failed round's cleanup until each node's call ends.
    fn counted(self, outs: Vec<Option<CleanupOut>>) -> Self {
        Self { outs, ..self }
    }
}

/// Per node, the end of a lease's acquire that was still out when its round was decided.
///
/// Such a call may not have reached its node yet: a node's backend may hold an acquire back
/// on the client before sending it (a driver gathers the `SET`s of one moment into one pipeline,
/// `lock_core::coalesce`). A release sent meanwhile would reach the node first, find nothing,
/// and the `SET` landing after it would hold the key until its TTL, orphaned. So the release
/// of such a node waits for its acquire to end (answered, or dropped at the round's deadline,
/// and so never sent if it was still held back); a release sent after that queues behind it.
#[derive(Debug, Default)]
struct Late(Vec<Option<tokio::sync::oneshot::Receiver<()>>>);

impl Late {
    fn none() -> Self {
        Self(Vec::new())
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Whether node `i`'s late acquire is still running (one that ended is forgotten).
    fn still_out(&mut self, i: usize) -> bool {
        let Some(slot) = self.0.get_mut(i) else { return false };
        let out = slot.as_mut().is_some_and(running);
        if !out {
            *slot = None;
        }
        out
    }

    /// Node `i`'s signal, if its acquire was late.
    fn take(&mut self, i: usize) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.0.get_mut(i).and_then(Option::take)
    }

    /// Whether every late call has ended.
    fn ended(&mut self) -> bool {
        !self.0.iter_mut().flatten().any(running)
    }
}

/// Whether the call a [`Late`] signal stands for is still running.
fn running(end: &mut tokio::sync::oneshot::Receiver<()>) -> bool {
    matches!(end.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty))
}

impl<T: Send + 'static> Drop for FanOut<T> {
    fn drop(&mut self) {
        self.detach(false);
    }
}

/// The answers of an acquire round, cleaned up (every node released) if the round is dropped
/// before it was decided.
struct Round<B: LockBackend> {
    this: RedLock<B>,
    req: AcquireRequest,
    /// Where a grant's owner token lives on each node (`None`: the lock key).
    members: Option<Members>,
    deadline: Duration,
    answers: Option<FanOut<HoldOutcome>>,
    /// Nodes known not to hold our key (they answered `Held`).
    clean: Vec<bool>,
}

impl<B: LockBackend> Round<B> {
    async fn recv(&mut self) -> Option<Answer<HoldOutcome>> {
        match &mut self.answers {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    fn take(&mut self) -> FanOut<HoldOutcome> {
        // Already taken: no calls left.
        self.answers.take().unwrap_or_else(FanOut::empty)
    }
}

impl<B: LockBackend> Drop for Round<B> {
    fn drop(&mut self) {
        let Some(rx) = self.answers.take() else { return };
        let (this, req, deadline, members) =
            (self.this.clone(), self.req.clone(), self.deadline, self.members);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let clean = std::mem::take(&mut self.clean);
            // Counted before the caller can start its next round (see `Cleanups`).
            let outs = this.begin_cleanup(&req);
            rt.spawn(async move { this.fail_round(&req, members, rx, deadline, clean, outs).await });
        }
    }
}

/// Why a quorum refuses semaphores (see [`LockBackend::semaphore_refused`]).
pub const SEMAPHORE_REFUSED: &str = "semaphores over a RedLock quorum: a majority of grants does not bound \
the holders (with 3 nodes and 2 permits, 3 holders can each hold grants on 2 nodes); use a semaphore on \
one Redis deployment";

/// The read-write lock over a quorum: safe because every node enforces the read/write
/// exclusion on its own, and a reader and a writer both need a majority of grants: any two
/// majorities share a node, and that node never grants both at once. So a write lock held
/// (valid) excludes every valid read lock and every other valid write lock, as for the mutex.
/// The write lock is the mutex key on each node (renewed and released by the mutex's
/// operations, fenced by the quorum's maximum written back); a reader's token is the highest
/// fencing counter among the nodes that granted it, which is at least the last writer's token
/// (written back to a majority). Semaphores are refused ([`SEMAPHORE_REFUSED`]).
#[async_trait]
impl<B: LockBackend> SharedBackend for RedLock<B> {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        if let Hold::Permit { .. } = req.hold {
            return Err(BackendError::permanent(BackendErrorKind::Other, SEMAPHORE_REFUSED));
        }
        let lock =
            AcquireRequest { key: req.key.clone(), token: req.token, ttl: req.ttl, fencing: req.fencing };
        self.round(&lock, Some(req.hold)).await
    }

    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.extend_quorum(req, Some(set)).await
    }

    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        self.release_quorum(key, token, How::Announced, Some(set)).await
    }
}

/// One node's answer to a round's request: the mutex, or a read or write lock.
/// Which release each node is sent (see [`LockBackend::release`] and its siblings).
#[derive(Debug, Clone, Copy)]
enum How {
    /// [`LockBackend::release`]: announced to waiters.
    Announced,
    /// [`LockBackend::release_contended`]: announced, for a lock fair waiters are likely
    /// queued for.
    Contended,
    /// [`LockBackend::discard`]: no notice (the partial grants of a failed round).
    Silent,
}

async fn node_acquire<B: LockBackend>(
    node: &B,
    req: &AcquireRequest,
    hold: Option<Hold>,
) -> Result<HoldOutcome, BackendError> {
    let Some(hold) = hold else {
        return Ok(match node.acquire(req).await? {
            AcquireOutcome::Acquired(grant) => HoldOutcome::Acquired(grant),
            AcquireOutcome::Held { remaining } => HoldOutcome::Held { remaining },
        });
    };
    let Some(shared) = node.shared() else { return Err(no_shared(node)) };
    let req =
        HoldRequest { key: req.key.clone(), token: req.token, ttl: req.ttl, fencing: req.fencing, hold };
    shared.acquire_hold(&req).await
}

fn no_shared<B: LockBackend + ?Sized>(node: &B) -> BackendError {
    BackendError::permanent(
        BackendErrorKind::Other,
        format!("node {} keeps no read-write locks", node.endpoint()),
    )
}

fn size_mismatch() -> BackendError {
    BackendError::permanent(
        BackendErrorKind::Protocol,
        "a node answered a lock request with a semaphore size",
    )
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release is remembered for `RELEASED_KEPT`, then forgotten (so releases do not pile
    /// up), and a lease released again keeps its latest note.
    #[tokio::test(start_paused = true)]
    async fn a_release_is_kept_from_repairs_for_a_while_then_forgotten() {
        let mut pending = Pending::default();
        let lease = |k: &str| (LockKey::new(k).unwrap(), Token::random());
        let (a, b) = (lease("a"), lease("b"));
        pending.released(a.clone());
        assert!(pending.was_released(&a) && !pending.was_released(&b));
        tokio::time::sleep(RELEASED_KEPT / 2).await;
        pending.released(b.clone());
        pending.released(a.clone());
        tokio::time::sleep(RELEASED_KEPT / 2 + Duration::from_millis(1)).await;
        pending.released(lease("c"));
        assert!(pending.was_released(&a), "released again half-way: kept from then");
        assert!(pending.was_released(&b));
        tokio::time::sleep(RELEASED_KEPT).await;
        pending.released(lease("d"));
        assert!(!pending.was_released(&a) && !pending.was_released(&b), "forgotten");
        assert_eq!((pending.released.len(), pending.released_order.len()), (1, 1));
    }
}
