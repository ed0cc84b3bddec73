//! Locks on a Redis Cluster, with both drivers: the lock's keys share a hash tag (`lock:{k}`,
//! `lock:{k}:fence`), so every script runs in one slot, and keys spread over the masters.
//!
//! ```text
//! cargo run -p lock-examples --example cluster
//! ```
//! Spawns a 3-master cluster on loopback (needs `redis-server` and `redis-cli`).

use lock_core::{LockClient, LockConfig};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisCluster;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = RedisCluster::start()?;
    let seeds = cluster.urls();
    let config = LockConfig::builder().fencing(true).build()?;
    let on_redis_rs =
        LockClient::with_config(RedisBackend::builder().connect_cluster(&seeds).await?, config.clone())?;
    let on_fred = LockClient::with_config(FredBackend::builder().connect_cluster(&seeds).await?, config)?;

    for i in 0..6 {
        let key = format!("orders:{i}");
        let a = on_redis_rs.mutex(&key)?.lock().await?;
        let fa = a.fencing_token().ok_or("fencing is on")?;
        assert!(on_fred.mutex(&key)?.try_lock().await?.is_none(), "one lock across drivers");
        a.release().await?;
        let b = on_fred.mutex(&key)?.lock().await?;
        let fb = b.fencing_token().ok_or("fencing is on")?;
        assert!(fb > fa);
        b.release().await?;
        println!("{key}: redis-rs fence {fa}, then fred fence {fb}");
    }
    Ok(())
}
