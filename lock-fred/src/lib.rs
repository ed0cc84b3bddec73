//! # lock-fred
//!
//! A [`lock_core::LockBackend`] over the [`fred`] crate: a single client, a pool, or a Redis
//! Cluster, with release notices through fred's subscriber client. It runs the same scripts on
//! the same keys as `lock-redis-rs`, so the two drivers interoperate: swap one for the other
//! without changing a line of lock code.
//!
//! The crate re-exports [`fred`], so you build clients of the version it was compiled with.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use lock_core::{LockClient, LockConfig};
//! use lock_fred::FredBackend;
//!
//! let backend = FredBackend::builder()
//!     .command_timeout(Duration::from_millis(500))
//!     .connect_pool("redis://127.0.0.1:6379/", 4)
//!     .await?;
//! let locks = LockClient::with_config(backend, LockConfig::builder().fencing(true).build()?)?;
//! locks.with_lock("nightly-report", |lease| async move {
//!     println!("fence {:?}", lease.fencing_token());
//! }).await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod backend;
mod error;
mod notifier;

pub use backend::{FredBackend, FredBackendBuilder};
pub use fred;
