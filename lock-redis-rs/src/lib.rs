//! # lock-redis-rs
//!
//! A [`lock_core::LockBackend`] over the [`redis`] crate: single node (multiplexed connection
//! or [`redis::aio::ConnectionManager`]) and Redis Cluster, with release notices over one
//! shared pub/sub connection so waiters wake within a round trip of a release.
//!
//! The crate re-exports [`redis`], so you build clients of the version it was compiled with.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use lock_core::{LockClient, LockConfig};
//! use lock_redis_rs::RedisBackend;
//!
//! let backend = RedisBackend::builder()
//!     .command_timeout(Duration::from_millis(500))
//!     .connect_managed("redis://127.0.0.1:6379/")
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

pub use backend::{RedisBackend, RedisBackendBuilder};
pub use redis;
