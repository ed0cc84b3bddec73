//! [`FredBackend`]: the `fred` crate behind [`LockBackend`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::{Client, Pool, SubscriberClient};
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy, ServerConfig};
use fred::types::{ClusterHash, CustomCommand, Expiration, FromValue, SetOptions};
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
use tokio::sync::OnceCell;

use crate::error::{is_noscript, map_error};
use crate::notifier;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    endpoint: String,
    command_timeout: Duration,
    /// The data-loss guard (single nodes); `None` in Cluster.
    guard: Option<NodeGuard>,
    /// Built at connect time, connected on the first wait; `None` turns wake-up off.
    subscriber: Option<SubscriberClient>,
    notifier: OnceCell<HubTask>,
    /// The master name, when the primary is found through Sentinel.
    sentinel_master: Option<String>,
    /// How releases are announced, for a Cluster (reported by the doctor); classic otherwise.
    cluster_pubsub: Option<PubSubMode>,
    /// Whether fred's own command timeout bounds every call (clients this crate built set
    /// `default_command_timeout`), so no second timer is armed per call (see `timed`).
    fred_times_out: bool,
    /// Whether fred hands a command to its connection on the command's first poll (see
    /// `set_nx_px_then_get`): known on the first acquire, from the client's blocking policy.
    in_order: std::sync::OnceLock<bool>,
    /// One per connection the commands of a key go over: one for a [`Client`], one per client
    /// of a [`Pool`] (see [`FredBackend::lane`]).
    lanes: Box<[Batches]>,
}

/// How many lanes a client needs: one per client of a [`Pool`], else one.
fn lanes_for<C: 'static>(client: &C) -> Box<[Batches]> {
    let size = (client as &dyn std::any::Any).downcast_ref::<Pool>().map_or(1, Pool::size).max(1);
    (0..size).map(|_| Batches::default()).collect()
}

/// A lock backend over the `fred` crate.
///
/// `C` is a fred [`Client`] (single node or cluster, see [`FredBackendBuilder`]), a [`Pool`],
/// or any client implementing [`LuaInterface`] through [`FredBackend::from_client`]. It runs
/// the same shared scripts as every other driver of this workspace ([`lock_core::scripts`]),
/// so locks taken through fred exclude locks taken through the `redis` crate and the reverse.
///
/// On a [`Pool`], every command of one lock goes over the same client of the pool (chosen by
/// the key's hash slot; fred alone would send each command to its next client), so the
/// commands of a key reach the server in the order they were sent, as on one connection, and
/// different keys spread over the pool.
///
/// fred resends commands that were in flight when a connection broke; the scripts are
/// idempotent for the same owner token, so a resent acquire neither mints a second fencing
/// token nor leaves a stray key.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lock_core::LockClient;
/// use lock_fred::FredBackend;
///
/// let backend = FredBackend::connect("redis://127.0.0.1:6379/").await?;
/// let locks = LockClient::new(backend);
/// let guard = locks.mutex("orders:42")?.lock().await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct FredBackend<C = Client> {
    client: C,
    shared: Arc<Shared>,
}

impl<C: Clone> Clone for FredBackend<C> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), shared: Arc::clone(&self.shared) }
    }
}

impl<C> std::fmt::Debug for FredBackend<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FredBackend")
            .field("endpoint", &self.shared.endpoint)
            .field("wake_up", &self.shared.subscriber.is_some())
            .finish()
    }
}

/// Options for connecting a [`FredBackend`].
#[derive(Debug, Clone)]
pub struct FredBackendBuilder {
    connect_timeout: Duration,
    command_timeout: Duration,
    wake_up: bool,
    root_ca: Option<String>,
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

impl Default for FredBackendBuilder {
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

/// A fred command's future, on the heap.
type BoxedCall<'a, T> = std::pin::Pin<Box<dyn Future<Output = fred::prelude::FredResult<T>> + Send + 'a>>;

/// Boxes a fred command's future where fred makes it. fred's command futures are about 5 KB;
/// held inline, every future that awaits one carries it, and rustc's layout keeps room for it
/// more than once along the way: a script call's future, boxed by `async_trait`, was about
/// 14 KB (heaptrack: 287 MB for 20,000 releases awaited at once) and was copied at each
/// `Box::pin`. Boxed at the source, the fred future is allocated once and never moved.
fn boxed<'a, T>(call: impl Future<Output = fred::prelude::FredResult<T>> + Send + 'a) -> BoxedCall<'a, T> {
    Box::pin(call)
}

/// Sends `first` and then `second` (fred queues a command on its first poll, in poll order) and
/// awaits both replies with **one** wake-up of the caller instead of one per reply.
///
/// fred answers each command through its own channel, and the replies of commands written back
/// to back on one connection are handed over in the order they were sent; so once `second` has
/// its reply, `first` has had its own. `first` is therefore polled once with a waker that does
/// nothing (its reply wakes no one) and then again after `second` is done. On one task alone
/// every reply's wake-up is a cross-thread hand-off (a `futex`, a context switch and cold caches:
/// about 1.7 more `futex` calls per lock cycle than the raw `SET` alone, `strace -c -f`): this
/// saves about 0.9 context switches per sequential cycle (`docs/performance-log.md`).
/// Correctness never rests on the order of replies: should `first` still be pending, it is
/// awaited as usual.
async fn one_wake_up<A, B>(
    mut first: BoxedCall<'_, A>,
    second: BoxedCall<'_, B>,
) -> fred::prelude::FredResult<(A, B)> {
    let early = first.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    let second = second.await;
    let first = match early {
        std::task::Poll::Ready(first) => first,
        std::task::Poll::Pending => first.await,
    };
    Ok((first?, second?))
}

fn config_error(what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BackendErrorKind::Other, what.to_string())
}

fn parse_url(url: &str, root_ca: Option<&str>) -> Result<Config, BackendError> {
    let tls = url.starts_with("rediss");
    if tls && !cfg!(feature = "tls") {
        return Err(config_error(format!(
            "{url:?} asks for TLS, but lock-fred was built without its `tls` feature"
        )));
    }
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut config =
        Config::from_url(url).map_err(|e| map_error(&e, &format!("invalid redis url {url:?}")))?;
    #[cfg(feature = "tls")]
    if tls {
        config.tls = Some(tls_config(root_ca)?);
    }
    let _ = root_ca;
    Ok(config)
}

/// rustls over ring, trusting `root_ca` (PEM) when given, else the system's roots.
#[cfg(feature = "tls")]
fn tls_config(root_ca: Option<&str>) -> Result<fred::types::config::TlsConfig, BackendError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(pem) = root_ca else {
        return fred::types::config::TlsConnector::default_rustls()
            .map(Into::into)
            .map_err(|e| map_error(&e, "loading the system's TLS roots"));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| config_error(format!("the TLS root CA is not valid PEM: {e}")))?;
        roots.add(cert).map_err(|e| config_error(format!("the TLS root CA is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(config_error("the TLS root CA holds no certificate"));
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(config.into())
}

fn endpoint_of(config: &Config) -> String {
    let mut hosts: Vec<String> =
        config.server.hosts().iter().map(|s| format!("{}:{}", s.host, s.port)).collect();
    hosts.sort();
    match &config.server {
        ServerConfig::Sentinel { service_name, .. } => {
            format!("sentinel[{service_name}@{}]", hosts.join(","))
        }
        server if server.is_clustered() => format!("cluster[{}]", hosts.join(",")),
        _ => hosts.join(","),
    }
}

fn sentinel_master(config: &Config) -> Option<String> {
    match &config.server {
        ServerConfig::Sentinel { service_name, .. } => Some(service_name.clone()),
        _ => None,
    }
}

impl FredBackendBuilder {
    /// Trusts this CA (PEM) for `rediss://` URLs instead of the system's roots: for servers
    /// with certificates from a private CA. Needs the `tls` feature.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_root_ca(mut self, pem: impl Into<String>) -> Self {
        self.root_ca = Some(pem.into());
        self
    }

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
    /// keys should make the same choice. A single server always uses classic pub/sub.
    ///
    /// ```
    /// let builder = lock_fred::FredBackend::builder().sharded_pubsub(false);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn sharded_pubsub(mut self, on: bool) -> Self {
        self.sharded_pubsub = on;
        self
    }

    /// The pub/sub mode for a client connected with `config`: sharded only for a Cluster that
    /// takes `SPUBLISH` (one harmless publish on a channel no waiter listens on).
    async fn pubsub_mode<C: ClientLike>(&self, client: &C, config: &Config) -> Option<PubSubMode> {
        if !config.server.is_clustered() {
            return None;
        }
        if !self.sharded_pubsub {
            return Some(PubSubMode::Classic);
        }
        let probe = CustomCommand::new("SPUBLISH", ClusterHash::FirstKey, false);
        let reply = client.custom::<i64, &str>(probe, vec![PubSubMode::PROBE_CHANNEL, ""]);
        Some(PubSubMode::from_probe(tokio::time::timeout(self.command_timeout, reply).await.ok()))
    }

    fn builder(&self, config: Config) -> Builder {
        let mut builder = Builder::from_config(config);
        let (connect, command) = (self.connect_timeout, self.command_timeout);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect;
                c.internal_command_timeout = command;
            })
            .with_performance_config(|p| p.default_command_timeout = command)
            // Reconnect for ever with backoff from 10 ms to 1 s: the lock's own deadlines bound
            // how long any caller waits.
            .set_policy(ReconnectPolicy::new_exponential(0, 10, 1_000, 2));
        builder
    }

    async fn init<C: ClientLike>(&self, client: &C, endpoint: &str) -> Result<(), BackendError> {
        let what = format!("connecting to {endpoint}");
        match tokio::time::timeout(self.connect_timeout, client.init()).await {
            Ok(Ok(_task)) => Ok(()),
            Ok(Err(e)) => {
                let _ = client.quit().await;
                Err(map_error(&e, &what))
            }
            Err(_) => {
                let _ = client.quit().await;
                Err(BackendError::retryable(
                    BackendErrorKind::Timeout,
                    format!("{what}: no connection within {:?}", self.connect_timeout),
                ))
            }
        }
    }

    fn subscriber(
        &self,
        config: &Config,
        mode: Option<PubSubMode>,
    ) -> Result<Option<SubscriberClient>, BackendError> {
        if !self.wake_up {
            return Ok(None);
        }
        // Sharded: a cluster subscriber, which sends each SSUBSCRIBE to the slot's shard.
        // Classic: one subscriber on the first node (in Cluster classic PUBLISH reaches every
        // node). Behind Sentinel it follows the primary like the client does.
        let mut config = config.clone();
        if config.server.is_clustered()
            && mode != Some(PubSubMode::Sharded)
            && let Some(first) = config.server.hosts().first()
        {
            config.server = ServerConfig::new_centralized(first.host.to_string(), first.port);
        }
        self.builder(config)
            .build_subscriber_client()
            .map(Some)
            .map_err(|e| map_error(&e, "building the subscriber client"))
    }

    fn finish<C: 'static>(
        &self,
        client: C,
        endpoint: String,
        subscriber: Option<SubscriberClient>,
        guarded: bool,
        fred_times_out: bool,
    ) -> FredBackend<C> {
        FredBackend {
            shared: Arc::new(Shared {
                endpoint,
                command_timeout: self.command_timeout,
                guard: guarded.then(|| NodeGuard::new(self.quarantine)),
                subscriber,
                notifier: OnceCell::new(),
                sentinel_master: None,
                cluster_pubsub: None,
                fred_times_out,
                in_order: std::sync::OnceLock::new(),
                lanes: lanes_for(&client),
            }),
            client,
        }
    }

    /// Connects one client to a single node (or to a cluster, for a `redis-cluster://` URL).
    ///
    /// # Errors
    /// An invalid URL, a wrong password, or a server not reachable within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_fred::FredBackend;
    /// let backend = FredBackend::builder().connect("redis://127.0.0.1:6379/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self, url: &str) -> Result<FredBackend<Client>, BackendError> {
        let config = parse_url(url, self.root_ca.as_deref())?;
        self.connect_config(config).await
    }

    /// Connects a client with a fred [`Config`] you built (TLS, sentinel, credentials...).
    ///
    /// # Errors
    /// As [`FredBackendBuilder::connect`].
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_fred::FredBackend;
    /// use lock_fred::fred::prelude::Config;
    /// let config = Config::from_url("redis://127.0.0.1:6379/")?;
    /// let backend = FredBackend::builder().connect_config(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_config(self, config: Config) -> Result<FredBackend<Client>, BackendError> {
        let endpoint = endpoint_of(&config);
        let client =
            self.builder(config.clone()).build().map_err(|e| map_error(&e, "building the client"))?;
        self.init(&client, &endpoint).await?;
        let mode = self.pubsub_mode(&client, &config).await;
        let subscriber = self.subscriber(&config, mode)?;
        // A script in Cluster reaches one slot only, not the per-server marker.
        let guarded = !config.server.is_clustered();
        Ok(self
            .finish(client, endpoint, subscriber, guarded, true)
            .behind(sentinel_master(&config))
            .announcing(mode))
    }

    /// Connects a pool of `size` clients to a single node.
    ///
    /// # Errors
    /// As [`FredBackendBuilder::connect`], or a zero size.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_fred::FredBackend;
    /// let backend = FredBackend::builder().connect_pool("redis://127.0.0.1:6379/", 4).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_pool(self, url: &str, size: usize) -> Result<FredBackend<Pool>, BackendError> {
        if size == 0 {
            return Err(config_error("a pool needs at least one client"));
        }
        let config = parse_url(url, self.root_ca.as_deref())?;
        let endpoint = endpoint_of(&config);
        let pool =
            self.builder(config.clone()).build_pool(size).map_err(|e| map_error(&e, "building the pool"))?;
        self.init(&pool, &endpoint).await?;
        let mode = self.pubsub_mode(pool.next(), &config).await;
        let subscriber = self.subscriber(&config, mode)?;
        let guarded = !config.server.is_clustered();
        Ok(self
            .finish(pool, endpoint, subscriber, guarded, true)
            .behind(sentinel_master(&config))
            .announcing(mode))
    }

    /// Connects to a Redis Cluster through its seed nodes (`redis://host:port` each).
    ///
    /// # Errors
    /// No seed, an invalid URL, or a cluster not reachable within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_fred::FredBackend;
    /// let seeds = ["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"];
    /// let backend = FredBackend::builder().connect_cluster(&seeds).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<S: AsRef<str>>(
        self,
        seeds: &[S],
    ) -> Result<FredBackend<Client>, BackendError> {
        let first = seeds.first().ok_or_else(|| config_error("a cluster needs at least one seed url"))?;
        let mut config = parse_url(first.as_ref(), self.root_ca.as_deref())?;
        let mut hosts = Vec::new();
        for seed in seeds {
            for server in parse_url(seed.as_ref(), self.root_ca.as_deref())?.server.hosts() {
                hosts.push((server.host.to_string(), server.port));
            }
        }
        config.server = ServerConfig::new_clustered(hosts);
        self.connect_config(config).await
    }
}

impl FredBackendBuilder {
    /// Connects to the primary that Redis Sentinel names for `master_name`; fred follows it
    /// across failovers (it asks the sentinels again when the connection breaks), and so does
    /// the pub/sub subscriber.
    ///
    /// `sentinels` are the sentinels' URLs, `redis://[user:password@]host:port/` (the
    /// credentials are the sentinels' own; give the data servers' with
    /// [`FredBackendBuilder::primary_auth`]); `rediss://` speaks TLS to the sentinels and the
    /// servers they name (with the `tls` feature). A `redis-sentinel://` URL given to
    /// [`FredBackendBuilder::connect`] works too. The data-loss guard is on: a replica promoted
    /// without the marker abstains for the quarantine.
    ///
    /// **Failover can lose a lock.** Replication is asynchronous: a lock granted by the old
    /// primary just before it failed may never reach the replica that is promoted, and a second
    /// client then acquires it while the first still holds it. Pass the guard's fencing token to
    /// the resource and have it refuse older tokens, or use RedLock over independent primaries.
    /// The doctor reports this as the `sentinel` warning.
    ///
    /// # Errors
    /// No sentinel or an empty master name, an invalid URL, or no primary reachable through the
    /// sentinels within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_fred::FredBackend;
    /// let sentinels = ["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
    /// let backend = FredBackend::builder()
    ///     .primary_auth(Some("locker"), "secret")
    ///     .connect_sentinel("mymaster", &sentinels)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_sentinel<S: AsRef<str>>(
        self,
        master_name: &str,
        sentinels: &[S],
    ) -> Result<FredBackend<Client>, BackendError> {
        if master_name.is_empty() {
            return Err(config_error("Sentinel needs the master name the sentinels monitor"));
        }
        let first =
            sentinels.first().ok_or_else(|| config_error("Sentinel needs at least one sentinel url"))?;
        let mut config = parse_url(first.as_ref(), self.root_ca.as_deref())?;
        let mut hosts = Vec::new();
        for url in sentinels {
            for server in parse_url(url.as_ref(), self.root_ca.as_deref())?.server.hosts() {
                hosts.push(server);
            }
        }
        // The URL's credentials are the sentinels'; the data servers' come from primary_auth.
        let (sentinel_user, sentinel_password) = (config.username.take(), config.password.take());
        if let Some((user, password)) = &self.primary_auth {
            config.username.clone_from(user);
            config.password = Some(password.0.clone());
        }
        config.server = ServerConfig::Sentinel {
            hosts,
            service_name: master_name.to_string(),
            username: sentinel_user,
            password: sentinel_password,
        };
        self.connect_config(config).await
    }

    /// Credentials for the data servers that Sentinel names (the sentinels' own go in their
    /// URLs): `ACL` user (or `None` for the default user) and password. Sentinel only.
    #[must_use]
    pub fn primary_auth(mut self, username: Option<&str>, password: &str) -> Self {
        self.primary_auth = Some((username.map(str::to_string), Redacted(password.to_string())));
        self
    }
}

impl FredBackend<Client> {
    /// Options for connecting.
    pub fn builder() -> FredBackendBuilder {
        FredBackendBuilder::default()
    }

    /// Connects to a single node with the default options (see [`FredBackendBuilder`]).
    ///
    /// # Errors
    /// An invalid URL, a wrong password, or a server not reachable within 5 s.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is left behind but a half-open connection, which is closed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_core::LockClient;
    /// use lock_fred::FredBackend;
    /// let locks = LockClient::new(FredBackend::connect("redis://127.0.0.1:6379/").await?);
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        FredBackendBuilder::default().connect(url).await
    }
}

impl<C> FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
{
    /// Wraps a client (or pool) you built and connected. `endpoint` names the server(s), used
    /// to tell nodes apart in a quorum. Wake-up is on when `subscriber` is given (built from
    /// the same config, not yet connected: it is connected on the first wait). The data-loss
    /// guard is on with the default quarantine; for a Cluster client call
    /// [`FredBackend::without_node_guard`] (a script there cannot reach the per-server marker).
    pub fn from_client(client: C, endpoint: impl Into<String>, subscriber: Option<SubscriberClient>) -> Self {
        FredBackendBuilder::default().finish(client, endpoint.into(), subscriber, true, false)
    }

    /// Marks the backend as reaching its primary through Sentinel (for the doctor).
    fn behind(mut self, master: Option<String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.sentinel_master = master;
        }
        self
    }

    /// Sets how releases are announced in a Cluster (`None`: not a Cluster).
    fn announcing(mut self, mode: Option<PubSubMode>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cluster_pubsub = mode;
        }
        self
    }

    /// How releases are announced and heard: [`PubSubMode::Sharded`] for a Cluster whose
    /// servers support it (see [`FredBackendBuilder::sharded_pubsub`]), else
    /// [`PubSubMode::Classic`].
    pub fn pubsub_mode(&self) -> PubSubMode {
        self.shared.cluster_pubsub.unwrap_or_default()
    }

    /// Turns off the data-loss guard (see [`lock_core::scripts`]): for Cluster clients built
    /// by hand.
    #[must_use]
    pub fn without_node_guard(self) -> Self {
        let shared = Shared {
            endpoint: self.shared.endpoint.clone(),
            command_timeout: self.shared.command_timeout,
            guard: None,
            subscriber: self.shared.subscriber.clone(),
            notifier: OnceCell::new(),
            sentinel_master: self.shared.sentinel_master.clone(),
            cluster_pubsub: self.shared.cluster_pubsub,
            fred_times_out: self.shared.fred_times_out,
            in_order: std::sync::OnceLock::new(),
            lanes: lanes_for(&self.client),
        };
        Self { client: self.client, shared: Arc::new(shared) }
    }

    /// The underlying client.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// How many lock channels this backend is subscribed to now (one per key being waited on).
    pub fn subscribed_channels(&self) -> usize {
        self.shared.notifier.get().map_or(0, HubTask::active_channels)
    }

    /// EVALSHA, its future boxed where fred makes it (see [`boxed`]).
    fn evalsha<T: FromValue + Send + 'static>(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> BoxedCall<'_, T> {
        let on = keys.first().and_then(|key| self.pooled(key));
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        match on {
            Some(client) => boxed(client.evalsha(script.sha1, keys, args.to_vec())),
            None => boxed(self.client.evalsha(script.sha1, keys, args.to_vec())),
        }
    }

    /// Loads `script` (on every primary in a cluster) and runs it again by EVALSHA.
    async fn load_and_retry<T: FromValue + Send + 'static>(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> fred::prelude::FredResult<T> {
        if self.client.is_clustered() {
            self.client.script_load_cluster::<(), _>(script.source).await?;
        } else {
            self.client.script_load::<String, _>(script.source).await?;
        }
        self.evalsha::<T>(script, keys, args).await
    }

    /// Runs a shared script by EVALSHA. On NOSCRIPT (restart, failover, `SCRIPT FLUSH`) it
    /// loads the script (on every primary in a cluster) and retries once.
    async fn eval<T: FromValue + Send + 'static>(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, BackendError> {
        let context = || script.describe_call(keys, &self.shared.endpoint);
        let timeout = self.shared.command_timeout;
        let attempt = async {
            match self.evalsha::<T>(script, keys, args).await {
                // The cold path is boxed: fred's command futures are large, and the hot
                // future (boxed again by `async_trait`) would otherwise carry this one's room
                // too and be copied with it.
                Err(e) if is_noscript(&e) => Box::pin(self.load_and_retry(script, keys, args)).await,
                other => other,
            }
        };
        match self.timed(timeout * 2, attempt).await {
            Some(r) => r.map_err(|e| map_error(&e, &context())),
            None => Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!("{}: no reply within {:?}", context(), timeout * 2),
            )),
        }
    }

    /// One driver call, bounded in time: by fred's own command timeout on a client this crate
    /// built (it runs from the moment a command is queued, through reconnects, so a second
    /// timer per call would only cost), else by a timer of `limit` (`None` when it fired): a
    /// client given to [`FredBackend::from_client`] may have no timeout of its own.
    async fn timed<T>(&self, limit: Duration, call: impl Future<Output = T>) -> Option<T> {
        if self.shared.fred_times_out {
            Some(call.await)
        } else {
            // None of its own under a RedLock round's bound (`lock_core::deadline`).
            deadline::within(limit, call).await
        }
    }
}

/// Which connection a key's commands go over.
///
/// On a [`Pool`], fred sends each command to its next client in turn, so two commands of one
/// key could take two connections and reach the server in either order: the cleanup release
/// of a cancelled acquire could run before the acquire's `SET` and leave the key held until
/// its TTL. So every command of a key goes over one client of the pool, its **lane**, chosen
/// by the key's hash slot (the keys of one lock share a hash tag, so they share a lane), and
/// each lane batches its own acquires and releases: what holds on one connection holds on a
/// pool, key by key.
impl<C: 'static> FredBackend<C> {
    /// The lane of `key`: always 0 but on a pool of several clients.
    fn lane(&self, key: &str) -> usize {
        match self.shared.lanes.len() {
            0 | 1 => 0,
            n => usize::from(scripts::slot(key)) % n,
        }
    }

    /// The client of `lane`, where a pipeline goes out (its GET must run after its SETs on
    /// one connection): a [`Client`], or that client of a [`Pool`]. `None` for other client
    /// types.
    fn lane_client(&self, lane: usize) -> Option<&Client> {
        let any = &self.client as &dyn std::any::Any;
        any.downcast_ref::<Client>()
            .or_else(|| any.downcast_ref::<Pool>().and_then(|p| p.clients().get(lane)))
    }

    /// On a [`Pool`], the client `key`'s commands go over; `None` for other client types,
    /// which choose their own connection.
    fn pooled(&self, key: &str) -> Option<&Client> {
        let pool = (&self.client as &dyn std::any::Any).downcast_ref::<Pool>()?;
        pool.clients().get(self.lane(key))
    }
}

/// One lane of a backend (see [`FredBackend::lane`]): what its coalesced acquires go out on.
struct OnLane<'a, C> {
    backend: &'a FredBackend<C>,
    lane: usize,
}

/// The coalesced acquires' pipeline (see [`lock_core::coalesce`]).
impl<C> SetPipeline for OnLane<'_, C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
{
    async fn send_sets(&self, sets: &[SetNx]) -> Result<SetReplies, BackendError> {
        let backend = self.backend;
        let endpoint = &backend.shared.endpoint;
        if sets.len() > 1 {
            // A batch: one SET_MANY script call (the SETs, then the marker, in that order), on
            // this lane (the call goes where its first key's commands go). fred's client work
            // is per command, so one command for a whole batch instead of one per SET and a
            // GET: 0.96x / 0.96x of raw fred under 64 tasks against 0.82x / 0.82x with a
            // pipeline, client CPU 10.6-10.7 us per cycle against 14.1-14.2.
            let (keys, args) = coalesce::set_many_call(sets);
            let replies = backend.eval::<Vec<Option<String>>>(&scripts::SET_MANY, &keys, &args).await?;
            return SetReplies::from_script(replies, sets, endpoint);
        }
        let context = || coalesce::describe(sets, endpoint);
        let Some(client) = backend.lane_client(self.lane) else {
            return Err(BackendError::permanent(
                BackendErrorKind::Other,
                format!("{}: not a fred Client or Pool", context()),
            ));
        };
        let timeout = backend.shared.command_timeout;
        let px = |set: &SetNx| Some(Expiration::PX(i64::try_from(set.ttl_ms).unwrap_or(i64::MAX)));
        // fred hands a command to its connection task on the command's first poll, through
        // one ordered queue, and writes queued commands back to back (auto-pipelining): a lone
        // SET and the GET polled in order go out as one round trip, SET first, for less client
        // work than a pipeline object (about 2 us per cycle under 64 tasks). The one exception
        // is the `Interrupt` blocking policy, under which a command may first await a
        // `CLIENT UNBLOCK` of a blocked connection and so lose its place: a pipeline then.
        let in_order = *backend
            .shared
            .in_order
            .get_or_init(|| client.client_config().blocking != fred::types::config::Blocking::Interrupt);
        let sent = async {
            match sets {
                [one] if in_order => {
                    let set = boxed(client.set::<Option<String>, _, _>(
                        one.key.as_str(),
                        one.value.as_str(),
                        px(one),
                        Some(SetOptions::NX),
                        false,
                    ));
                    let (set, marker) =
                        one_wake_up(set, boxed(client.get::<Option<String>, _>(scripts::MARKER_KEY))).await?;
                    Ok(vec![Ok(set), Ok(marker)])
                }
                // Boxed as a whole (see `boxed`).
                _ => {
                    Box::pin(async {
                        let pipeline = client.pipeline();
                        for set in sets {
                            let () = pipeline
                                .set(
                                    set.key.as_str(),
                                    set.value.as_str(),
                                    px(set),
                                    Some(SetOptions::NX),
                                    false,
                                )
                                .await?;
                        }
                        let () = pipeline.get(scripts::MARKER_KEY).await?;
                        Ok(pipeline.try_all::<Option<String>>().await)
                    })
                    .await
                }
            }
        };
        let replies: Vec<fred::prelude::FredResult<Option<String>>> =
            match backend.timed(timeout * 2, sent).await {
                Some(r) => r.map_err(|e: fred::error::Error| map_error(&e, &context()))?,
                None => {
                    return Err(BackendError::retryable(
                        BackendErrorKind::Timeout,
                        format!("{}: no reply within {:?}", context(), timeout * 2),
                    ));
                }
            };
        SetReplies::from_pipeline(replies, sets, endpoint, |e, what| map_error(&e, what))
    }
}

#[async_trait]
impl<C> ScriptRunner for FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
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

    fn batches(&self, lock: &str) -> Option<&Batches> {
        self.shared.lanes.get(self.lane(lock))
    }

    fn node_guard(&self) -> Option<&NodeGuard> {
        self.shared.guard.as_ref()
    }

    fn pubsub_mode(&self) -> PubSubMode {
        self.shared.cluster_pubsub.unwrap_or_default()
    }

    async fn set_nx_px_then_get(&self, set: SetNx) -> Result<Option<(bool, Option<String>)>, BackendError> {
        let any = &self.client as &dyn std::any::Any;
        if !(any.is::<Client>() || any.is::<Pool>()) {
            // Other client types are not offered it: the acquire script is used.
            return Ok(None);
        }
        let lane = self.lane(&set.key);
        let Some(sets) = self.shared.lanes.get(lane).map(|l| &l.sets) else { return Ok(None) };
        sets.set_nx_px_then_get(&OnLane { backend: self, lane }, set).await.map(Some)
    }

    async fn set_nx_px(&self, key: &str, value: &str, ttl_ms: u64) -> Result<Option<bool>, BackendError> {
        let timeout = self.shared.command_timeout;
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let expiry = Some(Expiration::PX(ttl));
        let set = match self.pooled(key) {
            Some(client) => {
                boxed(client.set::<Option<String>, _, _>(key, value, expiry, Some(SetOptions::NX), false))
            }
            None => boxed(self.client.set::<Option<String>, _, _>(
                key,
                value,
                expiry,
                Some(SetOptions::NX),
                false,
            )),
        };
        let context = || format!("SET NX on redis key {key:?} at {}", self.shared.endpoint);
        match self.timed(timeout * 2, set).await {
            Some(r) => r.map(|ok| Some(ok.is_some())).map_err(|e| map_error(&e, &context())),
            None => Err(BackendError::retryable(
                BackendErrorKind::Timeout,
                format!("{}: no reply within {:?}", context(), timeout * 2),
            )),
        }
    }
}

#[async_trait]
impl<C> LockBackend for FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        "fred"
    }

    fn endpoint(&self) -> String {
        self.shared.endpoint.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, self.shared.subscriber.is_some())
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
        let command = |name: &'static str| CustomCommand::new(name, ClusterHash::Random, false);
        let info =
            tokio::time::timeout(timeout, self.client.custom::<String, String>(command("INFO"), vec![]))
                .await
                .map_err(|_| {
                    BackendError::retryable(
                        BackendErrorKind::Timeout,
                        format!("INFO at {endpoint}: no reply"),
                    )
                })?
                .map_err(|e| map_error(&e, &format!("INFO at {endpoint}")))?;
        let mut facts = NodeFacts::from_info(endpoint.clone(), &info);
        facts.sentinel_master.clone_from(&self.shared.sentinel_master);
        facts.pubsub_mode = self.shared.cluster_pubsub;
        for name in CONFIG_NAMES {
            let get = self.client.custom::<Vec<String>, &str>(command("CONFIG"), vec!["GET", name]);
            let reply = match tokio::time::timeout(timeout, get).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no reply within {timeout:?}")),
            };
            facts.record_config_reply(name, reply);
        }
        Ok(vec![facts])
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
        self.watch_channel(&RedisKeys::for_key(key).channel, None).await
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
impl<C> lock_core::SharedBackend for FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
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
impl<C> FairBackend for FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
{
    async fn fair_acquire(&self, req: &FairRequest) -> Result<FairOutcome, BackendError> {
        scripts::fair_acquire(self, req).await
    }

    async fn leave_queue(&self, key: &LockKey, token: &Token) -> Result<ReleaseOutcome, BackendError> {
        scripts::leave_queue(self, key, token).await
    }

    async fn watch_turn(&self, key: &LockKey, token: &Token) -> Result<Option<ReleaseWatch>, BackendError> {
        self.watch_channel(&RedisKeys::for_key(key).turn, Some(&token.to_redis_value())).await
    }
    fn watch_turn_now(&self, key: &LockKey, token: &Token) -> Option<ReleaseWatch> {
        let notifier = self.shared.notifier.get()?;
        notifier.watch_member_now(&RedisKeys::for_key(key).turn, &token.to_redis_value())
    }
}

impl<C> FredBackend<C>
where
    C: LuaInterface + KeysInterface + Clone + Send + Sync + 'static,
{
    /// Subscribes to one notice channel through the shared subscriber (started on first use),
    /// as the fair waiter `member` when given (see [`lock_core::hub::ReleaseHub::watch_member`]).
    async fn watch_channel(
        &self,
        channel: &str,
        member: Option<&str>,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        let Some(subscriber) = &self.shared.subscriber else { return Ok(None) };
        let timeout = self.shared.command_timeout;
        let notifier = self
            .shared
            .notifier
            .get_or_try_init(|| async {
                match tokio::time::timeout(timeout, subscriber.init()).await {
                    Ok(Ok(_task)) => Ok(notifier::start(subscriber.clone(), timeout, self.pubsub_mode())),
                    Ok(Err(e)) => Err(map_error(&e, "connecting the subscriber")),
                    Err(_) => {
                        Err(BackendError::retryable(BackendErrorKind::Timeout, "connecting the subscriber"))
                    }
                }
            })
            .await?;
        Ok(Some(match member {
            Some(m) => notifier.watch_member(channel, m).await,
            None => notifier.watch(channel).await,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    type Reply = tokio::sync::oneshot::Sender<fred::prelude::FredResult<u8>>;
    type Both = std::pin::Pin<Box<dyn Future<Output = fred::prelude::FredResult<(u8, u8)>> + Send>>;

    /// A call whose reply is sent through the returned sender, counting how often it was polled.
    fn call(polls: Arc<AtomicUsize>) -> (Reply, BoxedCall<'static, u8>) {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let call = boxed(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            std::pin::Pin::new(&mut rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(fred::error::Error::new_canceled())))
        }));
        (tx, call)
    }

    /// `one_wake_up` of two calls, their reply senders and poll counts.
    fn pair() -> (Reply, Reply, [Arc<AtomicUsize>; 2], Both) {
        let polls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let ((first_tx, first), (second_tx, second)) =
            (call(Arc::clone(&polls[0])), call(Arc::clone(&polls[1])));
        (first_tx, second_tx, polls, Box::pin(one_wake_up(first, second)))
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn counting() -> (Arc<Count>, Waker) {
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&wakes), Waker::from(wakes))
    }

    #[test]
    fn the_first_reply_wakes_no_one_and_both_are_returned() {
        let (first, second, polls, mut both) = pair();
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(both.as_mut().poll(&mut cx).is_pending());
        // Both polled (so both sent), the first before the second.
        assert_eq!(polls.each_ref().map(|p| p.load(Ordering::SeqCst)), [1, 1]);
        first.send(Ok(1)).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the first reply wakes no one");
        second.send(Ok(2)).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the second reply wakes the caller");
        assert!(matches!(both.as_mut().poll(&mut cx), Poll::Ready(Ok((1, 2)))));
    }

    #[test]
    fn a_first_reply_that_comes_last_is_awaited() {
        let (first, second, _, mut both) = pair();
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(both.as_mut().poll(&mut cx).is_pending());
        second.send(Ok(2)).unwrap();
        assert!(both.as_mut().poll(&mut cx).is_pending(), "the first is still out");
        first.send(Ok(1)).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "then its reply wakes the caller");
        assert!(matches!(both.as_mut().poll(&mut cx), Poll::Ready(Ok((1, 2)))));
    }

    #[test]
    fn an_error_of_either_is_returned() {
        for failing in [0, 1] {
            let (first, second, _, mut both) = pair();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(both.as_mut().poll(&mut cx).is_pending());
            let reply = |n: u8| {
                if n == failing {
                    Err(fred::error::Error::new(fred::error::ErrorKind::IO, "gone"))
                } else {
                    Ok(n)
                }
            };
            first.send(reply(0)).unwrap();
            second.send(reply(1)).unwrap();
            match both.as_mut().poll(&mut cx) {
                Poll::Ready(Err(e)) => assert_eq!(e.details(), "gone"),
                other => panic!("call {failing} failed, got {other:?}"),
            }
        }
    }
}
