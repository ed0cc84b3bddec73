//! The smallest complete use of the lock on the `redis` crate: connect, lock, work, release.
//!
//! ```text
//! cargo run -p lock-examples --example basic_redis_rs
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use lock_core::LockClient;
use lock_redis_rs::RedisBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = lock_examples_support::redis_url()?;
    // A ConnectionManager reconnects by itself after a server restart.
    let backend = RedisBackend::builder().connect(&url).await?;
    let locks = LockClient::new(backend);

    let guard = locks.mutex("reports:daily")?.lock().await?;
    println!("holding {} for {:?} more (renewed by the watchdog while held)", guard.key(), guard.remaining());
    // ... the critical section ...
    guard.release().await?;
    println!("released");
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
