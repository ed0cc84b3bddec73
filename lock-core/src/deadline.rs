//! One bound per call: a call that its caller already bounds arms no timer of its own.
//!
//! Every driver call must end, with a retryable timeout, when its server stops answering, so a
//! driver bounds each call by its command timeout ([`within`]). A RedLock round bounds the
//! calls it makes to its nodes too, by one deadline for the whole round, and drops the calls
//! still out when it passes. Armed twice, the node call's own timer only costs: a tokio timer
//! takes the timer wheel's lock when it is registered and again when it is cancelled, and may
//! wake the thread that drives the timers (a RedLock-3 lock/unlock cycle armed 8, where rslock
//! arms none; now 2).
//!
//! So a caller that bounds the calls it drives says so with [`bounded_by`], and [`within`]
//! arms no timer under a bound that ends no later than its own limit would. The bound is a
//! tokio task-local value: it holds while the wrapped future is polled, on that task only, so
//! it never reaches a call that the caller does not drive (a spawned task, a call made after
//! the round).
//!
//! # The caller's promise
//! Code that wraps calls in [`bounded_by`]`(deadline, ..)` stops waiting for them by `deadline`:
//! it drops them then, or hands what is left to code with a bound of its own (RedLock's
//! releases finish in a background task bounded by a multiple of the node deadline). Nothing
//! inside may wait on the calls past that without a bound.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use lock_core::{Instant, deadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // Alone, a call is bounded by its own limit.
//! let silent = std::future::pending::<()>();
//! assert_eq!(deadline::within(Duration::from_millis(300), silent).await, None);
//!
//! // Under a caller's bound that ends sooner, it arms no timer: the caller's ends it.
//! let round = Instant::now() + Duration::from_millis(100);
//! let call = deadline::within(Duration::from_millis(300), std::future::pending::<()>());
//! let by_caller = tokio::time::timeout_at(round, deadline::bounded_by(round, call)).await;
//! assert!(by_caller.is_err(), "the caller's deadline ended it");
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    /// When the caller driving the current task's calls stops waiting for them.
    static CALLER_BOUND: Instant;
}

/// Runs `fut` under the caller's promise to stop waiting for it by `deadline` (see the module
/// docs): calls inside made through [`within`] with a limit that would end later arm no timer
/// of their own. Nested bounds: the innermost holds.
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Instant, deadline};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let deadline = Instant::now() + Duration::from_millis(50);
/// let answer = tokio::time::timeout_at(deadline, deadline::bounded_by(deadline, async { 7 })).await;
/// assert_eq!(answer, Ok(7));
/// # }
/// ```
pub fn bounded_by<F: Future>(deadline: Instant, fut: F) -> impl Future<Output = F::Output> {
    CALLER_BOUND.scope(deadline, fut)
}

/// The caller's bound on the current task, if any (see [`bounded_by`]).
///
/// ```
/// use lock_core::{Instant, deadline};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(deadline::caller_bound(), None);
/// let at = Instant::now();
/// assert_eq!(deadline::bounded_by(at, async { deadline::caller_bound() }).await, Some(at));
/// # }
/// ```
pub fn caller_bound() -> Option<Instant> {
    CALLER_BOUND.try_with(|d| *d).ok()
}

/// Runs `call`, bounded by `limit`: `None` if it had not finished by then. Under a caller's
/// bound ([`bounded_by`]) that ends no later than `limit` from now, no timer is armed and the
/// caller's deadline ends the call (by dropping it); otherwise one tokio timer is.
///
/// The choice is made when the returned future is first polled.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let quick = lock_core::deadline::within(Duration::from_millis(10), async { "pong" }).await;
/// assert_eq!(quick, Some("pong"));
/// # }
/// ```
pub async fn within<F: Future>(limit: Duration, call: F) -> Option<F::Output> {
    match caller_bound() {
        Some(bound) if bound <= Instant::now() + limit => Some(call.await),
        _ => tokio::time::timeout(limit, call).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn alone_a_call_ends_on_its_own_limit() {
        let started = Instant::now();
        assert_eq!(within(300 * MS, pending::<()>()).await, None);
        assert_eq!(started.elapsed(), 300 * MS);
    }

    /// The point of the module: under a tighter caller's bound the call arms no timer, so
    /// only the caller's deadline ends it (the call alone would wait for ever).
    #[tokio::test(start_paused = true)]
    async fn under_a_tighter_bound_the_call_arms_no_timer() {
        let round = Instant::now() + 100 * MS;
        let call = bounded_by(round, within(300 * MS, pending::<()>()));
        // Were a timer armed, the call would end itself at 300 ms, before this 5 s limit.
        let outer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(outer.is_err(), "the call ended itself: it armed a timer of its own");
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_looser_bound_the_call_keeps_its_own_limit() {
        let started = Instant::now();
        let round = Instant::now() + Duration::from_secs(10);
        assert_eq!(bounded_by(round, within(300 * MS, pending::<()>())).await, None);
        assert_eq!(started.elapsed(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_does_not_reach_calls_after_it_or_on_other_tasks() {
        let round = Instant::now() + 100 * MS;
        let inside = bounded_by(round, async {
            // A task spawned from inside the bound is not driven by its caller.
            tokio::spawn(within(300 * MS, pending::<()>())).await
        });
        assert_eq!(inside.await.ok(), Some(None), "the spawned call ended on its own limit");
        assert_eq!(caller_bound(), None);
        let started = Instant::now();
        assert_eq!(within(300 * MS, pending::<()>()).await, None);
        assert_eq!(started.elapsed(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_innermost_bound_holds() {
        let outer = Instant::now() + Duration::from_secs(10);
        let inner = Instant::now() + 100 * MS;
        let seen =
            bounded_by(outer, async { (bounded_by(inner, async { caller_bound() }).await, caller_bound()) });
        assert_eq!(seen.await, (Some(inner), Some(outer)));
    }
}
