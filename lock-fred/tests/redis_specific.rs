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

/// A fred client built by hand, given to `FredBackend::from_client`, with the `Interrupt`
/// blocking policy: fred may hold a command back to unblock a connection first, so the
/// acquire's SET and marker GET cannot rely on being handed over in the order they are polled
/// and go as one pipeline instead; and the backend's own timer bounds each call (such a
/// client need not have a command timeout).
struct FredInterrupt;

#[async_trait]
impl RedisDriver for FredInterrupt {
    type Backend = FredBackend;

    async fn connect(&self, url: &str, _options: DriverOptions) -> Result<Self::Backend, BackendError> {
        use lock_fred::fred::interfaces::ClientLike;
        use lock_fred::fred::prelude::{Builder, Config};
        let mut config = Config::from_url(url).map_err(|e| {
            lock_core::BackendError::permanent(lock_core::BackendErrorKind::Other, e.to_string())
        })?;
        config.blocking = lock_fred::fred::types::config::Blocking::Interrupt;
        let client = Builder::from_config(config).build().map_err(|e| {
            lock_core::BackendError::permanent(lock_core::BackendErrorKind::Other, e.to_string())
        })?;
        client.init().await.map_err(|e| {
            lock_core::BackendError::retryable(lock_core::BackendErrorKind::Connection, e.to_string())
        })?;
        Ok(FredBackend::from_client(client, url, None))
    }

    fn subscribed_channels(backend: &Self::Backend) -> usize {
        backend.subscribed_channels()
    }
}

#[tokio::test]
async fn a_hand_built_client_with_the_interrupt_policy_still_checks_the_marker_in_one_round_trip() {
    lock_testkit::redis_suite::unfenced_lock_is_one_round_trip_that_checks_the_marker(FredInterrupt).await;
}

/// The doctor's facts over a RESP3 client: `CONFIG GET` answers a map there (an array over
/// RESP2), and `INFO` a verbatim string; both are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_facts_are_read_over_resp3() {
    use lock_core::LockBackend;
    let server = lock_testkit::RedisServer::start().unwrap();
    let mut config = lock_fred::fred::prelude::Config::from_url(&server.url()).unwrap();
    config.version = lock_fred::fred::types::RespVersion::RESP3;
    let backend = lock_fred::FredBackend::builder().connect_config(config).await.unwrap();
    lock_testkit::redis_suite::assert_facts_complete(&backend.deployment_facts().await.unwrap());
}
