//! `RedisBackend` behind Redis Sentinel: one primary, one replica and three sentinels spawned
//! on loopback (`lock_testkit::SentinelGroup`), the Sentinel contracts
//! (`lock_testkit::failover`), and clear errors for a wrong configuration.

use lock_redis_rs::{RedisBackend, SentinelConnection};

async fn connect(master: String, sentinels: Vec<String>) -> RedisBackend<SentinelConnection> {
    RedisBackend::builder().connect_sentinel(&master, &sentinels).await.unwrap_or_else(|e| panic!("{e}"))
}

lock_testkit::sentinel_suite!(connect);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_primary_and_follows_it() {
    let group = lock_testkit::SentinelGroup::start().unwrap();
    let backend = connect(group.master_name().to_string(), group.sentinel_urls()).await;
    assert_eq!(backend.primary(), Some(group.primary().unwrap().addr()));
    let new = tokio::task::block_in_place(|| group.failover()).unwrap();
    let locks = lock_core::LockClient::new(backend.clone());
    let opts = lock_core::LockOptions::new().timeout(lock_testkit::failover::FOLLOW_WITHIN);
    locks.mutex("follow").unwrap().lock_with(opts).await.unwrap().release().await.unwrap();
    assert_eq!(backend.primary(), Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_configuration_is_a_clear_error() {
    let none: [&str; 0] = [];
    let err = RedisBackend::builder().connect_sentinel("m", &none).await.unwrap_err();
    assert!(err.to_string().contains("at least one sentinel"), "{err}");
    let err = RedisBackend::builder().connect_sentinel("", &["redis://127.0.0.1:1/"]).await.unwrap_err();
    assert!(err.to_string().contains("master name"), "{err}");
    let group = lock_testkit::SentinelGroup::start().unwrap();
    let err = RedisBackend::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect_sentinel("no-such-master", &group.sentinel_urls())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-master"), "{err}");
    assert!(!err.is_retryable(), "a wrong master name does not fix itself: {err}");
}
