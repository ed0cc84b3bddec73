//! The recovery contracts (`lock_testkit::recovery`) on every constructor of `RedisBackend`
//! that users reach: `RedisBackend::connect` (the shortest), the builder's `connect`, and a
//! Redis Cluster. `connect_without_reconnect` is the documented exception: it never
//! reconnects (see `bare_connection_does_not_recover`).

use std::time::Duration;

use lock_redis_rs::RedisBackend;

async fn builder(urls: Vec<String>, quarantine: Duration) -> RedisBackend {
    RedisBackend::builder().quarantine(quarantine).connect(&urls[0]).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn shortest(urls: Vec<String>, _quarantine: Duration) -> RedisBackend {
    RedisBackend::connect(&urls[0]).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn cluster(
    urls: Vec<String>,
    _quarantine: Duration,
) -> RedisBackend<lock_redis_rs::redis::cluster_async::ClusterConnection> {
    RedisBackend::builder().connect_cluster(&urls).await.unwrap_or_else(|e| panic!("{e}"))
}

mod via_builder {
    lock_testkit::recovery_suite!(1, super::builder);
}

/// `RedisBackend::connect(url)` has the default 60 s quarantine, so the contracts that wait
/// one out run on the builder above (the same code path); the connection ones run here.
mod via_connect {
    lock_testkit::recovery_suite!(connections, super::shortest);

    use lock_testkit::RedisServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarted_server_is_reached_again() {
        let mut server = RedisServer::start().unwrap();
        let backend = super::shortest(vec![server.url()], lock_testkit::recovery::QUARANTINE).await;
        let locks = lock_core::LockClient::new(backend.clone());
        locks.mutex("short").unwrap().lock().await.unwrap().release().await.unwrap();
        server.restart().unwrap();
        server.declare_fresh().unwrap(); // so this test need not wait out the 60 s default
        let guard = locks
            .mutex("short")
            .unwrap()
            .lock_with(lock_core::LockOptions::new().timeout(std::time::Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("no reconnection after a restart: {e}"));
        guard.release().await.unwrap();
    }
}

mod redis_cluster {
    lock_testkit::recovery_suite!(cluster, super::cluster);
}

/// The documented exception: a bare multiplexed connection stays broken after a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connection_does_not_recover() {
    let server = lock_testkit::RedisServer::start().unwrap();
    let backend = RedisBackend::builder().connect_without_reconnect(&server.url()).await.unwrap();
    let locks = lock_core::LockClient::new(backend);
    locks.mutex("bare").unwrap().lock().await.unwrap().release().await.unwrap();
    server.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = locks.mutex("bare").unwrap().try_lock().await.unwrap_err();
    assert!(matches!(err, lock_core::LockError::Backend { .. }), "{err}");
}

/// The bare connection has no response timeout of its own either: each call is bounded by the
/// backend's one timer, so a silent server still fails every call in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connection_times_out_on_a_silent_server() {
    struct Bare;

    #[async_trait::async_trait]
    impl lock_testkit::redis_suite::RedisDriver for Bare {
        type Backend = RedisBackend<lock_redis_rs::redis::aio::MultiplexedConnection>;

        async fn connect(
            &self,
            url: &str,
            options: lock_testkit::redis_suite::DriverOptions,
        ) -> Result<Self::Backend, lock_core::BackendError> {
            RedisBackend::builder()
                .connect_timeout(options.connect_timeout)
                .command_timeout(options.command_timeout)
                .connect_without_reconnect(url)
                .await
        }

        fn subscribed_channels(backend: &Self::Backend) -> usize {
            backend.subscribed_channels()
        }
    }

    lock_testkit::redis_suite::silent_server_times_out_each_call(Bare).await;
}
