//! Histories of critical sections, as the chaos runner's workers log them and the
//! [checker](crate::checker) judges them.
//!
//! A worker appends one JSON [`Event`] per line as things happen (so a worker killed mid-section
//! leaves a usable log), and [`History::from_events`] folds the events into one [`Section`] per
//! critical section. Times are nanoseconds of the host's `CLOCK_MONOTONIC` ([`mono_now_ns`]), so
//! logs written by different processes on one host compare directly.
//!
//! ```
//! use lock_testkit::history::{Ending, Event, History};
//!
//! let events = vec![
//!     Event::Acquired { worker: "w1".into(), acq: "w1-1".into(), key: "k".into(), fence: Some(1), t: 10, valid_until: 100 },
//!     Event::Ended { acq: "w1-1".into(), t: 50, valid_until: 100, how: Ending::Released },
//! ];
//! let history = History::from_events(events);
//! assert_eq!(history.sections.len(), 1);
//! assert_eq!(history.sections[0].t_released, Some(50));
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, Capabilities, ExtendOutcome, ExtendRequest, FairBackend,
    FairOutcome, FairRequest, FencingToken, HoldOutcome, HoldRequest, LockBackend, LockKey, Members,
    ReleaseOutcome, ReleaseWatch, Renewal, SharedBackend, Token,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Nanoseconds on the host's monotonic clock (`CLOCK_MONOTONIC`), comparable across processes.
pub fn mono_now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make every check stricter.
        Err(_) => 0,
    }
}

/// Maps tokio [`Instant`]s (which run on the same monotonic clock when time is not paused) to
/// [`mono_now_ns`] nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    base: Instant,
    base_ns: u64,
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonoClock {
    /// Samples both clocks now.
    pub fn new() -> Self {
        Self { base: Instant::now(), base_ns: mono_now_ns() }
    }

    /// Now, in monotonic nanoseconds.
    pub fn now(&self) -> u64 {
        self.ns(Instant::now())
    }

    /// An instant, in monotonic nanoseconds.
    pub fn ns(&self, at: Instant) -> u64 {
        if at >= self.base {
            self.base_ns.saturating_add(at.duration_since(self.base).as_nanos() as u64)
        } else {
            self.base_ns.saturating_sub(self.base.duration_since(at).as_nanos() as u64)
        }
    }
}

/// How a critical section ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Released; the backend still held it for us.
    Released,
    /// Released, but the backend no longer held it for us (expired or taken over).
    NotOwned,
    /// The lease was lost (noticed locally) and the section stopped; the release that followed
    /// is not judged.
    Lost,
    /// The guard was dropped without an explicit release (background release).
    Dropped,
    /// The release failed with an infrastructure error; the key expires by its TTL.
    ReleaseFailed,
    /// No end was logged: the worker died holding the lock, or releasing it (then
    /// [`Section::t_released`] is set).
    Crashed,
}

/// How a critical section holds its key: alone (a mutex, a fair lock, a write lock), shared
/// with other readers (a read lock), or as one of a semaphore's permits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// No other valid holder at any instant.
    #[default]
    Exclusive,
    /// Other readers may hold at once; no exclusive holder.
    Read,
    /// At most this many permit holders at once.
    Permit(u32),
}

impl Share {
    /// Whether two sections of one key may not both be valid at one instant (permits are judged
    /// by count instead).
    pub fn conflicts(self, other: Share) -> bool {
        match (self, other) {
            (Share::Exclusive, _) | (_, Share::Exclusive) => true,
            (Share::Read, Share::Read) | (Share::Permit(_), Share::Permit(_)) => false,
            (Share::Read, Share::Permit(_)) | (Share::Permit(_), Share::Read) => true,
        }
    }
}

/// One line of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// How the acquisition just granted holds its key, when not [`Share::Exclusive`]: logged
    /// right after its [`Event::Acquired`].
    Mode {
        /// The acquisition.
        acq: String,
        /// Its mode.
        share: Share,
    },
    /// A lock was granted.
    Acquired {
        /// The worker (process) name.
        worker: String,
        /// This acquisition's id, unique in the run.
        acq: String,
        /// The lock key.
        key: String,
        /// Its fencing token.
        fence: Option<u64>,
        /// When the grant reached the worker.
        t: u64,
        /// The grant's validity deadline.
        valid_until: u64,
    },
    /// A reentrant lock of a held lock, with the fencing token it showed.
    Reentered {
        /// The acquisition.
        acq: String,
        /// The fencing token the reentrant guard showed.
        fence: Option<u64>,
        /// When.
        t: u64,
    },
    /// A write to the fenced resource on the oracle.
    Write {
        /// The acquisition.
        acq: String,
        /// The fencing token written with.
        token: u64,
        /// Whether the resource accepted it.
        accepted: bool,
        /// When the resource's answer arrived.
        t: u64,
    },
    /// One completed read-sleep-write increment of the unfenced counter.
    Increment {
        /// The acquisition.
        acq: String,
        /// When the write completed.
        t: u64,
    },
    /// A renewal (extend) was sent.
    ExtendSent {
        /// The worker.
        worker: String,
        /// The key.
        key: String,
        /// When it was sent.
        t: u64,
    },
    /// The lease's `lost()` signal fired while the section ran.
    Lost {
        /// The acquisition.
        acq: String,
        /// When the worker saw it.
        t: u64,
    },
    /// The section is over and its release is about to be sent. Logged before the release, so
    /// a worker killed mid-release is not taken for a crashed holder.
    Releasing {
        /// The acquisition.
        acq: String,
        /// When the section ended.
        t: u64,
        /// The lease's last validity deadline (after renewals).
        valid_until: u64,
    },
    /// The section ended.
    Ended {
        /// The acquisition.
        acq: String,
        /// When the section ended (before the release was sent).
        t: u64,
        /// The lease's last validity deadline (after renewals).
        valid_until: u64,
        /// How.
        how: Ending,
    },
    /// A `lock()` call failed (timeout or infrastructure).
    AcquireFailed {
        /// The worker.
        worker: String,
        /// The key.
        key: String,
        /// When.
        t: u64,
    },
    /// A `lock()` call was cancelled on purpose (cancellation storm).
    AcquireAborted {
        /// The worker.
        worker: String,
        /// The key.
        key: String,
        /// When.
        t: u64,
    },
    /// One call of the fair lock's acquire script (see [`FairCall`]).
    FairCall(FairCall),
    /// A fair waiter left the queue: the leave was sent (see [`FairLeave`]).
    FairLeave(FairLeave),
}

/// What one fair acquire call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairAnswer {
    /// The lock was granted (or was already this waiter's).
    Acquired,
    /// Not this waiter's turn: it is queued (or, for a try, was not).
    Waiting,
    /// The call failed or was cancelled: whether it reached the server is unknown.
    Failed,
    /// Not a call: a release handed the lock to this waiter, and the waiter read the notice
    /// that said so (`t_sent` and `t_reply` are when it read it).
    Handed,
}

/// One call of the fair lock's acquire, as [`Recording`] logs it: what C9 (grants follow
/// the queue's order) is judged from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FairCall {
    /// The worker.
    pub worker: String,
    /// The key.
    pub key: String,
    /// The waiter: a digest of its owner token (never the token itself), the same for every
    /// call of one acquisition.
    pub waiter: u64,
    /// When the call was sent.
    pub t_sent: u64,
    /// When its answer arrived (or it failed).
    pub t_reply: u64,
    /// The waiter deadline it asked for, in ms; `None` for a try (never queued).
    pub wait_ms: Option<u64>,
    /// What it answered.
    pub answer: FairAnswer,
}

/// A fair waiter's leave, as [`Recording`] logs it when it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FairLeave {
    /// The worker.
    pub worker: String,
    /// The key.
    pub key: String,
    /// The waiter (see [`FairCall::waiter`]).
    pub waiter: u64,
    /// When it was sent.
    pub t: u64,
}

/// The digest of an owner token that logs name a waiter by: stable within a run, and it
/// does not give the token away.
pub fn waiter_id(token: &Token) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

/// A write to the fenced resource, inside a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedWrite {
    /// The token written with.
    pub token: u64,
    /// Whether it was accepted.
    pub accepted: bool,
    /// When the answer arrived.
    pub t: u64,
}

/// One critical section: the record the checker judges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The worker.
    pub worker: String,
    /// The acquisition id.
    pub acquisition: String,
    /// The lock key.
    pub key: String,
    /// The fencing token of the grant.
    pub fence: Option<u64>,
    /// Tokens shown by reentrant locks of this lease.
    pub reentry_fences: Vec<Option<u64>>,
    /// When the grant reached the worker.
    pub t_acquired: u64,
    /// The last known validity deadline.
    pub valid_until: u64,
    /// When the section ended (`None`: crashed).
    pub t_released: Option<u64>,
    /// How it ended.
    pub ended: Ending,
    /// When `lost()` fired, if it did.
    pub t_lost: Option<u64>,
    /// Writes to the fenced resource.
    pub writes: Vec<FencedWrite>,
    /// Completed increments of the unfenced counter.
    pub increments: u32,
    /// How it holds the key.
    pub share: Share,
}

impl Section {
    /// The end of the section as the checker sees it: its release, capped by its validity.
    pub fn effective_end(&self) -> u64 {
        self.t_released.unwrap_or(u64::MAX).min(self.valid_until)
    }
}

/// A renewal sent by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendSent {
    /// The worker.
    pub worker: String,
    /// The key.
    pub key: String,
    /// When.
    pub t: u64,
}

/// A whole run's sections and renewals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Every critical section, in order of acquisition.
    pub sections: Vec<Section>,
    /// Every renewal sent.
    pub extends: Vec<ExtendSent>,
    /// `lock()` calls that failed.
    pub acquire_failures: u64,
    /// `lock()` calls cancelled on purpose.
    pub acquire_aborts: u64,
    /// Every fair acquire call, in order of sending (empty unless the fair lock ran).
    #[serde(default)]
    pub fair_calls: Vec<FairCall>,
    /// Every fair waiter's leave.
    #[serde(default)]
    pub fair_leaves: Vec<FairLeave>,
}

impl History {
    /// Folds events (from any number of workers, in any order) into sections.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Self {
        let mut h = History::default();
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut pending: Vec<Event> = Vec::new();
        for ev in events {
            match ev {
                Event::Acquired { worker, acq, key, fence, t, valid_until } => {
                    open.insert(acq.clone(), h.sections.len());
                    h.sections.push(Section {
                        worker,
                        acquisition: acq,
                        key,
                        fence,
                        reentry_fences: Vec::new(),
                        t_acquired: t,
                        valid_until,
                        t_released: None,
                        ended: Ending::Crashed,
                        t_lost: None,
                        writes: Vec::new(),
                        increments: 0,
                        share: Share::Exclusive,
                    });
                }
                Event::ExtendSent { worker, key, t } => h.extends.push(ExtendSent { worker, key, t }),
                Event::AcquireFailed { .. } => h.acquire_failures += 1,
                Event::AcquireAborted { .. } => h.acquire_aborts += 1,
                Event::FairCall(call) => h.fair_calls.push(call),
                Event::FairLeave(leave) => h.fair_leaves.push(leave),
                other => pending.push(other),
            }
        }
        for ev in pending {
            let section = |acq: &str, _: &mut History| open.get(acq).copied();
            match ev {
                Event::Mode { acq, share } => {
                    if let Some(i) = section(&acq, &mut h) {
                        h.sections[i].share = share;
                    }
                }
                Event::Reentered { acq, fence, .. } => {
                    if let Some(i) = section(&acq, &mut h) {
                        h.sections[i].reentry_fences.push(fence);
                    }
                }
                Event::Write { acq, token, accepted, t } => {
                    if let Some(i) = section(&acq, &mut h) {
                        h.sections[i].writes.push(FencedWrite { token, accepted, t });
                    }
                }
                Event::Increment { acq, .. } => {
                    if let Some(i) = section(&acq, &mut h) {
                        h.sections[i].increments += 1;
                    }
                }
                Event::Lost { acq, t } => {
                    if let Some(i) = section(&acq, &mut h) {
                        let s = &mut h.sections[i];
                        s.t_lost = Some(s.t_lost.map_or(t, |old| old.min(t)));
                    }
                }
                Event::Releasing { acq, t, valid_until } => {
                    if let Some(i) = section(&acq, &mut h) {
                        let s = &mut h.sections[i];
                        s.t_released = Some(t);
                        s.valid_until = valid_until;
                    }
                }
                Event::Ended { acq, t, valid_until, how } => {
                    if let Some(i) = section(&acq, &mut h) {
                        let s = &mut h.sections[i];
                        s.t_released = Some(t);
                        s.valid_until = valid_until;
                        s.ended = how;
                    }
                }
                _ => {}
            }
        }
        h.sections.sort_by_key(|s| s.t_acquired);
        h.fair_calls.sort_by_key(|c| c.t_sent);
        h.fair_leaves.sort_by_key(|l| l.t);
        h
    }

    /// Reads and folds the logs of several workers. A torn last line (a worker killed while
    /// writing) is skipped.
    ///
    /// # Errors
    /// A log that cannot be read.
    pub fn read_logs<P: AsRef<Path>>(paths: &[P]) -> io::Result<Self> {
        let mut events = Vec::new();
        for p in paths {
            events.extend(read_events(p.as_ref())?);
        }
        Ok(Self::from_events(events))
    }
}

/// The events of one log file; lines that do not parse (a torn last line) are skipped.
///
/// # Errors
/// The file cannot be read.
pub fn read_events(path: &Path) -> io::Result<Vec<Event>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for line in io::BufReader::new(file).lines() {
        if let Ok(ev) = serde_json::from_str::<Event>(&line?) {
            out.push(ev);
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Sink {
    File(File),
    Memory(Vec<Event>),
}

/// Where a worker logs its events: a file (one JSON line per event, written at once so a
/// crash loses nothing already done) or memory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    sink: Arc<Mutex<Sink>>,
    clock: MonoClock,
}

impl Recorder {
    /// Logs to a new file at `path`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn to_file(path: &Path) -> io::Result<Self> {
        Ok(Self { sink: Arc::new(Mutex::new(Sink::File(File::create(path)?))), clock: MonoClock::new() })
    }

    /// Logs in memory; see [`Recorder::events`].
    pub fn in_memory() -> Self {
        Self { sink: Arc::new(Mutex::new(Sink::Memory(Vec::new()))), clock: MonoClock::new() }
    }

    /// The clock this recorder stamps with.
    pub fn clock(&self) -> MonoClock {
        self.clock
    }

    /// Now, in monotonic nanoseconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Appends an event. A failed file write is ignored: the run's checker then sees less, never
    /// more, than happened.
    pub fn record(&self, ev: Event) {
        let mut sink = self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *sink {
            Sink::File(f) => {
                if let Ok(mut line) = serde_json::to_vec(&ev) {
                    line.push(b'\n');
                    let _ = f.write_all(&line);
                }
            }
            Sink::Memory(v) => v.push(ev),
        }
    }

    /// The events logged in memory so far (empty for a file recorder).
    pub fn events(&self) -> Vec<Event> {
        match &*self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Sink::Memory(v) => v.clone(),
            Sink::File(_) => Vec::new(),
        }
    }
}

/// A backend wrapper that logs every renewal it sends as an [`Event::ExtendSent`], so the
/// checker can prove that no renewal left after its section ended (C7).
#[derive(Debug, Clone)]
pub struct Recording<B> {
    inner: B,
    worker: String,
    recorder: Recorder,
}

impl<B> Recording<B> {
    /// Wraps `inner`, logging renewals as sent by `worker`.
    pub fn new(inner: B, worker: impl Into<String>, recorder: Recorder) -> Self {
        Self { inner, worker: worker.into(), recorder }
    }

    fn sent(&self, req: &ExtendRequest) {
        self.recorder.record(Event::ExtendSent {
            worker: self.worker.clone(),
            key: req.key.as_str().to_string(),
            t: self.recorder.now(),
        });
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Recording<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(req).await
    }
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        self.sent(req);
        self.inner.extend(req).await
    }
    async fn extend_many(&self, renewals: &[Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
        renewals.iter().for_each(|r| self.sent(&r.req));
        self.inner.extend_many(renewals).await
    }
    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(key, token).await
    }
    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.inner.discard(key, token).await
    }
    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release_contended(key, token).await
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

/// Read-write locks and semaphores through the recording: a reader's or a permit's renewal is
/// logged like a lock's (for C7).
#[async_trait]
impl<B: LockBackend> SharedBackend for Recording<B> {
    async fn acquire_hold(&self, req: &HoldRequest) -> Result<HoldOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        shared.acquire_hold(req).await
    }
    async fn extend_member(&self, set: Members, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        self.sent(req);
        shared.extend_member(set, req).await
    }
    async fn release_member(
        &self,
        set: Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        let Some(shared) = self.inner.shared() else { return Err(no_shared(self.inner.name())) };
        shared.release_member(set, key, token).await
    }
}

fn no_shared(backend: &str) -> BackendError {
    BackendError::permanent(
        lock_core::BackendErrorKind::Other,
        format!("backend `{backend}` keeps no read-write locks or semaphores"),
    )
}

/// Logs a fair call when it is over: with its answer, or as failed when the call is dropped
/// (cancelled) before one arrived.
struct FairCallLog<'a> {
    recorder: &'a Recorder,
    call: FairCall,
}

impl Drop for FairCallLog<'_> {
    fn drop(&mut self) {
        self.call.t_reply = self.recorder.now();
        self.recorder.record(Event::FairCall(self.call.clone()));
    }
}

/// The fair lock through the recording: every acquire call and every leave is logged (for
/// C9); a fair lock is renewed by [`LockBackend::extend`], which is logged too.
#[async_trait]
impl<B: LockBackend> FairBackend for Recording<B> {
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        let mut log = FairCallLog {
            recorder: &self.recorder,
            call: FairCall {
                worker: self.worker.clone(),
                key: req.key.as_str().to_string(),
                waiter: waiter_id(&req.token),
                t_sent: self.recorder.now(),
                t_reply: 0,
                wait_ms: req.wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                answer: FairAnswer::Failed,
            },
        };
        let out = fair.fair_acquire(req).await;
        log.call.answer = match &out {
            Ok(FairOutcome::Acquired(_)) => FairAnswer::Acquired,
            Ok(FairOutcome::Waiting { .. }) => FairAnswer::Waiting,
            Err(_) => FairAnswer::Failed,
        };
        out
    }
    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        self.recorder.record(Event::FairLeave(FairLeave {
            worker: self.worker.clone(),
            key: key.as_str().to_string(),
            waiter: waiter_id(token),
            t: self.recorder.now(),
        }));
        fair.leave_queue(key, token).await
    }
    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        let Some(fair) = self.inner.fair() else { return Err(no_fair(self.inner.name())) };
        let watch = fair.watch_turn(key, token).await?;
        Ok(watch.map(|w| self.log_hand_overs(w, key, token)))
    }
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        let watch = self.inner.fair()?.watch_turn_now(key, token)?;
        Some(self.log_hand_overs(watch, key, token))
    }
}

impl<B> Recording<B> {
    /// A hand-over is a grant no call answered: log it when the waiter takes it (a notice it
    /// does not take, one naming an earlier deadline than its latest call's, is no grant).
    fn log_hand_overs(&self, watch: ReleaseWatch, key: &LockKey, token: &Token) -> ReleaseWatch {
        let (recorder, worker, key, waiter) =
            (self.recorder.clone(), self.worker.clone(), key.as_str().to_string(), waiter_id(token));
        watch.on_handover(move |_| {
            let t = recorder.now();
            recorder.record(Event::FairCall(FairCall {
                worker: worker.clone(),
                key: key.clone(),
                waiter,
                t_sent: t,
                t_reply: t,
                wait_ms: None,
                answer: FairAnswer::Handed,
            }));
        })
    }
}

fn no_fair(backend: &str) -> BackendError {
    BackendError::permanent(
        lock_core::BackendErrorKind::Other,
        format!("backend `{backend}` has no fair lock"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fold_into_sections_and_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w1.jsonl");
        let rec = Recorder::to_file(&path).unwrap();
        rec.record(Event::Acquired {
            worker: "w1".into(),
            acq: "a".into(),
            key: "k".into(),
            fence: Some(3),
            t: 5,
            valid_until: 90,
        });
        rec.record(Event::Write { acq: "a".into(), token: 3, accepted: true, t: 7 });
        rec.record(Event::Acquired {
            worker: "w1".into(),
            acq: "b".into(),
            key: "k".into(),
            fence: Some(4),
            t: 100,
            valid_until: 190,
        });
        rec.record(Event::Ended { acq: "a".into(), t: 9, valid_until: 95, how: Ending::Released });
        drop(rec);
        // A torn last line, as a killed worker leaves it.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ev\":\"ended\",\"acq\":\"b\",").unwrap();
        let h = History::read_logs(&[&path]).unwrap();
        assert_eq!(h.sections.len(), 2);
        assert_eq!(h.sections[0].ended, Ending::Released);
        assert_eq!(h.sections[0].valid_until, 95);
        assert_eq!(h.sections[0].writes.len(), 1);
        assert_eq!(h.sections[1].ended, Ending::Crashed);
        assert_eq!(h.sections[1].effective_end(), 190);
    }

    /// A release that hands the fair lock to a queued waiter is logged as one `Handed` call
    /// of that waiter, when it takes the notice (a notice it does not take is no grant; see
    /// `ReleaseWatch::take_hand_over` and the policy test for a stale notice).
    #[tokio::test(start_paused = true)]
    async fn a_taken_hand_over_is_logged_once_as_handed() {
        use lock_core::LockClient;
        let rec = Recorder::in_memory();
        let backend = Recording::new(crate::MemoryBackend::new(), "w1", rec.clone());
        let client = LockClient::new(backend);
        let holder = client.fair_mutex("k").unwrap().lock().await.unwrap();
        let waiter = tokio::spawn({
            let client = client.clone();
            async move { client.fair_mutex("k").unwrap().lock().await.unwrap() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        holder.release().await.unwrap();
        let guard = waiter.await.unwrap();
        guard.release().await.unwrap();
        let answers: Vec<FairAnswer> = rec
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::FairCall(c) => Some(c.answer),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers.iter().filter(|a| **a == FairAnswer::Handed).count(),
            1,
            "the waiter took the hand-over once: {answers:?}"
        );
        assert_eq!(answers.last(), Some(&FairAnswer::Handed), "and made no call after it: {answers:?}");
    }

    #[test]
    fn mono_clock_maps_instants_onto_the_host_clock() {
        let clock = MonoClock::new();
        let a = clock.now();
        let b = mono_now_ns();
        assert!(b + 5_000_000 >= a && a + 5_000_000 >= b, "{a} vs {b}");
        let later = Instant::now() + std::time::Duration::from_millis(10);
        assert!(clock.ns(later) >= a + 9_000_000);
    }
}
