//! What the runner and the workers share: drivers, backends, the worker's spec.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lock_core::LockBackend;
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_redlock::{RedLock, RedLockOptions};
use serde::{Deserialize, Serialize};

pub(crate) type DynError = Box<dyn std::error::Error + Send + Sync>;

/// The Redis driver under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Driver {
    /// The `redis` crate (lock-redis-rs).
    RedisRs,
    /// The `fred` crate (lock-fred).
    Fred,
}

impl Driver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Driver::RedisRs => "redis-rs",
            Driver::Fred => "fred",
        }
    }
}

/// The lock the workers take (`--primitive`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Primitive {
    /// The mutex.
    #[default]
    Mutex,
    /// The fair lock (no RedLock form: on several nodes each key lives on one node).
    Fair,
    /// The read-write lock: most sections read, some write (a RedLock on several nodes).
    Rw,
    /// A semaphore of [`PERMITS`] permits (RedLock refuses it: on several nodes each key lives
    /// on one node).
    Semaphore,
}

/// The semaphore's size in the chaos runs: fewer permits than workers, so they contend.
pub(crate) const PERMITS: u32 = 2;

impl Primitive {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Primitive::Mutex => "mutex",
            Primitive::Fair => "fair lock",
            Primitive::Rw => "read-write lock",
            Primitive::Semaphore => "semaphore",
        }
    }

    /// Whether each key lives on one node (no RedLock form) when several run.
    pub(crate) fn sharded(self) -> bool {
        matches!(self, Primitive::Fair | Primitive::Semaphore)
    }
}

/// One node, through the driver, with reconnection (nodes get killed and connections reset).
pub(crate) async fn connect_node(
    driver: Driver,
    url: &str,
    command_timeout: Duration,
    quarantine: Duration,
) -> Result<Arc<dyn LockBackend>, DynError> {
    let connect = Duration::from_secs(2);
    Ok(match driver {
        Driver::RedisRs => Arc::new(
            RedisBackend::builder()
                .connect_timeout(connect)
                .command_timeout(command_timeout)
                .quarantine(quarantine)
                .connect(url)
                .await?,
        ),
        Driver::Fred => Arc::new(
            FredBackend::builder()
                .connect_timeout(connect)
                .command_timeout(command_timeout)
                .quarantine(quarantine)
                .connect(url)
                .await?,
        ),
    })
}

/// The primary that the sentinels at `sentinels` name for `master`, through the driver.
pub(crate) async fn connect_sentinel(
    driver: Driver,
    master: &str,
    sentinels: &[String],
    command_timeout: Duration,
    quarantine: Duration,
) -> Result<Arc<dyn LockBackend>, DynError> {
    let connect = Duration::from_secs(2);
    Ok(match driver {
        Driver::RedisRs => Arc::new(
            RedisBackend::builder()
                .connect_timeout(connect)
                .command_timeout(command_timeout)
                .quarantine(quarantine)
                .connect_sentinel(master, sentinels)
                .await?,
        ),
        Driver::Fred => Arc::new(
            FredBackend::builder()
                .connect_timeout(connect)
                .command_timeout(command_timeout)
                .quarantine(quarantine)
                .connect_sentinel(master, sentinels)
                .await?,
        ),
    })
}

/// The lock backend over the given node URLs: the node itself for one, a RedLock for more.
/// A node that lost its data abstains for `quarantine` (at least the TTL of each request).
pub(crate) async fn connect_backend(
    driver: Driver,
    urls: &[String],
    node_timeout: Duration,
    quarantine: Duration,
) -> Result<Arc<dyn LockBackend>, DynError> {
    let mut nodes = connect_nodes(driver, urls, node_timeout, quarantine).await?;
    if nodes.len() == 1 {
        return Ok(nodes.remove(0));
    }
    Ok(Arc::new(RedLock::with_options(nodes, RedLockOptions::new().node_timeout(node_timeout))?))
}

/// One backend per node URL.
pub(crate) async fn connect_nodes(
    driver: Driver,
    urls: &[String],
    node_timeout: Duration,
    quarantine: Duration,
) -> Result<Vec<Arc<dyn LockBackend>>, DynError> {
    let command_timeout = (node_timeout * 2).max(Duration::from_millis(200));
    let mut nodes = Vec::with_capacity(urls.len());
    for url in urls {
        nodes.push(connect_node(driver, url, command_timeout, quarantine).await?);
    }
    Ok(nodes)
}

/// What a worker process does, passed as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) id: String,
    pub(crate) driver: Driver,
    /// One URL per node: this worker's lane on each node's proxy.
    pub(crate) nodes: Vec<String>,
    pub(crate) oracle: String,
    pub(crate) keys: Vec<String>,
    pub(crate) ttl_ms: u64,
    pub(crate) node_timeout_ms: u64,
    pub(crate) duration_ms: u64,
    pub(crate) out: PathBuf,
    /// Cancellation storm: abort some acquires within 0-5 ms, drop some guards mid-renewal.
    pub(crate) storm: bool,
    /// Write to the fenced resource once more at the end of each section, even after the lease
    /// was lost: only fencing stands between that write and the resource.
    pub(crate) stubborn: bool,
    pub(crate) hold_ms: (u64, u64),
    pub(crate) seed: u64,
    /// The lock to take (on several nodes, the fair lock and the semaphore keep each key on one
    /// node).
    #[serde(default)]
    pub(crate) primitive: Primitive,
    /// Run a mutant of the backend (`fair-barging`), for the checker to catch.
    #[serde(default)]
    pub(crate) mutant: Option<String>,
}
