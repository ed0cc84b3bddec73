//! Validated configuration for [`crate::LockClient`].

use std::time::Duration;

use crate::error::LockError;
use crate::types::{MAX_KEY_LEN, default_drift};

/// The longest TTL accepted. Longer TTLs are almost always a unit mistake (milliseconds passed
/// as seconds); hold a lock longer by letting the watchdog renew it.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest TTL accepted: below this the drift allowance leaves almost no validity.
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// Lock policy settings. Build with [`LockConfig::builder`]; every field is validated.
///
/// ```
/// use std::time::Duration;
/// use lock_core::LockConfig;
/// let config = LockConfig::builder()
///     .ttl(Duration::from_secs(10))
///     .acquire_timeout(Duration::from_secs(2))
///     .fencing(true)
///     .build()?;
/// assert_eq!(config.renew_interval(), Duration::from_nanos(3_333_333_333));
/// assert_eq!(config.drift(), Duration::from_millis(102));
/// # Ok::<(), lock_core::LockError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfig {
    ttl: Duration,
    renew_interval: Duration,
    acquire_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    drift: Duration,
    max_hold: Option<Duration>,
    key_prefix: String,
    fencing: bool,
    watchdog: bool,
    waiter_timeout: Duration,
}

/// The default [`LockConfig::waiter_timeout`].
pub const DEFAULT_WAITER_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for LockConfig {
    /// TTL 30 s, renewal every 10 s, acquire timeout 10 s, backoff 5-250 ms, drift 302 ms,
    /// no maximum hold time, no key prefix, fencing off, watchdog on, fair waiters kept 5 s.
    fn default() -> Self {
        let ttl = Duration::from_secs(30);
        Self {
            ttl,
            renew_interval: ttl / 3,
            acquire_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(250),
            drift: default_drift(ttl),
            max_hold: None,
            key_prefix: String::new(),
            fencing: false,
            watchdog: true,
            waiter_timeout: DEFAULT_WAITER_TIMEOUT,
        }
    }
}

impl LockConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> LockConfigBuilder {
        LockConfigBuilder::default()
    }

    /// How long the backend keeps a lock without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// How often the watchdog renews a held lock.
    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
    }
    /// How long [`crate::Mutex::lock`] waits before [`LockError::Timeout`].
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }
    /// The smallest retry delay.
    pub fn backoff_min(&self) -> Duration {
        self.backoff_min
    }
    /// The largest retry delay (also the longest a waiter trusts a wake-up subscription alone).
    pub fn backoff_max(&self) -> Duration {
        self.backoff_max
    }
    /// The clock drift allowance subtracted from every validity.
    pub fn drift(&self) -> Duration {
        self.drift
    }
    /// The longest a lease may be held, renewals included, if set.
    pub fn max_hold(&self) -> Option<Duration> {
        self.max_hold
    }
    /// The prefix put before every key.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }
    /// Whether acquisitions mint fencing tokens.
    pub fn fencing(&self) -> bool {
        self.fencing
    }
    /// Whether held leases are renewed in the background.
    pub fn watchdog(&self) -> bool {
        self.watchdog
    }
    /// How long a fair lock's queue keeps a waiter that stopped renewing its place (a crashed
    /// process); a live waiter renews it every third of this.
    pub fn waiter_timeout(&self) -> Duration {
        self.waiter_timeout
    }
}

/// Builder for [`LockConfig`]; [`LockConfigBuilder::build`] validates.
#[derive(Debug, Clone, Default)]
pub struct LockConfigBuilder {
    ttl: Option<Duration>,
    renew_interval: Option<Duration>,
    acquire_timeout: Option<Duration>,
    backoff: Option<(Duration, Duration)>,
    drift: Option<Duration>,
    max_hold: Option<Duration>,
    key_prefix: Option<String>,
    fencing: Option<bool>,
    watchdog: Option<bool>,
    waiter_timeout: Option<Duration>,
}

impl LockConfigBuilder {
    /// Lock TTL, from [`MIN_TTL`] to [`MAX_TTL`]. Default 30 s.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Watchdog renewal interval; must be above zero and below `ttl - drift`. Default `ttl / 3`.
    #[must_use]
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }
    /// How long `lock()` waits; zero means a single attempt. Default 10 s.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }
    /// Retry delays with full jitter, doubling from `min` up to `max`. Default 5 ms to 250 ms.
    #[must_use]
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Some((min, max));
        self
    }
    /// Clock drift allowance; must be below the TTL. Default `ttl / 100 + 2 ms`.
    #[must_use]
    pub fn drift(mut self, drift: Duration) -> Self {
        self.drift = Some(drift);
        self
    }
    /// Longest hold time, renewals included; must be at least the TTL. Default: unlimited.
    #[must_use]
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }
    /// A prefix put before every key (e.g. `"myapp:"`). Default: none.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }
    /// Mint fencing tokens on every acquisition. Default off: with it on, the backend keeps a
    /// counter per key that never expires (it must outlive every lease to stay monotonic).
    #[must_use]
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = Some(on);
        self
    }
    /// Renew held leases in the background. Default on. Off, a lease simply expires at its TTL.
    #[must_use]
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = Some(on);
        self
    }

    /// How long a fair lock's queue keeps a waiter whose process stopped renewing its place:
    /// the longest a crashed waiter delays the ones behind it. From 100 ms to 1 h; a live waiter
    /// renews every third of it. Default 5 s ([`DEFAULT_WAITER_TIMEOUT`]).
    #[must_use]
    pub fn waiter_timeout(mut self, timeout: Duration) -> Self {
        self.waiter_timeout = Some(timeout);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`LockError::Config`] naming the first invalid field and why.
    pub fn build(self) -> Result<LockConfig, LockError> {
        let bad = |field: &'static str, reason: String| Err(LockError::Config { field, reason });
        let defaults = LockConfig::default();
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        if ttl < MIN_TTL {
            return bad("ttl", format!("is {ttl:?}; the minimum is {MIN_TTL:?}"));
        }
        if ttl > MAX_TTL {
            return bad(
                "ttl",
                format!("is {ttl:?}; the maximum is {MAX_TTL:?} (renew with the watchdog instead)"),
            );
        }
        let drift = self.drift.unwrap_or_else(|| default_drift(ttl));
        if drift >= ttl {
            return bad("drift", format!("is {drift:?}, which leaves no validity in a ttl of {ttl:?}"));
        }
        let validity = ttl - drift;
        let renew_interval = self.renew_interval.unwrap_or(ttl / 3);
        if renew_interval.is_zero() {
            return bad("renew_interval", "must be above zero".into());
        }
        if renew_interval >= validity {
            return bad(
                "renew_interval",
                format!("is {renew_interval:?}; it must be below ttl - drift = {validity:?}"),
            );
        }
        let acquire_timeout = self.acquire_timeout.unwrap_or(defaults.acquire_timeout);
        let (backoff_min, backoff_max) = self.backoff.unwrap_or((defaults.backoff_min, defaults.backoff_max));
        if backoff_min.is_zero() {
            return bad("retry_backoff", "minimum must be above zero".into());
        }
        if backoff_min > backoff_max {
            return bad("retry_backoff", format!("minimum {backoff_min:?} is above maximum {backoff_max:?}"));
        }
        if let Some(max_hold) = self.max_hold
            && max_hold < ttl
        {
            return bad("max_hold", format!("is {max_hold:?}; it must be at least the ttl ({ttl:?})"));
        }
        let key_prefix = self.key_prefix.unwrap_or_default();
        if key_prefix.len() >= MAX_KEY_LEN {
            return bad(
                "key_prefix",
                format!("is {} bytes; keys are at most {MAX_KEY_LEN} bytes", key_prefix.len()),
            );
        }
        let waiter_timeout = self.waiter_timeout.unwrap_or(DEFAULT_WAITER_TIMEOUT);
        if waiter_timeout < Duration::from_millis(100) || waiter_timeout > Duration::from_secs(3600) {
            return bad("waiter_timeout", format!("is {waiter_timeout:?}; it must be from 100ms to 1h"));
        }
        Ok(LockConfig {
            waiter_timeout,
            ttl,
            renew_interval,
            acquire_timeout,
            backoff_min,
            backoff_max,
            drift,
            max_hold: self.max_hold,
            key_prefix,
            fencing: self.fencing.unwrap_or(defaults.fencing),
            watchdog: self.watchdog.unwrap_or(defaults.watchdog),
        })
    }
}
