//! Redis-specific tests shared by every Redis driver crate, against real `redis-server`
//! processes: script cache loss, wrong types, dead and restarted servers, auth, wake-up by
//! pub/sub, subscription hygiene and round trips. Run them all with [`crate::redis_suite!`].

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    BackendError, BackendErrorKind, Instant, LockBackend, LockClient, LockConfig, LockError, LockOptions,
};

use crate::RedisServer;
use crate::resp::Resp;

const MS: Duration = Duration::from_millis(1);

/// Options a driver is connected with in these tests.
#[derive(Debug, Clone, Copy)]
pub struct DriverOptions {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// How long a node that lost its data grants nothing (the drivers' `quarantine(..)`).
    pub quarantine: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self { connect_timeout: 2_000 * MS, command_timeout: 1_000 * MS, quarantine: 2_000 * MS }
    }
}

/// How a Redis driver crate plugs into the shared Redis-specific tests.
#[async_trait]
pub trait RedisDriver: Send + Sync + 'static {
    /// The backend type.
    type Backend: LockBackend + lock_core::scripts::ScriptRunner + Clone;
    /// Connects to one node with automatic reconnection, wake-up and the data-loss guard on.
    async fn connect(&self, url: &str, options: DriverOptions) -> Result<Self::Backend, BackendError>;
    /// How many lock channels the backend is subscribed to now.
    fn subscribed_channels(backend: &Self::Backend) -> usize;
}

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn connect<D: RedisDriver>(driver: &D, server: &RedisServer) -> D::Backend {
    driver.connect(&server.url(), DriverOptions::default()).await.unwrap_or_else(|e| panic!("{e}"))
}

fn config(ttl: Duration) -> LockConfig {
    LockConfig::builder()
        .ttl(ttl)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(2 * MS, 50 * MS)
        .fencing(true)
        .build()
        .unwrap()
}

fn text(r: Resp) -> String {
    r.text()
}

/// Calls per command since the last `CONFIG RESETSTAT`, from `INFO commandstats` (commands run
/// inside scripts included), without the INFO and CONFIG calls of the test itself.
fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    let stats = text(server.cmd(&["INFO", "commandstats"]).unwrap());
    stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
        })
        .filter(|(name, _)| name != "info" && !name.starts_with("config"))
        .collect()
}

/// Asserts that a backend's [`LockBackend::deployment_facts`] for one plain server (no
/// persistence, as [`RedisServer`] starts it) read every fact the doctor needs: the `INFO`
/// ones and each `CONFIG GET`, with nothing reported unreadable. For a driver's own tests of
/// connections the suite does not build (e.g. one speaking RESP3, where `CONFIG GET` answers a
/// map and `INFO` a verbatim string).
///
/// # Errors
/// None: facts that are missing fail the test (this panics).
///
/// # Examples
/// ```no_run
/// # async fn demo(backend: impl lock_core::LockBackend) {
/// let facts = backend.deployment_facts().await.unwrap();
/// lock_testkit::redis_suite::assert_facts_complete(&facts);
/// # }
/// ```
pub fn assert_facts_complete(facts: &[lock_core::doctor::NodeFacts]) {
    assert_eq!(facts.len(), 1, "one server: {facts:?}");
    let facts = &facts[0];
    assert_eq!(facts.unreadable, None, "{facts:?}");
    assert_eq!(facts.appendonly.as_deref(), Some("no"), "{facts:?}");
    assert!(facts.maxmemory_policy.is_some() && facts.appendfsync.is_some(), "{facts:?}");
    assert!(facts.version.is_some() && facts.run_id.is_some(), "{facts:?}");
}

/// `SCRIPT FLUSH` while locks are held and being taken: EVALSHA falls back to EVAL and every
/// operation still works.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::script_flush_while_locks_are_held_and_taken(my_driver).await;
/// # }
/// ```
pub async fn script_flush_while_locks_are_held_and_taken<D: RedisDriver>(driver: D) {
    let server = server();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(10_000 * MS)).unwrap();
    let held = locks.mutex("flush:held").unwrap().lock().await.unwrap();
    server.cmd(&["SCRIPT", "FLUSH"]).unwrap();
    let taken = locks.mutex("flush:taken").unwrap().lock().await.unwrap();
    server.cmd(&["SCRIPT", "FLUSH"]).unwrap();
    held.extend(10_000 * MS).await.unwrap();
    server.cmd(&["SCRIPT", "FLUSH"]).unwrap();
    held.release().await.unwrap();
    taken.release().await.unwrap();
    assert_eq!(
        text(server.cmd(&["DBSIZE"]).unwrap()),
        "3",
        "only the two fence counters and the node marker remain"
    );
}

/// A key of the wrong type gives a permanent WRONGTYPE error naming the key.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::wrongtype_key_gives_a_clear_error(my_driver).await;
/// # }
/// ```
pub async fn wrongtype_key_gives_a_clear_error<D: RedisDriver>(driver: D) {
    let server = server();
    server.cmd(&["LPUSH", "lock:{jobs:list}", "x"]).unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(10_000 * MS)).unwrap();
    let start = Instant::now();
    let err = locks.mutex("jobs:list").unwrap().lock().await.unwrap_err();
    assert!(start.elapsed() < 1_000 * MS, "a permanent error must not be retried until the timeout");
    match &err {
        LockError::Backend { source, .. } => assert_eq!(source.kind(), BackendErrorKind::WrongType, "{err}"),
        other => panic!("expected a backend error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("jobs:list") && msg.contains("WRONGTYPE"), "{msg}");
}

/// The read-write lock's and the semaphore's keys of the wrong type give the same permanent
/// WRONGTYPE error naming the key, for readers, writers and permits.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::rw_and_semaphore_wrongtype_keys_give_a_clear_error(my_driver).await;
/// # }
/// ```
pub async fn rw_and_semaphore_wrongtype_keys_give_a_clear_error<D: RedisDriver>(driver: D) {
    let server = server();
    server.cmd(&["SET", "lock:{cfg}:readers", "x"]).unwrap();
    server.cmd(&["LPUSH", "lock:{pool}:permits", "x"]).unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(10_000 * MS)).unwrap();
    let rw = locks.rw_lock("cfg").unwrap();
    let sem = locks.semaphore("pool", 2).unwrap();
    let start = Instant::now();
    let errors =
        [rw.read().await.unwrap_err(), rw.write().await.unwrap_err(), sem.acquire().await.unwrap_err()];
    assert!(start.elapsed() < 1_000 * MS, "a permanent error must not be retried until the timeout");
    for (err, name) in errors.iter().zip(["cfg", "cfg", "pool"]) {
        match err {
            LockError::Backend { source, .. } => {
                assert_eq!(source.kind(), BackendErrorKind::WrongType, "{err}");
            }
            other => panic!("expected a backend error, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains("WRONGTYPE"), "{msg}");
    }
}

/// The watchdog renews many held leases in a few script calls (one per 256 leases due
/// together, [`lock_core::scripts::RENEW_CHUNK`]), not one call per lease; and a key in the
/// batch that now holds another type ends that lease alone, with a WRONGTYPE error naming it.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::watchdog_renews_many_leases_in_few_calls(my_driver).await;
/// # }
/// ```
pub async fn watchdog_renews_many_leases_in_few_calls<D: RedisDriver>(driver: D) {
    const LEASES: usize = 600;
    let server = server();
    let config = LockConfig::builder().ttl(3_000 * MS).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let guards = futures::future::join_all((0..LEASES).map(|i| {
        let locks = locks.clone();
        async move { locks.mutex(format!("many:{i}")).unwrap().lock().await.unwrap() }
    }))
    .await;
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    // The one that will hold another type once the first batch is out.
    server.cmd(&["DEL", "lock:{many:7}"]).unwrap();
    server.cmd(&["LPUSH", "lock:{many:7}", "x"]).unwrap();
    tokio::time::sleep(1_400 * MS).await; // one renewal interval, and a margin
    let calls = command_calls(&server);
    // EVALSHA per call; the first use of the script also meets NOSCRIPT once per chunk, which
    // redis-rs answers with EVAL and fred with SCRIPT LOAD and a second EVALSHA.
    let count = |name: &str| calls.get(name).copied().unwrap_or(0);
    let scripts = count("evalsha") - count("script|load");
    let stats = locks.renewal_stats();
    assert_eq!(stats.renewals, LEASES as u64, "every lease renewed once: {stats:?}");
    assert!(
        scripts >= 3 && scripts <= 3 * stats.batches,
        "{LEASES} renewals in {} batches must be a few script calls (256 leases each), not one per \
         lease: {calls:?}",
        stats.batches
    );
    assert!(stats.batches <= 8, "leases taken together renew together: {stats:?}");
    let reason =
        tokio::time::timeout(1_000 * MS, guards[7].lost()).await.expect("the wrong-type lease is lost");
    match &reason {
        lock_core::LostReason::Backend(e) => {
            assert_eq!(e.kind(), BackendErrorKind::WrongType, "{e}");
            assert!(e.to_string().contains("lock:{many:7}"), "names the key: {e}");
        }
        other => panic!("expected a WRONGTYPE loss, got {other}"),
    }
    for (i, g) in guards.iter().enumerate() {
        assert_eq!(g.is_held(), i != 7, "lease {i}");
    }
    let pttl: i64 = text(server.cmd(&["PTTL", "lock:{many:8}"]).unwrap()).parse().unwrap();
    assert!(pttl > 1_700, "renewed to the full TTL: {pttl} ms left");
    futures::future::join_all(
        guards.into_iter().enumerate().filter(|(i, _)| *i != 7).map(|(_, g)| g.release()),
    )
    .await
    .into_iter()
    .for_each(|r| r.unwrap());
}

/// An uncontended read lock/unlock and write lock/unlock are two round trips each (one script
/// each way), and leave only the fencing counter behind.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::rw_lock_unlock_is_two_round_trips(my_driver).await;
/// # }
/// ```
pub async fn rw_lock_unlock_is_two_round_trips<D: RedisDriver>(driver: D) {
    let server = server();
    let config = LockConfig::builder().watchdog(false).fencing(true).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let rw = locks.rw_lock("rw-trips").unwrap();
    // Warm the script cache first (its loads are not part of the steady state).
    rw.write().await.unwrap().release().await.unwrap();
    rw.read().await.unwrap().release().await.unwrap();
    for side in ["read", "write"] {
        server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
        let guard = if side == "read" { rw.read().await.unwrap() } else { rw.write().await.unwrap() };
        guard.release().await.unwrap();
        let calls = command_calls(&server);
        assert_eq!(
            calls.get("evalsha"),
            Some(&2),
            "a {side} lock/unlock must be two EVALSHA round trips: {calls:?}"
        );
        let scripts_only = [
            "evalsha",
            "get",
            "set",
            "del",
            "time",
            "publish",
            "pubsub|numsub",
            "exists",
            "zadd",
            "zscore",
            "zrem",
            "zcard",
            "zrange",
            "zrangebyscore",
            "zremrangebyscore",
            "pttl",
            "pexpire",
        ];
        assert!(
            calls.keys().all(|k| scripts_only.contains(&k.as_str())),
            "only the scripts' own commands: {calls:?}"
        );
    }
    let left = text(
        server
            .cmd(&["EXISTS", "lock:{rw-trips}", "lock:{rw-trips}:readers", "lock:{rw-trips}:writers"])
            .unwrap(),
    );
    assert_eq!(left.trim(), "0", "an uncontended rw lock leaves nothing behind but its fencing counter");
}

/// A permit's release wakes one waiter of a process, not all: with one permit and six waiters
/// on one client, the release is followed by one call (the oldest waiter's, granted), not six;
/// then every waiter is served in turn.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::permit_release_wakes_one_waiter(my_driver).await;
/// # }
/// ```
pub async fn permit_release_wakes_one_waiter<D: RedisDriver>(driver: D) {
    let server = server();
    // A long backoff: between releases the waiters only wait for notices, never poll.
    let config = LockConfig::builder().watchdog(false).retry_backoff(2_000 * MS, 4_000 * MS).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let sem = locks.semaphore("one-at-a-time", 1).unwrap();
    let held = sem.acquire().await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut waiters = Vec::new();
    for i in 0..6 {
        let (sem, served, mut go) = (sem.clone(), Arc::clone(&served), go_rx.clone());
        waiters.push(tokio::spawn(async move {
            let permit = sem.acquire().await.unwrap();
            served.lock().unwrap().push(i);
            // Hold until told, so the first release's calls can be counted alone.
            let _ = go.wait_for(|g| *g).await;
            permit.release().await.unwrap();
        }));
        tokio::time::sleep(20 * MS).await;
    }
    // Every waiter has called, subscribed and called again by now.
    tokio::time::sleep(300 * MS).await;
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    held.release().await.unwrap();
    let until = Instant::now() + 2_000 * MS;
    while served.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "no waiter was served after the release");
        tokio::time::sleep(5 * MS).await;
    }
    tokio::time::sleep(100 * MS).await;
    let calls = command_calls(&server).get("evalsha").copied().unwrap_or(0);
    assert!(
        calls <= 3,
        "one release woke the herd: {calls} script calls (the release and one grant expected)"
    );
    assert_eq!(served.lock().unwrap().clone(), [0], "the oldest waiter is served first");
    go_tx.send(true).unwrap();
    for w in waiters {
        tokio::time::timeout(10_000 * MS, w).await.expect("every waiter is served in turn").unwrap();
    }
    assert_eq!(served.lock().unwrap().clone(), [0, 1, 2, 3, 4, 5], "served in arrival order");
}

/// A server killed while a lock is held: `lost()` fires by the local deadline.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::server_killed_while_held_fires_lost_by_the_deadline(my_driver).await;
/// # }
/// ```
pub async fn server_killed_while_held_fires_lost_by_the_deadline<D: RedisDriver>(driver: D) {
    let mut server = server();
    let config = LockConfig::builder().ttl(1_000 * MS).renew_interval(250 * MS).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let guard = locks.mutex("killed").unwrap().lock().await.unwrap();
    let deadline = guard.valid_until();
    server.kill();
    let reason = tokio::time::timeout(5_000 * MS, guard.lost()).await.expect("lost() never fired");
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(late <= 50 * MS, "lost() fired {late:?} after the deadline ({reason})");
}

/// A restarted server: the backend reconnects and locking works again.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::server_restart_is_survived(my_driver).await;
/// # }
/// ```
pub async fn server_restart_is_survived<D: RedisDriver>(driver: D) {
    let mut server = server();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(5_000 * MS)).unwrap();
    locks.mutex("restart").unwrap().lock().await.unwrap().release().await.unwrap();
    server.restart().unwrap();
    let guard = locks
        .mutex("restart")
        .unwrap()
        .lock_with(LockOptions::new().timeout(10_000 * MS))
        .await
        .unwrap_or_else(|e| panic!("no reconnection after a restart: {e}"));
    guard.release().await.unwrap();
}

/// An address where nothing listens gives an error within the configured timeout, and one
/// that accepts but never answers gives a timeout.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::unreachable_address_errors_within_the_timeout(my_driver).await;
/// # }
/// ```
pub async fn unreachable_address_errors_within_the_timeout<D: RedisDriver>(driver: D) {
    let options =
        DriverOptions { connect_timeout: 500 * MS, command_timeout: 300 * MS, ..DriverOptions::default() };
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = Instant::now();
    let result = driver.connect(&format!("redis://127.0.0.1:{refused}/"), options).await;
    assert!(start.elapsed() < 2_000 * MS, "took {:?}", start.elapsed());
    match result {
        Err(e) => assert!(
            matches!(e.kind(), BackendErrorKind::Connection | BackendErrorKind::Timeout),
            "unexpected error kind: {e}"
        ),
        Ok(backend) => {
            // A lazily connecting driver: the first command must fail in time instead.
            let locks = LockClient::new(backend);
            let start = Instant::now();
            let err =
                locks.mutex("unreachable").unwrap().lock_with(LockOptions::new().timeout(1_000 * MS)).await;
            assert!(err.is_err());
            assert!(start.elapsed() < 3_000 * MS, "took {:?}", start.elapsed());
        }
    }
    // A listener that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", silent.local_addr().unwrap());
    let start = Instant::now();
    let outcome = async {
        let backend = driver.connect(&url, options).await?;
        let locks = LockClient::new(backend);
        match locks.mutex("silent").unwrap().lock_with(LockOptions::new().timeout(1_000 * MS)).await {
            Ok(_) => panic!("a silent server granted a lock"),
            Err(e) => Err::<(), _>(BackendError::retryable(BackendErrorKind::Timeout, e.to_string())),
        }
    }
    .await;
    assert!(outcome.is_err());
    assert!(start.elapsed() < 4_000 * MS, "a silent server held us {:?}", start.elapsed());
    drop(silent);
}

/// A server that stops answering while the connection stays open (a blackholed peer) fails
/// every call of a lease's life, the acquire, the renewal and the release, with a retryable
/// timeout within the command timeout; none hangs. The drivers bound each call with one timer
/// (redis-rs: the backend's own, not the connection's; fred: fred's command timeout), so this
/// fails if that timer is lost.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::silent_server_times_out_each_call(my_driver).await;
/// # }
/// ```
pub async fn silent_server_times_out_each_call<D: RedisDriver>(driver: D) {
    use lock_core::{AcquireOutcome, AcquireRequest, ExtendRequest, LockKey, Token};
    let server = server();
    let proxy = crate::FaultProxy::start(server.addr().parse().unwrap()).await.unwrap();
    let lane = proxy.lane("client").await.unwrap();
    let command_timeout = 300 * MS;
    let options = DriverOptions { command_timeout, ..DriverOptions::default() };
    let backend =
        driver.connect(&format!("redis://{lane}/"), options).await.unwrap_or_else(|e| panic!("{e}"));
    let (key, token, ttl) = (LockKey::new("silent-server").unwrap(), Token::random(), 10_000 * MS);
    let acquire = AcquireRequest { key: key.clone(), token, ttl, fencing: false };
    let granted = backend.acquire(&acquire).await.unwrap();
    assert!(matches!(granted, AcquireOutcome::Acquired(_)), "{granted:?}");
    assert!(proxy.set_lane_mode("client", crate::ProxyMode::Blackhole));
    // Generous against a busy machine, far below "hangs": the calls must end on a timer.
    let bound = command_timeout * 4;
    let other = AcquireRequest {
        key: LockKey::new("silent-server-2").unwrap(),
        token: Token::random(),
        ttl,
        fencing: false,
    };
    let renew = ExtendRequest { key: key.clone(), token, ttl };
    let err = within("acquire", bound, backend.acquire(&other)).await;
    assert!(err.is_err(), "a silent server granted a lock: {err:?}");
    let err = within("extend", bound, backend.extend(&renew)).await;
    assert!(err.is_err(), "a silent server renewed a lease: {err:?}");
    let err = within("release", bound, backend.release(&key, &token)).await;
    assert!(err.is_err(), "a silent server released a lock: {err:?}");
    assert!(proxy.stats().faults() > 0, "the proxy discarded nothing: the fault did not happen");
}

/// Runs `call`, which must fail with a retryable timeout before `bound`; it panics if the
/// call is still out then.
async fn within<T: std::fmt::Debug>(
    call: &str,
    bound: Duration,
    fut: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let started = Instant::now();
    let Ok(result) = tokio::time::timeout(bound, fut).await else {
        panic!("{call} on a silent server was still waiting after {bound:?}: no timer bounds it");
    };
    if let Err(err) = &result {
        assert_eq!(err.kind(), BackendErrorKind::Timeout, "{call} on a silent server: {err}");
        assert!(err.is_retryable(), "{call} on a silent server: {err}");
        assert!(started.elapsed() < bound, "{call} on a silent server took {:?}", started.elapsed());
    }
    result
}

/// A wrong or missing password gives a permanent authentication error, quickly.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::auth_failure_gives_a_clear_error(my_driver).await;
/// # }
/// ```
pub async fn auth_failure_gives_a_clear_error<D: RedisDriver>(driver: D) {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]).unwrap_or_else(|e| panic!("{e}"));
    let wrong = format!("redis://:wrong@{}/", server.addr());
    let start = Instant::now();
    let err = match driver.connect(&wrong, DriverOptions::default()).await {
        Err(e) => e,
        Ok(backend) => match LockClient::new(backend).mutex("auth").unwrap().try_lock().await {
            Err(LockError::Backend { source, .. }) => source,
            other => panic!("a wrong password was accepted: {other:?}"),
        },
    };
    assert_eq!(err.kind(), BackendErrorKind::Auth, "{err}");
    assert!(!err.is_retryable(), "a wrong password does not fix itself: {err}");
    assert!(start.elapsed() < 3_000 * MS);
    // No password at all.
    let err = match driver.connect(&server.url(), DriverOptions::default()).await {
        Err(e) => e,
        Ok(backend) => match LockClient::new(backend).mutex("auth").unwrap().try_lock().await {
            Err(LockError::Backend { source, .. }) => source,
            other => panic!("a missing password was accepted: {other:?}"),
        },
    };
    assert_eq!(err.kind(), BackendErrorKind::Auth, "{err}");
    // The right one works.
    let right = format!("redis://:s3cret@{}/", server.addr());
    let backend = driver.connect(&right, DriverOptions::default()).await.unwrap();
    LockClient::new(backend).mutex("auth").unwrap().lock().await.unwrap().release().await.unwrap();
}

/// A user with exactly [`lock_core::scripts::ACL_RULES`] can do everything the lock does
/// (fenced and unfenced locks, waits woken by pub/sub, renewals); a user without EVALSHA gets
/// a permanent error that names the missing permission.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::acl_user_with_the_documented_rules_can_lock(my_driver).await;
/// # }
/// ```
pub async fn acl_user_with_the_documented_rules_can_lock<D: RedisDriver>(driver: D) {
    let server = server();
    let mut setuser = vec!["ACL", "SETUSER", "locker", "on", ">pw"];
    setuser.extend(lock_core::scripts::ACL_RULES.split_whitespace());
    assert_eq!(server.cmd(&setuser).unwrap().text(), "OK");
    let url = format!("redis://locker:pw@{}/", server.addr());
    let backend = driver.connect(&url, DriverOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    for fencing in [true, false] {
        let config = LockConfig::builder()
            .ttl(300 * MS)
            .renew_interval(100 * MS)
            .acquire_timeout(10_000 * MS)
            .fencing(fencing)
            .build()
            .unwrap();
        let locks = LockClient::with_config(backend.clone(), config).unwrap();
        let key = format!("acl:{fencing}");
        let held = locks.mutex(&key).unwrap().lock().await.unwrap();
        let waiter = {
            let locks = LockClient::with_config(backend.clone(), locks.config().clone()).unwrap();
            let key = key.clone();
            tokio::spawn(async move { locks.mutex(&key).unwrap().lock().await.map(|_| ()) })
        };
        tokio::time::sleep(400 * MS).await; // past the TTL: the watchdog renewed it
        assert!(held.is_held(), "renewal must work for the ACL user");
        held.release().await.unwrap();
        waiter.await.unwrap().unwrap();
    }
    // No EVALSHA: a clear, permanent error naming it.
    let mut setuser = vec!["ACL", "SETUSER", "nolua", "on", ">pw"];
    setuser.extend(lock_core::scripts::ACL_RULES.split_whitespace());
    setuser.extend(["-evalsha", "-eval"]);
    assert_eq!(server.cmd(&setuser).unwrap().text(), "OK");
    let url = format!("redis://nolua:pw@{}/", server.addr());
    let backend = driver.connect(&url, DriverOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let config = LockConfig::builder().fencing(true).build().unwrap();
    let start = Instant::now();
    let err = LockClient::with_config(backend, config)
        .unwrap()
        .mutex("acl:denied")
        .unwrap()
        .lock()
        .await
        .unwrap_err();
    assert!(start.elapsed() < 2_000 * MS, "a missing permission must not be retried until the timeout");
    let msg = err.to_string();
    let lower = msg.to_lowercase();
    assert!(lower.contains("evalsha") && lower.contains("noperm"), "{msg}");
    match &err {
        LockError::Backend { source, .. } => {
            assert_eq!(source.kind(), BackendErrorKind::Auth, "{msg}");
            assert!(!source.is_retryable(), "{msg}");
        }
        other => panic!("expected a backend error, got {other}"),
    }
}

/// 200 waiters on one key: each gets the lock exactly once, and afterwards no subscription is
/// left on the server or in the backend.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::two_hundred_waiters_each_get_the_lock_once(my_driver).await;
/// # }
/// ```
pub async fn two_hundred_waiters_each_get_the_lock_once<D: RedisDriver>(driver: D) {
    let server = server();
    let backend = connect(&driver, &server).await;
    let got: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    let holder = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = Vec::new();
    for id in 0..200 {
        let locks = LockClient::with_config(backend.clone(), config(10_000 * MS)).unwrap();
        let (got, holder) = (Arc::clone(&got), Arc::clone(&holder));
        tasks.push(tokio::spawn(async move {
            let guard = locks.mutex("crowd").unwrap().lock().await.unwrap();
            let exclusive = holder.try_lock().expect("two holders at once");
            *got.lock().unwrap().entry(id).or_default() += 1;
            tokio::task::yield_now().await;
            drop(exclusive);
            guard.release().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 200);
    assert!(got.values().all(|n| *n == 1));
    subscriptions_drain(&server, &backend, Some(D::subscribed_channels)).await;
}

async fn subscriptions_drain<B>(server: &RedisServer, backend: &B, count: Option<fn(&B) -> usize>) {
    let deadline = Instant::now() + 5_000 * MS;
    loop {
        let channels = text(server.cmd(&["PUBSUB", "CHANNELS", "lock:*"]).unwrap());
        let local = count.map_or(0, |c| c(backend));
        if channels.is_empty() && local == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "subscriptions left: server {channels:?}, backend {local}");
        tokio::time::sleep(20 * MS).await;
    }
}

/// On an idle server, a lock/unlock cycle is exactly two round trips: two EVALSHA calls.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::lock_unlock_is_two_round_trips(my_driver).await;
/// # }
/// ```
pub async fn lock_unlock_is_two_round_trips<D: RedisDriver>(driver: D) {
    let server = server();
    let config = LockConfig::builder().watchdog(false).fencing(true).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let mutex = locks.mutex("trips").unwrap();
    // Warm up: load the scripts once (the first EVALSHA may fall back to EVAL).
    mutex.lock().await.unwrap().release().await.unwrap();
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    mutex.lock().await.unwrap().release().await.unwrap();
    let calls = command_calls(&server);
    // Commands run inside scripts are counted too: exactly the scripts' own, once each (the
    // acquire reads the node marker, the lock and the fence counter, and the server clock for
    // the token's floor). Any extra client command (a PING, a GET, an EVAL fallback) would
    // change this map.
    // Nobody was refused the lock, so it carries no waiters' mark and the release is a GET and
    // a DEL: no fair-queue probe, no PUBSUB NUMSUB, no PUBLISH.
    let expected: HashMap<String, u64> = [("evalsha", 2), ("get", 4), ("time", 1), ("set", 2), ("del", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(calls, expected, "a lock/unlock cycle must be exactly two EVALSHA round trips");
}

/// An uncontended fair lock/unlock is two round trips too: one `EVALSHA` of the fair script
/// (which finds no queue, so it queues nothing) and one of the release, counted with
/// `INFO commandstats`; and it leaves no queue key behind.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::fair_lock_unlock_is_two_round_trips(my_driver).await;
/// # }
/// ```
pub async fn fair_lock_unlock_is_two_round_trips<D: RedisDriver>(driver: D) {
    let server = server();
    let config = LockConfig::builder().watchdog(false).fencing(true).build().unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, config).unwrap();
    let fair = locks.fair_mutex("fair-trips").unwrap();
    fair.lock().await.unwrap().release().await.unwrap();
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    fair.lock().await.unwrap().release().await.unwrap();
    let calls = command_calls(&server);
    assert_eq!(
        calls.get("evalsha"),
        Some(&2),
        "a fair lock/unlock must be two EVALSHA round trips: {calls:?}"
    );
    let scripts_only = [
        "evalsha",
        "get",
        "set",
        "del",
        "time",
        "publish",
        "pubsub|numsub",
        "exists",
        "zrangebyscore",
        "zrange",
        "zrem",
    ];
    assert!(
        calls.keys().all(|k| scripts_only.contains(&k.as_str())),
        "only the scripts' own commands may run: {calls:?}"
    );
    let left = text(server.cmd(&["EXISTS", "lock:{fair-trips}:queue", "lock:{fair-trips}:waiters"]).unwrap());
    assert_eq!(left.trim(), "0", "an uncontended fair lock leaves no queue behind");
}

/// Without fencing, a lock on a single node is one round trip that still checks the
/// data-loss marker: a plain `SET NX` with a `GET` of the marker sent with it (no acquire
/// script), storing `token:0`. When the marker is gone (the node lost its data) that `SET` does
/// not stand: the acquire is refused as quarantined and the key it set is deleted again. A
/// retry with the same token (its reply lost) is granted again, another token sees the lock
/// held, and a key of the wrong type gives a clear error.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::unfenced_lock_is_one_round_trip_that_checks_the_marker(my_driver).await;
/// # }
/// ```
pub async fn unfenced_lock_is_one_round_trip_that_checks_the_marker<D: RedisDriver>(driver: D) {
    let server = server();
    let backend = connect(&driver, &server).await;
    let config = LockConfig::builder().watchdog(false).build().unwrap();
    let locks = LockClient::with_config(backend.clone(), config).unwrap();
    let mutex = locks.mutex("plain").unwrap();
    mutex.lock().await.unwrap().release().await.unwrap();
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    mutex.lock().await.unwrap().release().await.unwrap();
    let calls = command_calls(&server);
    // SET + GET marker (one round trip), then the release script (GET and DEL: nobody was
    // refused the lock, so nobody waits for a notice).
    let expected: HashMap<String, u64> = [("set", 1), ("evalsha", 1), ("get", 2), ("del", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(calls, expected, "an unfenced cycle is SET with a marker GET, then one release script");

    // The node loses its data (the marker with it): the plain SET does not stand.
    server.cmd(&["DEL", "lock:node"]).unwrap();
    let lost = lock_core::AcquireRequest {
        key: lock_core::LockKey::new("plain:lost").unwrap(),
        token: lock_core::Token::random(),
        ttl: 5_000 * MS,
        fencing: false,
    };
    match backend.acquire(&lost).await {
        Err(e) => assert_eq!(e.kind(), BackendErrorKind::Quarantined, "{e}"),
        Ok(other) => panic!("a node without its marker granted {other:?}"),
    }
    let left = text(server.cmd(&["EXISTS", "lock:{plain:lost}"]).unwrap());
    assert_eq!(left.trim(), "0", "the SET the quarantined node accepted must be taken back");
    server.cmd(&["SET", "lock:node", "000000000001:0"]).unwrap();

    // The same token again (a retry whose reply was lost): granted again.
    let key = lock_core::LockKey::new("plain:retry").unwrap();
    let token = lock_core::Token::random();
    let req = lock_core::AcquireRequest { key: key.clone(), token, ttl: 5_000 * MS, fencing: false };
    assert!(matches!(backend.acquire(&req).await.unwrap(), lock_core::AcquireOutcome::Acquired(_)));
    let stored = text(server.cmd(&["GET", "lock:{plain:retry}"]).unwrap());
    assert_eq!(stored, format!("{}:0", token.to_redis_value()));
    assert!(matches!(backend.acquire(&req).await.unwrap(), lock_core::AcquireOutcome::Acquired(_)));
    let other = lock_core::AcquireRequest { token: lock_core::Token::random(), ..req.clone() };
    match backend.acquire(&other).await.unwrap() {
        lock_core::AcquireOutcome::Held { remaining } => assert!(remaining.is_some_and(|r| r > 1_000 * MS)),
        other => panic!("another token must see the lock held, got {other:?}"),
    }
    assert_eq!(backend.release(&key, &token).await.unwrap(), lock_core::ReleaseOutcome::Released);

    // A key of another type: the script names the problem.
    server.cmd(&["LPUSH", "lock:{plain:list}", "x"]).unwrap();
    let err = locks.mutex("plain:list").unwrap().lock().await.unwrap_err();
    match &err {
        LockError::Backend { source, .. } => assert_eq!(source.kind(), BackendErrorKind::WrongType, "{err}"),
        other => panic!("expected a backend error, got {other}"),
    }
}

/// The data-loss guard of an unfenced acquire stands on command order: the marker `GET` that
/// vouches for a `SET` must run **after** it, on the same connection (a flush between the two
/// would otherwise go unseen). Checked on the wire ([`crate::Monitor`]): after every `SET` of a
/// lock, the next command on its connection other than another `SET` of the same batch is the
/// marker read; for lone acquires one at a time and for
/// acquires arriving together (a batch: a pipeline of `SET`s, or one script call whose commands
/// `MONITOR` does not show as the client's).
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::the_marker_is_read_after_the_set_on_its_connection(my_driver).await;
/// # }
/// ```
pub async fn the_marker_is_read_after_the_set_on_its_connection<D: RedisDriver>(driver: D) {
    let server = server();
    let backend = connect(&driver, &server).await;
    let locks =
        LockClient::with_config(backend.clone(), LockConfig::builder().watchdog(false).build().unwrap())
            .unwrap();
    // Opens the node (creates its marker), so every acquire below is a plain SET.
    locks.mutex("order:first").unwrap().lock().await.unwrap().release().await.unwrap();

    let monitor = server.monitor().unwrap();
    // One at a time: each a lone acquire.
    for i in 0..20 {
        locks.mutex(format!("order:{i}")).unwrap().lock().await.unwrap().release().await.unwrap();
    }
    // Together: writes held back for a moment, so that all but the first join one batch.
    server.cmd(&["CLIENT", "PAUSE", "200", "WRITE"]).unwrap();
    let together = (0..16).map(|i| {
        let locks = locks.clone();
        async move { locks.mutex(format!("order:together:{i}")).unwrap().lock().await.unwrap() }
    });
    for guard in futures::future::join_all(together).await {
        guard.release().await.unwrap();
    }
    let commands = monitor.stop();

    let marker_read = ["GET", lock_core::scripts::MARKER_KEY];
    let mut sets = 0;
    for (n, seen) in commands.iter().enumerate() {
        if seen.words.first().map(String::as_str) != Some("SET") {
            continue;
        }
        sets += 1;
        let mut on_its_connection = commands[n + 1..].iter().filter(|c| c.client == seen.client);
        let next = on_its_connection.find(|c| c.words.first().map(String::as_str) != Some("SET"));
        assert_eq!(
            next.map(crate::Monitored::words),
            Some(marker_read.to_vec()),
            "after {:?} on {}, the next command there (but the batch's SETs) must be the marker read",
            seen.words,
            seen.client
        );
    }
    // The 20 lone ones, and at least the first of those arriving together (the rest may be
    // one script call).
    assert!(sets > 20, "every lone acquire was a SET on the wire ({sets}): {commands:?}");
}

/// Unfenced acquires of one server that arrive together share one pipeline (or one
/// [`lock_core::scripts::SET_MANY`] call) and **one** read of the data-loss marker (see
/// [`lock_core::coalesce`]): 64 at once cost the server 64 `SET`s
/// and three `GET`s (two lone acquires, then one batch of 62), each caller gets its own answer (granted, or held by another), and
/// the guard holds for every member of a batch: with the marker gone, none of them is granted
/// and none of their keys is left behind.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::acquires_arriving_together_share_one_marker_read(my_driver).await;
/// # }
/// ```
pub async fn acquires_arriving_together_share_one_marker_read<D: RedisDriver>(driver: D) {
    let server = server();
    let backend = connect(&driver, &server).await;
    let request = |key: &str| lock_core::AcquireRequest {
        key: lock_core::LockKey::new(key).unwrap(),
        token: lock_core::Token::random(),
        ttl: 5_000 * MS,
        fencing: false,
    };
    // Opens the node (creates its marker).
    let first = request("together:first");
    assert!(matches!(backend.acquire(&first).await.unwrap(), lock_core::AcquireOutcome::Acquired(_)));

    // 64 at once on free keys: the server sees 64 SETs and a marker read per batch. The server
    // holds back write commands for a moment (`CLIENT PAUSE ... WRITE`): the first two batches
    // (one acquire each: a lone acquire goes at once) wait for their replies through it, so
    // every later acquire joins the third however slowly this machine starts them (on a loaded
    // one, replies that came back while the 64 were being started let some go alone).
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    server.cmd(&["CLIENT", "PAUSE", "300", "WRITE"]).unwrap();
    let requests: Vec<_> = (0..64).map(|i| request(&format!("together:{i}"))).collect();
    let outcomes = futures::future::join_all(requests.iter().map(|r| backend.acquire(r))).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(matches!(outcome, Ok(lock_core::AcquireOutcome::Acquired(_))), "acquire {i} got {outcome:?}");
    }
    let calls = command_calls(&server);
    let gets = calls.get("get").copied().unwrap_or(0);
    assert_eq!(calls.get("set"), Some(&64), "one SET each: {calls:?}");
    // Two lone acquires, then one batch of the other 62; one read per acquire would be 64.
    assert_eq!(gets, 3, "64 acquires at once read the marker once per batch, not once each: {calls:?}");
    // The batch goes as a pipeline of the commands, or as one `SET_MANY` script call running
    // them (fred; a first call of it may find the script cache empty and load it): no other
    // command, and no acquire script.
    assert!(
        calls
            .keys()
            .all(|c| ["set", "get", "client|pause", "evalsha", "eval", "script|load"].contains(&c.as_str())),
        "nothing but the SETs and the marker reads: {calls:?}"
    );
    let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
    assert!(scripts <= 2, "at most one script call per batch (and its retry after loading it): {calls:?}");
    for (i, r) in requests.iter().enumerate() {
        let stored = text(server.cmd(&["GET", &format!("lock:{{together:{i}}}")]).unwrap());
        assert_eq!(stored, format!("{}:0", r.token.to_redis_value()), "each caller's own token");
    }

    // A batch of keys held by others and free keys: each caller gets its own answer.
    for i in (0..32).step_by(2) {
        server
            .cmd(&["SET", &format!("lock:{{together:mixed:{i}}}"), "someone-else:0", "PX", "5000"])
            .unwrap();
    }
    let mixed: Vec<_> = (0..32).map(|i| request(&format!("together:mixed:{i}"))).collect();
    let outcomes = futures::future::join_all(mixed.iter().map(|r| backend.acquire(r))).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        match (i % 2, outcome) {
            (0, Ok(lock_core::AcquireOutcome::Held { .. }))
            | (1, Ok(lock_core::AcquireOutcome::Acquired(_))) => {}
            (_, other) => panic!("acquire {i} got {other:?}"),
        }
    }

    // The node loses its data: no member of any batch is granted, none leaves a key behind.
    server.cmd(&["DEL", "lock:node"]).unwrap();
    let lost: Vec<_> = (0..16).map(|i| request(&format!("together:lost:{i}"))).collect();
    for (i, outcome) in
        futures::future::join_all(lost.iter().map(|r| backend.acquire(r))).await.iter().enumerate()
    {
        match outcome {
            Err(e) => assert_eq!(e.kind(), BackendErrorKind::Quarantined, "{e}"),
            Ok(other) => panic!("acquire {i} on a node without its marker got {other:?}"),
        }
    }
    for i in 0..16 {
        let left = text(server.cmd(&["EXISTS", &format!("lock:{{together:lost:{i}}}")]).unwrap());
        assert_eq!(left.trim(), "0", "the SET of acquire {i} must be taken back");
    }
}

/// Releases of one server that arrive together go out in **one** script call (see
/// [`lock_core::coalesce::Releases`] and [`lock_core::scripts::RELEASE_MANY`]): 64 at once
/// cost the server three calls (two lone releases, then one batch of 62), and each release in
/// a batch is decided alone, as its own call would decide it: released, not held (another
/// owner's, or free), a key of another type (a clear error for that release only), a silent
/// discard, a release plain waiters were refused (announced to them), and a release fair
/// waiters are queued for (handed over to the head of the queue by the full form, sent next).
/// A flushed script cache is loaded again by the batch that finds it empty.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::releases_arriving_together_share_one_script_call(my_driver).await;
/// # }
/// ```
pub async fn releases_arriving_together_share_one_script_call<D: RedisDriver>(driver: D) {
    use lock_core::{AcquireOutcome, AcquireRequest, LockKey, ReleaseOutcome, Token};
    let server = server();
    let backend = connect(&driver, &server).await;
    let key = |name: &str| LockKey::new(name).unwrap();
    let take = |name: &str, token: Token| {
        let backend = backend.clone();
        let req = AcquireRequest { key: key(name), token, ttl: 30_000 * MS, fencing: false };
        async move {
            let outcome = backend.acquire(&req).await.unwrap();
            assert!(matches!(outcome, AcquireOutcome::Acquired(_)), "{}: {outcome:?}", req.key);
        }
    };
    let stored = |name: &str| text(server.cmd(&["GET", &format!("lock:{{{name}}}")]).unwrap());
    // The server holds back scripts for a moment (`CLIENT PAUSE ... WRITE`): the first two
    // batches (one release each: a lone release goes at once) wait for their replies through
    // it, so every later release joins the third however slowly this machine starts them.
    let pause = || server.cmd(&["CLIENT", "PAUSE", "300", "WRITE"]).unwrap();

    // Loads both release scripts (a batch of free keys), so no NOSCRIPT retry is counted.
    let owner = Token::random();
    pause();
    let warm: Vec<_> = (0..8).map(|i| key(&format!("warm:{i}"))).collect();
    for outcome in futures::future::join_all(warm.iter().map(|k| backend.release(k, &owner))).await {
        assert_eq!(outcome.unwrap(), ReleaseOutcome::NotHeld);
    }

    // 64 at once: three calls, each lock released.
    let keys: Vec<_> = (0..64).map(|i| key(&format!("many:{i}"))).collect();
    for k in &keys {
        take(k.as_str(), owner).await;
    }
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    pause();
    for (i, outcome) in futures::future::join_all(keys.iter().map(|k| backend.release(k, &owner)))
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(outcome.unwrap(), ReleaseOutcome::Released, "release {i}");
    }
    let calls = command_calls(&server);
    assert_eq!(calls.get("del"), Some(&64), "each lock deleted: {calls:?}");
    assert_eq!(
        calls.get("evalsha"),
        Some(&3),
        "64 releases at once are three script calls (two alone, then one batch), not 64: {calls:?}"
    );
    for k in &keys {
        assert_eq!(stored(k.as_str()), "", "{k} released");
    }

    // One batch of every kind of release, each decided alone.
    let (other, waiter) = (Token::random(), Token::random());
    for name in ["first", "second", "mine", "discarded", "announced", "fair"] {
        take(name, owner).await;
    }
    take("others", other).await;
    server.cmd(&["LPUSH", "lock:{listed}", "x"]).unwrap();
    // Plain waiters were refused "discarded" and "announced" (marked '!'); somebody listens
    // for "announced"'s release.
    for name in ["discarded", "announced"] {
        let refused = AcquireRequest { key: key(name), token: other, ttl: 30_000 * MS, fencing: false };
        assert!(matches!(backend.acquire(&refused).await.unwrap(), AcquireOutcome::Held { .. }));
        assert!(stored(name).ends_with('!'), "{name} marked: {}", stored(name));
    }
    let mut watch = backend.watch_releases(&key("announced")).await.unwrap().expect("wake-up is on");
    let listening = || {
        let reply = text(server.cmd(&["PUBSUB", "NUMSUB", "lock:{announced}:released"]).unwrap());
        reply.lines().nth(1).is_some_and(|n| n != "0")
    };
    let started = Instant::now();
    while !listening() {
        assert!(started.elapsed() < 5_000 * MS, "the watch never subscribed");
        tokio::time::sleep(10 * MS).await;
    }
    // A fair waiter is queued for "fair" (marked '?').
    let queued = lock_core::FairRequest {
        key: key("fair"),
        token: waiter,
        ttl: 30_000 * MS,
        fencing: true,
        wait: Some(30_000 * MS),
    };
    let fair = backend.fair().expect("the Redis drivers serve the fair lock");
    assert!(matches!(fair.fair_acquire(&queued).await.unwrap(), lock_core::FairOutcome::Waiting { .. }));
    assert!(stored("fair").ends_with('?'), "fair marked: {}", stored("fair"));

    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    pause();
    let names = ["first", "second", "mine", "others", "free", "listed", "discarded", "announced", "fair"];
    let named: Vec<LockKey> = names.iter().map(|name| key(name)).collect();
    let mut outcomes = futures::future::join_all(named.iter().map(|k| {
        let backend = &backend;
        async move {
            if k.as_str() == "discarded" {
                backend.discard(k, &owner).await
            } else {
                backend.release(k, &owner).await
            }
        }
    }))
    .await
    .into_iter();
    let mut next = || outcomes.next().unwrap();
    let (first, second, mine, others, free, listed, discarded, announced, fair_held) =
        (next(), next(), next(), next(), next(), next(), next(), next(), next());
    for (name, outcome) in [("first", first), ("second", second), ("mine", mine)] {
        assert_eq!(outcome.unwrap(), ReleaseOutcome::Released, "{name}");
    }
    assert_eq!(others.unwrap(), ReleaseOutcome::NotHeld, "another owner's lock is left alone");
    assert_eq!(stored("others")[..32], other.to_redis_value());
    assert_eq!(free.unwrap(), ReleaseOutcome::NotHeld, "a free key");
    match listed {
        Err(e) => {
            assert_eq!(e.kind(), BackendErrorKind::WrongType, "{e}");
            assert!(e.message().contains("lock:{listed}"), "the error names the key: {e}");
        }
        Ok(outcome) => panic!("a release of a list key got {outcome:?}"),
    }
    assert_eq!(discarded.unwrap(), ReleaseOutcome::Released, "a discard");
    assert_eq!(announced.unwrap(), ReleaseOutcome::Released);
    assert_eq!(fair_held.unwrap(), ReleaseOutcome::Released);
    let calls = command_calls(&server);
    assert_eq!(
        calls.get("evalsha"),
        Some(&4),
        "two alone, one batch of the other seven, then the full form for the fair waiter: {calls:?}"
    );
    assert_eq!(calls.get("del"), Some(&6), "the six locks of this owner, nothing else: {calls:?}");
    assert!(
        tokio::time::timeout(5_000 * MS, watch.notified()).await.unwrap(),
        "the release plain waiters were refused is announced to them"
    );
    assert_eq!(stored("fair")[..32], waiter.to_redis_value(), "handed over to the queued fair waiter");
    assert_eq!(text(server.cmd(&["TYPE", "lock:{listed}"]).unwrap()), "list", "the list is left alone");

    // A flushed script cache: a batch loads its script again.
    let keys: Vec<_> = (0..8).map(|i| key(&format!("flushed:{i}"))).collect();
    for k in &keys {
        take(k.as_str(), owner).await;
    }
    server.cmd(&["SCRIPT", "FLUSH"]).unwrap();
    pause();
    for outcome in futures::future::join_all(keys.iter().map(|k| backend.release(k, &owner))).await {
        assert_eq!(outcome.unwrap(), ReleaseOutcome::Released, "after SCRIPT FLUSH");
    }
}

fn quarantine_config(ttl: Duration) -> LockConfig {
    LockConfig::builder().ttl(ttl).retry_backoff(5 * MS, 50 * MS).fencing(true).build().unwrap()
}

fn is_quarantined(e: &LockError) -> bool {
    match e {
        LockError::Backend { source, .. } => source.kind() == BackendErrorKind::Quarantined,
        LockError::Timeout { last_error: Some(source), .. } => source.kind() == BackendErrorKind::Quarantined,
        _ => false,
    }
}

/// `FLUSHALL` while a lease is held: the holder is told its lease is gone at its next renewal,
/// the first acquire after the flush starts the node's quarantine, **every** client (one that
/// never saw the node before, with another quarantine setting, included) is refused during it
/// with an error that names it, a waiter whose timeout ends inside it times out on time naming
/// the quarantine, and grants resume once it has passed.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::flushall_starts_a_quarantine_every_client_sees(my_driver).await;
/// # }
/// ```
pub async fn flushall_starts_a_quarantine_every_client_sees<D: RedisDriver>(driver: D) {
    let server = server();
    let quarantine = 1_500 * MS;
    let options = DriverOptions { quarantine, ..DriverOptions::default() };
    let a = driver.connect(&server.url(), options).await.unwrap();
    let ttl = 900 * MS;
    let config = LockConfig::builder().ttl(ttl).renew_interval(150 * MS).fencing(true).build().unwrap();
    let locks_a = LockClient::with_config(a.clone(), config).unwrap();
    let held = locks_a.mutex("flushed").unwrap().lock().await.unwrap();
    let before = held.fencing_token().unwrap();
    server.cmd(&["FLUSHALL"]).unwrap();
    let reason = tokio::time::timeout(2_000 * MS, held.lost()).await.expect("the holder was never told");
    assert!(matches!(reason, lock_core::LostReason::NotOwner), "lost for {reason}");

    // The first acquire after the flush notices it and starts the quarantine.
    let noticed = Instant::now();
    let err = locks_a.mutex("other").unwrap().try_lock().await.unwrap_err();
    assert!(is_quarantined(&err), "expected a quarantine error, got {err}");
    assert!(err.to_string().contains("lockctl init"), "the error says what to do: {err}");
    // A client that never saw the node, configured with a tiny quarantine, sees the same one.
    let b = driver
        .connect(&server.url(), DriverOptions { quarantine: 10 * MS, ..DriverOptions::default() })
        .await
        .unwrap();
    let locks_b = LockClient::with_config(b, quarantine_config(ttl)).unwrap();
    let err = locks_b.mutex("flushed").unwrap().try_lock().await.unwrap_err();
    assert!(is_quarantined(&err), "a new client must see the quarantine too, got {err}");
    // Readers, writers and permits abstain too: the node may have granted any of them.
    let rw = locks_b.rw_lock("flushed-rw").unwrap();
    let sem = locks_b.semaphore("flushed-sem", 2).unwrap();
    let refused = [
        rw.try_read().await.unwrap_err(),
        rw.try_write().await.unwrap_err(),
        sem.try_acquire().await.unwrap_err(),
    ];
    for err in refused {
        assert!(is_quarantined(&err), "every primitive abstains in quarantine, got {err}");
    }
    // A waiter whose timeout ends inside the quarantine times out on time, naming it.
    let waited = Instant::now();
    let err =
        locks_b.mutex("flushed").unwrap().lock_with(LockOptions::new().timeout(300 * MS)).await.unwrap_err();
    let took = waited.elapsed();
    assert!(matches!(err, LockError::Timeout { .. }) && is_quarantined(&err), "got {err}");
    assert!(took < 600 * MS, "the waiter retried past its timeout: {took:?}");
    // Once the quarantine has passed (by the server's clock), grants resume, for everyone.
    let guard = locks_b
        .mutex("flushed")
        .unwrap()
        .lock_with(LockOptions::new().timeout(5_000 * MS))
        .await
        .unwrap_or_else(|e| panic!("no grant after the quarantine: {e}"));
    let gap = noticed.elapsed();
    assert!(
        gap >= quarantine - 100 * MS,
        "granted {gap:?} after the loss was noticed, inside the quarantine"
    );
    assert!(gap < quarantine + 1_000 * MS, "granted only {gap:?} after the loss was noticed");
    // The re-created fence counter starts from the server clock: above the lost one's tokens.
    let after = guard.fencing_token().unwrap();
    assert!(after > before, "fencing token went back from {before} to {after} after the flush");
    guard.release().await.unwrap();
}

/// A fencing counter lost on its own (deleted, or not restored) is re-created from the
/// server's clock, so the next token is still above every earlier one.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::lost_fence_counter_keeps_tokens_rising(my_driver).await;
/// # }
/// ```
pub async fn lost_fence_counter_keeps_tokens_rising<D: RedisDriver>(driver: D) {
    let server = server();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(5_000 * MS)).unwrap();
    let mutex = locks.mutex("fence-loss").unwrap();
    let mut last = 0;
    for round in 0..4 {
        let guard = mutex.lock().await.unwrap();
        let fence = guard.fencing_token().unwrap().0;
        assert!(fence > last, "round {round}: token {fence} after {last}");
        last = fence;
        guard.release().await.unwrap();
        if round % 2 == 0 {
            server.cmd(&["DEL", "lock:{fence-loss}:fence"]).unwrap();
        }
    }
    // The RedLock write-back on a missing counter starts from the clock too.
    server.cmd(&["DEL", "lock:{fence-loss}:fence"]).unwrap();
    let backend = connect(&driver, &server).await;
    let key = lock_core::LockKey::new("fence-loss").unwrap();
    backend.raise_fence(&key, &lock_core::Token::random(), lock_core::FencingToken(5)).await.unwrap();
    let next = mutex.lock().await.unwrap();
    assert!(next.fencing_token().unwrap().0 > last, "token went back after a lost counter");
    next.release().await.unwrap();
}

/// A new server declared fresh grants at once; an undeclared one waits out the quarantine on
/// its first use (with an error naming it); `Declare::Force` lifts a running quarantine; the
/// node id survives and is what `node_identity` reports.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::declared_fresh_server_grants_at_once(my_driver).await;
/// # }
/// ```
pub async fn declared_fresh_server_grants_at_once<D: RedisDriver>(driver: D) {
    use lock_core::scripts::{self, Declare, NodeStatus};
    let server = server();
    let backend = connect(&driver, &server).await;
    let locks = LockClient::with_config(backend.clone(), quarantine_config(1_000 * MS)).unwrap();
    // The harness declared it fresh when it started it.
    let id = match scripts::node_status(&backend).await.unwrap() {
        NodeStatus::Open { id } => id,
        other => panic!("a started server is declared fresh, got {other:?}"),
    };
    assert_eq!(backend.node_identity().await.unwrap(), Some(id));
    locks.mutex("fresh").unwrap().try_lock().await.unwrap().expect("free").release().await.unwrap();

    // Without its marker it is taken for a server that lost its data.
    server.cmd(&["DEL", lock_core::scripts::MARKER_KEY]).unwrap();
    assert_eq!(scripts::node_status(&backend).await.unwrap(), NodeStatus::Unmarked);
    assert_eq!(backend.node_identity().await.unwrap(), None);
    let err = locks.mutex("fresh").unwrap().try_lock().await.unwrap_err();
    assert!(is_quarantined(&err), "got {err}");
    match scripts::node_status(&backend).await.unwrap() {
        NodeStatus::Quarantined { left, .. } => assert!(left <= 2_000 * MS, "left {left:?}"),
        other => panic!("expected a quarantine, got {other:?}"),
    }
    // `IfMissing` keeps a running quarantine; `Force` lifts it.
    let kept = scripts::declare_fresh(&backend, Declare::IfMissing).await.unwrap();
    assert!(matches!(kept, NodeStatus::Quarantined { .. }), "{kept:?}");
    let lifted = scripts::declare_fresh(&backend, Declare::Force).await.unwrap();
    assert!(matches!(lifted, NodeStatus::Open { .. }), "{lifted:?}");
    locks.mutex("fresh").unwrap().try_lock().await.unwrap().expect("free").release().await.unwrap();

    // Declaring a server fresh before its first use: no wait at all.
    server.cmd(&["DEL", lock_core::scripts::MARKER_KEY]).unwrap();
    let declared = scripts::declare_fresh(&backend, Declare::IfMissing).await.unwrap();
    assert!(matches!(declared, NodeStatus::Open { .. }), "{declared:?}");
    locks.mutex("fresh").unwrap().try_lock().await.unwrap().expect("free").release().await.unwrap();
}

/// Waiters are woken by the release notice: with a 10 s backoff, a waiter still acquires
/// within 50 ms of the release.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::waiter_wakes_within_50ms_of_release(my_driver).await;
/// # }
/// ```
pub async fn waiter_wakes_within_50ms_of_release<D: RedisDriver>(driver: D) {
    let server = server();
    let backend = connect(&driver, &server).await;
    let slow = LockConfig::builder()
        .ttl(30_000 * MS)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), slow.clone()).unwrap();
    let guard = holder.mutex("wake").unwrap().lock().await.unwrap();
    let waiter = LockClient::with_config(backend.clone(), slow).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("wake").unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    // Let the waiter try, subscribe and settle into its 10 s wait.
    tokio::time::sleep(300 * MS).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = task.await.unwrap();
    let gap = acquired.saturating_duration_since(released);
    assert!(gap < 50 * MS, "the waiter acquired {gap:?} after the release");
}

/// A holder that vanishes without releasing: waiters (with a 10 s backoff and no notice to
/// wake them) still acquire as soon as its TTL runs out, because each wait is capped by it.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::expired_lock_is_picked_up_without_a_release(my_driver).await;
/// # }
/// ```
pub async fn expired_lock_is_picked_up_without_a_release<D: RedisDriver>(driver: D) {
    let server = server();
    let slow = LockConfig::builder()
        .ttl(30_000 * MS)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap();
    let locks = LockClient::with_config(connect(&driver, &server).await, slow).unwrap();
    let foreign = format!("{}:0", lock_core::Token::random().to_redis_value());
    server.cmd(&["SET", "lock:{vanished}", &foreign, "PX", "400"]).unwrap();
    let start = Instant::now();
    let guard = locks.mutex("vanished").unwrap().lock().await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= 350 * MS && waited < 1_000 * MS, "acquired after {waited:?}, the ttl was 400ms");
    guard.release().await.unwrap();
}

/// The connection is killed (`CLIENT KILL`) while an acquire is in flight: whether the driver
/// resends it after reconnecting or the core retries it, the lock state stays correct: one
/// fencing increment, the lock granted once, and no key left after release.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::connection_killed_mid_command_keeps_state_correct(my_driver).await;
/// # }
/// ```
pub async fn connection_killed_mid_command_keeps_state_correct<D: RedisDriver>(driver: D) {
    let server = server();
    let locks = LockClient::with_config(connect(&driver, &server).await, config(10_000 * MS)).unwrap();
    // Load the scripts first, so the paused command is the acquire itself.
    locks.mutex("warm").unwrap().lock().await.unwrap().release().await.unwrap();
    // Writes are held by the server; the kill (not a write) runs at once.
    server.cmd(&["CLIENT", "PAUSE", "400", "WRITE"]).unwrap();
    let acquiring = tokio::spawn(async move {
        let guard = locks.mutex("killed-mid").unwrap().lock().await;
        (guard, locks)
    });
    tokio::time::sleep(100 * MS).await;
    let killed = server.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).unwrap();
    assert!(killed.int().unwrap_or(0) >= 1, "no connection was killed: {killed:?}");
    let (guard, _locks) = tokio::time::timeout(10_000 * MS, acquiring).await.expect("acquire hung").unwrap();
    let guard = guard.unwrap_or_else(|e| panic!("acquire failed after the kill: {e}"));
    let fence = guard.fencing_token().map(|f| f.0).unwrap();
    let counter: u64 = text(server.cmd(&["GET", "lock:{killed-mid}:fence"]).unwrap()).parse().unwrap();
    assert_eq!(counter, fence, "exactly one fencing increment: the counter is the token handed out");
    guard.release().await.unwrap();
    assert_eq!(text(server.cmd(&["EXISTS", "lock:{killed-mid}"]).unwrap()), "0", "a key was left behind");
}

/// The waiters' mark: a lock refused to somebody carries a trailing `!` (set in the same call
/// as the refusal, once, without touching its owner or TTL), renewals and RedLock's fence
/// write-back keep it, and only a marked release goes on to the fair-queue probe and the
/// notice; an unmarked one is a `GET` and a `DEL`. A reader refused by a writer and a fair
/// waiter refused by a plain holder mark it too.
///
/// # Errors
/// None: a driver that misbehaves fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check; the servers it spawned are killed on drop.
///
/// # Examples
/// A driver crate runs the whole suite with [`crate::redis_suite!`]; one test alone:
/// ```no_run
/// # async fn demo<D: lock_testkit::redis_suite::RedisDriver>(my_driver: D) {
/// lock_testkit::redis_suite::only_a_lock_refused_to_somebody_announces_its_release(my_driver).await;
/// # }
/// ```
pub async fn only_a_lock_refused_to_somebody_announces_its_release<D: RedisDriver>(driver: D) {
    use lock_core::{
        AcquireOutcome, AcquireRequest, ExtendRequest, FencingToken, LockKey, ReleaseOutcome, Token,
    };
    let server = server();
    let backend = connect(&driver, &server).await;
    let key = LockKey::new("marked").unwrap();
    let (holder, other) = (Token::random(), Token::random());
    let req = |token: Token| AcquireRequest { key: key.clone(), token, ttl: 30_000 * MS, fencing: true };
    let stored = || text(server.cmd(&["GET", "lock:{marked}"]).unwrap());
    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    let fresh = stored();
    assert!(!fresh.ends_with('!'), "nobody was refused yet: {fresh}");

    // Refused twice: marked once, same owner and fence, TTL untouched.
    for _ in 0..2 {
        assert!(matches!(backend.acquire(&req(other)).await.unwrap(), AcquireOutcome::Held { .. }));
    }
    assert_eq!(stored(), format!("{fresh}!"), "the refusal marks the lock once and changes nothing else");
    let pttl: i64 = text(server.cmd(&["PTTL", "lock:{marked}"]).unwrap()).parse().unwrap();
    assert!(pttl > 25_000, "the refusal must not touch the holder's TTL: {pttl} ms left");

    // The holder's own calls keep the mark: a re-acquire (a lost reply), a renewal, a RedLock
    // fence write-back (which rewrites the value).
    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    let renew = ExtendRequest { key: key.clone(), token: holder, ttl: 30_000 * MS };
    backend.extend(&renew).await.unwrap();
    lock_core::scripts::raise_fence(&backend, &key, &holder, FencingToken(u64::MAX / 4)).await.unwrap();
    assert_eq!(stored(), format!("{}={}!", &fresh[..32], u64::MAX / 4), "the write-back keeps the mark");
    backend.extend(&renew).await.unwrap();
    assert!(stored().ends_with('!'));

    // A release marked by plain waiters ('!') looks for listeners and announces itself in the
    // short form of the release script (the lock key alone): one call, no fair-queue probe. (A
    // release of a free key first loads the script, so no NOSCRIPT retry is counted.)
    assert_eq!(
        backend.release(&LockKey::new("warm-up").unwrap(), &holder).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    backend.release(&key, &holder).await.unwrap();
    let calls = command_calls(&server);
    assert_eq!(
        (calls.get("evalsha"), calls.get("pubsub|numsub"), calls.get("del"), calls.get("exists")),
        (Some(&1), Some(&1), Some(&1), None),
        "a release plain waiters were refused must look for them, in one call: {calls:?}"
    );
    assert_eq!(text(server.cmd(&["EXISTS", "lock:{marked}"]).unwrap()), "0", "released");

    // A fair waiter queued behind a plain holder marks the lock '?': the short form changes
    // nothing and the full form, sent next, hands the lock over to it (two calls).
    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    let fair = backend.fair().expect("the Redis drivers serve the fair lock");
    let queued = lock_core::FairRequest {
        key: key.clone(),
        token: other,
        ttl: 30_000 * MS,
        fencing: true,
        wait: Some(30_000 * MS),
    };
    assert!(matches!(fair.fair_acquire(&queued).await.unwrap(), lock_core::FairOutcome::Waiting { .. }));
    assert!(stored().ends_with('?'), "a queued fair waiter marks the lock '?': {}", stored());
    assert!(matches!(backend.acquire(&req(Token::random())).await.unwrap(), AcquireOutcome::Held { .. }));
    assert!(stored().ends_with('?'), "'?' outranks a plain waiter's '!': {}", stored());
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    assert_eq!(backend.release(&key, &holder).await.unwrap(), ReleaseOutcome::Released);
    let calls = command_calls(&server);
    assert_eq!(
        calls.get("evalsha"),
        Some(&2),
        "a release fair waiters are queued for: the short form, then the full one: {calls:?}"
    );
    assert_eq!(&stored()[..32], other.to_redis_value(), "handed over to the queued fair waiter");
    assert_eq!(backend.release_contended(&key, &other).await.unwrap(), ReleaseOutcome::Released);

    // `release_contended` (a fair lock) sends the full form at once: one call, marked or not.
    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    assert!(matches!(backend.acquire(&req(other)).await.unwrap(), AcquireOutcome::Held { .. }));
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    assert_eq!(backend.release_contended(&key, &holder).await.unwrap(), ReleaseOutcome::Released);
    let calls = command_calls(&server);
    assert_eq!(
        (calls.get("evalsha"), calls.get("exists"), calls.get("pubsub|numsub")),
        (Some(&1), Some(&1), Some(&1)),
        "a contended release is the full form at once: {calls:?}"
    );
    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    assert_eq!(backend.release_contended(&key, &holder).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(command_calls(&server).get("evalsha"), Some(&1), "unmarked too");

    assert!(matches!(backend.acquire(&req(holder)).await.unwrap(), AcquireOutcome::Acquired(_)));
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    backend.release(&key, &holder).await.unwrap();
    let calls = command_calls(&server);
    assert_eq!(
        (
            calls.get("evalsha"),
            calls.get("get"),
            calls.get("del"),
            calls.get("exists"),
            calls.get("pubsub|numsub")
        ),
        (Some(&1), Some(&1), Some(&1), None, None),
        "an unmarked release is one call, a GET and a DEL: {calls:?}"
    );

    // A reader refused by a writer marks the write lock; so does a fair try refused by a plain
    // holder (it does not queue: the plain mark).
    let config = LockConfig::builder().watchdog(false).build().unwrap();
    let locks = LockClient::with_config(backend.clone(), config).unwrap();
    let writer = locks.rw_lock("marked-rw").unwrap().write().await.unwrap();
    assert!(locks.rw_lock("marked-rw").unwrap().try_read().await.unwrap().is_none());
    assert!(text(server.cmd(&["GET", "lock:{marked-rw}"]).unwrap()).ends_with('!'), "a refused reader marks");
    writer.release().await.unwrap();
    let plain = locks.mutex("marked-fair").unwrap().lock().await.unwrap();
    assert!(locks.fair_mutex("marked-fair").unwrap().try_lock().await.unwrap().is_none());
    assert!(
        text(server.cmd(&["GET", "lock:{marked-fair}"]).unwrap()).ends_with('!'),
        "a refused fair try marks"
    );
    plain.release().await.unwrap();
}

/// Runs every Redis-specific test as its own `#[tokio::test]` for a [`RedisDriver`].
#[macro_export]
macro_rules! redis_suite {
    ($driver:expr) => {
        $crate::redis_suite!(@each $driver;
            script_flush_while_locks_are_held_and_taken,
            wrongtype_key_gives_a_clear_error,
            server_killed_while_held_fires_lost_by_the_deadline,
            server_restart_is_survived,
            unreachable_address_errors_within_the_timeout,
            silent_server_times_out_each_call,
            auth_failure_gives_a_clear_error,
            acl_user_with_the_documented_rules_can_lock,
            two_hundred_waiters_each_get_the_lock_once,
            lock_unlock_is_two_round_trips,
            fair_lock_unlock_is_two_round_trips,
            rw_lock_unlock_is_two_round_trips,
            watchdog_renews_many_leases_in_few_calls,
            rw_and_semaphore_wrongtype_keys_give_a_clear_error,
            permit_release_wakes_one_waiter,
            unfenced_lock_is_one_round_trip_that_checks_the_marker,
            acquires_arriving_together_share_one_marker_read,
            the_marker_is_read_after_the_set_on_its_connection,
            releases_arriving_together_share_one_script_call,
            flushall_starts_a_quarantine_every_client_sees,
            lost_fence_counter_keeps_tokens_rising,
            declared_fresh_server_grants_at_once,
            waiter_wakes_within_50ms_of_release,
            only_a_lock_refused_to_somebody_announces_its_release,
            expired_lock_is_picked_up_without_a_release,
            connection_killed_mid_command_keeps_state_correct
        );
    };
    (@each $driver:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::redis_suite::$name($driver).await;
            }
        )*
    };
}
