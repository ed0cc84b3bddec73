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
