//! A fair lock: six workers, each with its own client (as six processes would have), ask for
//! one lock while it is held; they are served in the order they asked, and each release wakes
//! the next in line only. A plain mutex would let whoever happens to retry first win.
//!
//! ```text
//! cargo run -p lock-examples --example fair_queue
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_redis_rs::RedisBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    // A crashed waiter keeps its place for at most 2 s; then the next one is served.
    let config =
        LockConfig::builder().ttl(Duration::from_secs(5)).waiter_timeout(Duration::from_secs(2)).build()?;
    let first = LockClient::with_config(RedisBackend::connect(&url).await?, config.clone())?;
    let held = first.fair_mutex("payouts")?.lock().await?;
    println!("the lock is held; six workers queue one after the other");

    let served = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for id in 1..=6 {
        let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config.clone())?;
        let served = Arc::clone(&served);
        workers.push(tokio::spawn(async move {
            let guard = locks.fair_mutex("payouts")?.lock().await?;
            println!("  worker {id} has the lock");
            served.lock().unwrap_or_else(|p| p.into_inner()).push(id);
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.release().await?;
            Ok::<(), lock_core::LockError>(())
        }));
        // Arrival order is the order the server queued them in; space them out a little.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Nobody may cut in line: a try finds the queue and gives up.
    assert!(first.fair_mutex("payouts")?.try_lock().await?.is_none());
    held.release().await?;
    for w in workers {
        w.await??;
    }
    let served = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("served in order {served:?}");
    assert_eq!(served, (1..=6).collect::<Vec<_>>(), "first come, first served");
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
