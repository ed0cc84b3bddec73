//! [`TrackingConnection`]: the default connection of [`crate::RedisBackend`]. It reconnects by
//! itself, and keeps Redis client-side tracking on the node marker, so that an uncontended
//! acquire need not read the marker every time (see `docs/marker-tracking.md`).
//!
//! # Why a `SET` may stand without the marker read behind it
//!
//! The data-loss guard grants a plain `SET NX` only when the node marker, read **after** the
//! `SET`, shows the node open (`lock_core::scripts`). With `CLIENT TRACKING ON BCAST PREFIX
//! lock:node`, the server sends an invalidation on this same connection whenever the marker is
//! written or deleted, or the database is flushed (a null key list). Redis runs commands one at
//! a time, and queues an invalidation for our connection when the change runs, so one that ran
//! between a marker read and a later `SET` reaches us **before** the `SET`'s reply; redis-rs
//! hands every push to the connection's push sender synchronously, in stream order, before it
//! delivers the replies after it. So the connection counts the pushes it saw (`epoch`), and:
//!
//! 1. a marker `GET` that found the node open, with the count unchanged from before it was sent
//!    to after its reply, **arms** the connection at that count;
//! 2. a `SET` sent while armed, whose reply comes back with the count still at the armed value,
//!    is vouched for as if the marker had been read behind it.
//!
//! Anything else (a push of any kind, a disconnection, a new connection, an arming older than
//! [`REARM_AFTER`]) takes the path without tracking: the marker `GET` behind the `SET`s.
//! A server that refuses `CLIENT TRACKING` (an `ACL` without it, a renamed command) or RESP3
//! (Redis < 6) is served the same way, always with the `GET`.
//!
//! One change the `GET` sees and tracking does not: `SWAPDB` sends no invalidation. Keep
//! `SWAPDB` away from lock servers (the README's deployment rules); as a bound, an arming is
//! trusted for [`REARM_AFTER`] at most, after which the marker is read again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, PushInfo, RedisError, RedisFuture, Value};

/// How long one arming is trusted: the marker is read again at least this often by a
/// connection in use (a bound for the one change tracking does not report, `SWAPDB`).
pub const REARM_AFTER: Duration = Duration::from_secs(1);

/// What the connection knows of the node marker: see the module docs.
#[derive(Debug, Default)]
pub(crate) struct MarkerTracking {
    /// Whether `CLIENT TRACKING` is on for this connection.
    on: AtomicBool,
    /// The pushes this connection handed over so far (invalidations, disconnection).
    epoch: AtomicU64,
    /// Whether the connection dropped (a disconnection push): the next command reconnects.
    dead: AtomicBool,
    /// The count at which a marker read found the node open, when, and the marker read.
    armed: Mutex<Option<(u64, Instant, Arc<str>)>>,
}

impl MarkerTracking {
    /// Called by the connection's driver for every push, before the replies that follow it.
    fn pushed(&self, info: &PushInfo) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if info.kind == redis::PushKind::Disconnection {
            self.dead.store(true, Ordering::SeqCst);
        }
    }

    /// The push count now: read before a call is sent and after its reply.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The marker value and the count a `SET` sent now may be vouched for at (see the module
    /// docs), when the connection is armed. Comparing the count here only spares a `SET` that
    /// could not be vouched for its wasted trip alone: what decides is
    /// [`MarkerTracking::unchanged_since`] after the reply (a push may still be on its way now).
    pub(crate) fn armed(&self) -> Option<(u64, Arc<str>)> {
        let armed = self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*armed {
            Some((epoch, at, marker)) if *epoch == self.epoch() && at.elapsed() < REARM_AFTER => {
                Some((*epoch, Arc::clone(marker)))
            }
            _ => None,
        }
    }

    /// After a marker read sent at push count `before`: arms the connection when tracking is on,
    /// no push came in since, and the marker shows the node open.
    pub(crate) fn read(&self, before: u64, marker: Option<&str>) {
        if !self.on.load(Ordering::SeqCst) || self.dead.load(Ordering::SeqCst) {
            return;
        }
        let Some(marker) = marker.filter(|m| lock_core::scripts::marker_open(Some(m))) else { return };
        let mut armed = self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the lock after the read: a push counted now disarms it anyway.
        if self.epoch() == before {
            *armed = Some((before, Instant::now(), Arc::from(marker)));
        }
    }

    /// Whether the push count is still `epoch` (no invalidation or disconnection came in).
    pub(crate) fn unchanged_since(&self, epoch: u64) -> bool {
        self.epoch() == epoch && !self.dead.load(Ordering::SeqCst)
    }
}

/// One connection of a [`TrackingConnection`]: its multiplexed connection and what it tracks.
/// Commands sent through it go over this connection only (a reconnect makes a new one).
#[derive(Clone)]
pub(crate) struct Generation {
    conn: MultiplexedConnection,
    id: u64,
    tracking: Arc<MarkerTracking>,
    /// Weak: the connection in use is kept by its owner, which must not be kept by it.
    owner: Weak<Inner>,
    db: i64,
}

impl Generation {
    /// What this connection tracks.
    pub(crate) fn tracking(&self) -> Arc<MarkerTracking> {
        Arc::clone(&self.tracking)
    }
}

struct Inner {
    /// RESP3 (pushes need it); `None` once the server refused it (Redis < 6).
    resp3: Mutex<Option<redis::Client>>,
    /// The same server over RESP2, without tracking.
    resp2: redis::Client,
    config: AsyncConnectionConfig,
    command_timeout: Duration,
    current: Mutex<Option<Generation>>,
    /// One connect at a time: the commands that find no connection wait for it together.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    db: i64,
}

/// A multiplexed connection to one server that reconnects by itself and keeps client-side
/// tracking of the node marker on (see the module docs): what
/// [`crate::RedisBackendBuilder::connect`] builds.
///
/// When a command fails because the connection dropped (a killed connection, a restarted
/// server, an idle timeout), or the server closed it, the next command connects again. The
/// failed command itself fails (retryably): the lock policy retries within the caller's
/// deadline. Each new connection starts unarmed and switches tracking on before any command
/// is sent over it. Clones share the connection.
#[derive(Clone)]
pub struct TrackingConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TrackingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.lock_current();
        f.debug_struct("TrackingConnection")
            .field("addr", &self.inner.resp2.get_connection_info().addr().to_string())
            .field("generation", &current.as_ref().map(|g| g.id))
            .field("tracking", &current.as_ref().map(|g| g.tracking.on.load(Ordering::SeqCst)))
            .finish()
    }
}

/// Whether an error says this connection is gone (the next command should connect again).
fn connection_gone(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl TrackingConnection {
    /// Connects to the server `client` names, with `config`'s timeouts; `command_timeout`
    /// bounds the `CLIENT TRACKING` call of each new connection.
    pub(crate) async fn connect(
        client: redis::Client,
        config: AsyncConnectionConfig,
        command_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let info = client.get_connection_info().clone();
        let settings = info.redis_settings().clone();
        let db = settings.db();
        let resp3 = info.set_redis_settings(settings.set_protocol(redis::ProtocolVersion::RESP3));
        let resp3 = redis::Client::open(resp3).ok();
        let conn = Self {
            inner: Arc::new(Inner {
                resp3: Mutex::new(resp3),
                resp2: client,
                config,
                command_timeout,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generations: AtomicU64::new(0),
                db,
            }),
        };
        conn.generation().await?;
        Ok(conn)
    }

    /// Whether client-side tracking is on for the connection in use now (`false` between a
    /// dropped connection and the next command, and for a server that refused it).
    pub fn tracking(&self) -> bool {
        self.lock_current().as_ref().is_some_and(|g| g.tracking.on.load(Ordering::SeqCst))
    }

    /// How many connections this one has made so far (1 after connecting; each reconnect adds
    /// one).
    pub fn connections(&self) -> u64 {
        self.inner.generations.load(Ordering::SeqCst)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Generation>> {
        self.inner.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self) -> Option<Generation> {
        self.lock_current().as_ref().filter(|g| !g.tracking.dead.load(Ordering::SeqCst)).cloned()
    }

    /// The connection in use, connecting first when there is none (or it dropped).
    pub(crate) async fn generation(&self) -> redis::RedisResult<Generation> {
        if let Some(g) = self.live() {
            return Ok(g);
        }
        let _connecting = self.inner.connecting.lock().await;
        // Another command may have connected while this one waited.
        if let Some(g) = self.live() {
            return Ok(g);
        }
        let generation = self.connect_once().await?;
        *self.lock_current() = Some(generation.clone());
        Ok(generation)
    }

    async fn connect_once(&self) -> redis::RedisResult<Generation> {
        let tracking = Arc::new(MarkerTracking::default());
        let resp3 = self.inner.resp3.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let conn = match resp3 {
            Some(client) => {
                let seen = Arc::clone(&tracking);
                let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                    seen.pushed(&info);
                    Ok(())
                };
                let config = self.inner.config.clone().set_push_sender(sender);
                match client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(conn) => Some(conn),
                    // A server that does not speak RESP3 (`HELLO` unknown) answers; one that
                    // cannot be reached does not, and fails below as it is.
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
                        tracing::info!(error = %e, "redis: no RESP3, so no client-side tracking");
                        *self.inner.resp3.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.inner.resp2.get_multiplexed_async_connection_with_config(&self.inner.config).await?,
        };
        if self.inner.resp3.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
            let mut on = redis::cmd("CLIENT");
            on.arg("TRACKING").arg("ON").arg("BCAST").arg("PREFIX").arg(lock_core::scripts::MARKER_KEY);
            match tokio::time::timeout(self.inner.command_timeout, on.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => tracking.on.store(true, Ordering::SeqCst),
                Ok(Err(e)) if connection_gone(&e) => return Err(e),
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "redis: CLIENT TRACKING refused; the marker is read on every acquire")
                }
                Err(_) => {
                    return Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "CLIENT TRACKING: no reply",
                        format!("within {:?}", self.inner.command_timeout),
                    )));
                }
            }
        }
        let id = self.inner.generations.fetch_add(1, Ordering::SeqCst) + 1;
        if id > 1 {
            tracing::debug!(generation = id, "redis: reconnected");
        }
        Ok(Generation { conn, id, tracking, owner: Arc::downgrade(&self.inner), db: self.inner.db })
    }
}

impl Generation {
    /// Drops this connection from its owner after an error that says it is gone.
    fn forget(&self, e: &RedisError) {
        if !connection_gone(e) {
            return;
        }
        let Some(owner) = self.owner.upgrade() else { return };
        let mut current = owner.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|g| g.id == self.id) {
            tracing::debug!(error = %e, "redis: connection lost; the next command reconnects");
            *current = None;
        }
    }
}

impl ConnectionLike for Generation {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.forget(e);
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
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.forget(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

impl ConnectionLike for TrackingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut generation = self.generation().await?;
            generation.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut generation = self.generation().await?;
            generation.req_packed_commands(pipeline, offset, count).await
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}
