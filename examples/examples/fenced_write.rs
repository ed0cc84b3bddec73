//! Fencing tokens at the protected resource: a holder that stalls past its lease writes late,
//! and the resource refuses the write because a newer holder has written with a higher token.
//! The resource here is a Redis key guarded by a small script (the testkit's `Oracle`); any
//! store that can compare-and-set works the same way (e.g. `UPDATE ... WHERE fence < $1`).
//!
//! ```text
//! cargo run -p lock-examples --example fenced_write
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::time::Duration;

use lock_core::{LockClient, LockConfig, LockOptions};
use lock_redis_rs::RedisBackend;
use lock_testkit::Oracle;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    let config = LockConfig::builder().ttl(Duration::from_millis(300)).fencing(true).build()?;
    let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config)?;
    let ledger = Oracle::connect(&url).await?; // accepts a write only with fence >= the last one
    let mutex = locks.mutex("ledger")?;

    // A holder whose process stalls (no watchdog here, to make the stall visible).
    let stale = mutex.lock_with(LockOptions::new().watchdog(false)).await?;
    let stale_fence = stale.fencing_token().ok_or("fencing is on")?.0;
    println!("A holds the ledger lock with fence {stale_fence}, then stalls");
    tokio::time::sleep(Duration::from_millis(400)).await; // past its TTL

    let fresh = locks.mutex("ledger")?.lock().await?;
    let fence = fresh.fencing_token().ok_or("fencing is on")?.0;
    println!(
        "B holds it now with fence {fence}: write accepted = {}",
        ledger.fenced_write("ledger", fence).await?
    );
    let late = ledger.fenced_write("ledger", stale_fence).await?;
    println!("A wakes up and writes with fence {stale_fence}: write accepted = {late}");
    assert!(!late, "a stale fencing token must be refused");
    drop(stale);
    fresh.release().await?;
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
