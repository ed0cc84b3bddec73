//! Real servers for tests: `redis-server` processes, a Redis Cluster, a Sentinel group, and a
//! tiny blocking client to set them up and inspect them, and a `MONITOR` reader.

pub(crate) mod monitor;
pub(crate) mod redis_server;
pub mod resp;
pub(crate) mod sentinel;
