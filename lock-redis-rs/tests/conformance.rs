//! The shared conformance suite against real `redis-server` processes: one node through a
//! multiplexed connection, one through `ConnectionManager`, and a 3-master Redis Cluster.

use std::sync::Arc;

use lock_redis_rs::RedisBackend;
use lock_testkit::{RedisCluster, TestRedis};

async fn single_node() -> (RedisBackend, TestRedis) {
    let server = TestRedis::from_env_or_spawn().unwrap_or_else(|e| panic!("{e}"));
    let backend = RedisBackend::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    (backend, server)
}

async fn managed() -> (RedisBackend<lock_redis_rs::redis::aio::ConnectionManager>, TestRedis) {
    let server = TestRedis::from_env_or_spawn().unwrap_or_else(|e| panic!("{e}"));
    let backend =
        RedisBackend::builder().connect_managed(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    (backend, server)
}

async fn cluster() -> (RedisBackend<lock_redis_rs::redis::cluster_async::ClusterConnection>, Arc<RedisCluster>)
{
    let cluster = RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let backend =
        RedisBackend::builder().connect_cluster(&cluster.urls()).await.unwrap_or_else(|e| panic!("{e}"));
    (backend, cluster)
}

mod single {
    lock_testkit::conformance_suite!(super::single_node());
}

mod connection_manager {
    lock_testkit::conformance_suite!(super::managed());
}

mod redis_cluster {
    lock_testkit::conformance_suite!(super::cluster());
}
