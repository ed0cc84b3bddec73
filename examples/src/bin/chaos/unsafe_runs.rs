//! Known-unsafe runs: deployments the design forbids and mutants of the backend, each in a
//! deterministic schedule on real nodes. The checker must catch every one of them; a checker
//! that passed them would be vacuous.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::scripts::{MARKER_KEY, RedisKeys};
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, BackendErrorKind, Capabilities, ExtendOutcome,
    ExtendRequest, FairBackend, FairOutcome, FairRequest, FencingToken, Grant, Hold, HoldOutcome,
    HoldRequest, LockBackend, LockKey, Members, ReleaseOutcome, ReleaseWatch, SharedBackend, Token,
    default_drift, validity_deadline,
};
use lock_redis_rs::redis;
use lock_testkit::ProxyMode;
use lock_testkit::checker::{Check, Observations, check};
use lock_testkit::history::{Ending, Event, History, Recorder};
use tokio::time::Instant;

use crate::common::{DynError, connect_backend};
use crate::env::Env;
use crate::scenarios::{Kind, Outcome, Params};
use crate::timeline::FaultSpan;

/// A backend with one deliberate bug. Only the runner ever builds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// Release deletes the key whoever holds it.
    PlainDel,
    /// Extend resets the expiry whoever holds the key.
    UncheckedExtend,
    /// The grant's validity is counted from the reply instead of from before the request.
    ValidityFromReply,
    /// Fencing tokens from a bare counter (`INCR`, no clock floor): the design replaced
    /// because a counter rolled back by an old snapshot hands tokens out again.
    CounterFence,
    /// A fair lock whose release hands nothing over (it leaves the lock free, with no notice)
    /// and whose grant goes to whoever asks while the lock is free, queued or not (any waiter
    /// whose next call comes first may win): C9 must catch it.
    FairBarging,
    /// A read-write lock whose write lock is the plain mutex acquire: it ignores readers. C1
    /// must catch a writer overlapping readers.
    RwIgnoreReaders,
    /// A semaphore that never counts its holders (every request asks for unlimited permits):
    /// C1 must catch more holders than permits.
    SemUncounted,
}

/// The mutant's own bare counter for `key`, on the first node.
fn mutant_counter(key: &LockKey) -> String {
    format!("{}:mutant-counter", RedisKeys::for_key(key).fence)
}

pub(crate) struct Mutant {
    inner: Arc<dyn LockBackend>,
    bug: Bug,
    raw: Vec<redis::aio::MultiplexedConnection>,
}

impl Mutant {
    /// The fair-lock mutant around a worker's backend (it needs no raw connection).
    pub(crate) fn fair_barging(inner: Arc<dyn LockBackend>) -> Self {
        Self { inner, bug: Bug::FairBarging, raw: Vec::new() }
    }

    /// The read-write lock mutant around a worker's backend.
    pub(crate) fn rw_ignore_readers(inner: Arc<dyn LockBackend>) -> Self {
        Self { inner, bug: Bug::RwIgnoreReaders, raw: Vec::new() }
    }

    /// The semaphore mutant around a worker's backend.
    pub(crate) fn sem_uncounted(inner: Arc<dyn LockBackend>) -> Self {
        Self { inner, bug: Bug::SemUncounted, raw: Vec::new() }
    }
}

fn no_shared() -> BackendError {
    raw_err_msg("the backend keeps no read-write locks or semaphores")
}

#[async_trait]
impl SharedBackend for Mutant {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        let shared = self.inner.shared().ok_or_else(no_shared)?;
        match (self.bug, req.hold) {
            (Bug::RwIgnoreReaders, Hold::Write { .. }) => {
                // The bug: the write lock is taken as a plain mutex, whoever reads.
                let plain = AcquireRequest {
                    key: req.key.clone(),
                    token: req.token,
                    ttl: req.ttl,
                    fencing: req.fencing,
                };
                Ok(match self.inner.acquire(&plain).await? {
                    AcquireOutcome::Acquired(grant) => HoldOutcome::Acquired(grant),
                    AcquireOutcome::Held { remaining } => HoldOutcome::Held { remaining },
                })
            }
            (Bug::SemUncounted, Hold::Permit { .. }) => {
                // The bug: no count is ever reached.
                shared
                    .acquire_hold(&HoldRequest { hold: Hold::Permit { permits: u32::MAX }, ..req.clone() })
                    .await
            }
            _ => shared.acquire_hold(req).await,
        }
    }
    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.inner.shared().ok_or_else(no_shared)?.extend_member(set, req).await
    }
    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        self.inner.shared().ok_or_else(no_shared)?.release_member(set, key, token).await
    }
}

fn raw_err_msg(what: &str) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, what.to_string())
}

fn raw_err(e: redis::RedisError) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, e.to_string())
}

#[async_trait]
impl LockBackend for Mutant {
    fn name(&self) -> &str {
        "mutant"
    }
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let out = self.inner.acquire(req).await?;
        match (self.bug, out) {
            (Bug::ValidityFromReply, AcquireOutcome::Acquired(grant)) => {
                let from_reply = validity_deadline(Instant::now(), req.ttl, default_drift(req.ttl));
                Ok(AcquireOutcome::Acquired(Grant {
                    valid_until: from_reply.unwrap_or(grant.valid_until),
                    fence: grant.fence,
                }))
            }
            (Bug::CounterFence, AcquireOutcome::Acquired(grant)) if grant.fence.is_some() => {
                let mut conn = self.raw.first().ok_or_else(|| raw_err_msg("no node"))?.clone();
                let n: u64 = redis::cmd("INCR")
                    .arg(mutant_counter(&req.key))
                    .query_async(&mut conn)
                    .await
                    .map_err(raw_err)?;
                Ok(AcquireOutcome::Acquired(Grant { fence: Some(FencingToken(n)), ..grant }))
            }
            (_, out) => Ok(out),
        }
    }
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        if self.bug != Bug::UncheckedExtend {
            return self.inner.extend(req).await;
        }
        let started = Instant::now();
        let key = RedisKeys::for_key(&req.key).lock;
        let mut ok = 0;
        for conn in &self.raw {
            let set: i64 = redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(req.ttl.as_millis() as u64)
                .query_async(&mut conn.clone())
                .await
                .map_err(raw_err)?;
            ok += set;
        }
        match Grant::from_start(started, req.ttl, None) {
            Some(g) if ok as usize > self.raw.len() / 2 => {
                Ok(ExtendOutcome::Extended { valid_until: g.valid_until })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }
    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        if self.bug == Bug::FairBarging {
            // No hand-over to the head of the queue: the lock is left free for whoever asks.
            return self.inner.discard(key, token).await;
        }
        if self.bug != Bug::PlainDel {
            return self.inner.release(key, token).await;
        }
        let key = RedisKeys::for_key(key).lock;
        for conn in &self.raw {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn.clone()).await.map_err(raw_err)?;
        }
        Ok(ReleaseOutcome::Released)
    }
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        self.inner.raise_fence(key, token, fence).await
    }
    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.inner.watch_releases(key).await
    }
    async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
        self.inner.node_identity().await
    }
    fn fair(&self) -> Option<&dyn FairBackend> {
        self.inner.fair().map(|_| self as &dyn FairBackend)
    }
    fn shared(&self) -> Option<&dyn SharedBackend> {
        self.inner.shared().map(|_| self as &dyn SharedBackend)
    }
}

fn no_fair() -> BackendError {
    raw_err_msg("the backend has no fair lock")
}

#[async_trait]
impl FairBackend for Mutant {
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        if self.bug == Bug::FairBarging {
            // The bug: a free lock goes to the caller, whoever is queued.
            let plain =
                AcquireRequest { key: req.key.clone(), token: req.token, ttl: req.ttl, fencing: req.fencing };
            if let AcquireOutcome::Acquired(grant) = self.inner.acquire(&plain).await? {
                return Ok(FairOutcome::Acquired(grant));
            }
        }
        self.inner.fair().ok_or_else(no_fair)?.fair_acquire(req).await
    }
    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.inner.fair().ok_or_else(no_fair)?.leave_queue(key, token).await
    }
    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        if self.bug == Bug::FairBarging {
            // No notices: the waiters call again at their own pace, and whoever comes first wins.
            return Ok(None);
        }
        self.inner.fair().ok_or_else(no_fair)?.watch_turn(key, token).await
    }
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        if self.bug == Bug::FairBarging {
            return None;
        }
        self.inner.fair()?.watch_turn_now(key, token)
    }
}

/// A client of the bare backend API, logging its sections like a worker does.
pub(crate) struct Actor {
    pub(crate) name: &'static str,
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) rec: Recorder,
    pub(crate) rounds: u32,
}

pub(crate) struct Held {
    acq: String,
    key: LockKey,
    token: Token,
    fence: Option<u64>,
    valid_until: Instant,
    /// Notices the loss at the local deadline, as the core's `lost()` does.
    deadline: tokio::task::AbortHandle,
}

/// Records `Lost` for `acq` at `until` unless aborted first.
fn lost_at(rec: &Recorder, acq: &str, until: Instant) -> tokio::task::AbortHandle {
    let (rec, acq) = (rec.clone(), acq.to_string());
    tokio::spawn(async move {
        tokio::time::sleep_until(until).await;
        rec.record(Event::Lost { acq, t: rec.now() });
    })
    .abort_handle()
}

impl Actor {
    pub(crate) async fn acquire(&mut self, key: &str, ttl: Duration) -> Result<Held, DynError> {
        let key = LockKey::new(key)?;
        let token = Token::random();
        let req = AcquireRequest { key: key.clone(), token, ttl, fencing: true };
        // Bounded: 400 tries, 10 ms apart, well past any TTL used here.
        for _ in 0..400 {
            // A node in quarantine (or a quorum without it) answers with a retryable error.
            let outcome = match self.backend.acquire(&req).await {
                Ok(o) => o,
                Err(e) if e.is_retryable() => AcquireOutcome::Held { remaining: None },
                Err(e) => return Err(e.into()),
            };
            if let AcquireOutcome::Acquired(g) = outcome {
                self.rounds += 1;
                let acq = format!("{}-{}", self.name, self.rounds);
                let fence = g.fence.map(|f| f.0);
                self.rec.record(Event::Acquired {
                    worker: self.name.into(),
                    acq: acq.clone(),
                    key: key.as_str().into(),
                    fence,
                    t: self.rec.now(),
                    valid_until: self.rec.clock().ns(g.valid_until),
                });
                let deadline = lost_at(&self.rec, &acq, g.valid_until);
                return Ok(Held { acq, key, token, fence, valid_until: g.valid_until, deadline });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{} could not acquire {key}", self.name).into())
    }

    /// One lock and unlock of another key, so the scripts are loaded before faults begin (a
    /// first call may cost an extra round trip for NOSCRIPT).
    pub(crate) async fn warm_up(&self) -> Result<(), DynError> {
        let key = LockKey::new(format!("warm-up:{}", self.name))?;
        let token = Token::random();
        let req = AcquireRequest { key: key.clone(), token, ttl: Duration::from_secs(1), fencing: true };
        self.backend.acquire(&req).await?;
        self.backend.release(&key, &token).await?;
        Ok(())
    }

    pub(crate) async fn write(&self, env: &Env, held: &Held) -> Result<(), DynError> {
        let token = held.fence.ok_or("no fencing token")?;
        let accepted = env.oracle.fenced_write(held.key.as_str(), token).await?;
        self.rec.record(Event::Write { acq: held.acq.clone(), token, accepted, t: self.rec.now() });
        Ok(())
    }

    async fn extend(&self, held: &mut Held, ttl: Duration) -> Result<(), DynError> {
        let req = ExtendRequest { key: held.key.clone(), token: held.token, ttl };
        if let ExtendOutcome::Extended { valid_until } = self.backend.extend(&req).await? {
            held.valid_until = valid_until;
            held.deadline.abort();
            held.deadline = lost_at(&self.rec, &held.acq, valid_until);
        }
        Ok(())
    }

    pub(crate) async fn release(&self, held: Held) -> Result<(), DynError> {
        if Instant::now() < held.valid_until {
            held.deadline.abort();
        }
        let t = self.rec.now();
        let how = match self.backend.release(&held.key, &held.token).await {
            Ok(ReleaseOutcome::Released) => Ending::Released,
            Ok(ReleaseOutcome::NotHeld) => Ending::NotOwned,
            // E.g. a node restarted under it: the key expires by its TTL.
            Err(_) => Ending::ReleaseFailed,
        };
        let valid_until = self.rec.clock().ns(held.valid_until);
        self.rec.record(Event::Ended { acq: held.acq, t, valid_until, how });
        Ok(())
    }
}

/// Must-pass runs on the same pinned schedules as their known-unsafe twins: the fault alone,
/// which the data-loss marker and the clock-based counters make safe.
pub(crate) const PINNED: [&str; 3] = ["restart-at-once", "fence-loss", "fence-rollback"];

pub(crate) async fn run(name: &str, kind: Kind, p: &Params) -> Result<Outcome, DynError> {
    let mut env = Env::start(p.nodes).await?;
    let ttl = p.ttl;
    let rec = Recorder::in_memory();
    let m = env.majority();
    let fast = Duration::from_millis(100);
    let key = format!("unsafe:{name}");
    let actor = |name: &'static str, backend: Arc<dyn LockBackend>| Actor {
        name,
        backend,
        rec: rec.clone(),
        rounds: 0,
    };
    let mutant = |env: &Env, inner: Arc<dyn LockBackend>, bug: Bug| {
        let urls: Vec<String> = env.nodes.iter().map(|s| s.url()).collect();
        async move {
            let mut raw = Vec::new();
            for url in urls {
                raw.push(redis::Client::open(url)?.get_multiplexed_async_connection().await?);
            }
            Ok::<_, DynError>(Arc::new(Mutant { inner, bug, raw }) as Arc<dyn LockBackend>)
        }
    };
    let mut faults = 0u64;
    let mut spans: Vec<FaultSpan> = Vec::new();
    let fault_kind: &'static str = match name {
        "restart-at-once" | "unsafe-restart" => "restart",
        "unsafe-clock-jump" => "clock-jump",
        "fence-loss" | "fence-rollback" => "counter",
        _ => "mutant",
    };
    let (expected, _hint): (&[Check], &str) = match name {
        "restart-at-once" | "unsafe-restart" | "unsafe-clock-jump" => {
            // A holds exactly a bare majority: its lanes to the other nodes are blackholed.
            let mut a = actor("A", connect_backend(p.driver, &env.lane_urls("A").await?, fast, ttl).await?);
            for proxy in &env.proxies[m..] {
                proxy.set_lane_mode("A", ProxyMode::Blackhole);
            }
            let held = a.acquire(&key, ttl).await?;
            if name != "unsafe-clock-jump" {
                let marker = env.nodes[0].cmd(&["GET", MARKER_KEY])?.text();
                env.nodes[0].restart()?; // at once, and empty: no persistence
                if name == "unsafe-restart" {
                    // An old snapshot reloaded: the marker is back, the recent locks are not.
                    env.nodes[0].cmd(&["SET", MARKER_KEY, &marker])?;
                }
            } else {
                let lock_key = RedisKeys::for_key(&held.key).lock;
                env.nodes[0].cmd(&["PEXPIRE", &lock_key, "1"])?; // its clock jumped past the expiry
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            faults += 1;
            spans.push(FaultSpan {
                kind: fault_kind,
                worker: None,
                from: rec.now(),
                to: rec.now() + 20_000_000,
            });
            let mut b = actor("B", connect_backend(p.driver, &env.lane_urls("B").await?, fast, ttl).await?);
            let b_held = b.acquire(&key, ttl).await?;
            b.release(b_held).await?;
            for proxy in &env.proxies {
                proxy.set_mode(ProxyMode::Pass);
            }
            a.release(held).await?;
            (&[Check::C1], "B acquired while A still held")
        }
        "fence-loss" | "fence-rollback" | "mutant-counter-fence" => {
            let is_mutant = name == "mutant-counter-fence";
            let mut a_backend = connect_backend(p.driver, &env.lane_urls("A").await?, fast, ttl).await?;
            if is_mutant {
                a_backend = mutant(&env, a_backend, Bug::CounterFence).await?;
            }
            let mut a = actor("A", a_backend);
            let mut fence_key = String::new();
            // Two sections, so that a counter handing out its first token again goes back.
            for _ in 0..2 {
                let held = a.acquire(&key, ttl).await?;
                a.write(&env, &held).await?;
                fence_key = RedisKeys::for_key(&held.key).fence;
                a.release(held).await?;
            }
            for (i, node) in env.nodes.iter().enumerate() {
                if name == "fence-loss" {
                    node.cmd(&["DEL", &fence_key])?; // the counter did not survive a restart
                } else {
                    node.cmd(&["SET", &fence_key, "0"])?; // an old snapshot's counter
                    if i == 0 {
                        node.cmd(&["SET", &format!("{fence_key}:mutant-counter"), "0"])?;
                    }
                }
                faults += 1;
                spans.push(FaultSpan {
                    kind: fault_kind,
                    worker: None,
                    from: rec.now(),
                    to: rec.now() + 20_000_000,
                });
                spans.push(FaultSpan {
                    kind: fault_kind,
                    worker: None,
                    from: rec.now(),
                    to: rec.now() + 20_000_000,
                });
            }
            let mut b_backend = connect_backend(p.driver, &env.lane_urls("B").await?, fast, ttl).await?;
            if is_mutant {
                b_backend = mutant(&env, b_backend, Bug::CounterFence).await?;
            }
            let mut b = actor("B", b_backend);
            let held = b.acquire(&key, ttl).await?;
            b.write(&env, &held).await?;
            b.release(held).await?;
            (&[Check::C2, Check::C4], "B's token went backwards and its write was refused")
        }
        "mutant-plain-del" => {
            let inner = connect_backend(p.driver, &env.lane_urls("A").await?, fast, ttl).await?;
            let mut a = actor("A", mutant(&env, inner, Bug::PlainDel).await?);
            let held = a.acquire(&key, ttl).await?;
            tokio::time::sleep(ttl + fast).await; // A stalls past its TTL
            let mut b = actor("B", connect_backend(p.driver, &env.lane_urls("B").await?, fast, ttl).await?);
            let b_held = b.acquire(&key, ttl).await?;
            a.release(held).await?; // deletes B's key
            faults += 1;
            spans.push(FaultSpan {
                kind: fault_kind,
                worker: None,
                from: rec.now(),
                to: rec.now() + 20_000_000,
            });
            let mut c = actor("C", connect_backend(p.driver, &env.lane_urls("C").await?, fast, ttl).await?);
            let c_held = c.acquire(&key, ttl).await?;
            c.release(c_held).await?;
            b.release(b_held).await?;
            (&[Check::C1], "C acquired while B held")
        }
        "mutant-unchecked-extend" => {
            let inner = connect_backend(p.driver, &env.lane_urls("A").await?, fast, ttl).await?;
            let mut a = actor("A", mutant(&env, inner, Bug::UncheckedExtend).await?);
            let mut held = a.acquire(&key, ttl).await?;
            tokio::time::sleep(ttl + fast).await; // A stalls past its TTL
            let mut b = actor("B", connect_backend(p.driver, &env.lane_urls("B").await?, fast, ttl).await?);
            let b_held = b.acquire(&key, ttl).await?;
            a.extend(&mut held, ttl).await?; // extends B's key, and believes it is A's
            faults += 1;
            spans.push(FaultSpan {
                kind: fault_kind,
                worker: None,
                from: rec.now(),
                to: rec.now() + 20_000_000,
            });
            tokio::time::sleep(fast).await;
            a.release(held).await?;
            b.release(b_held).await?;
            (&[Check::C1], "A's renewed lease overlapped B's")
        }
        "mutant-reply-validity" => {
            // A's replies come back late; its mutant counts validity from their arrival.
            let slow = ttl * 3 / 10; // two round trips (acquire, fence write-back) stay within the TTL
            let inner = connect_backend(p.driver, &env.lane_urls("A").await?, ttl * 9 / 10, ttl).await?;
            let mut a = actor("A", mutant(&env, inner, Bug::ValidityFromReply).await?);
            a.warm_up().await?;
            for proxy in &env.proxies {
                proxy.set_lane_mode("A", ProxyMode::Latency { up: Duration::ZERO, down: slow });
            }
            let held = a.acquire(&key, ttl).await?;
            faults += 1;
            spans.push(FaultSpan {
                kind: fault_kind,
                worker: None,
                from: rec.now(),
                to: rec.now() + 20_000_000,
            });
            let mut b = actor("B", connect_backend(p.driver, &env.lane_urls("B").await?, fast, ttl).await?);
            let b_held = b.acquire(&key, ttl).await?;
            b.release(b_held).await?;
            tokio::time::sleep_until(held.valid_until.min(Instant::now() + ttl)).await;
            for proxy in &env.proxies {
                proxy.set_mode(ProxyMode::Pass);
            }
            a.release(held).await?;
            (&[Check::C1], "B acquired inside A's inflated validity")
        }
        other => return Err(format!("no known-unsafe run {other}").into()),
    };
    let mut oracle_accepted = std::collections::BTreeMap::new();
    oracle_accepted.insert(key.clone(), env.oracle.accepted(&key).await?);
    let history = History::from_events(rec.events());
    let obs = Observations {
        fencing: true,
        oracle_accepted,
        faults_injected: Some(faults + env.proxy_faults()),
        ..Observations::default()
    };
    let report = check(&history, &obs);
    let expected = if kind == Kind::MustPass { &[][..] } else { expected };
    Ok(Outcome::judge(name, kind, p, &report, obs.faults_injected, expected, Vec::new())
        .with_timeline(history, spans, &report))
}
