//! Client-side tracking of the node marker on the default connection (`TrackingConnection`,
//! see its module docs and `docs/marker-tracking.md`), against real `redis-server` processes:
//! an armed connection sends its `SET`s alone, and every way the marker can change under it (a
//! flush, a delete, a change while the `SET` waits on the server, a change while the connection
//! was down) still makes the node abstain.

use std::collections::HashMap;
use std::time::Duration;

use lock_core::{AcquireOutcome, AcquireRequest, BackendErrorKind, LockBackend, LockKey, Token};
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisServer;

fn request(key: &str) -> AcquireRequest {
    AcquireRequest {
        key: LockKey::new(key).unwrap(),
        token: Token::random(),
        ttl: Duration::from_secs(5),
        fencing: false,
    }
}

/// Calls per command since the last `CONFIG RESETSTAT` (`INFO commandstats`).
fn calls(server: &RedisServer) -> HashMap<String, u64> {
    server
        .cmd(&["INFO", "commandstats"])
        .unwrap()
        .text()
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cmd(&["EXISTS", key]).unwrap().text().trim() == "1"
}

/// A server whose marker is open, and a backend on it whose connection is armed (one acquire
/// read the marker).
async fn armed() -> (RedisServer, RedisBackend) {
    let server = RedisServer::start().unwrap();
    server.declare_fresh().unwrap();
    let backend =
        RedisBackend::builder().quarantine(Duration::from_secs(30)).connect(&server.url()).await.unwrap();
    assert!(backend.connection().tracking(), "tracking is on for a Redis 7 server");
    let first = request("arm");
    assert!(matches!(backend.acquire(&first).await.unwrap(), AcquireOutcome::Acquired(_)));
    (server, backend)
}

fn quarantined(outcome: Result<AcquireOutcome, lock_core::BackendError>, what: &str) {
    match outcome {
        Err(e) => assert_eq!(e.kind(), BackendErrorKind::Quarantined, "{what}: {e}"),
        Ok(other) => panic!("{what}: the node granted {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_connection_sends_its_sets_without_the_marker_get() {
    let (server, backend) = armed().await;
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    for i in 0..20 {
        let req = request(&format!("quiet:{i}"));
        assert!(matches!(backend.acquire(&req).await.unwrap(), AcquireOutcome::Acquired(_)));
    }
    let calls = calls(&server);
    assert_eq!(calls.get("set"), Some(&20), "{calls:?}");
    assert_eq!(calls.get("get"), None, "no marker read while armed: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_or_a_deleted_marker_disarms_the_connection() {
    let (server, backend) = armed().await;
    server.cmd(&["FLUSHALL"]).unwrap();
    quarantined(backend.acquire(&request("after-flush")).await, "after FLUSHALL");
    assert!(!exists(&server, "lock:{after-flush}"), "the SET the node accepted is taken back");

    let (server, backend) = armed().await;
    server.cmd(&["DEL", "lock:node"]).unwrap();
    quarantined(backend.acquire(&request("after-del")).await, "after DEL lock:node");
    assert!(!exists(&server, "lock:{after-del}"));
}

/// The marker is deleted while the `SET` of an armed connection waits on the server (a script
/// deletes it, then keeps the server busy): the connection was armed when it sent the `SET`,
/// and the invalidation reaches it only before the `SET`'s reply. It must read the marker
/// again rather than trust the arming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_the_set_waits_on_the_server_is_seen_before_its_reply() {
    let (server, backend) = armed().await;
    let busy = "redis.call('DEL', KEYS[1]) \
                local t = redis.call('TIME') local from = t[1] * 1000000 + t[2] \
                repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - from > 400000 \
                return 1";
    let addr = server.addr();
    let script = tokio::task::spawn_blocking(move || {
        lock_testkit::resp::command(&addr, &["EVAL", busy, "1", "lock:node"])
    });
    // The script runs (the server answers nobody until it ends); the SET is sent meanwhile,
    // while the connection is still armed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(backend.connection().tracking());
    let outcome = backend.acquire(&request("during")).await;
    script.await.unwrap().unwrap();
    quarantined(outcome, "a SET that ran after the marker was deleted");
    assert!(!exists(&server, "lock:{during}"));
}

/// A connection that dropped hears nothing of what happens meanwhile: the next one starts
/// unarmed, and a flush during the gap makes the node abstain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_starts_unarmed() {
    let (server, backend) = armed().await;
    assert_eq!(backend.connection().connections(), 1);
    server.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).unwrap();
    server.cmd(&["FLUSHALL"]).unwrap();
    let req = request("after-reconnect");
    let mut outcome = backend.acquire(&req).await;
    if matches!(&outcome, Err(e) if e.kind() != BackendErrorKind::Quarantined) {
        // The first command may find the connection dead (retryable); the next reconnects.
        outcome = backend.acquire(&req).await;
    }
    quarantined(outcome, "after a reconnect and a flush while disconnected");
    assert_eq!(backend.connection().connections(), 2, "one reconnect");
    assert!(backend.connection().tracking(), "tracking is on again on the new connection");
    assert!(!exists(&server, "lock:{after-reconnect}"));
}

/// A user not allowed `CLIENT TRACKING` is served as without tracking: the marker is read
/// behind every `SET`, and the guard holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracking_the_marker_is_read_every_time() {
    let server = RedisServer::start().unwrap();
    server.declare_fresh().unwrap();
    server.cmd(&["ACL", "SETUSER", "locker", "on", ">pw", "~*", "&*", "+@all", "-client"]).unwrap();
    let url = format!("redis://locker:pw@{}/", server.addr());
    let backend = RedisBackend::builder().quarantine(Duration::from_secs(30)).connect(&url).await.unwrap();
    assert!(!backend.connection().tracking(), "CLIENT is refused to this user");
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    for i in 0..5 {
        assert!(matches!(
            backend.acquire(&request(&format!("read:{i}"))).await.unwrap(),
            AcquireOutcome::Acquired(_)
        ));
    }
    let calls = calls(&server);
    assert_eq!(calls.get("get"), Some(&5), "one marker read per acquire: {calls:?}");
    server.cmd(&["FLUSHALL"]).unwrap();
    quarantined(backend.acquire(&request("read:lost")).await, "after FLUSHALL, untracked");
}

/// An arming is trusted for `REARM_AFTER` at most: then the marker is read again (the bound
/// for a `SWAPDB`, which sends no invalidation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arming_is_renewed_by_a_marker_read_after_rearm_after() {
    let (server, backend) = armed().await;
    tokio::time::sleep(lock_redis_rs::REARM_AFTER + Duration::from_millis(50)).await;
    server.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    for i in 0..3 {
        assert!(matches!(
            backend.acquire(&request(&format!("aged:{i}"))).await.unwrap(),
            AcquireOutcome::Acquired(_)
        ));
    }
    let calls = calls(&server);
    assert_eq!(calls.get("get"), Some(&1), "one read re-arms, then none: {calls:?}");
}
