//! [`RedisBackend`]: the `redis` crate behind [`LockBackend`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::FencingToken;
use lock_core::coalesce::{self, Batches, SetNx, SetPipeline, SetReplies};
use lock_core::deadline;
use lock_core::doctor::{CONFIG_NAMES, NodeFacts};
use lock_core::hub::HubTask;
use lock_core::scripts::{self, LuaScript, NodeGuard, PubSubMode, RedisKeys, ScriptRunner};
use lock_core::{
    AcquireOutcome, AcquireRequest, BackendError, BackendErrorKind, Capabilities, ExtendOutcome,
    ExtendRequest, FairBackend, FairOutcome, FairRequest, LockBackend, LockKey, ReleaseOutcome, ReleaseWatch,
    Token,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, ServerErrorKind, Value};

use crate::error::map_error;
use crate::notifier::{self, ClassicSource, PubsubSource, ShardedSource};
use crate::sentinel::{self, SentinelConnection};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    endpoint: String,
    command_timeout: Duration,
    /// Gathers the uncontended acquires of this server into pipelines (one marker read each).
    batches: Batches,
    /// The data-loss guard (single nodes); `None` in Cluster.
    guard: Option<NodeGuard>,
    /// Where release notices are subscribed; `None` turns wake-up off.
    pubsub_client: Option<PubsubSource>,
    /// The master name, when the primary is found through Sentinel.
    sentinel_master: Option<String>,
    /// How releases are announced, when this is a Cluster connected by
    /// [`RedisBackendBuilder::connect_cluster`] (reported by the doctor); classic otherwise.
    cluster_pubsub: Option<PubSubMode>,
    /// Started on the first wait, so construction needs no runtime.
    notifier: OnceLock<HubTask>,
}

/// A lock backend over the `redis` crate.
///
/// `C` is the connection: [`ConnectionManager`], which reconnects by itself after a killed
/// connection, a restarted server or an idle timeout ([`RedisBackend::connect`], the default),
/// the async [`ClusterConnection`] ([`RedisBackendBuilder::connect_cluster`]), or a bare
/// [`MultiplexedConnection`] that never reconnects
/// ([`RedisBackendBuilder::connect_without_reconnect`]); any [`ConnectionLike`] works through
/// [`RedisBackend::from_connection`]. Clones share the connection and the pub/sub subscriber.
///
/// On a single node, every acquire also checks the server's data-loss marker in the same round
/// trip (inside the acquire script, or, for an unfenced lock, a `GET` behind its `SET NX`,
/// shared by the acquires sent together: [`lock_core::coalesce`]): a server that lost its data
/// grants nothing for its quarantine (see [`lock_core::scripts`] and
/// [`RedisBackendBuilder::quarantine`]).
///
/// Each operation is one `EVALSHA` of the shared scripts in [`lock_core::scripts`] (with `EVAL`
/// as the fallback on `NOSCRIPT`), so a lock/unlock cycle is two round trips, and locks taken
/// through this backend exclude those taken through any other driver of this workspace.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lock_core::LockClient;
/// use lock_redis_rs::RedisBackend;
///
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
/// let locks = LockClient::new(backend);
/// let guard = locks.mutex("orders:42")?.lock().await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct RedisBackend<C = ConnectionManager> {
    conn: C,
    shared: Arc<Shared>,
}

impl<C: Clone> Clone for RedisBackend<C> {
    fn clone(&self) -> Self {
        Self { conn: self.conn.clone(), shared: Arc::clone(&self.shared) }
    }
}

impl<C> std::fmt::Debug for RedisBackend<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.shared.endpoint)
            .field("wake_up", &self.shared.pubsub_client.is_some())
            .finish()
    }
}

/// Options for connecting a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    connect_timeout: Duration,
    command_timeout: Duration,
    wake_up: bool,
    root_ca: Option<Vec<u8>>,
    quarantine: Duration,
    primary_auth: Option<(Option<String>, Redacted)>,
    sharded_pubsub: bool,
}

/// A password, kept out of `Debug` output.
#[derive(Clone)]
struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Default for RedisBackendBuilder {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            wake_up: true,
            root_ca: None,
            quarantine: scripts::DEFAULT_QUARANTINE,
            primary_auth: None,
            sharded_pubsub: true,
        }
    }
}

fn config_error(what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, what.to_string())
}

impl RedisBackendBuilder {
    /// How long connecting may take. Default 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take before it fails as a retryable timeout. Default 2 s.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long a server that lost its data (restart without persistence, `FLUSHALL`, failover
    /// to an empty replica) grants no lock, counted by the server's clock from when a client
    /// first notices the loss. Set it to at least the longest TTL any client uses on this
    /// server (the TTL of the noticing request is the floor anyway). Default
    /// [`lock_core::scripts::DEFAULT_QUARANTINE`] (60 s). Not used in Cluster.
    #[must_use]
    pub fn quarantine(mut self, quarantine: Duration) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// Whether waiters are woken by release notices over pub/sub. Default on.
    #[must_use]
    pub fn wake_up(mut self, on: bool) -> Self {
        self.wake_up = on;
        self
    }

    /// Whether a Redis Cluster announces releases through sharded pub/sub (`SPUBLISH` and
    /// `SSUBSCRIBE` on the shard that owns the key, see [`PubSubMode`]) when its servers
    /// support it (Redis >= 7, found out once when connecting). Default on; off forces classic
    /// `PUBLISH`, which the cluster bus copies to every node. Every process waiting on the same
    /// keys should make the same choice. Only [`RedisBackendBuilder::connect_cluster`] uses it:
    /// a single server always uses classic pub/sub.
    ///
    /// ```
    /// let builder = lock_redis_rs::RedisBackend::builder().sharded_pubsub(false);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn sharded_pubsub(mut self, on: bool) -> Self {
        self.sharded_pubsub = on;
        self
    }

    /// Trusts this CA (PEM) for `rediss://` URLs instead of the system's roots: for servers
    /// with certificates from a private CA. Needs the `tls` feature.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_ca = Some(pem.into());
        self
    }

    fn open(&self, url: &str) -> Result<redis::Client, BackendError> {
        let invalid = |e| map_error(e, &format!("invalid redis url {url:?}"));
        if url.starts_with("rediss://") && !cfg!(feature = "tls") {
            return Err(config_error(format!(
                "{url:?} asks for TLS, but lock-redis-rs was built without its `tls` feature"
            )));
        }
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; ring is ours (idempotent).
            let _ = rustls::crypto::ring::default_provider().install_default();
            if let Some(ca) = &self.root_ca {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
                return redis::Client::build_with_tls(url, certs).map_err(invalid);
            }
        }
        let _ = &self.root_ca;
        redis::Client::open(url).map_err(invalid)
    }

    fn finish<C>(
        &self,
        conn: C,
        endpoint: String,
        pubsub: Option<PubsubSource>,
        guarded: bool,
    ) -> RedisBackend<C> {
        RedisBackend {
            conn,
            shared: Arc::new(Shared {
                endpoint,
                command_timeout: self.command_timeout,
                batches: Batches::default(),
                guard: guarded.then(|| NodeGuard::new(self.quarantine)),
                pubsub_client: pubsub.filter(|_| self.wake_up),
                sentinel_master: None,
                cluster_pubsub: None,
                notifier: OnceLock::new(),
            }),
        }
    }

    async fn within<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r.map_err(|e| map_error(e, what)),
            Err(_) => Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!("{what}: no connection within {:?}", self.connect_timeout),
            )),
        }
    }

    /// Connects to a single node through a [`ConnectionManager`], which reconnects by itself
    /// after a killed connection, a restarted server or an idle timeout in between: the
    /// default, and what [`RedisBackend::connect`] runs.
    ///
    /// # Errors
    /// An invalid URL, a wrong password, or a server that cannot be reached within the connect
    /// timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use lock_redis_rs::RedisBackend;
    /// let backend = RedisBackend::builder()
    ///     .command_timeout(Duration::from_millis(500))
    ///     .connect("redis://locker:secret@127.0.0.1:6379/")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self, url: &str) -> Result<RedisBackend<ConnectionManager>, BackendError> {
        let client = self.open(url)?;
        let endpoint = client.get_connection_info().addr().to_string();
        // Reconnect at once, then back off 10, 20, 40 ... ms up to 1 s, and never give up for
        // good: each failed command starts a new round.
        // No response timeout of the connection's own: every call is already bounded by one
        // timer of this backend (`eval`, `send_sets`...), which also covers a call waiting for
        // a reconnect (the manager's response timeout does not), so a second timer per command
        // would only cost a timer-wheel entry on every command.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_exponent_base(2.0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(8);
        let what = format!("connecting to {endpoint}");
        // The manager retries failed connects (auth failures too) until its timeout; one plain
        // connection first surfaces a wrong password or a refused port as what it is.
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        drop(self.within(&what, client.get_multiplexed_async_connection_with_config(&probe)).await?);
        let conn = self.within(&what, ConnectionManager::new_with_config(client.clone(), config)).await?;
        Ok(self.finish(conn, endpoint, Some(PubsubSource::client(client)), true))
    }

    /// The same as [`RedisBackendBuilder::connect`], which reconnects now.
    ///
    /// # Errors
    /// As [`RedisBackendBuilder::connect`].
    #[deprecated(since = "0.2.0", note = "`connect` reconnects by itself now; use it")]
    pub async fn connect_managed(self, url: &str) -> Result<RedisBackend<ConnectionManager>, BackendError> {
        self.connect(url).await
    }

    /// Connects one bare [`MultiplexedConnection`] that **never reconnects**: after one killed
    /// connection, server restart or proxy idle timeout, every later call fails with a broken
    /// pipe, and leases are lost at their deadline. Want it only when something else owns
    /// recovery (you rebuild the backend on error) or for a short-lived tool; services want
    /// [`RedisBackendBuilder::connect`].
    ///
    /// # Errors
    /// An invalid URL, or a server that cannot be reached within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_redis_rs::RedisBackend;
    /// let backend = RedisBackend::builder().connect_without_reconnect("redis://127.0.0.1:6379/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_without_reconnect(
        self,
        url: &str,
    ) -> Result<RedisBackend<MultiplexedConnection>, BackendError> {
        let client = self.open(url)?;
        let endpoint = client.get_connection_info().addr().to_string();
        // Every call is bounded by one timer of its own (see `connect`).
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let what = format!("connecting to {endpoint}");
        let conn = self.within(&what, client.get_multiplexed_async_connection_with_config(&config)).await?;
        Ok(self.finish(conn, endpoint, Some(PubsubSource::client(client)), true))
    }

    /// Connects to a Redis Cluster through its seed nodes.
    ///
    /// Release notices use sharded pub/sub when the servers support it (Redis >= 7, probed once
    /// here with an `SPUBLISH`) and [`RedisBackendBuilder::sharded_pubsub`] is on (the
    /// default): a release is published on the shard that owns the key's slot only, and
    /// waiters subscribe there through a RESP3 cluster connection that follows slot moves.
    /// Otherwise classic `PUBLISH`, which the cluster bus delivers to every node, and one
    /// subscriber connection to the first seed (if that node is down, waiters still acquire
    /// when the holder's TTL or their capped backoff runs out).
    /// [`RedisBackend::pubsub_mode`] says which.
    ///
    /// # Errors
    /// No seed, an invalid URL, or a cluster that cannot be reached within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_redis_rs::RedisBackend;
    /// let seeds = ["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"];
    /// let backend = RedisBackend::builder().connect_cluster(&seeds).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<S: AsRef<str>>(
        self,
        seeds: &[S],
    ) -> Result<RedisBackend<ClusterConnection>, BackendError> {
        let first = seeds.first().ok_or_else(|| config_error("a cluster needs at least one seed url"))?;
        let pubsub = self.open(first.as_ref())?;
        let mut endpoints = Vec::new();
        for s in seeds {
            endpoints.push(self.open(s.as_ref())?.get_connection_info().addr().to_string());
        }
        endpoints.sort();
        let endpoint = format!("cluster[{}]", endpoints.join(","));
        let client = ClusterClient::builder(seeds.iter().map(|s| s.as_ref().to_string()))
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            .build()
            .map_err(|e| map_error(e, "invalid cluster configuration"))?;
        let what = format!("connecting to {endpoint}");
        let mut conn = self.within(&what, client.get_async_connection()).await?;
        let mode = if self.sharded_pubsub {
            probe_sharded(&mut conn, self.command_timeout).await
        } else {
            PubSubMode::Classic
        };
        let source = match mode {
            PubSubMode::Sharded => PubsubSource::Sharded(ShardedSource {
                seeds: seeds.iter().map(|s| s.as_ref().to_string()).collect(),
                connect_timeout: self.connect_timeout,
                command_timeout: self.command_timeout,
            }),
            PubSubMode::Classic => PubsubSource::client(pubsub),
        };
        let mut backend = self.finish(conn, endpoint, Some(source), false);
        if let Some(shared) = Arc::get_mut(&mut backend.shared) {
            shared.cluster_pubsub = Some(mode);
        }
        Ok(backend)
    }
}

/// A `CONFIG GET` reply as name, value, ...: an array over RESP2, a map over RESP3 (a
/// connection given to [`RedisBackend::from_connection`] may speak either).
fn config_reply(reply: Value) -> redis::RedisResult<Vec<String>> {
    match reply {
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(name, value)| [name, value])
            .map(|v| String::from_redis_value(v).map_err(Into::into))
            .collect(),
        other => Ok(Vec::<String>::from_redis_value(other)?),
    }
}

/// Whether the cluster takes `SPUBLISH` (Redis >= 7, and allowed for this user): one harmless
/// publish on a channel no waiter listens on.
async fn probe_sharded(conn: &mut ClusterConnection, timeout: Duration) -> PubSubMode {
    let mut probe = redis::cmd("SPUBLISH");
    probe.arg(PubSubMode::PROBE_CHANNEL).arg("");
    PubSubMode::from_probe(tokio::time::timeout(timeout, probe.query_async::<i64>(conn)).await.ok())
}

impl RedisBackendBuilder {
    /// Connects to the primary that Redis Sentinel names for `master_name`, and follows it
    /// across failovers (see [`SentinelConnection`]): after a failover the next command asks
    /// the sentinels again, and the pub/sub subscriber reconnects to the new primary too.
    ///
    /// `sentinels` are the sentinels' URLs, `redis://[user:password@]host:port/` (the
    /// credentials are the sentinels' own; give the data servers' with
    /// [`RedisBackendBuilder::primary_auth`]); `rediss://` speaks TLS to the sentinels and to the
    /// servers they name (with the `tls` feature; [`RedisBackendBuilder::tls_root_ca`] applies to
    /// both). The data-loss guard is on: a replica promoted without the marker abstains for the
    /// quarantine.
    ///
    /// **Failover can lose a lock.** Replication is asynchronous: a lock granted by the old
    /// primary just before it failed may never reach the replica that is promoted, and a second
    /// client then acquires it while the first still holds it. Pass the guard's fencing token to
    /// the resource and have it refuse older tokens, or use RedLock over independent primaries.
    /// The doctor reports this as the `sentinel` warning.
    ///
    /// # Errors
    /// No sentinel or an empty master name, an invalid URL, sentinels that know no primary of
    /// that name, or a primary not reachable within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_redis_rs::RedisBackend;
    /// let sentinels = ["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
    /// let backend = RedisBackend::builder()
    ///     .primary_auth(Some("locker"), "secret")
    ///     .connect_sentinel("mymaster", &sentinels)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_sentinel<S: AsRef<str>>(
        self,
        master_name: &str,
        sentinels: &[S],
    ) -> Result<RedisBackend<SentinelConnection>, BackendError> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        if master_name.is_empty() {
            return Err(config_error("Sentinel needs the master name the sentinels monitor"));
        }
        let mut addrs = Vec::new();
        let mut first = None;
        for url in sentinels {
            let info = self.open(url.as_ref())?.get_connection_info().clone();
            addrs.push(info.addr().clone());
            first.get_or_insert(info);
        }
        let Some(first) = first else {
            return Err(config_error("Sentinel needs at least one sentinel url"));
        };
        let mut names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        names.sort();
        let endpoint = format!("sentinel[{master_name}@{}]", names.join(","));
        let invalid = |e| map_error(e, &format!("invalid Sentinel configuration for {endpoint}"));
        let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
        let settings = first.redis_settings();
        let mut builder =
            SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master).map_err(invalid)?;
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some((user, password)) = &self.primary_auth {
            if let Some(user) = user {
                builder = builder.set_client_to_redis_username(user);
            }
            builder = builder.set_client_to_redis_password(&password.0);
        }
        if tls {
            builder = builder
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        }
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.root_ca {
            let certs = || redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
            builder = builder
                .set_client_to_sentinel_certificates(certs())
                .set_client_to_redis_certificates(certs());
        }
        let db = settings.db();
        if db != 0 {
            builder = builder.set_client_to_redis_db(db);
        }
        let client = builder.build().map_err(invalid)?;
        let config = sentinel::connection_config(self.connect_timeout, self.command_timeout);
        let what = format!("connecting to {endpoint}");
        let conn = match self.within(&what, SentinelConnection::connect(client, config, db)).await {
            Err(e) if e.kind() == BackendErrorKind::Unavailable => {
                return Err(config_error(format!(
                    "{what}: the sentinels name no reachable primary for {master_name:?} (is the name right, \
                     and is the primary up?): {e}"
                )));
            }
            other => other?,
        };
        let mut backend = self.finish(
            conn.clone(),
            endpoint,
            Some(PubsubSource::Classic(ClassicSource::Sentinel(conn))),
            true,
        );
        if let Some(shared) = Arc::get_mut(&mut backend.shared) {
            shared.sentinel_master = Some(master_name.to_string());
        }
        Ok(backend)
    }

    /// Credentials for the data servers that Sentinel names (the sentinels' own go in their
    /// URLs): `ACL` user (or `None` for the default user) and password. Sentinel only.
    #[must_use]
    pub fn primary_auth(mut self, username: Option<&str>, password: &str) -> Self {
        self.primary_auth = Some((username.map(str::to_string), Redacted(password.to_string())));
        self
    }
}

impl RedisBackend<SentinelConnection> {
    /// `host:port` of the primary this backend talks to now (see
    /// [`SentinelConnection::primary`]).
    pub fn primary(&self) -> Option<String> {
        self.conn.primary()
    }
}

impl RedisBackend<ConnectionManager> {
    /// Options for connecting.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    /// Connects to a single node with the default options (see [`RedisBackendBuilder`]): a
    /// [`ConnectionManager`] that reconnects by itself, wake-up on, the data-loss guard on.
    ///
    /// # Errors
    /// An invalid URL, a wrong password, or a server that cannot be reached within 5 s.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_core::LockClient;
    /// use lock_redis_rs::RedisBackend;
    /// let locks = LockClient::new(RedisBackend::connect("redis://127.0.0.1:6379/").await?);
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        RedisBackendBuilder::default().connect(url).await
    }
}

impl<C> RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Wraps a connection you built. `endpoint` names the server(s) (e.g. `"127.0.0.1:6379"`),
    /// used to tell nodes apart in a quorum. Wake-up is off unless
    /// [`RedisBackend::with_wake_up`] gives it a client to subscribe through. The data-loss
    /// guard is on with the default quarantine: for a connection to a Redis Cluster, call
    /// [`RedisBackend::without_node_guard`] (a script there cannot reach the per-server marker).
    pub fn from_connection(conn: C, endpoint: impl Into<String>) -> Self {
        RedisBackendBuilder::default().wake_up(false).finish(conn, endpoint.into(), None, true)
    }

    /// Turns off the data-loss guard (see [`lock_core::scripts`]): for connections to a Redis
    /// Cluster built by hand.
    #[must_use]
    pub fn without_node_guard(self) -> Self {
        let shared = Shared {
            endpoint: self.shared.endpoint.clone(),
            command_timeout: self.shared.command_timeout,
            batches: Batches::default(),
            guard: None,
            pubsub_client: self.shared.pubsub_client.clone(),
            sentinel_master: self.shared.sentinel_master.clone(),
            cluster_pubsub: self.shared.cluster_pubsub,
            notifier: OnceLock::new(),
        };
        Self { conn: self.conn, shared: Arc::new(shared) }
    }

    /// Turns on wake-up, subscribing to release notices through `client`.
    #[must_use]
    pub fn with_wake_up(self, client: redis::Client) -> Self {
        let shared = Shared {
            endpoint: self.shared.endpoint.clone(),
            command_timeout: self.shared.command_timeout,
            batches: Batches::default(),
            guard: self.shared.guard.clone(),
            pubsub_client: Some(PubsubSource::client(client)),
            sentinel_master: self.shared.sentinel_master.clone(),
            // A subscriber on one server hears classic notices only.
            cluster_pubsub: self.shared.cluster_pubsub.map(|_| PubSubMode::Classic),
            notifier: OnceLock::new(),
        };
        Self { conn: self.conn, shared: Arc::new(shared) }
    }

    /// The underlying connection.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// How releases are announced and heard: [`PubSubMode::Sharded`] for a Cluster whose
    /// servers support it (see [`RedisBackendBuilder::connect_cluster`]), else
    /// [`PubSubMode::Classic`].
    pub fn pubsub_mode(&self) -> PubSubMode {
        self.shared.cluster_pubsub.unwrap_or_default()
    }

    /// How many lock channels this backend is subscribed to now (one per key being waited on).
    pub fn subscribed_channels(&self) -> usize {
        self.shared.notifier.get().map_or(0, HubTask::active_channels)
    }

    /// Runs a shared script: EVALSHA, falling back to EVAL when the server lost its script
    /// cache (restart, failover, `SCRIPT FLUSH`); EVAL also re-caches it.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, BackendError> {
        let context = || script.describe_call(keys, &self.shared.endpoint);
        let timeout = self.shared.command_timeout;
        let mut conn = self.conn.clone();
        // Sized up front: a growing command buffer reallocates once per argument.
        let size = 32
            + script.sha1.len()
            + keys.iter().map(|k| k.len() + 16).sum::<usize>()
            + args.iter().map(|a| a.len() + 16).sum::<usize>();
        let mut evalsha = redis::Cmd::with_capacity(3 + keys.len() + args.len(), size);
        evalsha.arg("EVALSHA").arg(script.sha1).arg(keys.len()).arg(keys).arg(args);
        // One bound per call: none of its own under a RedLock round's (`lock_core::deadline`).
        let first = deadline::within(timeout, evalsha.query_async::<T>(&mut conn)).await;
        let result = match first {
            Some(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(script.source).arg(keys.len()).arg(keys).arg(args);
                deadline::within(timeout, eval.query_async::<T>(&mut conn)).await
            }
            other => other,
        };
        match result {
            Some(r) => r.map_err(|e| map_error(e, &context())),
            None => Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!("{}: no reply within {timeout:?}", context()),
            )),
        }
    }
}

/// The coalesced acquires' pipeline (see [`lock_core::coalesce`]).
impl<C> SetPipeline for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn send_sets(&self, sets: &[SetNx]) -> Result<SetReplies, BackendError> {
        let endpoint = &self.shared.endpoint;
        // One pipeline on one connection: the SETs, then the marker, run in that order. (Not
        // one SET_MANY script call, as fred sends: redis-rs's client handles a pipeline for
        // little more than one command, and a script costs the server more than the SETs:
        // 0.82x / 0.83x of raw-1 under 64 tasks against 0.94x / 0.94x with the pipeline.)
        let mut pipe = redis::Pipeline::with_capacity(sets.len() + 1);
        for set in sets {
            let mut cmd = redis::Cmd::with_capacity(6, 32 + set.key.len() + set.value.len());
            cmd.arg("SET").arg(&set.key).arg(&set.value).arg("NX").arg("PX").arg(set.ttl_ms);
            pipe.add_command(cmd);
        }
        pipe.cmd("GET").arg(scripts::MARKER_KEY).ignore_errors();
        let context = || coalesce::describe(sets, endpoint);
        let timeout = self.shared.command_timeout;
        let mut conn = self.conn.clone();
        let sent = pipe.query_async::<Vec<redis::RedisResult<Option<String>>>>(&mut conn);
        let replies = match deadline::within(timeout, sent).await {
            Some(r) => r.map_err(|e| map_error(e, &context()))?,
            None => {
                return Err(BackendError::retryable(
                    BackendErrorKind::Timeout,
                    format!("{}: no reply within {timeout:?}", context()),
                ));
            }
        };
        SetReplies::from_pipeline(replies, sets, endpoint, map_error)
    }
}

#[async_trait]
impl<C> ScriptRunner for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn run_ints(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> Result<Vec<i64>, BackendError> {
        self.eval(script, keys, args).await
    }

    async fn run_int(&self, script: &LuaScript, keys: &[&str], args: &[String]) -> Result<i64, BackendError> {
        self.eval(script, keys, args).await
    }

    fn batches(&self, _lock: &str) -> Option<&Batches> {
        Some(&self.shared.batches)
    }

    fn node_guard(&self) -> Option<&NodeGuard> {
        self.shared.guard.as_ref()
    }

    fn pubsub_mode(&self) -> PubSubMode {
        self.shared.cluster_pubsub.unwrap_or_default()
    }

    async fn set_nx_px_then_get(&self, set: SetNx) -> Result<Option<(bool, Option<String>)>, BackendError> {
        self.shared.batches.sets.set_nx_px_then_get(self, set).await.map(Some)
    }

    async fn set_nx_px(&self, key: &str, value: &str, ttl_ms: u64) -> Result<Option<bool>, BackendError> {
        let timeout = self.shared.command_timeout;
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms);
        match deadline::within(timeout, set.query_async::<Option<String>>(&mut conn)).await {
            Some(r) => r.map(|ok| Some(ok.is_some())).map_err(|e| {
                map_error(e, &format!("SET NX on redis key {key:?} at {}", self.shared.endpoint))
            }),
            None => Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!(
                    "SET NX on redis key {key:?} at {}: no reply within {timeout:?}",
                    self.shared.endpoint
                ),
            )),
        }
    }
}

#[async_trait]
impl<C> LockBackend for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        "redis-rs"
    }

    fn endpoint(&self) -> String {
        self.shared.endpoint.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, self.shared.pubsub_client.is_some())
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        scripts::acquire(self, req).await
    }

    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, BackendError> {
        scripts::extend(self, req).await
    }

    async fn extend_many(&self, renewals: &[lock_core::Renewal]) -> Vec<Result<ExtendOutcome, BackendError>> {
        scripts::extend_many(self, renewals).await
    }

    async fn release(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        scripts::release(self, key, token, true).await
    }

    async fn release_contended(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        scripts::release_contended(self, key, token).await
    }

    async fn node_identity(&self) -> Result<Option<u64>, BackendError> {
        scripts::node_identity(self).await
    }

    async fn deployment_facts(&self) -> Result<Vec<NodeFacts>, BackendError> {
        let endpoint = self.shared.endpoint.clone();
        let timeout = self.shared.command_timeout;
        let mut conn = self.conn.clone();
        let info = tokio::time::timeout(timeout, redis::cmd("INFO").query_async::<Value>(&mut conn))
            .await
            .map_err(|_| {
                BackendError::retryable(BackendErrorKind::Timeout, format!("INFO at {endpoint}: no reply"))
            })?
            .map_err(|e| map_error(e, &format!("INFO at {endpoint}")))?;
        let unexpected = |what: String| {
            BackendError::permanent(BackendErrorKind::Protocol, format!("INFO at {endpoint}: {what}"))
        };
        // One server answers with its text; a Cluster connection asks every master and answers
        // with a map of address -> text.
        let replies = match info {
            Value::Map(nodes) => nodes
                .into_iter()
                .map(|(addr, text)| {
                    let addr = String::from_redis_value(addr).map_err(|e| unexpected(e.to_string()))?;
                    let text = String::from_redis_value(text).map_err(|e| unexpected(e.to_string()))?;
                    Ok((addr, text))
                })
                .collect::<Result<Vec<_>, BackendError>>()?,
            text => vec![(
                endpoint.to_string(),
                String::from_redis_value(text).map_err(|e| unexpected(e.to_string()))?,
            )],
        };
        let mut all: Vec<NodeFacts> = replies
            .iter()
            .map(|(addr, text)| {
                let mut facts = NodeFacts::from_info(addr.clone(), text);
                facts.sentinel_master.clone_from(&self.shared.sentinel_master);
                facts.pubsub_mode = self.shared.cluster_pubsub;
                facts
            })
            .collect();
        // CONFIG GET goes to one server (in a Cluster, any one master): its answer stands for all.
        for name in CONFIG_NAMES {
            let mut get = redis::cmd("CONFIG");
            get.arg("GET").arg(name);
            let reply = match tokio::time::timeout(timeout, get.query_async::<Value>(&mut conn)).await {
                Ok(r) => r.and_then(config_reply).map_err(|e| e.to_string()),
                Err(_) => Err(format!("no reply within {timeout:?}")),
            };
            for facts in &mut all {
                facts.record_config_reply(name, reply.clone());
            }
        }
        Ok(all)
    }

    async fn discard(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        scripts::release(self, key, token, false).await
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &Token,
        fence: FencingToken,
    ) -> Result<(), BackendError> {
        scripts::raise_fence(self, key, token, fence).await
    }

    async fn watch_releases(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(self.watch_channel(&RedisKeys::for_key(key).channel, None).await)
    }

    fn fair(&self) -> Option<&dyn FairBackend> {
        Some(self)
    }

    fn shared(&self) -> Option<&dyn lock_core::SharedBackend> {
        Some(self)
    }
}

/// The read-write lock and semaphore: the shared scripts, nothing driver-specific.
#[async_trait]
impl<C> lock_core::SharedBackend for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn acquire_hold(
        &self,
        req: &lock_core::HoldRequest,
    ) -> Result<lock_core::HoldOutcome, BackendError> {
        scripts::acquire_hold(self, req).await
    }

    async fn extend_member(
        &self,
        set: lock_core::Members,
        req: &ExtendRequest,
    ) -> Result<ExtendOutcome, BackendError> {
        scripts::extend_member(self, set, req).await
    }

    async fn release_member(
        &self,
        set: lock_core::Members,
        key: &LockKey,
        token: &Token,
    ) -> Result<ReleaseOutcome, BackendError> {
        scripts::release_member(self, set, key, token).await
    }
}

#[async_trait]
impl<C> FairBackend for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        scripts::fair_acquire(self, req).await
    }

    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        scripts::leave_queue(self, key, token).await
    }

    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(self.watch_channel(&RedisKeys::for_key(key).turn, Some(&token.to_redis_value())).await)
    }
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        let notifier = self.shared.notifier.get()?;
        notifier.watch_member_now(&RedisKeys::for_key(key).turn, &token.to_redis_value())
    }
}

impl<C> RedisBackend<C> {
    /// Subscribes to one notice channel through the shared subscriber (started on first use),
    /// as the fair waiter `member` when given (see [`lock_core::hub::ReleaseHub::watch_member`]).
    async fn watch_channel(&self, channel: &str, member: Option<&str>) -> Option<ReleaseWatch> {
        let client = self.shared.pubsub_client.as_ref()?;
        let notifier =
            self.shared.notifier.get_or_init(|| notifier::start(client.clone(), self.shared.command_timeout));
        Some(match member {
            Some(m) => notifier.watch_member(channel, m).await,
            None => notifier.watch(channel).await,
        })
    }
}
