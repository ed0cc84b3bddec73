//! A semaphore as a distributed concurrency limit: at most 3 calls to a rate-limited partner
//! API at once, across every process. Each permit is a lease of its own: a holder that dies
//! gives its permit back when its TTL runs out, so permits never leak.
//!
//! ```text
//! cargo run -p lock-examples --example rate_limit_semaphore
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{LockClient, LockConfig, LockOptions};
use lock_redis_rs::RedisBackend;

const LIMIT: u32 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    let config = LockConfig::builder().ttl(Duration::from_secs(2)).build()?;

    // Twelve jobs, each with its own client (as twelve processes would have).
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut jobs = Vec::new();
    for id in 0..12 {
        let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config.clone())?;
        let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
        jobs.push(tokio::spawn(async move {
            let partner = locks.semaphore("partner-api", LIMIT)?;
            let permit = partner.acquire().await?;
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // The call to the partner; a real one would also select! on permit.lost().
            tokio::time::sleep(Duration::from_millis(40)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            permit.release().await?;
            println!("  job {id:>2} done");
            Ok::<(), lock_core::LockError>(())
        }));
    }
    for j in jobs {
        j.await??;
    }
    let most = most.load(Ordering::SeqCst);
    println!("at most {most} calls in flight (limit {LIMIT})");
    assert!(most as u32 <= LIMIT);

    // A holder that dies keeps its permit only until its TTL.
    let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config)?;
    let partner = locks.semaphore("partner-api", LIMIT)?;
    for _ in 0..LIMIT {
        // No watchdog and never released: as a process that died holding its permit.
        let crashed = partner.acquire_with(LockOptions::new().watchdog(false)).await?;
        std::mem::forget(crashed);
    }
    assert!(partner.try_acquire().await?.is_none(), "every permit is taken");
    let started = std::time::Instant::now();
    let permit = partner.acquire_with(LockOptions::new().timeout(Duration::from_secs(5))).await?;
    println!("a dead holder's permit came back after {:?} (its TTL is 2 s)", started.elapsed());
    permit.release().await?;

    // A handle with another size is refused while permits are held.
    let wrong = locks.semaphore("partner-api", LIMIT + 1)?;
    let other = partner.acquire().await?;
    match wrong.try_acquire().await {
        Err(e @ lock_core::LockError::PermitsMismatch { .. }) => println!("refused: {e}"),
        other => return Err(format!("expected a size mismatch, got {other:?}").into()),
    }
    other.release().await?;
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
