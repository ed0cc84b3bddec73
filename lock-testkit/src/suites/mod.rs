//! The shared suites: contracts as named `pub async fn`s, and the macros that stamp them on a
//! backend. One file per family of contracts.

pub mod cluster_pubsub;
pub mod conformance;
pub mod failover;
pub mod fair;
pub mod recovery;
pub mod redis_suite;
pub mod shared;
