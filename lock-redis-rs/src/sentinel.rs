//! [`SentinelConnection`]: a connection to whichever server the sentinels name as primary,
//! found again after a failover.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value,
};

#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    addr: String,
    generation: u64,
}

struct Inner {
    /// Asked for the primary's address (one question at a time: a failover makes every
    /// in-flight command fail at once, and one answer serves them all).
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    generation: Mutex<u64>,
    config: AsyncConnectionConfig,
    db: i64,
}

/// A multiplexed connection to the primary that the sentinels name for one master name.
///
/// When a command fails in a way that says the primary moved (the connection dropped or was
/// refused, a timeout, `READONLY` from a demoted primary, `MASTERDOWN`), the connection is
/// dropped and the next command asks the sentinels again, and connects to the server they name
/// only once it answers `ROLE` as master. The failed command itself fails (retryably): the lock
/// policy retries it within the caller's deadline, so no command is silently resent to a
/// different server. Sentinel itself kills the clients of a primary it demotes, so a failover
/// is noticed by the next command.
///
/// Built by [`crate::RedisBackendBuilder::connect_sentinel`]. Clones share the connection.
#[derive(Clone)]
pub struct SentinelConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").field("primary", &self.primary()).finish()
    }
}

/// Whether an error says the server we talk to may no longer be the primary.
fn primary_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown))
}

impl SentinelConnection {
    /// Asks the sentinels for the primary and connects to it.
    pub(crate) async fn connect(
        sentinel: SentinelClient,
        config: AsyncConnectionConfig,
        db: i64,
    ) -> redis::RedisResult<Self> {
        let conn = Self {
            inner: Arc::new(Inner {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: Mutex::new(None),
                generation: Mutex::new(0),
                config,
                db,
            }),
        };
        conn.current().await?;
        Ok(conn)
    }

    /// `host:port` of the primary this connection talks to now; `None` between a failure and
    /// the next command, which asks the sentinels again.
    pub fn primary(&self) -> Option<String> {
        self.lock_current().as_ref().map(|c| c.addr.clone())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.inner.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client for the primary the sentinels name now (for the pub/sub subscriber).
    pub(crate) async fn primary_client(&self) -> redis::RedisResult<redis::Client> {
        self.inner.sentinel.lock().await.async_get_client().await
    }

    async fn current(&self) -> redis::RedisResult<Current> {
        if let Some(c) = self.lock_current().clone() {
            return Ok(c);
        }
        let mut sentinel = self.inner.sentinel.lock().await;
        // Another command may have found the primary while this one waited for the sentinel.
        if let Some(c) = self.lock_current().clone() {
            return Ok(c);
        }
        let client = sentinel.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = client.get_multiplexed_async_connection_with_config(&self.inner.config).await?;
        let generation = {
            let mut g = self.inner.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *g += 1;
            *g
        };
        if let Some(old) = self.primary()
            && old != addr
        {
            tracing::info!(from = %old, to = %addr, "sentinel: following the new primary");
        }
        let current = Current { conn, addr, generation };
        *self.lock_current() = Some(current.clone());
        Ok(current)
    }

    fn forget(&self, generation: u64, e: &RedisError) {
        if !primary_may_have_moved(e) {
            return;
        }
        let mut current = self.lock_current();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::debug!(error = %e, "sentinel: asking the sentinels for the primary again");
            *current = None;
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut current = self.current().await?;
            let result = current.conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.forget(current.generation, e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut current = self.current().await?;
            let result = current.conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.forget(current.generation, e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

/// How long [`SentinelConnection`] waits for the sentinels and the primary when connecting.
/// Unlike the plain connections (see `RedisBackendBuilder::connect`), it keeps a response
/// timeout of its own: a command that times out is how it notices a primary that stopped
/// answering, and asks the sentinels again (the backend's timer would only drop the call).
pub(crate) fn connection_config(connect: Duration, command: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_connection_timeout(Some(connect)).set_response_timeout(Some(command))
}
