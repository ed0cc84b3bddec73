//! A RedLock over 5 independent `redis-server` nodes, with fencing tokens, surviving the loss
//! of two of them.
//!
//! ```text
//! cargo run -p lock-examples --example redlock
//! ```
//! Spawns its own 5 nodes on free loopback ports and stops them when done.

use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_redis_rs::RedisBackend;
use lock_redlock::RedLock;
use lock_testkit::start_nodes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut servers = start_nodes(5)?;
    let mut nodes = Vec::new();
    for s in &servers {
        nodes.push(RedisBackend::connect(&s.url()).await?);
    }
    let quorum = RedLock::new(nodes)?;
    println!("redlock over {} nodes, quorum {}", quorum.len(), quorum.quorum());
    let config = LockConfig::builder().ttl(Duration::from_secs(5)).fencing(true).build()?;
    let locks = LockClient::with_config(quorum, config)?;

    let guard = locks.mutex("reports:monthly")?.lock().await?;
    println!("held with fence {:?}, valid for {:?}", guard.fencing_token(), guard.remaining());
    guard.release().await?;

    servers[0].kill();
    servers[1].kill();
    println!("killed 2 of 5 nodes");
    let guard = locks.mutex("reports:monthly")?.lock().await?;
    println!(
        "still lockable: fence {:?} (greater: the counters of the quorum carried it)",
        guard.fencing_token()
    );
    guard.release().await?;
    Ok(())
}
