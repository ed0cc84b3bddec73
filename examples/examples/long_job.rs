//! A job that runs longer than the lock's TTL: the watchdog renews the lease while the job
//! works, and the job stops cleanly, at once, when `lost()` says the lease is gone. Here the
//! loss is provoked by deleting the key on the server (as an operator, or an evicting server,
//! might).
//!
//! ```text
//! cargo run -p lock-examples --example long_job
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_redis_rs::RedisBackend;
use lock_redis_rs::redis;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    let config = LockConfig::builder().ttl(Duration::from_millis(600)).build()?; // renewed every 200 ms
    let locks = LockClient::with_config(RedisBackend::builder().connect(&url).await?, config)?;
    let guard = locks.mutex("jobs:reindex")?.lock().await?;

    // Somebody deletes the key 1.5 s in (three TTLs: the watchdog kept it alive until then).
    let url2 = url.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        if let Ok(client) = redis::Client::open(url2)
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg("lock:{jobs:reindex}").query_async(&mut conn).await;
        }
    });

    let job = async {
        for batch in 1..=100 {
            tokio::time::sleep(Duration::from_millis(100)).await; // one batch of work
            println!("batch {batch} done, lease valid for {:?} more", guard.remaining());
        }
    };
    tokio::select! {
        () = job => println!("job finished"),
        reason = guard.lost() => println!("lease lost ({reason}): stopping before the next batch"),
    }
    // Releasing a lost lease reports it; nothing of someone else's is deleted.
    match guard.release().await {
        Ok(()) => println!("released"),
        Err(e) => println!("release: {e}"),
    }
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
