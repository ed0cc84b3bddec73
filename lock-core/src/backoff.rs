//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Retry delays: attempt `n` sleeps a uniformly random time in `[min, min(max, min * 2^n)]`.
///
/// Full jitter spreads waiters so that a release does not trigger a synchronised stampede.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// A backoff that has already served `attempt` delays.
    pub(crate) fn resume(min: Duration, max: Duration, attempt: u32) -> Self {
        Self { attempt: attempt.min(31), ..Self::new(min, max) }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        let ceiling = self.min.checked_mul(factor).unwrap_or(self.max).min(self.max);
        self.attempt = self.attempt.saturating_add(1).min(31);
        if ceiling <= self.min {
            return self.min;
        }
        rand::rng().random_range(self.min..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let (min, max) = (Duration::from_millis(5), Duration::from_millis(200));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert_eq!(first, min, "first attempt has no room to jitter");
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?} out of [{min:?}, {max:?}]");
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(spread.len() > 10, "delays are jittered, not fixed");
    }
}
