#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// The source is arranged by purpose; the public paths stay flat (`lock_testkit::MemoryBackend`,
// `lock_testkit::conformance`, ...), so a new primitive adds a file where a reader expects it
// without moving anything users write.
//
// - `doubles/`: backends standing in for a server (memory, faults, mock);
// - `suites/`: the shared contracts and the macros that stamp them;
// - `servers/`: real `redis-server`, Cluster and Sentinel processes, and the RESP client;
// - `chaos/`: the fault proxy, the history format, the checker and the oracle.
mod chaos;
mod doubles;
mod servers;
mod suites;

pub use chaos::{checker, history};
pub use servers::resp;
pub use suites::{cluster_pubsub, conformance, failover, fair, recovery, redis_suite, shared};

pub(crate) use servers::redis_server;

pub use chaos::oracle::Oracle;
pub use chaos::proxy::{FaultProxy, ProxyMode, ProxyStats};
pub use doubles::faulty::{Fault, Faulty, Op};
pub use doubles::memory::{MemoryBackend, OpCounts};
pub use doubles::mock::{MockBackend, MockFair, MockFairOps, MockShared, MockSharedOps};
pub use servers::monitor::{Monitor, Monitored};
#[cfg(feature = "tls")]
pub use servers::redis_server::TestTls;
pub use servers::redis_server::{
    HarnessError, REDIS_URL_ENV, RedisCluster, RedisServer, TestRedis, start_nodes,
};
pub use servers::sentinel::{MASTER_NAME, SentinelGroup};

/// The workspace README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
