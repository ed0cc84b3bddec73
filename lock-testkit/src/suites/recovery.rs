//! Recovery contracts: what every backend and every constructor must survive on real servers.
//! A killed connection, a restarted server, a RedLock whose nodes restart in turn, a killed
//! pub/sub connection. Each is a named `pub async fn`; [`crate::recovery_suite!`] stamps the
//! lot on a backend built from server URLs.
//!
//! The backend under test is built by the caller from the servers' URLs and a quarantine (the
//! drivers' `quarantine(..)`), so the same contract runs on one node, on a Cluster where it
//! applies, and on a RedLock of N nodes.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lock_core::{BackendErrorKind, Instant, LockBackend, LockClient, LockConfig, LockError, LockOptions};

use crate::RedisServer;

const MS: Duration = Duration::from_millis(1);

/// The quarantine the contracts connect with: above their longest TTL.
pub const QUARANTINE: Duration = Duration::from_millis(1_500);

fn kill_clients(servers: &[&RedisServer], kind: &str) -> i64 {
    servers.iter().map(|s| s.cmd(&["CLIENT", "KILL", "TYPE", kind]).unwrap().int().unwrap_or(0)).sum()
}

/// The connection is killed (`CLIENT KILL TYPE normal`, on every server) three times while a
/// lease with a 1.5 s TTL is held for 3.5 s: the watchdog renews over the new connection and
/// the lease is kept the whole time, because the server was up the whole time.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend>(backend: B, server: lock_testkit::RedisServer) {
/// lock_testkit::recovery::connection_killed_while_held_keeps_the_lease(backend, &[&server]).await;
/// # }
/// ```
pub async fn connection_killed_while_held_keeps_the_lease<B: LockBackend>(
    backend: B,
    servers: &[&RedisServer],
) {
    let config = LockConfig::builder().ttl(1_500 * MS).renew_interval(300 * MS).build().unwrap();
    let locks = LockClient::with_config(backend, config).unwrap();
    let guard = locks.mutex("recovery:conn-kill").unwrap().lock().await.unwrap();
    let start = Instant::now();
    let mut killed = 0;
    for _ in 0..3 {
        tokio::time::sleep(400 * MS).await;
        killed += kill_clients(servers, "normal");
    }
    assert!(killed >= 3, "no connection was killed ({killed})");
    tokio::time::sleep_until(start + 3_500 * MS).await;
    assert!(guard.is_held(), "the lease was lost although the server was up the whole time");
    guard.release().await.unwrap_or_else(|e| panic!("release after the kills failed: {e}"));
}

/// The pub/sub connection is killed (`CLIENT KILL TYPE pubsub`, on every server) while a
/// waiter waits with a 10 s backoff: it still wakes within 100 ms of the release (the
/// subscription came back by itself), not at its next poll.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B, server: lock_testkit::RedisServer) {
/// lock_testkit::recovery::pubsub_killed_while_waiting_still_wakes(backend, &[&server]).await;
/// # }
/// ```
pub async fn pubsub_killed_while_waiting_still_wakes<B: LockBackend + Clone>(
    backend: B,
    servers: &[&RedisServer],
) {
    assert!(backend.capabilities().wake_up, "the backend under test must have wake-up on");
    let slow = LockConfig::builder()
        .ttl(30_000 * MS)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), slow.clone()).unwrap();
    let guard = holder.mutex("recovery:pubsub").unwrap().lock().await.unwrap();
    let waiter = LockClient::with_config(backend, slow).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("recovery:pubsub").unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(300 * MS).await;
    let killed = kill_clients(servers, "pubsub");
    assert!(killed >= 1, "no pub/sub connection was killed");
    // Time to reconnect and subscribe again.
    tokio::time::sleep(1_000 * MS).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = tokio::time::timeout(5_000 * MS, task).await.expect("the waiter never woke").unwrap();
    let gap = acquired.saturating_duration_since(released);
    assert!(gap < 100 * MS, "the waiter acquired {gap:?} after the release: it was not woken");
}

fn quarantined(e: &LockError) -> bool {
    let kind = match e {
        LockError::Backend { source, .. } | LockError::Timeout { last_error: Some(source), .. } => {
            source.kind()
        }
        _ => return false,
    };
    kind == BackendErrorKind::Quarantined
        || (kind == BackendErrorKind::Quorum && e.to_string().contains("quarantine"))
}

/// The server (every server of a RedLock) restarts, empty and at once, while a holder holds and a waiter waits: the holder is
/// told its lease is lost by its deadline; a second waiter whose timeout ends inside the
/// quarantine times out on time with an error naming it; the first waiter gets the lock once
/// the node may grant again (not before the holder's validity ended, and within a second of
/// the quarantine's end), with a greater fencing token. `backend` must be connected to
/// `servers` with the [`QUARANTINE`].
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B, mut server: lock_testkit::RedisServer) {
/// lock_testkit::recovery::server_restarted_while_held_and_waited(backend, std::slice::from_mut(&mut server)).await;
/// # }
/// ```
pub async fn server_restarted_while_held_and_waited<B: LockBackend + Clone>(
    backend: B,
    servers: &mut [RedisServer],
) {
    let config = LockConfig::builder()
        .ttl(1_000 * MS)
        .renew_interval(250 * MS)
        .retry_backoff(5 * MS, 50 * MS)
        .fencing(true)
        .build()
        .unwrap();
    let holder = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let held = holder.mutex("recovery:restart").unwrap().lock().await.unwrap();
    let fence = held.fencing_token().unwrap();
    let waiter = LockClient::with_config(backend.clone(), config.clone()).unwrap();
    let waiting = tokio::spawn(async move {
        let r =
            waiter.mutex("recovery:restart").unwrap().lock_with(LockOptions::new().timeout(8_000 * MS)).await;
        (r.map(|g| (Instant::now(), g.fencing_token(), g)), waiter)
    });
    tokio::time::sleep(200 * MS).await;
    for server in servers.iter_mut() {
        server.restart().unwrap();
    }
    let restarted = Instant::now();
    let deadline = held.valid_until();
    let reason = tokio::time::timeout(3_000 * MS, held.lost()).await.expect("the holder was never told");
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(late <= 100 * MS, "the holder was told {late:?} after its deadline ({reason})");

    let impatient = LockClient::with_config(backend, config).unwrap();
    let asked = Instant::now();
    let err = impatient
        .mutex("recovery:restart")
        .unwrap()
        .lock_with(LockOptions::new().timeout(300 * MS))
        .await
        .expect_err("granted during the quarantine");
    let took = asked.elapsed();
    assert!(took < 700 * MS, "a waiter retried past its 300 ms timeout: {took:?}");
    assert!(quarantined(&err), "the timeout should name the quarantine: {err}");

    let (result, _waiter) = waiting.await.unwrap();
    let (at, next, guard) = result.unwrap_or_else(|e| panic!("the waiter never got the lock: {e}"));
    assert!(at >= deadline, "granted at {at:?}, inside the old holder's validity (ends {deadline:?})");
    let after = at.saturating_duration_since(restarted);
    assert!(after >= QUARANTINE - 100 * MS, "granted {after:?} after the restart, inside the quarantine");
    assert!(after <= QUARANTINE + 1_000 * MS, "granted only {after:?} after the restart");
    assert!(next.unwrap() > fence, "the fencing token went back after the restart");
    guard.release().await.unwrap();
}

/// Every server is restarted in turn (empty, at once), one after the other: after each, a
/// lock is granted within the quarantine plus 3 s, so a quorum comes back each time once the
/// restarted node may vote again, and never stays lost. `backend` must be connected to
/// `servers` with the [`QUARANTINE`].
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend>(backend: B, mut servers: Vec<lock_testkit::RedisServer>) {
/// lock_testkit::recovery::every_node_restarted_in_turn(backend, &mut servers).await;
/// # }
/// ```
pub async fn every_node_restarted_in_turn<B: LockBackend>(backend: B, servers: &mut [RedisServer]) {
    let config =
        LockConfig::builder().ttl(1_000 * MS).retry_backoff(5 * MS, 50 * MS).fencing(true).build().unwrap();
    let locks = LockClient::with_config(backend, config).unwrap();
    let mutex = locks.mutex("recovery:in-turn").unwrap();
    let mut last = mutex.lock().await.unwrap().fencing_token().unwrap();
    for (i, server) in servers.iter_mut().enumerate() {
        server.restart().unwrap();
        let guard = mutex
            .lock_with(LockOptions::new().timeout(QUARANTINE + 3_000 * MS))
            .await
            .unwrap_or_else(|e| panic!("no lock after restarting node {i}: {e}"));
        let fence = guard.fencing_token().unwrap();
        assert!(fence > last, "node {i}: the token went from {last} to {fence}");
        last = fence;
        guard.release().await.unwrap_or_else(|e| panic!("release after restarting node {i}: {e}"));
    }
}

/// Stamps the recovery contracts on a backend built from server URLs, as one `#[tokio::test]`
/// each: `recovery_suite!(nodes, connect)` where `connect(urls: Vec<String>, quarantine)`
/// is an async fn returning the backend (panicking on error). `nodes` servers are spawned per
/// test. Add `cluster` first (`recovery_suite!(cluster, connect)`) to run the two contracts
/// that apply to a Redis Cluster on the shared one, or `connections` for the two connection
/// contracts on one spawned server (for constructors whose quarantine cannot be set).
#[macro_export]
macro_rules! recovery_suite {
    (connections, $connect:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn connection_killed_while_held_keeps_the_lease() {
            let server = $crate::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(vec![server.url()], $crate::recovery::QUARANTINE).await;
            $crate::recovery::connection_killed_while_held_keeps_the_lease(backend, &[&server]).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pubsub_killed_while_waiting_still_wakes() {
            let server = $crate::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(vec![server.url()], $crate::recovery::QUARANTINE).await;
            $crate::recovery::pubsub_killed_while_waiting_still_wakes(backend, &[&server]).await;
        }
    };
    (cluster, $connect:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn connection_killed_while_held_keeps_the_lease() {
            let cluster = $crate::RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(cluster.urls(), $crate::recovery::QUARANTINE).await;
            let servers: Vec<&$crate::RedisServer> = cluster.nodes().iter().collect();
            $crate::recovery::connection_killed_while_held_keeps_the_lease(backend, &servers).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pubsub_killed_while_waiting_still_wakes() {
            let cluster = $crate::RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"));
            let backend = $connect(cluster.urls(), $crate::recovery::QUARANTINE).await;
            let servers: Vec<&$crate::RedisServer> = cluster.nodes().iter().collect();
            $crate::recovery::pubsub_killed_while_waiting_still_wakes(backend, &servers).await;
        }
    };
    ($nodes:expr, $connect:path) => {
        async fn __servers() -> (Vec<$crate::RedisServer>, Vec<String>) {
            let servers = $crate::start_nodes($nodes).unwrap_or_else(|e| panic!("{e}"));
            let urls = servers.iter().map($crate::RedisServer::url).collect();
            (servers, urls)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn connection_killed_while_held_keeps_the_lease() {
            let (servers, urls) = __servers().await;
            let backend = $connect(urls, $crate::recovery::QUARANTINE).await;
            let refs: Vec<&$crate::RedisServer> = servers.iter().collect();
            $crate::recovery::connection_killed_while_held_keeps_the_lease(backend, &refs).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pubsub_killed_while_waiting_still_wakes() {
            let (servers, urls) = __servers().await;
            let backend = $connect(urls, $crate::recovery::QUARANTINE).await;
            let refs: Vec<&$crate::RedisServer> = servers.iter().collect();
            $crate::recovery::pubsub_killed_while_waiting_still_wakes(backend, &refs).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_node_restarted_in_turn() {
            let (mut servers, urls) = __servers().await;
            let backend = $connect(urls, $crate::recovery::QUARANTINE).await;
            $crate::recovery::every_node_restarted_in_turn(backend, &mut servers).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn server_restarted_while_held_and_waited() {
            let (mut servers, urls) = __servers().await;
            let backend = $connect(urls, $crate::recovery::QUARANTINE).await;
            $crate::recovery::server_restarted_while_held_and_waited(backend, &mut servers).await;
        }
    };
}
