//! The oracle: a `redis-server` that is never faulted, holding the resources a chaos run
//! protects with the lock, so their final state tells whether the lock kept its promise.
//!
//! - A **fenced resource** accepts a write only if its fencing token is at least the last one
//!   it stored (the holder of that token may write again; anything older is stale). The check
//!   runs atomically in a script, and every accepted token is logged (C2).
//! - An **unfenced counter** is incremented by read, sleep, write: it loses updates exactly
//!   when two holders overlap (C3).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use lock_testkit::{Oracle, RedisServer};
//!
//! let server = RedisServer::start()?;
//! let oracle = Oracle::connect(&server.url()).await?;
//! assert!(oracle.fenced_write("ledger", 5).await?);
//! assert!(oracle.fenced_write("ledger", 5).await?, "the holder writes again");
//! assert!(!oracle.fenced_write("ledger", 4).await?, "a stale token is refused");
//! assert_eq!(oracle.accepted("ledger").await?, vec![5, 5]);
//! # Ok(()) }
//! ```

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

const FENCED_WRITE: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token >= last then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// A connection to the oracle node.
#[derive(Clone)]
pub struct Oracle {
    conn: MultiplexedConnection,
    script: redis::Script,
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oracle").finish_non_exhaustive()
    }
}

fn keys(resource: &str) -> (String, String, String) {
    (
        format!("oracle:{resource}:fence"),
        format!("oracle:{resource}:log"),
        format!("oracle:{resource}:counter"),
    )
}

impl Oracle {
    /// Connects to the oracle node at `url`.
    ///
    /// # Errors
    /// The node cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is kept until it returns.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lock_testkit::RedisServer::start()?;
    /// let oracle = lock_testkit::Oracle::connect(&server.url()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> redis::RedisResult<Self> {
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(Self { conn, script: redis::Script::new(FENCED_WRITE) })
    }

    /// Writes to the fenced resource with `token`; `true` if it was accepted (no smaller than
    /// every token stored before).
    ///
    /// # Errors
    /// The oracle cannot be reached.
    ///
    /// # Cancel safety
    /// The write is one script call: cancelled, it happened entirely or not at all.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lock_testkit::RedisServer::start()?;
    /// let oracle = lock_testkit::Oracle::connect(&server.url()).await?;
    /// assert!(oracle.fenced_write("ledger", 3).await?);
    /// assert!(!oracle.fenced_write("ledger", 2).await?);
    /// # Ok(()) }
    /// ```
    pub async fn fenced_write(&self, resource: &str, token: u64) -> redis::RedisResult<bool> {
        let (fence, log, _) = keys(resource);
        let mut conn = self.conn.clone();
        let ok: i64 = self.script.key(fence).key(log).arg(token).invoke_async(&mut conn).await?;
        Ok(ok == 1)
    }

    /// Every token the fenced resource accepted, in order.
    ///
    /// # Errors
    /// The oracle cannot be reached.
    ///
    /// # Cancel safety
    /// Read-only.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lock_testkit::RedisServer::start()?;
    /// let oracle = lock_testkit::Oracle::connect(&server.url()).await?;
    /// oracle.fenced_write("ledger", 3).await?;
    /// assert_eq!(oracle.accepted("ledger").await?, vec![3]);
    /// # Ok(()) }
    /// ```
    pub async fn accepted(&self, resource: &str) -> redis::RedisResult<Vec<u64>> {
        let (_, log, _) = keys(resource);
        self.conn.clone().lrange(log, 0, -1).await
    }

    /// Reads the unfenced counter (0 when unset).
    ///
    /// # Errors
    /// The oracle cannot be reached.
    ///
    /// # Cancel safety
    /// Read-only.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lock_testkit::RedisServer::start()?;
    /// let oracle = lock_testkit::Oracle::connect(&server.url()).await?;
    /// assert_eq!(oracle.counter("jobs").await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn counter(&self, resource: &str) -> redis::RedisResult<i64> {
        let (_, _, counter) = keys(resource);
        let v: Option<i64> = self.conn.clone().get(counter).await?;
        Ok(v.unwrap_or(0))
    }

    /// Writes the unfenced counter (the "write" of read-sleep-write).
    ///
    /// # Errors
    /// The oracle cannot be reached.
    ///
    /// # Cancel safety
    /// One SET: applied entirely or not at all.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lock_testkit::RedisServer::start()?;
    /// let oracle = lock_testkit::Oracle::connect(&server.url()).await?;
    /// oracle.set_counter("jobs", 5).await?;
    /// assert_eq!(oracle.counter("jobs").await?, 5);
    /// # Ok(()) }
    /// ```
    pub async fn set_counter(&self, resource: &str, value: i64) -> redis::RedisResult<()> {
        let (_, _, counter) = keys(resource);
        self.conn.clone().set(counter, value).await
    }
}
