//! The recovery contracts (`lock_testkit::recovery`) on RedLock over 3 real nodes, with each
//! driver: connections and pub/sub killed on every node, every node restarted at once while a
//! holder holds and a waiter waits, and every node restarted in turn.

use std::time::Duration;

use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_redlock::{RedLock, RedLockOptions};

fn options() -> RedLockOptions {
    RedLockOptions::new().node_timeout(Duration::from_millis(100))
}

async fn redis_rs(urls: Vec<String>, quarantine: Duration) -> RedLock<RedisBackend> {
    let mut nodes = Vec::new();
    for url in &urls {
        nodes.push(RedisBackend::builder().quarantine(quarantine).connect(url).await.unwrap());
    }
    RedLock::with_options(nodes, options()).unwrap()
}

async fn fred(urls: Vec<String>, quarantine: Duration) -> RedLock<FredBackend> {
    let mut nodes = Vec::new();
    for url in &urls {
        nodes.push(FredBackend::builder().quarantine(quarantine).connect(url).await.unwrap());
    }
    RedLock::with_options(nodes, options()).unwrap()
}

mod over_redis_rs {
    lock_testkit::recovery_suite!(3, super::redis_rs);
}

mod over_fred {
    lock_testkit::recovery_suite!(3, super::fred);
}
