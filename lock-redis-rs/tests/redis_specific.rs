//! The shared Redis-specific tests, run through `RedisBackend::builder().connect` (a
//! reconnecting `ConnectionManager`).

use async_trait::async_trait;
use lock_core::BackendError;
use lock_redis_rs::RedisBackend;
use lock_redis_rs::redis::aio::ConnectionManager;
use lock_testkit::redis_suite::{DriverOptions, RedisDriver};

struct RedisRs;

#[async_trait]
impl RedisDriver for RedisRs {
    type Backend = RedisBackend<ConnectionManager>;

    async fn connect(&self, url: &str, options: DriverOptions) -> Result<Self::Backend, BackendError> {
        RedisBackend::builder()
            .connect_timeout(options.connect_timeout)
            .command_timeout(options.command_timeout)
            .quarantine(options.quarantine)
            .connect(url)
            .await
    }

    fn subscribed_channels(backend: &Self::Backend) -> usize {
        backend.subscribed_channels()
    }
}

lock_testkit::redis_suite!(RedisRs);

/// The doctor's facts over a RESP3 connection built by hand: `CONFIG GET` answers a map there
/// (an array over RESP2), and `INFO` a verbatim string; both are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_facts_are_read_over_resp3() {
    use lock_core::LockBackend;
    let server = lock_testkit::RedisServer::start().unwrap();
    let info = lock_redis_rs::redis::Client::open(server.url()).unwrap().get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(lock_redis_rs::redis::ProtocolVersion::RESP3);
    let client = lock_redis_rs::redis::Client::open(info.set_redis_settings(settings)).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let backend = RedisBackend::from_connection(conn, server.addr());
    lock_testkit::redis_suite::assert_facts_complete(&backend.deployment_facts().await.unwrap());
}
