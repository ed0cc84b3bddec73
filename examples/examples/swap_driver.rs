//! One function, generic over the backend, run on both Redis drivers against one server.
//!
//! ```text
//! cargo run -p lock-examples --example swap_driver
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use lock_core::{LockBackend, LockClient, LockConfig, LockError};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisServer;

/// Application code: it never names a driver.
async fn bump_invoice_counter<B: LockBackend>(locks: &LockClient<B>, invoice: u32) -> Result<u64, LockError> {
    let guard = locks.mutex(format!("invoice:{invoice}"))?.lock().await?;
    let fence = guard.fencing_token().map_or(0, |f| f.0);
    println!("  [{}] holding invoice:{invoice} with fence {fence}", locks.backend().name());
    guard.release().await?;
    Ok(fence)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start()?;
            (server.url(), Some(server))
        }
    };
    let config = LockConfig::builder().fencing(true).build()?;

    let on_redis_rs = LockClient::with_config(RedisBackend::connect(&url).await?, config.clone())?;
    let on_fred = LockClient::with_config(FredBackend::connect(&url).await?, config)?;

    let a = bump_invoice_counter(&on_redis_rs, 7).await?;
    let b = bump_invoice_counter(&on_fred, 7).await?;
    assert!(b > a, "both drivers share one lock and one fencing counter");
    println!("same code, two drivers, one lock: fences {a} then {b}");
    Ok(())
}
