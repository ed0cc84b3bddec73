//! The recovery contracts (`lock_testkit::recovery`) on every constructor of `FredBackend`:
//! one client (the builder's `connect`, the code path of `FredBackend::connect`), a pool, and a
//! Redis Cluster.

use std::time::Duration;

use lock_fred::FredBackend;
use lock_fred::fred::clients::Pool;

async fn client(urls: Vec<String>, quarantine: Duration) -> FredBackend {
    FredBackend::builder().quarantine(quarantine).connect(&urls[0]).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn pool(urls: Vec<String>, quarantine: Duration) -> FredBackend<Pool> {
    FredBackend::builder()
        .quarantine(quarantine)
        .connect_pool(&urls[0], 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn shortest(urls: Vec<String>, _quarantine: Duration) -> FredBackend {
    FredBackend::connect(&urls[0]).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn cluster(urls: Vec<String>, _quarantine: Duration) -> FredBackend {
    FredBackend::builder().connect_cluster(&urls).await.unwrap_or_else(|e| panic!("{e}"))
}

mod single {
    lock_testkit::recovery_suite!(1, super::client);
}

mod pooled {
    lock_testkit::recovery_suite!(1, super::pool);
}

/// `FredBackend::connect(url)` (default 60 s quarantine): the connection contracts.
mod via_connect {
    lock_testkit::recovery_suite!(connections, super::shortest);
}

mod redis_cluster {
    lock_testkit::recovery_suite!(cluster, super::cluster);
}
