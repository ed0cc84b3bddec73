//! # lock-core
//!
//! Driver-agnostic distributed locks: the [`LockBackend`] contract that drivers implement, and
//! all of the policy on top of it, written once: waiting with jittered retry and wake-up,
//! the watchdog that renews a held lease and signals its loss at the local deadline,
//! reentrancy per handle, fencing tokens, the guard lifecycle, and typed errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lock_core::LockError> {
//! use std::time::Duration;
//! use lock_core::{LockClient, LockConfig};
//! use lock_testkit::MemoryBackend;
//!
//! let config = LockConfig::builder().ttl(Duration::from_secs(10)).fencing(true).build()?;
//! let client = LockClient::with_config(MemoryBackend::new(), config)?;
//! let mutex = client.mutex("invoices:7")?;
//!
//! let guard = mutex.lock().await?;
//! let fence = guard.fencing_token().expect("fencing is on");
//! // Reentrant through the same handle: no round trip, same lease.
//! let again = mutex.lock().await?;
//! assert_eq!(again.fencing_token(), Some(fence));
//! drop(again);
//! guard.release().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod backend;
mod backoff;
mod client;
mod config;
pub mod doctor;
mod error;
pub mod hub;
mod lease;
pub mod scripts;
mod types;

pub use backend::{
    AcquireOutcome, AcquireRequest, Capabilities, ExtendOutcome, ExtendRequest, LockBackend, ReleaseOutcome,
    ReleaseWatch,
};
pub use client::{LockClient, LockOptions, Mutex};
pub use config::{LockConfig, LockConfigBuilder, MAX_TTL, MIN_TTL};
pub use error::{BackendError, BackendErrorKind, LockError, LostReason};
pub use lease::{Guard, Lease};
pub use types::{FencingToken, Grant, LockKey, MAX_KEY_LEN, Token, default_drift, validity_deadline};

/// Re-exported so backends and tests name the same clock type.
pub use tokio::time::Instant;
