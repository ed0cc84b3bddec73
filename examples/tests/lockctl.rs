//! `lockctl` against a spawned server: inspect shows a held lock without its token, doctor
//! exits 1 on a critical finding and 0 on a healthy node.

use std::process::Command;

use lock_core::{LockClient, LockConfig};
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisServer;

fn lockctl(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl")).args(args).output().expect("lockctl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `lockctl inspect orders:1` until its output contains `want` (at most 2 s), or the last.
async fn inspect_until(url: &str, want: &str) -> String {
    let mut out = String::new();
    for _ in 0..100 {
        out = lockctl(&["inspect", "orders:1", "--url", url]).1;
        if out.contains(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_doctor() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let config = LockConfig::builder().fencing(true).build().unwrap();
    let locks = LockClient::with_config(RedisBackend::connect(&url).await.unwrap(), config).unwrap();
    let guard = locks.mutex("orders:1").unwrap().lock().await.unwrap();
    let stored = server.cmd(&["GET", "lock:{orders:1}"]).unwrap().text();
    let token = stored[..32].to_string();
    let counter = server.cmd(&["GET", "lock:{orders:1}:fence"]).unwrap().text();

    let (code, out) = lockctl(&["inspect", "orders:1", "--url", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("held by")
            && out.contains(&format!("fence {counter}"))
            && out.contains(&format!("fence counter {counter}")),
        "{out}"
    );
    assert!(!out.contains(&token), "the owner token must not be shown: {out}");
    // Another owner is refused the lock: it carries the waiters' mark, shown apart from the fence.
    let other = LockClient::new(RedisBackend::connect(&url).await.unwrap());
    assert!(other.mutex("orders:1").unwrap().try_lock().await.unwrap().is_none());
    let (_, out) = lockctl(&["inspect", "orders:1", "--url", &url]);
    assert!(out.contains(&format!("fence {counter}, refused to a waiter")), "{out}");
    // A fair waiter queues for it: the fair waiters' mark, which outranks the other.
    let fair = other.fair_mutex("orders:1").unwrap();
    let waiter = tokio::spawn(async move { fair.lock().await.map(drop) });
    let out = inspect_until(&url, "fair waiters queued").await;
    assert!(out.contains(&format!("fence {counter}, fair waiters queued")), "{out}");
    guard.release().await.unwrap();
    // Handed over to the fair waiter, whose guard is dropped at once (released in the
    // background).
    waiter.await.unwrap().unwrap();
    let out = inspect_until(&url, "free").await;
    assert!(out.contains("free"), "{out}");

    let (code, out) = lockctl(&["doctor", "--url", &url]);
    assert_eq!((code, out.contains("no finding")), (0, true), "{out}");
    server.cmd(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]).unwrap();
    let (code, out) = lockctl(&["doctor", "--url", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("eviction") && out.contains("volatile-ttl"), "{out}");
}

#[test]
fn init_declares_a_server_fresh_and_force_lifts_a_quarantine() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    server.cmd(&["DEL", "lock:node"]).unwrap();
    let (code, out) = lockctl(&["init", "--url", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fresh, grants locks"), "{out}");
    // A marker in quarantine (as the acquire script writes it after data loss).
    server.cmd(&["SET", "lock:node", "abcdefabcdef:99999999999999"]).unwrap();
    let (_, out) = lockctl(&["init", "--url", &url]);
    assert!(out.contains("in quarantine"), "{out}");
    let (_, out) = lockctl(&["init", "--force", "--url", &url]);
    assert!(out.contains("fresh, grants locks") && out.contains("abcdefabcdef"), "{out}");
}
