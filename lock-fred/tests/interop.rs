//! The two drivers share scripts and keys: a lock taken through one excludes the other, and a
//! release through one wakes the other's waiters.

use std::time::Duration;

use lock_core::{Instant, LockBackend, LockClient, LockConfig};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisServer;

const MS: Duration = Duration::from_millis(1);

async fn both(server: &RedisServer) -> (FredBackend, RedisBackend) {
    let fred = FredBackend::connect(&server.url()).await.unwrap();
    let redis = RedisBackend::connect(&server.url()).await.unwrap();
    (fred, redis)
}

fn config() -> LockConfig {
    LockConfig::builder()
        .ttl(30_000 * MS)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .fencing(true)
        .build()
        .unwrap()
}

async fn excludes<A: LockBackend, B: LockBackend>(a: A, b: B, key: &str) {
    let a = LockClient::with_config(a, config()).unwrap();
    let b = LockClient::with_config(b, config()).unwrap();
    let held = a.mutex(key).unwrap().lock().await.unwrap();
    assert!(
        b.mutex(key).unwrap().try_lock().await.unwrap().is_none(),
        "{} ignored a lock of {}",
        b.backend().name(),
        a.backend().name()
    );
    let first = held.fencing_token().unwrap();
    held.release().await.unwrap();
    let next = b.mutex(key).unwrap().try_lock().await.unwrap().expect("free after release");
    assert!(next.fencing_token().unwrap() > first, "the fencing counter is shared");
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_lock_excludes_redis_rs() {
    let server = RedisServer::start().unwrap();
    let (fred, redis) = both(&server).await;
    excludes(fred, redis, "interop:a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_lock_excludes_fred() {
    let server = RedisServer::start().unwrap();
    let (fred, redis) = both(&server).await;
    excludes(redis, fred, "interop:b").await;
}

async fn wakes<A: LockBackend + Clone, B: LockBackend + Clone>(holder: A, waiter: B, key: &'static str) {
    let holder = LockClient::with_config(holder, config()).unwrap();
    let waiter = LockClient::with_config(waiter, config()).unwrap();
    let guard = holder.mutex(key).unwrap().lock().await.unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex(key).unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(300 * MS).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let gap = task.await.unwrap().saturating_duration_since(released);
    assert!(gap < 50 * MS, "woken {gap:?} after a release by the other driver (backoff is 10 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_release_wakes_fred_waiter() {
    let server = RedisServer::start().unwrap();
    let (fred, redis) = both(&server).await;
    wakes(redis, fred, "interop:wake-fred").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_release_wakes_redis_rs_waiter() {
    let server = RedisServer::start().unwrap();
    let (fred, redis) = both(&server).await;
    wakes(fred, redis, "interop:wake-redis-rs").await;
}
