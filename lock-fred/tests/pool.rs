//! A pool of fred clients keeps each key's commands on one connection.
//!
//! fred sends each command of a `Pool` to its next client in turn; two commands of one key on
//! two connections may reach the server in either order, so the cleanup release of a cancelled
//! acquire could run before the acquire's `SET` and leave the key held until its TTL. The
//! backend sends every command of a key over one client of the pool (its lane, by hash slot).
//! These tests watch the server's `MONITOR` stream to check it, that cancelled acquires on a
//! pool leave no key behind, and that a lone acquire's marker `GET` follows its `SET` on its
//! connection (the order the data-loss guard stands on).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_fred::FredBackend;
use lock_testkit::RedisServer;

const MS: Duration = Duration::from_millis(1);

/// The locks (`lock:{name}`, from every key of a lock, which share its hash tag) a data
/// command names; none for the subscriber's commands, which have a connection of their own.
fn locks_named(words: &[String]) -> Vec<&str> {
    if !matches!(words.first().map(String::as_str), Some("SET" | "GET" | "EVALSHA" | "EVAL")) {
        return Vec::new();
    }
    words.iter().filter(|w| w.starts_with("lock:{")).filter_map(|w| w.get(..=w.find('}')?)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_a_key_goes_over_one_client_of_the_pool() {
    let server = RedisServer::start().unwrap();
    let backend = FredBackend::builder().connect_pool(&server.url(), 3).await.unwrap();
    let config = LockConfig::builder().watchdog(false).acquire_timeout(10_000 * MS).build().unwrap();
    let locks = LockClient::with_config(backend, config).unwrap();
    // Opens the node (creates its marker), so every acquire below is a plain SET.
    locks.mutex("first").unwrap().lock().await.unwrap().release().await.unwrap();

    let monitor = server.monitor().unwrap();
    // 16 keys, 4 tasks each: lock/unlock cycles, contended (refusals, waits, scripts), with
    // acquires cancelled at every stage.
    let tasks = (0..64).map(|t| {
        let locks = locks.clone();
        tokio::spawn(async move {
            let mutex = locks.mutex(format!("pooled:{}", t % 16)).unwrap();
            for i in 0..20u64 {
                if (t + i) % 5 == 0 {
                    let cut = Duration::from_micros(50 * (i % 7));
                    let _ = tokio::time::timeout(cut, mutex.lock()).await;
                    continue;
                }
                mutex.lock().await.unwrap().release().await.unwrap();
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    // The cancelled acquires' cleanups run in the background.
    tokio::time::sleep(300 * MS).await;
    let commands = monitor.stop();

    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for seen in &commands {
        for key in locks_named(&seen.words) {
            by_key.entry(key).or_default().insert(&seen.client);
        }
    }
    assert_eq!(by_key.len(), 16, "every key was used: {:?}", by_key.keys());
    for (key, addrs) in &by_key {
        assert_eq!(addrs.len(), 1, "the commands of {key} went over {addrs:?}");
    }
    let used: BTreeSet<&str> = by_key.values().flatten().copied().collect();
    assert!(used.len() > 1, "the keys are spread over the pool's clients: {used:?}");
    for i in 0..16 {
        let left = server.cmd(&["EXISTS", &format!("lock:{{pooled:{i}}}")]).unwrap().text();
        assert_eq!(left, "0", "no key is left behind by a cancelled acquire: pooled:{i}");
    }
}

/// The data-loss guard of an unfenced acquire stands on command order: the marker `GET` must
/// run **after** the acquire's `SET`, on the same connection. The shared Redis suite checks it
/// on a client (`the_marker_is_read_after_the_set_on_its_connection`); this checks it on a
/// pool, whose lone acquires send the two as separate fred commands on the key's lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_acquire_on_a_pool_reads_the_marker_after_its_set_on_the_same_connection() {
    let server = RedisServer::start().unwrap();
    let pool = FredBackend::builder().connect_pool(&server.url(), 2).await.unwrap();
    let locks =
        LockClient::with_config(pool, LockConfig::builder().watchdog(false).build().unwrap()).unwrap();
    // Opens the node (creates its marker), so every acquire below is a plain SET.
    locks.mutex("first").unwrap().lock().await.unwrap().release().await.unwrap();

    let monitor = server.monitor().unwrap();
    // One at a time: every acquire is a lone one (a batch is one script call).
    for i in 0..20 {
        locks.mutex(format!("order:{i}")).unwrap().lock().await.unwrap().release().await.unwrap();
    }
    let commands = monitor.stop();

    let sets: Vec<_> = commands.iter().enumerate().filter(|(_, c)| c.words()[0] == "SET").collect();
    assert_eq!(sets.len(), 20, "every acquire was a lone SET: {commands:?}");
    for (n, set) in sets {
        let next = commands[n + 1..].iter().find(|c| c.client == set.client);
        assert_eq!(
            next.map(lock_testkit::Monitored::words),
            Some(vec!["GET", "lock:node"]),
            "after {:?} on {}, the next command there must be the marker read",
            set.words,
            set.client
        );
    }
    let lanes: BTreeSet<&str> = commands.iter().map(|c| c.client.as_str()).collect();
    assert!(lanes.len() > 1, "the keys went over both of the pool's clients: {lanes:?}");
}
