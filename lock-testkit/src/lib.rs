//! # lock-testkit
//!
//! Everything a test of a lock needs:
//! - [`MemoryBackend`]: a lock store on tokio's clock, so policy tests run on paused time;
//! - [`Faulty`]: scripted errors, latency, hangs and lost replies around any backend;
//! - [`MockBackend`]: a `mockall` mock of [`lock_core::LockBackend`];
//! - [`conformance`]: the shared contract suite, run for a backend with
//!   [`conformance_suite!`];
//! - [`RedisServer`] / [`RedisCluster`]: real `redis-server` processes on free loopback ports,
//!   killed on drop, and [`resp`], a tiny blocking client to inspect them;
//! - [`FaultProxy`]: a TCP proxy that adds latency, drops replies, blackholes or resets, per
//!   client lane;
//! - [`history`], [`checker`] and [`Oracle`]: what the chaos runner logs, how it is judged
//!   against C1-C8, and the never-faulted node holding the fenced resource.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use lock_testkit::{conformance, MemoryBackend};
//! conformance::release_by_other_owner_is_refused(MemoryBackend::new()).await;
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checker;
pub mod conformance;
mod faulty;
pub mod history;
mod memory;
mod mock;
mod oracle;
mod proxy;
mod redis_server;
pub mod redis_suite;
pub mod resp;

pub use faulty::{Fault, Faulty, Op};
pub use memory::{MemoryBackend, OpCounts};
pub use mock::MockBackend;
pub use oracle::Oracle;
pub use proxy::{FaultProxy, ProxyMode, ProxyStats};
pub use redis_server::{HarnessError, REDIS_URL_ENV, RedisCluster, RedisServer, TestRedis, start_nodes};

/// The workspace README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
