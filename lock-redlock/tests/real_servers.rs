//! RedLock over real `redis-server` nodes: the conformance suite over 3 nodes, a mixed quorum
//! of both drivers, and a minority of nodes killed.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockBackend, LockClient, LockConfig, LockOptions};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_redlock::RedLock;
use lock_testkit::{RedisServer, start_nodes};

async fn redis_rs_quorum(n: usize) -> (RedLock<RedisBackend>, Vec<RedisServer>) {
    let servers = start_nodes(n).unwrap_or_else(|e| panic!("{e}"));
    let mut nodes = Vec::new();
    for s in &servers {
        nodes.push(RedisBackend::connect(&s.url()).await.unwrap_or_else(|e| panic!("{e}")));
    }
    (RedLock::new(nodes).unwrap(), servers)
}

async fn mixed_quorum() -> (RedLock<Arc<dyn LockBackend>>, Vec<RedisServer>) {
    let servers = start_nodes(5).unwrap_or_else(|e| panic!("{e}"));
    let mut nodes: Vec<Arc<dyn LockBackend>> = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        if i < 2 {
            nodes.push(Arc::new(RedisBackend::connect(&s.url()).await.unwrap()));
        } else {
            nodes.push(Arc::new(FredBackend::connect(&s.url()).await.unwrap()));
        }
    }
    (RedLock::new(nodes).unwrap(), servers)
}

mod three_redis_rs_nodes {
    lock_testkit::conformance_suite!(super::redis_rs_quorum(3));
}

mod two_redis_rs_and_three_fred_nodes {
    lock_testkit::conformance_suite!(super::mixed_quorum());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_of_killed_nodes_does_not_stop_locking() {
    let (rl, mut servers) = redis_rs_quorum(5).await;
    let config = LockConfig::builder().ttl(Duration::from_secs(5)).fencing(true).build().unwrap();
    let locks = LockClient::with_config(rl, config).unwrap();
    let before = locks.mutex("minority").unwrap().lock().await.unwrap();
    let first = before.fencing_token().unwrap();
    before.release().await.unwrap();
    servers[0].kill();
    servers[3].kill();
    let guard = locks
        .mutex("minority")
        .unwrap()
        .lock_with(LockOptions::new().timeout(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("3 of 5 nodes should suffice: {e}"));
    assert!(guard.fencing_token().unwrap() > first);
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_of_killed_nodes_fails_with_the_nodes_named() {
    let (rl, mut servers) = redis_rs_quorum(3).await;
    let locks = LockClient::new(rl);
    servers[0].kill();
    servers[1].kill();
    let err = locks.mutex("majority").unwrap().try_lock().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&servers[0].addr()) && msg.contains(&servers[1].addr()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_twice_is_rejected() {
    let server = RedisServer::start().unwrap();
    let a = RedisBackend::connect(&server.url()).await.unwrap();
    let b = RedisBackend::connect(&server.url()).await.unwrap();
    let err = RedLock::new(vec![a, b]).unwrap_err();
    assert!(err.to_string().contains("same server"), "{err}");
}
