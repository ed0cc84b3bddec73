#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod backend;
mod backoff;
mod client;
pub mod coalesce;
mod config;
pub mod deadline;
pub mod doctor;
mod error;
mod fair;
pub mod hub;
mod lease;
mod renew;
mod rw;
pub mod scripts;
mod telemetry;
mod types;

pub use backend::{
    AcquireOutcome, AcquireRequest, Capabilities, ExtendOutcome, ExtendRequest, FairBackend, FairOutcome,
    FairRequest, HandOver, Hold, HoldOutcome, HoldRequest, LockBackend, Members, ReleaseOutcome,
    ReleaseWatch, Renewal, SharedBackend,
};
pub use client::{FairMutex, LockClient, LockOptions, Mutex};
pub use config::{DEFAULT_WAITER_TIMEOUT, LockConfig, LockConfigBuilder, MAX_TTL, MIN_TTL};
pub use error::{BackendError, BackendErrorKind, LockError, LostReason};
pub use lease::{Guard, Lease};
pub use renew::RenewalStats;
pub use rw::{RwLock, Semaphore};
pub use types::{FencingToken, Grant, LockKey, MAX_KEY_LEN, Token, default_drift, validity_deadline};

/// Re-exported so backends and tests name the same clock type.
pub use tokio::time::Instant;
