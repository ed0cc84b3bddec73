//! Mapping `redis` errors into [`BackendError`].

use lock_core::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError, RetryMethod, ServerErrorKind};

/// Classifies a driver error. Retryability comes from [`RedisError::retry_method`], except that
/// authentication failures are permanent: a wrong password does not fix itself on retry.
pub(crate) fn map_error(e: RedisError, context: &str) -> BackendError {
    let code = e.code().unwrap_or_default().to_string();
    let kind = if e.is_timeout() {
        BackendErrorKind::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.kind() == ErrorKind::Io {
        BackendErrorKind::Connection
    } else {
        match e.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                BackendErrorKind::Auth
            }
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain,
            ) => BackendErrorKind::Cluster,
            ErrorKind::Server(
                ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown | ServerErrorKind::ReadOnly,
            ) => BackendErrorKind::Unavailable,
            ErrorKind::Server(ServerErrorKind::NoScript) => BackendErrorKind::Script,
            // Mid-failover the sentinels may name a primary that is not one yet.
            ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::NoValidReplicasFoundBySentinel => {
                BackendErrorKind::Unavailable
            }
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Protocol,
            ErrorKind::ClusterConnectionNotFound => BackendErrorKind::Cluster,
            _ => classify_code(&code, &e.to_string()),
        }
    };
    let retryable = match kind {
        BackendErrorKind::Auth | BackendErrorKind::WrongType => false,
        _ => !matches!(e.retry_method(), RetryMethod::NoRetry),
    };
    let message = format!("{context}: {e}");
    let err = if retryable {
        BackendError::retryable(kind, message)
    } else {
        BackendError::permanent(kind, message)
    };
    err.with_source(e)
}

/// Server error codes the driver reports as generic response errors.
fn classify_code(code: &str, text: &str) -> BackendErrorKind {
    let has = |c: &str| code == c || text.contains(c);
    if has("WRONGTYPE") {
        BackendErrorKind::WrongType
    } else if has("NOAUTH") || has("WRONGPASS") || has("NOPERM") {
        BackendErrorKind::Auth
    } else if has("BUSY") || has("OOM") {
        BackendErrorKind::Unavailable
    } else {
        BackendErrorKind::Other
    }
}
