#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod backend;
mod error;
mod notifier;
mod sentinel;

pub use backend::{RedisBackend, RedisBackendBuilder};
pub use redis;
pub use sentinel::SentinelConnection;
