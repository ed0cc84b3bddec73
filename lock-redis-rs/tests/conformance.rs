//! The shared conformance suite against real `redis-server` processes, for every constructor:
//! `RedisBackend::connect` (reconnecting, the default), the builder's `connect`, the bare
//! `connect_without_reconnect`, and a 3-master Redis Cluster.

use std::sync::Arc;

use lock_redis_rs::RedisBackend;
use lock_testkit::{RedisCluster, TestRedis};

async fn single_node() -> (RedisBackend, TestRedis) {
    let server = TestRedis::from_env_or_spawn().unwrap_or_else(|e| panic!("{e}"));
    let backend = RedisBackend::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    (backend, server)
}

async fn via_builder() -> (RedisBackend, TestRedis) {
    let server = TestRedis::from_env_or_spawn().unwrap_or_else(|e| panic!("{e}"));
    let backend = RedisBackend::builder().connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    (backend, server)
}

async fn no_reconnect() -> (RedisBackend<lock_redis_rs::redis::aio::MultiplexedConnection>, TestRedis) {
    let server = TestRedis::from_env_or_spawn().unwrap_or_else(|e| panic!("{e}"));
    let backend = RedisBackend::builder()
        .connect_without_reconnect(server.url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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
    mod fair {
        lock_testkit::fair_suite!(super::super::single_node());
    }
    mod shared {
        lock_testkit::rw_suite!(super::super::single_node());
        lock_testkit::semaphore_suite!(super::super::single_node());
    }
}

mod builder {
    lock_testkit::conformance_suite!(super::via_builder());
    mod fair {
        lock_testkit::fair_suite!(super::super::via_builder());
    }
}

mod without_reconnect {
    lock_testkit::conformance_suite!(super::no_reconnect());
    mod fair {
        lock_testkit::fair_suite!(super::super::no_reconnect());
    }
}

mod redis_cluster {
    lock_testkit::conformance_suite!(super::cluster());
    mod fair {
        lock_testkit::fair_suite!(super::super::cluster());
    }
    mod shared {
        lock_testkit::rw_suite!(super::super::cluster());
        lock_testkit::semaphore_suite!(super::super::cluster());
    }
    /// Release notices: sharded by default on Redis 7, classic when forced.
    mod pubsub {
        use super::super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sharded_notice_stays_on_the_owning_shard() {
            let (backend, cluster) = cluster().await;
            assert_eq!(backend.pubsub_mode(), lock_core::scripts::PubSubMode::Sharded);
            lock_testkit::cluster_pubsub::sharded_notice_stays_on_the_owning_shard(backend, &cluster).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn classic_notice_reaches_every_node() {
            let cluster = RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"));
            let backend = RedisBackend::builder()
                .sharded_pubsub(false)
                .connect_cluster(&cluster.urls())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(backend.pubsub_mode(), lock_core::scripts::PubSubMode::Classic);
            lock_testkit::cluster_pubsub::classic_notice_reaches_every_node(backend, &cluster).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sharded_subscription_follows_a_slot_move() {
            // A cluster of its own: the test moves a slot.
            let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = RedisBackend::builder()
                .connect_cluster(&cluster.urls())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            lock_testkit::cluster_pubsub::sharded_subscription_follows_a_slot_move(backend, &cluster).await;
        }
    }
}
