//! A read-write lock guarding a cache that many readers use and one writer refreshes: readers
//! share the lock, the refresh waits for them, and readers that arrive while it waits queue
//! behind it (the writer is not starved). Each read lock carries the last writer's fencing
//! token, so the cache can refuse a reader that read data older than what it already holds.
//!
//! ```text
//! cargo run -p lock-examples --example rw_cache
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{LockClient, LockConfig, LockError};
use lock_redis_rs::RedisBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    let config = LockConfig::builder().ttl(Duration::from_secs(5)).fencing(true).build()?;
    let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config)?;

    // The first fill: a writer, with a fencing token above every earlier writer's.
    let cache = locks.rw_lock("cache:prices")?;
    let fill = cache.write().await?;
    let version = fill.fencing_token().ok_or("fencing is on")?;
    println!("filled the cache as writer {version:?}");
    fill.release().await?;

    // Eight readers at once, each with its own handle (as eight processes would have).
    let reading = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for id in 0..8 {
        let (rw, reading, most) = (locks.rw_lock("cache:prices")?, Arc::clone(&reading), Arc::clone(&most));
        readers.push(tokio::spawn(async move {
            let read = rw.read().await?;
            // Every reader sees the token of the last writer: what it reads is that version.
            assert_eq!(read.fencing_token(), Some(version), "reader {id}");
            let now = reading.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            reading.fetch_sub(1, Ordering::SeqCst);
            read.release().await
        }));
    }
    for r in readers {
        r.await??;
    }
    println!("{} readers held the lock at once", most.load(Ordering::SeqCst));

    // A refresh while a reader holds: it waits for the reader; a reader that comes later
    // waits for the refresh.
    let long_read = locks.rw_lock("cache:prices")?.read().await?;
    let refresh = {
        let rw = locks.rw_lock("cache:prices")?;
        tokio::spawn(async move {
            let w = rw.write().await?;
            println!("refreshing as writer {:?}", w.fencing_token());
            tokio::time::sleep(Duration::from_millis(30)).await;
            let token = w.fencing_token();
            w.release().await?;
            Ok::<_, LockError>(token)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = locks.rw_lock("cache:prices")?;
    assert!(late.try_read().await?.is_none(), "a reader arriving now queues behind the refresh");
    long_read.release().await?;
    let refreshed = refresh.await??;
    let read = late.read().await?;
    assert_eq!(read.fencing_token(), refreshed, "the late reader reads the refreshed version");
    println!("the late reader read version {:?}", read.fencing_token());

    // Through one handle: a read while writing is a downgrade; the reverse is refused.
    read.release().await?;
    let writer = locks.rw_lock("cache:prices")?;
    let w = writer.write().await?;
    let kept = writer.read().await?; // downgrade: granted beside the write lock
    w.release().await?;
    assert!(matches!(writer.write().await, Err(LockError::Upgrade { .. })));
    kept.release().await?;
    println!("downgrade granted, upgrade refused: done");
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
