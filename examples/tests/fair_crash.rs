//! The fair lock's crashed-waiter contract with a real crash: a `lockctl run --fair` process
//! queues behind a held lock and is killed (SIGKILL) while it waits; the waiter behind it is
//! served within the waiter timeout. On redis-rs, fred and a 3-master Cluster.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use lock_core::{LockBackend, LockKey};
use lock_testkit::{RedisCluster, RedisServer, fair};

/// Starts `lockctl run --fair KEY` against `urls`, waits until it is queued, and kills it.
async fn kill_a_queued_waiter<B: LockBackend>(b: &B, key: &LockKey, urls: &[String], extra: &[&str]) {
    let waiter_timeout = format!("{}ms", fair::fair_config(b).waiter_timeout().as_millis());
    let before = fair::queue_len(b, key).await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    cmd.args(["run", key.as_str(), "--fair", "--waiter-timeout", &waiter_timeout, "--ttl", "10s"]);
    for url in urls {
        cmd.args(["--url", url]);
    }
    cmd.args(extra).args(["--", "true"]).stdout(Stdio::null());
    let mut child: Child = cmd.spawn().expect("lockctl starts");
    fair::wait_queued(b, key, before + 1).await;
    child.kill().expect("SIGKILL the queued waiter");
    let status = child.wait().expect("reaped");
    assert!(!status.success(), "the waiter was killed, not served: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_crashed_waiter_is_skipped() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let backend = lock_redis_rs::RedisBackend::connect(&url).await.unwrap();
    let b = backend.clone();
    fair::crashed_waiter_is_skipped(backend, move |key| async move {
        kill_a_queued_waiter(&b, &key, &[url], &[]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_crashed_waiter_is_skipped() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let backend = lock_fred::FredBackend::connect(&url).await.unwrap();
    let b = backend.clone();
    fair::crashed_waiter_is_skipped(backend, move |key| async move {
        kill_a_queued_waiter(&b, &key, &[url], &["--driver", "fred"]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_crashed_waiter_is_skipped() {
    let cluster: Arc<RedisCluster> = RedisCluster::shared().expect("redis cluster");
    let urls = cluster.urls();
    let backend = lock_redis_rs::RedisBackend::builder().connect_cluster(&urls).await.unwrap();
    let b = backend.clone();
    fair::crashed_waiter_is_skipped(backend, move |key| async move {
        kill_a_queued_waiter(&b, &key, &urls, &["--cluster"]).await;
    })
    .await;
}
