//! The fair lock's acquisition: queue on the server, and wait for the release that hands the
//! lock over to this waiter (its own turn notice says so).

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tracing::debug;

use crate::backend::{FairOutcome, FairRequest, LockBackend, ReleaseWatch};
use crate::backoff::Backoff;
use crate::error::{BackendError, LockError};
use crate::lease::{Guard, LeaseCtx, LeaseInner, Renew, deadline_error};
use crate::types::{LockKey, Token, validity_deadline};

/// Takes the waiter out of the queue, in the background, unless disarmed: a cancelled, timed
/// out or failed wait (and a grant whose reply was lost). Owner-checked, so harmless if the
/// token was never queued.
struct PendingLeave {
    backend: Arc<dyn LockBackend>,
    key: LockKey,
    token: Token,
    armed: bool,
}

impl Drop for PendingLeave {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = Handle::try_current() {
            let (backend, key, token) = (Arc::clone(&self.backend), self.key.clone(), self.token);
            rt.spawn(async move {
                let Some(fair) = backend.fair() else { return };
                let outcome = fair.leave_queue(&key, &token).await;
                debug!(%key, ?outcome, "a fair waiter left the queue");
            });
        }
    }
}

fn unsupported(backend: &dyn LockBackend) -> LockError {
    LockError::Unsupported { backend: backend.name().to_string(), feature: "fair locks" }
}

/// One fair acquisition: a single try (never queued) when `timeout` is `None`, else queued and
/// waiting up to it.
pub(crate) async fn acquire(
    ctx: &LeaseCtx,
    key: &LockKey,
    timeout: Option<Duration>,
    watchdog: Option<bool>,
) -> Result<Option<Guard>, LockError> {
    let config = &ctx.config;
    let backend = &ctx.backend;
    let fair = backend.fair().ok_or_else(|| unsupported(backend.as_ref()))?;
    let start = Instant::now();
    let deadline = timeout.map(|t| start.checked_add(t).unwrap_or(start + Duration::from_secs(86_400 * 365)));
    let waiter_timeout = config.waiter_timeout();
    // One token for the whole call: it is the waiter's place in the queue, and a retry after a
    // lost reply finds itself queued (or granted) instead of queueing again.
    let token = Token::random();
    let req = FairRequest {
        key: key.clone(),
        token,
        ttl: config.ttl(),
        fencing: config.fencing(),
        wait: timeout.map(|_| waiter_timeout),
    };
    let mut pending = PendingLeave { backend: Arc::clone(backend), key: key.clone(), token, armed: false };
    let mut backoff = Backoff::new(config.backoff_min(), config.backoff_max());
    // Waiting for a lock this process already waits on: the turn notices are subscribed, so
    // watch before the first call and save the call after subscribing.
    let mut watch: Option<ReleaseWatch> = timeout.and_then(|_| fair.watch_turn_now(key, &token));
    let mut last_error: Option<BackendError> = None;
    let mut contended = false;
    // A live waiter renews its place well before its deadline.
    let renew_every = waiter_timeout / 3;
    let mut calls = 0u32;
    // The last call that queued us: when it was sent, and the waiter deadline it set. A lock
    // handed over to us is ours from no earlier than that instant, and only by a hand-over
    // that names that deadline: one naming an earlier deadline granted the lock before that
    // call was served, and expired before it (the call would have found the lock ours).
    let mut queued: Option<(Instant, u64)> = None;

    loop {
        let started = Instant::now();
        if let Some(deadline) = deadline
            && started >= deadline
            && calls > 0
        {
            // No call that would only be cut off at once: on a pool it could still reach the
            // server after the leave below (another connection), and queue the token again.
            crate::telemetry::timed_out(ctx.label());
            return Err(LockError::Timeout { key: key.clone(), waited: started - start, last_error });
        }
        let Some(validity_end) = validity_deadline(started, config.ttl(), config.drift()) else {
            return Err(LockError::Config { field: "ttl", reason: "leaves no validity after drift".into() });
        };
        let call_deadline = deadline.map_or(validity_end, |d| d.min(validity_end));
        calls += 1;
        // From the first call on, the token may be queued or granted on the server.
        pending.armed = true;
        let mut waiting = None;
        match tokio::time::timeout_at(call_deadline, fair.fair_acquire(&req)).await {
            Ok(Ok(FairOutcome::Acquired(grant))) => {
                let valid_until = grant.valid_until.min(validity_end);
                let now = Instant::now();
                if now < valid_until {
                    pending.armed = false;
                    crate::telemetry::acquired(ctx.label(), now - started, now - start);
                    debug!(fence = ?grant.fence, "acquired (fair)");
                    let inner = LeaseInner::start(
                        ctx.clone(),
                        key.clone(),
                        token,
                        None,
                        grant.fence,
                        started,
                        valid_until,
                        Renew::watchdog(watchdog.unwrap_or(config.watchdog()), started, config),
                        // A fair lock's release hands it to the head of its queue: the full
                        // release at once.
                        true,
                    );
                    return Ok(Some(Guard { inner }));
                }
                // Never hand out a grant whose validity has passed (S2); the retry re-acquires.
                last_error = Some(deadline_error("grant arrived after its validity deadline"));
            }
            Ok(Ok(FairOutcome::Waiting { ahead, retry_in, deadline: set })) => {
                if !contended {
                    contended = true;
                    crate::telemetry::contended(ctx.label());
                }
                debug!(ahead, "queued (fair)");
                // A reply without a deadline (not queued) leaves no hand-over to trust.
                queued = set.filter(|_| timeout.is_some()).map(|d| (started, d));
                waiting = Some(retry_in);
            }
            Ok(Err(e)) if e.is_retryable() => {
                debug!(error = %e, "fair acquire failed, will retry");
                last_error = Some(e);
            }
            Ok(Err(source)) => return Err(LockError::Backend { key: key.clone(), source }),
            Err(_) => {
                if last_error.is_none() || call_deadline == validity_end {
                    last_error = Some(deadline_error("acquire request did not answer in time"));
                }
            }
        }

        let Some(deadline) = deadline else {
            // try_lock: one call, never queued.
            return match (waiting, last_error) {
                (Some(_), _) => {
                    // Nothing was queued or granted: nothing to undo.
                    pending.armed = false;
                    Ok(None)
                }
                (None, Some(source)) => Err(LockError::Backend { key: key.clone(), source }),
                (None, None) => Ok(None),
            };
        };
        let now = Instant::now();
        if now >= deadline {
            crate::telemetry::timed_out(ctx.label());
            // `pending` leaves the queue in the background.
            return Err(LockError::Timeout { key: key.clone(), waited: now - start, last_error });
        }
        let Some(retry_in) = waiting else {
            // An error: back off, then try again (the same token keeps the same place).
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
            continue;
        };
        if watch.is_none() && backend.capabilities().wake_up {
            // Subscribe first, then call again at once: a turn notice sent between the call
            // that queued us and the subscription would otherwise be missed.
            if let Ok(Some(w)) = fair.watch_turn(key, &token).await {
                watch = Some(w);
                continue;
            }
        }
        // The notice of a hand-over wakes us holding the lock; otherwise call again when the
        // state can change by itself (the holder's TTL, the head's deadline), and in any case
        // in time to renew our place in the queue.
        let mut wait = renew_every.min(deadline - now);
        if let Some(r) = retry_in {
            wait = wait.min(r.max(Duration::from_millis(1)));
        }
        match &mut watch {
            Some(w) => {
                if w.wait(wait).await {
                    if let Some((from, set)) = queued
                        && let Some(h) = w.take_hand_over(set)
                        && let Some(guard) = handed(ctx, key, token, h.fence, from, watchdog)
                    {
                        pending.armed = false;
                        let now = Instant::now();
                        crate::telemetry::acquired(ctx.label(), now - from, now - start);
                        return Ok(Some(guard));
                    }
                } else if w.is_closed() {
                    watch = None;
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// The lease of a lock a release handed over to this waiter (see `hand_over` in the scripts),
/// or `None` when the waiter must call once more to take it (the call finds the lock its own
/// and refreshes it to the full TTL): when the validity is already over, or the hand-over
/// could not mint the fencing token asked for.
///
/// The backend set the grant to expire at the waiter's deadline, which the call sent at
/// `from` set to at least `waiter_timeout` after `from`; so the lease is valid until
/// `from + min(ttl, waiter_timeout) - drift`, and its watchdog renews it (to the full TTL) a
/// third of the way there. Without a watchdog, a grant shorter than the TTL is renewed once, at
/// that same point, to the full TTL (the caller asked for a TTL's validity); until then
/// [`crate::Lease::valid_until`] shows the shorter validity, and a hold that ends sooner (the
/// common case) sends no renewal at all.
fn handed(
    ctx: &LeaseCtx,
    key: &LockKey,
    token: Token,
    fence: u64,
    from: Instant,
    watchdog: Option<bool>,
) -> Option<Guard> {
    let config = &ctx.config;
    let watchdog = watchdog.unwrap_or(config.watchdog());
    let span = config.ttl().min(config.waiter_timeout());
    let fence = match (config.fencing(), fence) {
        // Handed over while the fencing counter was missing: the call mints a fence.
        (true, 0) => return None,
        (true, f) => Some(crate::types::FencingToken(f)),
        (false, _) => None,
    };
    let valid_until = validity_deadline(from, span, config.drift())?;
    if Instant::now() >= valid_until {
        // Never hand out a grant whose validity has passed (S2); the call re-acquires.
        return None;
    }
    debug!(?fence, "handed over (fair)");
    // A third of the way to the end of the validity (which drift may have made much shorter
    // than `span`), so the renewal is always due before it.
    let due = from + (valid_until - from) / 3;
    let renew = match (watchdog, span < config.ttl()) {
        (true, _) => Renew::From(due),
        // Short holds (the common case) release before it is due and never send it.
        (false, true) => Renew::Once(due),
        (false, false) => Renew::Off,
    };
    let inner =
        LeaseInner::start(ctx.clone(), key.clone(), token, None, fence, from, valid_until, renew, true);
    Some(Guard { inner })
}
