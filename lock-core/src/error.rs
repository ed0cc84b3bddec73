//! Errors: [`LockError`] for users of the lock, [`BackendError`] for backends.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::types::LockKey;

/// Everything that can go wrong when taking, holding or releasing a lock.
///
/// Contention is not an error: [`crate::Mutex::try_lock`] returns `Ok(None)` when the lock is
/// held by someone else, and [`crate::Mutex::lock`] waits. Errors mean bad input, an expired
/// wait, a lost lease or an infrastructure failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A configuration value was rejected by [`crate::LockConfigBuilder::build`].
    #[error("invalid lock configuration: `{field}` {reason}")]
    Config {
        /// The builder field that holds the bad value.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// The lock key was rejected by [`LockKey::new`].
    #[error("invalid lock key: {reason}")]
    InvalidKey {
        /// Why it was rejected.
        reason: String,
    },

    /// [`crate::Mutex::lock`] waited for the whole acquire timeout without getting the lock.
    #[error("timed out after {waited:?} waiting for lock \"{key}\"{}", last_error_suffix(.last_error))]
    Timeout {
        /// The lock that was asked for.
        key: LockKey,
        /// How long the caller waited.
        waited: Duration,
        /// The last retryable backend error seen while waiting, if any.
        last_error: Option<BackendError>,
    },

    /// The lease ended before the body of [`crate::LockClient::with_lock`] finished, or before
    /// an operation on the guard.
    #[error("lease on lock \"{key}\" was lost: {reason}")]
    LeaseLost {
        /// The lock whose lease was lost.
        key: LockKey,
        /// Why it was lost.
        reason: LostReason,
    },

    /// A release or extend found that the lock was no longer ours: it had expired, or another
    /// owner had taken it since.
    #[error("lock \"{key}\" was no longer held by this owner (it expired or was taken over)")]
    NotHeld {
        /// The lock that was no longer held.
        key: LockKey,
    },

    /// The backend failed in a way that retrying did not (or could not) fix.
    #[error("backend error on lock \"{key}\": {source}")]
    Backend {
        /// The lock the operation was for.
        key: LockKey,
        /// The backend's error.
        #[source]
        source: BackendError,
    },

    /// A write lock was asked for through a read-write lock handle that holds a read lock.
    /// Refused rather than waited for: two handles upgrading at once would each wait for the
    /// other's read lock forever. Release the read guard, then take the write lock.
    #[error(
        "cannot upgrade the read lock on \"{key}\" to a write lock: release the read guard first \
         (two holders upgrading at once would deadlock)"
    )]
    Upgrade {
        /// The read-write lock.
        key: LockKey,
    },

    /// A semaphore handle's size differs from the live semaphore's: its permits are held by
    /// holders who were promised `live` permits in all. The size can change only while no
    /// permit is held.
    #[error("semaphore \"{key}\" has {live} permits while held; this handle asked for {asked}")]
    PermitsMismatch {
        /// The semaphore.
        key: LockKey,
        /// The size its holders use.
        live: u32,
        /// The size this handle was made with.
        asked: u32,
    },

    /// The configuration asks for a feature the backend does not have.
    #[error("backend `{backend}` does not support {feature}")]
    Unsupported {
        /// The backend's [`crate::LockBackend::name`].
        backend: String,
        /// The missing feature.
        feature: &'static str,
    },
}

fn last_error_suffix(last: &Option<BackendError>) -> String {
    match last {
        Some(e) => format!(" (last backend error: {e})"),
        None => String::new(),
    }
}

/// Why a held lease ended without being released by its holder.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LostReason {
    /// The validity deadline passed with no confirmed renewal (renewals failed, hung, or the
    /// watchdog was off).
    Expired,
    /// The backend reported that the key is no longer held by this owner.
    NotOwner,
    /// The configured maximum hold time was reached, so renewal stopped.
    MaxHoldReached,
    /// Renewal failed with a permanent backend error.
    Backend(BackendError),
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Expired => f.write_str("validity deadline passed without a confirmed renewal"),
            LostReason::NotOwner => f.write_str("the backend reports another owner or no owner"),
            LostReason::MaxHoldReached => f.write_str("the maximum hold time was reached"),
            LostReason::Backend(e) => write!(f, "renewal failed permanently: {e}"),
        }
    }
}

/// The class of a [`BackendError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The connection could not be made or broke.
    Connection,
    /// The request did not complete in time.
    Timeout,
    /// Authentication or authorisation failed (NOAUTH, WRONGPASS, NOPERM).
    Auth,
    /// The key holds a value of the wrong type for a lock (WRONGTYPE).
    WrongType,
    /// A script failed to load or run.
    Script,
    /// The server's reply did not fit the protocol the backend expects.
    Protocol,
    /// A cluster-level failure (CLUSTERDOWN, MOVED loops, CROSSSLOT).
    Cluster,
    /// A quorum could not be reached.
    Quorum,
    /// The server is loading, busy or read-only.
    Unavailable,
    /// The node lost its lock data and grants nothing until its quarantine has passed (see
    /// [`crate::scripts`]). Retryable: the message says how long is left.
    Quarantined,
    /// Anything else.
    Other,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Connection => "connection error",
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Auth => "authentication error",
            BackendErrorKind::WrongType => "wrong type",
            BackendErrorKind::Script => "script error",
            BackendErrorKind::Protocol => "protocol error",
            BackendErrorKind::Cluster => "cluster error",
            BackendErrorKind::Quorum => "quorum not reached",
            BackendErrorKind::Unavailable => "server unavailable",
            BackendErrorKind::Quarantined => "node in quarantine after data loss",
            BackendErrorKind::Other => "backend error",
        })
    }
}

/// An infrastructure failure reported by a [`crate::LockBackend`].
///
/// Each driver fills in [`BackendError::is_retryable`] from the driver's own classification;
/// the core's single retry policy acts on it. The error is cheap to clone (its source is shared).
///
/// ```
/// use lock_core::{BackendError, BackendErrorKind};
/// let e = BackendError::retryable(BackendErrorKind::Connection, "connection refused");
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "connection error: connection refused");
/// ```
#[derive(Debug, Clone)]
pub struct BackendError {
    kind: BackendErrorKind,
    retryable: bool,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl BackendError {
    /// A transient error: the same request may succeed if sent again.
    pub fn retryable(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { kind, retryable: true, message: message.into(), source: None }
    }

    /// A permanent error: sending the same request again will fail the same way.
    pub fn permanent(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { kind, retryable: false, message: message.into(), source: None }
    }

    /// Attaches the underlying driver error.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// Whether the same request may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The human-readable description, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}
