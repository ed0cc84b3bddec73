//! Value types shared by the core and every backend.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;

/// The longest key accepted by [`LockKey::new`], in bytes (prefix included).
///
/// Redis itself allows far longer keys; this bound keeps every script argument and pub/sub
/// channel name small and catches keys built from unbounded user input.
pub const MAX_KEY_LEN: usize = 4096;

/// A validated lock name: non-empty and at most [`MAX_KEY_LEN`] bytes of UTF-8.
///
/// Cheap to clone (shared). Any characters are allowed, including braces, spaces and unicode;
/// backends map the key to their own storage names.
///
/// ```
/// use lock_core::LockKey;
/// assert_eq!(LockKey::new("orders:42")?.as_str(), "orders:42");
/// assert!(LockKey::new("").is_err());
/// # Ok::<(), lock_core::LockError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey(Arc<str>);

impl LockKey {
    /// Validates and wraps a key.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] when the key is empty or longer than [`MAX_KEY_LEN`] bytes.
    pub fn new(key: impl AsRef<str>) -> Result<Self, LockError> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(LockError::InvalidKey { reason: "the key is empty".into() });
        }
        if key.len() > MAX_KEY_LEN {
            return Err(LockError::InvalidKey {
                reason: format!("the key is {} bytes long; the maximum is {MAX_KEY_LEN}", key.len()),
            });
        }
        Ok(Self(Arc::from(key)))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({:?})", &*self.0)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A per-acquisition owner token: 128 random bits, fresh for every acquisition (S1).
///
/// Every mutation of a held lock (extend, release) is a compare-and-act on this token, so a
/// client can never touch a lock that another acquisition took over.
///
/// ```
/// use lock_core::Token;
/// let (a, b) = (Token::random(), Token::random());
/// assert_ne!(a, b);
/// assert_eq!(a.to_redis_value().len(), 32);
/// // Logs never show a token in full.
/// assert!(!format!("{a} {a:?}").contains(&a.to_redis_value()));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u128);

impl Token {
    /// A fresh random token from the thread-local CSPRNG.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A token with a chosen value, for tests and for backends decoding stored tokens.
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The raw value.
    pub fn as_u128(&self) -> u128 {
        self.0
    }
}

impl Token {
    /// The form stored in Redis: 32 lower-case hex digits. This is the secret that owns a
    /// lock; keep it out of logs (the `Display` and `Debug` forms are redacted).
    ///
    /// ```
    /// let token = lock_core::Token::from_u128(0xabc);
    /// assert_eq!(token.to_redis_value(), "00000000000000000000000000000abc");
    /// ```
    pub fn to_redis_value(&self) -> String {
        self.redis_value_with("")
    }

    /// [`Token::to_redis_value`] followed by `suffix`, in one string allocated at its final size.
    pub(crate) fn redis_value_with(&self, suffix: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [b'0'; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((self.0 >> ((31 - i) * 4)) & 0xf) as usize];
        }
        let mut out = String::with_capacity(32 + suffix.len());
        // Every byte is an ASCII hex digit, so this never falls back.
        out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        out.push_str(suffix);
        out
    }
}

impl fmt::Display for Token {
    /// Redacted: the first 4 hex digits only, enough to tell tokens apart in a log, far too
    /// few to release someone else's lock with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}\u{2026}", self.0 >> 112)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// A fencing token: strictly greater for every new acquisition of a key (S6).
///
/// Pass it to the protected resource with every write; the resource rejects a write whose
/// token is lower than the highest it has seen, which stops a paused former holder.
///
/// ```
/// use lock_core::FencingToken;
/// assert!(FencingToken(7) > FencingToken(6));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The clock drift allowance for a TTL: `ttl / 100 + 2 ms`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(lock_core::default_drift(Duration::from_secs(30)), Duration::from_millis(302));
/// ```
pub fn default_drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// `started + ttl - drift`, or `None` when that leaves no validity (S2).
///
/// `started` must be sampled **before** the request that set the expiry was sent: the server's
/// clock started counting the TTL at some instant after that, so this is a safe lower bound.
/// All arithmetic is checked; a TTL not larger than the drift has no validity.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// let t0 = Instant::now();
/// let ms = Duration::from_millis;
/// assert_eq!(lock_core::validity_deadline(t0, ms(1000), ms(12)), Some(t0 + ms(988)));
/// assert_eq!(lock_core::validity_deadline(t0, ms(2), ms(2)), None);
/// ```
pub fn validity_deadline(started: Instant, ttl: Duration, drift: Duration) -> Option<Instant> {
    let validity = ttl.checked_sub(drift).filter(|v| !v.is_zero())?;
    started.checked_add(validity)
}

/// What a backend hands out when it grants a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The instant until which the lock is safely ours; counted from before the request.
    pub valid_until: Instant,
    /// The fencing token, when fencing was asked for and the backend supports it.
    pub fence: Option<FencingToken>,
}

impl Grant {
    /// A grant for a request sent at or after `started` with the given TTL, using
    /// [`default_drift`]. `None` when the TTL leaves no validity.
    pub fn from_start(started: Instant, ttl: Duration, fence: Option<FencingToken>) -> Option<Self> {
        validity_deadline(started, ttl, default_drift(ttl)).map(|valid_until| Self { valid_until, fence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_value_is_32_lower_case_hex_digits_then_the_suffix() {
        for value in [0, 1, 0xabc, u128::MAX, u128::MAX / 3, 1 << 127, rand::random()] {
            let token = Token::from_u128(value);
            assert_eq!(token.to_redis_value(), format!("{value:032x}"));
            assert_eq!(token.redis_value_with(":0"), format!("{value:032x}:0"));
        }
    }
}
