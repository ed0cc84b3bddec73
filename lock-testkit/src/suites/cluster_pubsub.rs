//! Release notices in a Redis Cluster: sharded pub/sub keeps each notice on the shard that owns
//! the key, classic pub/sub (the fallback, forced here) broadcasts it to every node; either way
//! a waiter is woken within 50 ms of the release. Each contract is a named `pub async fn`
//! taking a backend connected to a [`RedisCluster`] in the mode it checks.

// Test code shipped as a library: every unwrap/expect/panic here is an assertion that fails a
// test, never a code path of a user's service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use lock_core::scripts::{PubSubMode, RedisKeys};
use lock_core::{Instant, LockBackend, LockClient, LockConfig};

use crate::RedisCluster;

const MS: Duration = Duration::from_millis(1);

/// Sharded mode: the backend (connected with the driver's defaults to a Redis 7 Cluster)
/// reports [`PubSubMode::Sharded`] to the doctor; while a waiter waits, `PUBSUB SHARDCHANNELS`
/// on the node that owns the key's slot lists the key's channel and the other nodes' do not;
/// the release wakes the waiter within 50 ms (its backoff is 10 s); and classic subscribers to
/// that channel on every node, the owner included, receive nothing: the notice never left the
/// shard.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B, cluster: &lock_testkit::RedisCluster) {
/// lock_testkit::cluster_pubsub::sharded_notice_stays_on_the_owning_shard(backend, cluster).await;
/// # }
/// ```
pub async fn sharded_notice_stays_on_the_owning_shard<B: LockBackend + Clone>(
    backend: B,
    cluster: &RedisCluster,
) {
    notice_route(backend, cluster, PubSubMode::Sharded).await;
}

/// Classic mode, forced (the drivers' `sharded_pubsub(false)`): the doctor reports
/// [`PubSubMode::Classic`]; no node lists a shard channel; the release still wakes the waiter
/// within 50 ms; and a classic subscriber on every node receives the notice (the cluster bus
/// broadcast that sharded mode avoids).
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B, cluster: &lock_testkit::RedisCluster) {
/// lock_testkit::cluster_pubsub::classic_notice_reaches_every_node(backend, cluster).await;
/// # }
/// ```
pub async fn classic_notice_reaches_every_node<B: LockBackend + Clone>(backend: B, cluster: &RedisCluster) {
    notice_route(backend, cluster, PubSubMode::Classic).await;
}

/// A config whose waiters retry only every 10 s and whose leases live 30 s: a waiter that
/// acquires within 50 ms of a release was woken by the release notice.
fn slow_waiters() -> LockConfig {
    LockConfig::builder()
        .ttl(30_000 * MS)
        .acquire_timeout(60_000 * MS)
        .retry_backoff(10_000 * MS, 10_000 * MS)
        .build()
        .unwrap()
}

/// A task that waits for `name`, and answers when it got it (releasing it at once).
fn spawn_waiter<B: LockBackend>(waiter: LockClient<B>, name: String) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let g = waiter.mutex(&name).unwrap().lock().await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    })
}

fn shard_channels(cluster: &RedisCluster, node: usize, channel: &str) -> bool {
    cluster.nodes()[node].cmd(&["PUBSUB", "SHARDCHANNELS", channel]).unwrap().text().contains(channel)
}

async fn notice_route<B: LockBackend + Clone>(backend: B, cluster: &RedisCluster, mode: PubSubMode) {
    let facts = backend.deployment_facts().await.unwrap();
    assert!(
        facts.iter().all(|f| f.pubsub_mode == Some(mode)),
        "the doctor should see {mode}: {:?}",
        facts.iter().map(|f| f.pubsub_mode).collect::<Vec<_>>()
    );
    let findings = lock_core::doctor::check(&facts);
    assert!(findings.iter().any(|f| f.code == "pubsub"), "no pubsub finding in {findings:?}");

    let slow = slow_waiters();
    let name = format!("route-{}", rand::random::<u64>());
    let holder = LockClient::with_config(backend.clone(), slow.clone()).unwrap();
    let mutex = holder.mutex(&name).unwrap();
    let channel = RedisKeys::for_key(mutex.key()).channel;
    let owner = cluster.owner_of(&channel).unwrap();

    // A classic subscriber on every node, listening on the key's channel.
    let mut listeners = Vec::new();
    for url in cluster.urls() {
        let mut pubsub = redis::Client::open(url).unwrap().get_async_pubsub().await.unwrap();
        pubsub.subscribe(&channel).await.unwrap();
        listeners.push(pubsub);
    }

    let guard = mutex.lock().await.unwrap();
    let task = spawn_waiter(LockClient::with_config(backend.clone(), slow).unwrap(), name.clone());
    // Let the waiter try, subscribe and settle into its 10 s wait.
    let deadline = Instant::now() + 5_000 * MS;
    while mode == PubSubMode::Sharded && !shard_channels(cluster, owner, &channel) {
        assert!(Instant::now() < deadline, "the owning node never listed {channel} as a shard channel");
        tokio::time::sleep(10 * MS).await;
    }
    tokio::time::sleep(300 * MS).await;
    for node in 0..cluster.nodes().len() {
        let listed = shard_channels(cluster, node, &channel);
        let expected = mode == PubSubMode::Sharded && node == owner;
        assert_eq!(listed, expected, "node {node} (owner {owner}) PUBSUB SHARDCHANNELS in {mode} mode");
    }

    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = task.await.unwrap();
    let gap = acquired.saturating_duration_since(released);
    assert!(gap < 50 * MS, "{mode}: the waiter acquired {gap:?} after the release");

    // Each classic listener: the notice reached it only in classic mode.
    for (node, pubsub) in listeners.iter_mut().enumerate() {
        let mut messages = pubsub.on_message();
        let heard = tokio::time::timeout(300 * MS, messages.next()).await.ok().flatten().is_some();
        assert_eq!(
            heard,
            mode == PubSubMode::Classic,
            "node {node} (owner {owner}) heard the {mode} notice: {heard}"
        );
    }
}

/// Sharded mode follows a slot move: while a waiter waits, the slot of its key is migrated
/// (keys and all, as `redis-cli --cluster reshard` does) to another master. The old owner drops
/// the shard subscription; the backend subscribes again on the new owner (its `PUBSUB
/// SHARDCHANNELS` lists the channel), and the release, now served by the new owner, wakes the
/// waiter within 50 ms (its backoff is 10 s). `cluster` must be private to the test: its slot
/// map is changed.
///
/// # Errors
/// None: a backend that breaks the contract fails the test (this panics).
///
/// # Cancel safety
/// Test code: cancelling abandons the check, nothing else.
///
/// # Examples
/// ```no_run
/// # async fn demo<B: lock_core::LockBackend + Clone>(backend: B, cluster: &lock_testkit::RedisCluster) {
/// lock_testkit::cluster_pubsub::sharded_subscription_follows_a_slot_move(backend, cluster).await;
/// # }
/// ```
pub async fn sharded_subscription_follows_a_slot_move<B: LockBackend + Clone>(
    backend: B,
    cluster: &RedisCluster,
) {
    let slow = slow_waiters();
    let name = format!("moving-{}", rand::random::<u64>());
    let holder = LockClient::with_config(backend.clone(), slow.clone()).unwrap();
    let mutex = holder.mutex(&name).unwrap();
    let channel = RedisKeys::for_key(mutex.key()).channel;
    let owner = cluster.owner_of(&channel).unwrap();
    let guard = mutex.lock().await.unwrap();
    let task = spawn_waiter(LockClient::with_config(backend.clone(), slow).unwrap(), name.clone());
    let deadline = Instant::now() + 5_000 * MS;
    while !shard_channels(cluster, owner, &channel) {
        assert!(Instant::now() < deadline, "the owning node never listed {channel} as a shard channel");
        tokio::time::sleep(10 * MS).await;
    }

    let target = (owner + 1) % cluster.nodes().len();
    cluster.move_slot_of(&channel, target).unwrap();
    assert_eq!(cluster.owner_of(&channel).unwrap(), target);
    let deadline = Instant::now() + 10_000 * MS;
    while !shard_channels(cluster, target, &channel) {
        assert!(Instant::now() < deadline, "{channel} was never subscribed on its new owner (node {target})");
        tokio::time::sleep(10 * MS).await;
    }
    assert!(!shard_channels(cluster, owner, &channel), "the old owner still lists {channel}");
    tokio::time::sleep(300 * MS).await;

    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = task.await.unwrap();
    let gap = acquired.saturating_duration_since(released);
    assert!(gap < 50 * MS, "after the slot move the waiter acquired {gap:?} after the release");
}
