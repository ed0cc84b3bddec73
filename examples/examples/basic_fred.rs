//! The same as `basic_redis_rs`, on the `fred` crate: only the backend line changes.
//!
//! ```text
//! cargo run -p lock-examples --example basic_fred
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use lock_core::LockClient;
use lock_fred::FredBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    let backend = FredBackend::connect(&url).await?;
    let locks = LockClient::new(backend);

    let guard = locks.mutex("reports:daily")?.lock().await?;
    println!("holding {} for {:?} more (renewed by the watchdog while held)", guard.key(), guard.remaining());
    guard.release().await?;
    println!("released");
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
