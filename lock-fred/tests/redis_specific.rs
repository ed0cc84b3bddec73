//! The shared Redis-specific tests, run through `FredBackend`.

use async_trait::async_trait;
use lock_core::BackendError;
use lock_fred::FredBackend;
use lock_testkit::redis_suite::{DriverOptions, RedisDriver};

struct Fred;

#[async_trait]
impl RedisDriver for Fred {
    type Backend = FredBackend;

    async fn connect(&self, url: &str, options: DriverOptions) -> Result<Self::Backend, BackendError> {
        FredBackend::builder()
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

lock_testkit::redis_suite!(Fred);
