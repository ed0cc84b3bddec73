//! An in-memory backend on tokio's clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, Capabilities, ExtendOutcome, ExtendRequest, FairBackend,
    FairOutcome, FairRequest, FencingToken, Grant, HandOver, Hold, HoldOutcome, HoldRequest, Instant,
    LockBackend, LockKey, Members, ReleaseOutcome, ReleaseWatch, SharedBackend, Token,
};
use tokio::sync::watch;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Entry {
    token: Token,
    expires_at: Instant,
    fence: Option<FencingToken>,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<LockKey, Entry>,
    fences: HashMap<LockKey, u64>,
    notices: HashMap<LockKey, watch::Sender<u64>>,
    /// Fair locks' queues, as `lock:{k}:queue` and `lock:{k}:waiters` on a server.
    queues: HashMap<LockKey, Queue>,
    /// Fair waiters' turn notices (the hand-overs on `lock:{k}:turn` addressed to each), with
    /// the hand-over the last one announced.
    turns: HashMap<(LockKey, Token), Turn>,
    /// The last number given to a fair waiter's deadline (see `Queue::members`): never reused,
    /// as a server's clock never gives a waiter the same deadline after a later one.
    deadline_tags: u64,
    /// The node marker (see [`lock_core::scripts`]): `None` after data loss.
    marker: Option<Marker>,
    /// Read-write locks' readers and waiting writers, semaphores' permits: each owner token
    /// with its expiry, as `lock:{k}:readers`, `:writers` and `:permits` on a server.
    members: HashMap<(LockKey, Members), HashMap<Token, Instant>>,
    /// Semaphores' sizes, kept while they have permits (`lock:{k}:size`).
    sizes: HashMap<LockKey, u32>,
}

impl State {
    /// The live members of one set (expired ones dropped, as `ZREMRANGEBYSCORE -inf now`).
    fn live_members(&mut self, key: &LockKey, set: Members, now: Instant) -> &mut HashMap<Token, Instant> {
        let members = self.members.entry((key.clone(), set)).or_default();
        members.retain(|_, expires| *expires > now);
        members
    }

    /// Sends a release notice on `key`'s broadcast channel.
    fn announce(&mut self, key: &LockKey) {
        if let Some(tx) = self.notices.get(key) {
            tx.send_modify(|n| *n += 1);
            if tx.receiver_count() == 0 {
                self.notices.remove(key);
            }
        }
    }
}

/// One fair waiter's turn channel.
#[derive(Debug)]
struct Turn {
    notices: watch::Sender<u64>,
    handed: Arc<Mutex<Option<HandOver>>>,
}

/// One fair lock's waiters: arrival order, and each one's deadline.
#[derive(Debug, Default)]
struct Queue {
    order: std::collections::BTreeMap<u64, Token>,
    /// Each waiter's place, its deadline, and the number naming that deadline in its
    /// `Waiting` replies and hand-over notices (a fresh one per queueing call).
    members: HashMap<Token, (u64, Instant, u64)>,
    next: u64,
}

impl Queue {
    fn drop_expired(&mut self, now: Instant) -> usize {
        let dead: Vec<Token> =
            self.members.iter().filter(|(_, (_, d, _))| *d <= now).map(|(t, _)| *t).collect();
        for t in &dead {
            self.remove(t);
        }
        dead.len()
    }

    fn remove(&mut self, token: &Token) {
        if let Some((seq, _, _)) = self.members.remove(token) {
            self.order.remove(&seq);
        }
    }

    fn head(&self) -> Option<Token> {
        self.order.values().next().copied()
    }
}

#[derive(Debug, Clone, Copy)]
struct Marker {
    id: u64,
    /// `Some` while the node is in quarantine: grants resume at this instant.
    open_at: Option<Instant>,
}

/// Operation counts of a [`MemoryBackend`], for tests that assert what was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpCounts {
    /// Acquire calls.
    pub acquire: u64,
    /// Extend calls (each item of `extend_many` counts).
    pub extend: u64,
    /// Release calls (`release`, `discard` and `release_contended`).
    pub release: u64,
    /// Of those, `release_contended` calls: the core sends them for fair locks.
    pub release_contended: u64,
    /// Raise-fence calls.
    pub fence: u64,
    /// Fair acquire calls.
    pub fair_acquire: u64,
    /// Fair waiters that left the queue (leave calls).
    pub leave: u64,
    /// "Your turn" notices sent to fair waiters (one per hand-off, never one per waiter).
    pub turn_notices: u64,
    /// Read, write and permit acquire calls.
    pub hold: u64,
    /// Renewals and releases of readers, waiting writers and permits.
    pub member: u64,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    state: Mutex<State>,
    counts: Mutex<OpCounts>,
    quarantine: Duration,
    /// The "server clock": wall-clock microseconds at creation, advanced by tokio's clock.
    epoch_us: u64,
    created: Instant,
    /// Controls only: tokens from the bare counter, without the clock floor.
    counter_only: bool,
}

/// A lock store in process memory, on tokio's clock, so tests can run on paused time.
///
/// It honours TTLs, mints fencing tokens as the Redis script does (the counter plus one, or the
/// store's clock in microseconds if that is higher; the counter survives expiry and release,
/// like the Redis counter key) and wakes waiters on release. Like a Redis node it keeps
/// a data-loss marker: after [`MemoryBackend::wipe`] it grants nothing for its quarantine
/// ([`MemoryBackend::with_quarantine`]), by tokio's clock. Clones share one store, like several
/// connections to one server.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::LockClient;
/// use lock_testkit::MemoryBackend;
///
/// let store = MemoryBackend::new();
/// let a = LockClient::new(store.clone());
/// let b = LockClient::new(store.clone());
/// let held = a.mutex("job")?.lock().await?;
/// assert!(b.mutex("job")?.try_lock().await?.is_none());
/// held.release().await?;
/// assert!(b.mutex("job")?.try_lock().await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store, declared fresh (it grants at once), with the default quarantine
    /// ([`lock_core::scripts::DEFAULT_QUARANTINE`]).
    pub fn new() -> Self {
        Self::with_quarantine(lock_core::scripts::DEFAULT_QUARANTINE)
    }

    /// An empty store, declared fresh, that grants nothing for `quarantine` (at least the
    /// request's TTL) after it lost its data ([`MemoryBackend::wipe`]).
    pub fn with_quarantine(quarantine: Duration) -> Self {
        Self::build(quarantine, false)
    }

    /// A control for tests: like [`MemoryBackend::with_quarantine`], but fencing tokens come
    /// from the bare counter (`INCR`), without the clock floor, so a counter rolled back by
    /// [`MemoryBackend::restore_old_snapshot`] hands out tokens again that it gave out before.
    /// The design this workspace replaced; tests use it to show their fencing checks bite.
    pub fn with_counter_only_fences(quarantine: Duration) -> Self {
        Self::build(quarantine, true)
    }

    fn build(quarantine: Duration, counter_only: bool) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        let state = State { marker: Some(Marker { id, open_at: None }), ..State::default() };
        Self {
            inner: Arc::new(Inner {
                id,
                state: Mutex::new(state),
                counts: Mutex::default(),
                quarantine,
                epoch_us,
                created: Instant::now(),
                counter_only,
            }),
        }
    }

    /// The next fencing token of `key`, as `mint_fence` in the scripts: the counter plus one, or
    /// the clock if that is higher (a bare counter for the controls built with
    /// `counter_only_fences`).
    fn mint_fence(&self, state: &mut State, key: &LockKey) -> FencingToken {
        let clock = if self.inner.counter_only { 0 } else { self.clock_us() };
        let counter = state.fences.entry(key.clone()).or_insert(0);
        *counter = (*counter + 1).max(clock);
        FencingToken(*counter)
    }

    /// The store's clock in microseconds (wall clock at creation, then tokio's clock).
    fn clock_us(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.inner.created);
        self.inner.epoch_us.saturating_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX / 2))
    }

    /// The quarantine left, if the node is in one now (checking, and re-creating, the marker
    /// as the acquire script does).
    fn quarantine_left(&self, state: &mut State, ttl: Duration, now: Instant) -> Option<Duration> {
        let marker = state.marker.get_or_insert_with(|| Marker {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            open_at: Some(now + self.inner.quarantine.max(ttl)),
        });
        match marker.open_at {
            Some(open_at) if open_at > now => Some(open_at - now),
            Some(_) => {
                marker.open_at = None;
                None
            }
            None => None,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut OpCounts)) {
        f(&mut self.inner.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// How many operations have been received so far.
    pub fn op_counts(&self) -> OpCounts {
        *self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token holding `key` now, if any (expired entries are absent).
    pub fn holder(&self, key: &str) -> Option<Token> {
        let now = Instant::now();
        let state = self.state();
        state.locks.iter().find(|(k, e)| k.as_str() == key && e.expires_at > now).map(|(_, e)| e.token)
    }

    /// The remaining TTL of `key`, if it is held.
    pub fn pttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let state = self.state();
        state
            .locks
            .iter()
            .find(|(k, e)| k.as_str() == key && e.expires_at > now)
            .map(|(_, e)| e.expires_at - now)
    }

    /// How many keys are held now.
    pub fn held_count(&self) -> usize {
        let now = Instant::now();
        self.state().locks.values().filter(|e| e.expires_at > now).count()
    }

    /// Deletes `key` as if it expired or the node lost it (no release notice is sent).
    pub fn evict(&self, key: &str) {
        self.state().locks.retain(|k, _| k.as_str() != key);
    }

    /// Sets `key` to an arbitrary `token`, as another owner would.
    pub fn force_hold(&self, key: &str, token: Token, ttl: Duration) -> Result<(), lock_core::LockError> {
        let key = LockKey::new(key)?;
        self.state().locks.insert(key, Entry { token, expires_at: Instant::now() + ttl, fence: None });
        Ok(())
    }

    /// Forgets everything, fencing counters and the data-loss marker included, as a node
    /// restarted without persistence would. The next acquire notices the missing marker and
    /// the node grants nothing for its quarantine; re-created counters start from the clock.
    pub fn wipe(&self) {
        let mut state = self.state();
        state.locks.clear();
        state.fences.clear();
        state.queues.clear();
        state.members.clear();
        state.sizes.clear();
        state.marker = None;
    }

    /// Forgets the locks and resets every fencing counter to 0 **but keeps the marker**: a
    /// restart that reloaded an old snapshot, the data loss the marker cannot see. The
    /// known-unsafe deployment for mutual exclusion; fencing tokens still rise (the clock floor),
    /// except on a [`MemoryBackend::with_counter_only_fences`] control. Tests use it to show
    /// their checks are not vacuous.
    pub fn restore_old_snapshot(&self) {
        let mut state = self.state();
        state.locks.clear();
        state.members.clear();
        state.sizes.clear();
        for counter in state.fences.values_mut() {
            *counter = 0;
        }
    }

    /// Declares the store fresh, lifting a running quarantine (what `lockctl init --force`
    /// does on a server).
    pub fn declare_fresh(&self) {
        let mut state = self.state();
        let id = state.marker.map_or_else(|| NEXT_ID.fetch_add(1, Ordering::Relaxed), |m| m.id);
        state.marker = Some(Marker { id, open_at: None });
    }

    /// The fencing counter of `key` (0 if it never minted one).
    pub fn fence_counter(&self, key: &str) -> u64 {
        self.state().fences.iter().find(|(k, _)| k.as_str() == key).map_or(0, |(_, v)| *v)
    }

    fn delete(&self, key: &LockKey, token: &Token, notify: bool) -> ReleaseOutcome {
        let now = Instant::now();
        let mut state = self.state();
        match live(&mut state, key, now) {
            Some(entry) if entry.token == *token => {
                state.locks.remove(key);
                // As release.lua: the head of a fair queue gets the lock at once; with nobody
                // queued, the broadcast notice goes out.
                let handed = notify && self.hand_over(&mut state, key, now);
                if let Some(tx) = state.notices.get(key) {
                    if notify && !handed {
                        tx.send_modify(|n| *n += 1);
                    }
                    if tx.receiver_count() == 0 {
                        state.notices.remove(key);
                    }
                }
                ReleaseOutcome::Released
            }
            _ => ReleaseOutcome::NotHeld,
        }
    }

    /// The lock is free: hand it to the head of the fair queue, if any, and tell that waiter
    /// alone, as `hand_over` in the scripts does: the grant expires at the head's waiter
    /// deadline, with a fence minted if the lock has a fencing counter. Returns whether it did.
    fn hand_over(&self, state: &mut State, key: &LockKey, now: Instant) -> bool {
        let Some(queue) = state.queues.get_mut(key) else { return false };
        queue.drop_expired(now);
        let head =
            queue.head().and_then(|h| queue.members.get(&h).map(|(_, deadline, tag)| (h, *deadline, *tag)));
        if let Some((h, _, _)) = head {
            queue.remove(&h);
        }
        if queue.members.is_empty() {
            state.queues.remove(key);
        }
        let Some((head, deadline, tag)) = head else { return false };
        let fence = state.fences.contains_key(key).then(|| self.mint_fence(state, key));
        state.locks.insert(key.clone(), Entry { token: head, expires_at: deadline, fence });
        self.count(|c| c.turn_notices += 1);
        let slot = (key.clone(), head);
        if let Some(turn) = state.turns.get(&slot) {
            let handed = HandOver { fence: fence.map_or(0, |f| f.0), deadline: tag };
            *turn.handed.lock().unwrap_or_else(|p| p.into_inner()) = Some(handed);
            turn.notices.send_modify(|n| *n += 1);
            if turn.notices.receiver_count() == 0 {
                state.turns.remove(&slot);
            }
        }
        true
    }

    /// The fair waiters queued on `key` now, oldest first (expired ones excluded).
    pub fn queued(&self, key: &str) -> Vec<Token> {
        let now = Instant::now();
        let state = self.state();
        state
            .queues
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, q)| {
                q.order
                    .values()
                    .filter(|t| q.members.get(*t).is_some_and(|(_, d, _)| *d > now))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many waiters are subscribed to release notices, over all keys.
    pub fn subscriber_count(&self) -> usize {
        self.state().notices.values().map(|tx| tx.receiver_count()).sum()
    }
}

#[async_trait]
impl FairBackend for MemoryBackend {
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        self.count(|c| c.fair_acquire += 1);
        let started = Instant::now();
        let mut state = self.state();
        if let Some(left) = self.quarantine_left(&mut state, req.ttl, started) {
            return Err(lock_core::scripts::quarantine_error(left));
        }
        let granted = |fence| {
            Ok(Grant::from_start(started, req.ttl, fence).map_or(
                FairOutcome::Waiting { ahead: 0, retry_in: None, deadline: None },
                FairOutcome::Acquired,
            ))
        };
        if let Some(q) = state.queues.get_mut(&req.key) {
            q.drop_expired(started);
        }
        let holder = live(&mut state, &req.key, started).map(|e| (e.token, e.fence, e.expires_at));
        if let Some((token, fence, _)) = holder
            && token == req.token
        {
            // Ours: granted by a call whose reply was lost, or handed over by a release.
            // Handed over while the fencing counter was missing: mint one now.
            let fence = match fence {
                None if req.fencing => Some(self.mint_fence(&mut state, &req.key)),
                fence => fence,
            };
            if let Some(e) = live(&mut state, &req.key, started) {
                e.expires_at = started + req.ttl;
                e.fence = fence;
            }
            if let Some(q) = state.queues.get_mut(&req.key) {
                q.remove(&req.token);
            }
            return granted(fence);
        }
        let head = state.queues.get(&req.key).and_then(Queue::head);
        if holder.is_none() && head.is_none_or(|h| h == req.token) {
            if let Some(q) = state.queues.get_mut(&req.key) {
                q.remove(&req.token);
            }
            let fence = req.fencing.then(|| self.mint_fence(&mut state, &req.key));
            let expires_at = started + req.ttl;
            state.locks.insert(req.key.clone(), Entry { token: req.token, expires_at, fence });
            return granted(fence);
        }
        if holder.is_none() {
            // Free, but another waiter is at the head: hand it over here (as fair.lua).
            self.hand_over(&mut state, &req.key, started);
        }
        // Held now, by another: the state changes by itself when its TTL runs out.
        let retry_in = live(&mut state, &req.key, started).map(|e| e.expires_at - started);
        let Some(wait) = req.wait else {
            let ahead = state.queues.get(&req.key).map_or(0, |q| q.members.len() as u64);
            return Ok(FairOutcome::Waiting { ahead, retry_in, deadline: None });
        };
        if req.fencing {
            // A hand-over mints a fence only if the counter exists (as fair.lua).
            state.fences.entry(req.key.clone()).or_insert(0);
        }
        state.deadline_tags += 1;
        let tag = state.deadline_tags;
        let queue = state.queues.entry(req.key.clone()).or_default();
        let seq = match queue.members.get(&req.token) {
            Some((seq, _, _)) => *seq,
            None => {
                queue.next += 1;
                queue.order.insert(queue.next, req.token);
                queue.next
            }
        };
        queue.members.insert(req.token, (seq, started + wait, tag));
        let ahead = queue.order.range(..seq).count() as u64;
        Ok(FairOutcome::Waiting { ahead, retry_in, deadline: Some(tag) })
    }

    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.count(|c| c.leave += 1);
        let now = Instant::now();
        let outcome = {
            let mut state = self.state();
            if let Some(q) = state.queues.get_mut(key) {
                q.remove(token);
            }
            match live(&mut state, key, now).map(|e| e.token) {
                Some(holder) if holder != *token => return Ok(ReleaseOutcome::NotHeld),
                Some(_) => ReleaseOutcome::Released,
                None => {
                    self.hand_over(&mut state, key, now);
                    ReleaseOutcome::NotHeld
                }
            }
        };
        if outcome == ReleaseOutcome::Released {
            // As leave.lua: the grant whose reply was lost is released, with its notices.
            self.delete(key, token, true);
        }
        Ok(outcome)
    }

    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(self.watch_turn_now(key, token))
    }

    /// Always: in memory a subscription costs nothing.
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        let mut state = self.state();
        state.turns.retain(|_, turn| turn.notices.receiver_count() > 0);
        let turn = state
            .turns
            .entry((key.clone(), *token))
            .or_insert_with(|| Turn { notices: watch::channel(0).0, handed: Arc::default() });
        let handed = Arc::clone(&turn.handed);
        Some(
            ReleaseWatch::new(turn.notices.subscribe())
                .with_handover(move || *handed.lock().unwrap_or_else(|p| p.into_inner())),
        )
    }
}

impl MemoryBackend {
    /// The live members of `set` of `key` now (readers, waiting writers or permits).
    pub fn members(&self, key: &str, set: Members) -> Vec<Token> {
        let now = Instant::now();
        let state = self.state();
        state
            .members
            .iter()
            .filter(|((k, s), _)| k.as_str() == key && *s == set)
            .flat_map(|(_, m)| m.iter().filter(|(_, e)| **e > now).map(|(t, _)| *t))
            .collect()
    }

    /// As write.lua: the mutex key, granted only when no live reader is left.
    fn write(
        &self,
        state: &mut State,
        req: &HoldRequest,
        wait: Option<Duration>,
        now: Instant,
    ) -> HoldOutcome {
        let granted = |fence| {
            Grant::from_start(now, req.ttl, fence)
                .map_or(HoldOutcome::Held { remaining: None }, HoldOutcome::Acquired)
        };
        let blocked = match live(state, &req.key, now) {
            Some(entry) if entry.token == req.token => {
                entry.expires_at = now + req.ttl;
                return granted(entry.fence);
            }
            Some(entry) => Some(entry.expires_at - now),
            None => state.live_members(&req.key, Members::Readers, now).values().max().map(|e| *e - now),
        };
        if let Some(remaining) = blocked {
            if let Some(wait) = wait {
                state.live_members(&req.key, Members::Writers, now).insert(req.token, now + wait);
            }
            return HoldOutcome::Held { remaining: Some(remaining) };
        }
        state.live_members(&req.key, Members::Writers, now).remove(&req.token);
        let fence = req.fencing.then(|| self.mint_fence(state, &req.key));
        state.locks.insert(req.key.clone(), Entry { token: req.token, expires_at: now + req.ttl, fence });
        granted(fence)
    }
}

#[async_trait]
impl SharedBackend for MemoryBackend {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        self.count(|c| c.hold += 1);
        let now = Instant::now();
        let mut state = self.state();
        let grant = |fence| {
            Grant::from_start(now, req.ttl, fence)
                .map_or(HoldOutcome::Held { remaining: None }, HoldOutcome::Acquired)
        };
        // As the scripts: a store that lost its data abstains from every kind of grant.
        if let Some(left) = self.quarantine_left(&mut state, req.ttl, now) {
            return Err(lock_core::scripts::quarantine_error(left));
        }
        match req.hold {
            Hold::Write { wait } => Ok(self.write(&mut state, req, wait, now)),
            Hold::Read { downgrade } => {
                // As read.lua.
                let mine = state.live_members(&req.key, Members::Readers, now).contains_key(&req.token);
                if !mine {
                    let writer = live(&mut state, &req.key, now).map(|e| (e.token, e.expires_at));
                    let downgraded = writer.is_some_and(|(t, _)| Some(t) == downgrade);
                    if let (Some((_, expires)), false) = (writer, downgraded) {
                        return Ok(HoldOutcome::Held { remaining: Some(expires - now) });
                    }
                    if !downgraded
                        && let Some(first) =
                            state.live_members(&req.key, Members::Writers, now).values().min()
                    {
                        return Ok(HoldOutcome::Held { remaining: Some(*first - now) });
                    }
                }
                state.live_members(&req.key, Members::Readers, now).insert(req.token, now + req.ttl);
                let last_writer = state.fences.get(&req.key).copied().unwrap_or(0);
                Ok(grant(req.fencing.then_some(FencingToken(last_writer))))
            }
            Hold::Permit { permits } => {
                // As permit.lua.
                let size = state.sizes.get(&req.key).copied();
                let taken = state.live_members(&req.key, Members::Permits, now);
                if let (false, Some(live)) = (taken.is_empty(), size)
                    && live != permits
                {
                    return Ok(HoldOutcome::SizeMismatch { permits: live });
                }
                if taken.len() >= permits as usize && !taken.contains_key(&req.token) {
                    let first = taken.values().min().map(|e| *e - now);
                    return Ok(HoldOutcome::Held { remaining: first });
                }
                taken.insert(req.token, now + req.ttl);
                state.sizes.insert(req.key.clone(), permits);
                Ok(grant(None))
            }
        }
    }

    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.count(|c| c.member += 1);
        let now = Instant::now();
        let mut state = self.state();
        let members = state.live_members(&req.key, set, now);
        Ok(match (members.get_mut(&req.token), Grant::from_start(now, req.ttl, None)) {
            (Some(expires), Some(g)) => {
                *expires = now + req.ttl;
                ExtendOutcome::Extended { valid_until: g.valid_until }
            }
            _ => ExtendOutcome::NotHeld,
        })
    }

    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        self.count(|c| c.member += 1);
        let now = Instant::now();
        let mut state = self.state();
        // As member.lua: an expired member is removed too, but was not held.
        let removed = state.members.get_mut(&(key.clone(), set)).and_then(|m| m.remove(token));
        let Some(expires) = removed else { return Ok(ReleaseOutcome::NotHeld) };
        let empty = state.live_members(key, set, now).is_empty();
        if empty && set == Members::Permits {
            state.sizes.remove(key);
        }
        if set == Members::Permits || empty {
            state.announce(key);
        }
        Ok(if expires > now { ReleaseOutcome::Released } else { ReleaseOutcome::NotHeld })
    }
}

fn live<'a>(state: &'a mut State, key: &LockKey, now: Instant) -> Option<&'a mut Entry> {
    if state.locks.get(key).is_some_and(|e| e.expires_at <= now) {
        state.locks.remove(key);
    }
    state.locks.get_mut(key)
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }

    fn endpoint(&self) -> String {
        format!("memory#{}", self.inner.id)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, true)
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.count(|c| c.acquire += 1);
        let started = Instant::now();
        let mut state = self.state();
        if let Some(left) = self.quarantine_left(&mut state, req.ttl, started) {
            return Err(lock_core::scripts::quarantine_error(left));
        }
        let expires_at = started + req.ttl;
        if let Some(entry) = live(&mut state, &req.key, started) {
            if entry.token != req.token {
                return Ok(AcquireOutcome::Held { remaining: Some(entry.expires_at - started) });
            }
            entry.expires_at = expires_at;
            let fence = entry.fence;
            return Ok(Grant::from_start(started, req.ttl, fence)
                .map_or(AcquireOutcome::Held { remaining: None }, AcquireOutcome::Acquired));
        }
        // As acquire.lua.
        let fence = req.fencing.then(|| self.mint_fence(&mut state, &req.key));
        state.locks.insert(req.key.clone(), Entry { token: req.token, expires_at, fence });
        Ok(Grant::from_start(started, req.ttl, fence)
            .map_or(AcquireOutcome::Held { remaining: None }, AcquireOutcome::Acquired))
    }

    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.count(|c| c.extend += 1);
        let started = Instant::now();
        let mut state = self.state();
        match live(&mut state, &req.key, started) {
            Some(entry) if entry.token == req.token => {
                entry.expires_at = started + req.ttl;
                Ok(match Grant::from_start(started, req.ttl, None) {
                    Some(g) => ExtendOutcome::Extended { valid_until: g.valid_until },
                    None => ExtendOutcome::NotHeld,
                })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.count(|c| c.release += 1);
        Ok(self.delete(key, token, true))
    }

    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.count(|c| c.release += 1);
        Ok(self.delete(key, token, false))
    }

    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.count(|c| {
            c.release += 1;
            c.release_contended += 1;
        });
        Ok(self.delete(key, token, true))
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        self.count(|c| c.fence += 1);
        let now = Instant::now();
        let clock = self.clock_us();
        let mut state = self.state();
        let counter = state.fences.entry(key.clone()).or_insert(clock);
        *counter = (*counter).max(fence.0);
        if let Some(entry) = live(&mut state, key, now)
            && entry.token == *token
        {
            entry.fence = entry.fence.max(Some(fence));
        }
        Ok(())
    }

    async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
        Ok(self.state().marker.map(|m| m.id))
    }

    fn fair(&self) -> Option<&dyn FairBackend> {
        Some(self)
    }

    fn shared(&self) -> Option<&dyn SharedBackend> {
        Some(self)
    }

    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        let mut state = self.state();
        state.notices.retain(|_, tx| tx.receiver_count() > 0);
        let tx = state.notices.entry(key.clone()).or_insert_with(|| watch::channel(0).0);
        Ok(Some(ReleaseWatch::new(tx.subscribe())))
    }
}
