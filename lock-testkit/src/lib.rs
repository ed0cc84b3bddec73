#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checker;
pub mod conformance;
pub mod failover;
mod faulty;
pub mod history;
mod memory;
mod mock;
mod oracle;
mod proxy;
pub mod recovery;
mod redis_server;
pub mod redis_suite;
pub mod resp;
mod sentinel;

pub use faulty::{Fault, Faulty, Op};
pub use memory::{MemoryBackend, OpCounts};
pub use mock::MockBackend;
pub use oracle::Oracle;
pub use proxy::{FaultProxy, ProxyMode, ProxyStats};
#[cfg(feature = "tls")]
pub use redis_server::TestTls;
pub use redis_server::{HarnessError, REDIS_URL_ENV, RedisCluster, RedisServer, TestRedis, start_nodes};
pub use sentinel::{MASTER_NAME, SentinelGroup};

/// The workspace README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
