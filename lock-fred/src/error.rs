//! Mapping `fred` errors into [`BackendError`].

use fred::error::{Error, ErrorKind};
use lock_core::{BackendError, BackendErrorKind};

/// Classifies a driver error. Retryability follows fred's error kind: I/O, timeouts,
/// cancellations (a reconnect in progress), cluster redirections and backpressure are
/// transient; authentication, bad arguments (WRONGTYPE), configuration and protocol errors are
/// not. Server error codes fred reports as `Unknown` are read from the message.
pub(crate) fn map_error(e: &Error, context: &str) -> BackendError {
    let details = e.details();
    let code = details.split_whitespace().next().unwrap_or_default();
    let (kind, retryable) = match e.kind() {
        ErrorKind::IO | ErrorKind::Canceled => (BackendErrorKind::Connection, true),
        ErrorKind::Timeout => (BackendErrorKind::Timeout, true),
        ErrorKind::Auth => (BackendErrorKind::Auth, false),
        ErrorKind::Cluster | ErrorKind::Routing => (BackendErrorKind::Cluster, true),
        ErrorKind::Backpressure => (BackendErrorKind::Unavailable, true),
        ErrorKind::Protocol | ErrorKind::Parse => (BackendErrorKind::Protocol, false),
        ErrorKind::InvalidArgument if code == "WRONGTYPE" => (BackendErrorKind::WrongType, false),
        _ => match code {
            "WRONGTYPE" => (BackendErrorKind::WrongType, false),
            "NOAUTH" | "WRONGPASS" | "NOPERM" => (BackendErrorKind::Auth, false),
            "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" => {
                (BackendErrorKind::Unavailable, true)
            }
            "CLUSTERDOWN" | "MOVED" | "ASK" => (BackendErrorKind::Cluster, true),
            "NOSCRIPT" => (BackendErrorKind::Script, false),
            _ => (BackendErrorKind::Other, false),
        },
    };
    let message = format!("{context}: {:?}: {details}", e.kind());
    if retryable { BackendError::retryable(kind, message) } else { BackendError::permanent(kind, message) }
}

pub(crate) fn is_noscript(e: &Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}
