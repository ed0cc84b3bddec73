//! The renewal scheduler: one per [`crate::LockClient`] (shared by its clones), renewing every
//! lease that client's watchdog keeps, in batches.
//!
//! Each lease is an entry in one ordered queue, keyed by when its renewal falls due. One task
//! sleeps until the earliest entry is due, then takes it **and every entry due within the next
//! eighth of the renewal interval**, and sends them in one [`LockBackend::extend_many`] call
//! (one round trip per node: the Redis drivers send one script per few hundred keys). The
//! leases of a batch are renewed from the same instant, so they fall due together again: a
//! client's leases settle into at most eight batches per renewal interval, whatever their
//! number. Renewing a lease a little before it is due is always safe.
//!
//! Every lease keeps its own policy exactly as a watchdog task per lease would: its own
//! deadline (`lost()` fires there whatever the batch is doing), an owner mismatch on its key
//! ends it alone, a transient error retries it alone with backoff until its deadline, and a
//! maximum hold time caps it alone. Each batch runs on its own task, so a slow one never holds
//! up the next. No task exists while nothing is held: the scheduler ends when its queue empties
//! and starts again with the next lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::backend::{ExtendOutcome, ExtendRequest, Renewal};
use crate::backoff::Backoff;
use crate::config::MIN_TTL;
use crate::error::{BackendError, BackendErrorKind, LostReason};
use crate::lease::{LeaseCtx, Shared};
use crate::types::{default_drift, validity_deadline};

/// Leases due within `renew_interval / WINDOW_DIVISOR` after the first one go with it.
const WINDOW_DIVISOR: u32 = 8;
/// At most this many leases in one `extend_many` call; a larger due set makes several batches.
const MAX_BATCH: usize = 8192;

/// What the renewal scheduler of one client has done since it was made: see
/// [`crate::LockClient::renewal_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewalStats {
    /// Batches sent ([`crate::LockBackend::extend_many`] calls).
    pub batches: u64,
    /// Lease renewals sent in them (retries included).
    pub renewals: u64,
    /// The latest any renewal was sent after it fell due (a busy runtime, a scheduler that woke
    /// late). Renewals taken early into a batch count as on time.
    pub worst_lateness: Duration,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    renewals: AtomicU64,
    worst_lateness_ns: AtomicU64,
}

/// One lease waiting for its next renewal.
struct Entry {
    lease: Weak<Shared>,
    /// Renew once, then stop (a handed-over lease without a watchdog).
    once: bool,
    /// How many times the current renewal has failed transiently (0: on schedule).
    attempt: u32,
}

#[derive(Default)]
struct Queue {
    due: BTreeMap<(Instant, u64), Entry>,
    next_id: u64,
    /// A scheduler task is alive.
    running: bool,
}

/// The renewal scheduler (see the module docs).
#[derive(Default)]
pub(crate) struct Renewer {
    queue: std::sync::Mutex<Queue>,
    wake: Notify,
    counters: Counters,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer").field("stats", &self.stats()).finish()
    }
}

impl Renewer {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `lease` for renewal at `at` (and, unless `once`, every renewal interval after),
    /// starting the scheduler on `runtime` if none runs.
    pub(crate) fn schedule(
        self: &Arc<Self>,
        ctx: &LeaseCtx,
        runtime: &Handle,
        lease: Weak<Shared>,
        at: Instant,
        once: bool,
    ) {
        self.insert(ctx, runtime, [(at, Entry { lease, once, attempt: 0 })]);
    }

    /// Queues entries (under one lock: a batch's leases go back together).
    fn insert(
        self: &Arc<Self>,
        ctx: &LeaseCtx,
        runtime: &Handle,
        entries: impl IntoIterator<Item = (Instant, Entry)>,
    ) {
        let (start, earliest) = {
            let mut q = self.queue();
            let mut earliest = false;
            for (at, entry) in entries {
                let id = q.next_id;
                q.next_id = q.next_id.wrapping_add(1);
                earliest |= q.due.first_key_value().is_none_or(|((first, _), _)| at < *first);
                q.due.insert((at, id), entry);
            }
            let start = !q.running;
            q.running = true;
            (start, earliest)
        };
        if start {
            runtime.spawn(Arc::clone(self).run(ctx.clone()));
        } else if earliest {
            self.wake.notify_one();
        }
    }

    pub(crate) fn stats(&self) -> RenewalStats {
        RenewalStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            renewals: self.counters.renewals.load(Ordering::Relaxed),
            worst_lateness: Duration::from_nanos(self.counters.worst_lateness_ns.load(Ordering::Relaxed)),
        }
    }

    /// The scheduler task: sleeps until the earliest entry is due, then hands every entry due
    /// within the window to a batch of its own. Ends when the queue is empty.
    async fn run(self: Arc<Self>, ctx: LeaseCtx) {
        // If the runtime drops this task, the next lease starts a new one.
        let mut running = Running(Some(Arc::clone(&self)));
        let window = ctx.config.renew_interval() / WINDOW_DIVISOR;
        loop {
            let now = Instant::now();
            let next = {
                let mut q = self.queue();
                match q.due.first_key_value() {
                    None => {
                        q.running = false;
                        running.0 = None;
                        return;
                    }
                    Some(((at, _), _)) if *at > now => Some(*at),
                    Some(_) => None,
                }
            };
            if let Some(at) = next {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            let batch = self.take_due(now + window);
            tokio::spawn(renew_batch(Arc::clone(&self), ctx.clone(), batch));
        }
    }

    fn take_due(&self, until: Instant) -> Vec<(Instant, Entry)> {
        let mut q = self.queue();
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            match q.due.first_entry() {
                Some(e) if e.key().0 <= until => {
                    let ((at, _), entry) = e.remove_entry();
                    batch.push((at, entry));
                }
                _ => break,
            }
        }
        batch
    }

    fn requeue(self: &Arc<Self>, ctx: &LeaseCtx, entries: Vec<(Instant, Entry)>) {
        if entries.is_empty() {
            return;
        }
        if let Ok(runtime) = Handle::try_current() {
            self.insert(ctx, &runtime, entries);
        }
    }
}

/// Clears the running flag if the scheduler task is dropped before it ends by itself.
struct Running(Option<Arc<Renewer>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(renewer) = self.0.take() {
            renewer.queue().running = false;
        }
    }
}

/// A lease of a batch, with what its renewal asked for.
struct Sent {
    shared: Arc<Shared>,
    entry: Entry,
    ttl: Duration,
    reaches_cap: bool,
    deadline: Instant,
}

/// Renews one batch and applies each lease's answer to that lease alone.
async fn renew_batch(renewer: Arc<Renewer>, ctx: LeaseCtx, batch: Vec<(Instant, Entry)>) {
    let config = &ctx.config;
    let now = Instant::now();
    let mut sent = Vec::with_capacity(batch.len());
    let mut renewals = Vec::with_capacity(batch.len());
    let mut worst = Duration::ZERO;
    for (due, entry) in batch {
        let Some(shared) = entry.lease.upgrade() else { continue };
        let Some(deadline) = shared.renewable() else { continue };
        let mut ttl = config.ttl();
        let mut reaches_cap = false;
        if let Some(cap) = shared.max_hold_until() {
            let left = cap.saturating_duration_since(now);
            if left <= config.drift() + MIN_TTL {
                // The hold may not be extended any further: let the lease run out.
                shared.cap();
                debug!(key = %shared.key(), "maximum hold time reached; renewal stops");
                continue;
            }
            reaches_cap = left < ttl;
            ttl = ttl.min(left);
        }
        if now >= deadline {
            shared.mark_lost(LostReason::Expired);
            continue;
        }
        worst = worst.max(now.saturating_duration_since(due));
        renewals.push(Renewal {
            members: shared.members(),
            req: ExtendRequest { key: shared.key().clone(), token: shared.token(), ttl },
        });
        sent.push(Sent { shared, entry, ttl, reaches_cap, deadline });
    }
    let Some(last_deadline) = sent.iter().map(|s| s.deadline).max() else { return };
    let c = &renewer.counters;
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.renewals.fetch_add(renewals.len() as u64, Ordering::Relaxed);
    c.worst_lateness_ns.fetch_max(u64::try_from(worst.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    let started = Instant::now();
    // A renewal that has not answered by its lease's deadline is a lost lease, even if the call
    // would hang forever: `lost()` fires at each deadline; the batch gives up at the last one.
    let answers = tokio::time::timeout_at(last_deadline, ctx.backend.extend_many(&renewals)).await;
    let mut answers = answers.map(Vec::into_iter).ok();
    let mut again = Vec::with_capacity(sent.len());
    for s in sent {
        let answer = answers.as_mut().map(|a| {
            a.next().unwrap_or_else(|| {
                Err(BackendError::retryable(BackendErrorKind::Protocol, "a renewal batch came back short"))
            })
        });
        again.extend(apply(&ctx, s, started, answer));
    }
    renewer.requeue(&ctx, again);
}

/// One lease's answer (`None`: the batch timed out). Returns when and how to renew it next, if
/// it is to be renewed again.
fn apply(
    ctx: &LeaseCtx,
    sent: Sent,
    started: Instant,
    answer: Option<Result<ExtendOutcome, BackendError>>,
) -> Option<(Instant, Entry)> {
    let config = &ctx.config;
    let Sent { shared, entry, ttl, reaches_cap, deadline } = sent;
    if shared.is_stopped() {
        // Released or dropped while the batch was out: the answer is moot.
        return None;
    }
    if !matches!(answer, Some(Ok(ExtendOutcome::Extended { .. }))) {
        crate::telemetry::renewal(shared.backend_name(), false);
    }
    // Lost at its deadline while the batch was out (or before): the answer changes nothing.
    if shared.expire_if_due(Instant::now()).is_some() || shared.renewable().is_none() {
        return None;
    }
    match answer {
        None => {
            shared.mark_lost(LostReason::Expired);
            None
        }
        Some(Ok(ExtendOutcome::Extended { valid_until })) => {
            let mine = validity_deadline(started, ttl, config.drift().max(default_drift(ttl)));
            let mut new_deadline = mine.map_or(valid_until, |m| m.min(valid_until));
            if let Some(cap) = shared.max_hold_until() {
                new_deadline = new_deadline.min(cap);
            }
            // A renewal never shortens what an earlier success promised (S4).
            if new_deadline > deadline {
                shared.set_valid_until(new_deadline);
            }
            if reaches_cap {
                // This renewal was cut short by the maximum hold time: its end is the cap.
                shared.cap();
            }
            debug!(key = %shared.key(), "renewed");
            crate::telemetry::renewal(shared.backend_name(), true);
            (!entry.once).then(|| (started + config.renew_interval(), Entry { attempt: 0, ..entry }))
        }
        Some(Ok(ExtendOutcome::NotHeld)) => {
            shared.mark_lost(LostReason::NotOwner);
            None
        }
        Some(Err(e)) if e.is_retryable() => {
            debug!(key = %shared.key(), error = %e, "renewal failed, retrying");
            let mut backoff = Backoff::resume(config.backoff_min(), config.backoff_max(), entry.attempt);
            let wake = Instant::now() + backoff.next_delay();
            let attempt = entry.attempt.saturating_add(1);
            Some((wake.min(deadline), Entry { attempt, ..entry }))
        }
        Some(Err(e)) => {
            shared.mark_lost(LostReason::Backend(e));
            None
        }
    }
}
