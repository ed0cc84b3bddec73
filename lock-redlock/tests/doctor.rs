//! The deployment doctor against real servers set up wrong: an evicting policy, a replica, one
//! server counted twice in a RedLock, an even quorum, no persistence. Both drivers.

use std::sync::Arc;

use lock_core::LockBackend;
use lock_core::doctor::Severity;
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_redlock::RedLock;
use lock_testkit::{FaultProxy, RedisServer};

async fn connect(driver: &str, url: &str) -> Arc<dyn LockBackend> {
    match driver {
        "redis-rs" => Arc::new(RedisBackend::connect(url).await.unwrap_or_else(|e| panic!("{e}"))),
        _ => Arc::new(FredBackend::connect(url).await.unwrap_or_else(|e| panic!("{e}"))),
    }
}

fn codes(findings: &[lock_core::doctor::Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.code).collect()
}

async fn doctor_finds_every_misconfiguration(driver: &str) {
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let findings = connect(driver, &lru.url()).await.check_deployment().await.unwrap();
    let eviction = findings.iter().find(|f| f.code == "eviction").unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(eviction.severity, Severity::Critical);
    assert!(eviction.problem.contains("allkeys-lru") && eviction.fix.contains("noeviction"), "{eviction}");

    let port = lru.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let findings = connect(driver, &replica.url()).await.check_deployment().await.unwrap();
    assert!(codes(&findings).contains(&"replica"), "{findings:?}");

    // A healthy single node: nothing to say (no quorum, so persistence is not judged).
    let healthy = RedisServer::start().unwrap();
    let findings = connect(driver, &healthy.url()).await.check_deployment().await.unwrap();
    assert_eq!(findings, vec![], "a healthy single node has no finding");

    // One server reached through two addresses counts twice in a quorum of four.
    let other = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(healthy.addr().parse().unwrap()).await.unwrap();
    let alias = format!("redis://{}/", proxy.lane("alias").await.unwrap());
    let nodes = vec![
        connect(driver, &healthy.url()).await,
        connect(driver, &alias).await,
        connect(driver, &other.url()).await,
        connect(driver, &lru.url()).await,
    ];
    let redlock = RedLock::new(nodes).unwrap();
    let findings = redlock.check_deployment().await.unwrap();
    let found = codes(&findings);
    for code in ["duplicate-node", "even-quorum", "no-persistence", "eviction"] {
        assert!(found.contains(&code), "{code} missing: {findings:#?}");
    }
    let dup = findings.iter().find(|f| f.code == "duplicate-node").unwrap();
    assert!(
        dup.node.contains(&healthy.addr())
            && dup.node.contains(&proxy.lane("alias").await.unwrap().to_string())
    );
    assert_eq!(findings[0].severity, Severity::Critical, "worst first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_every_misconfiguration_redis_rs() {
    doctor_finds_every_misconfiguration("redis-rs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_every_misconfiguration_fred() {
    doctor_finds_every_misconfiguration("fred").await;
}
