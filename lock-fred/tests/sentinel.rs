//! `FredBackend` behind Redis Sentinel: one primary, one replica and three sentinels spawned on
//! loopback (`lock_testkit::SentinelGroup`), the Sentinel contracts (`lock_testkit::failover`),
//! the `redis-sentinel://` URL form, and clear errors for a wrong configuration.

use lock_fred::FredBackend;

async fn connect(master: String, sentinels: Vec<String>) -> FredBackend {
    FredBackend::builder().connect_sentinel(&master, &sentinels).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The same deployment through fred's own URL form.
async fn by_url(master: String, sentinels: Vec<String>) -> FredBackend {
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|u| u.trim_start_matches("redis://").trim_end_matches('/').to_string())
        .collect();
    let mut url = format!("redis-sentinel://{}/?sentinelServiceName={master}", hosts[0]);
    for h in &hosts[1..] {
        url.push_str(&format!("&node={h}"));
    }
    FredBackend::builder().connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

mod via_builder {
    lock_testkit::sentinel_suite!(super::connect);
}

mod via_url {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_wait_renew_release() {
        let group = lock_testkit::SentinelGroup::start().unwrap();
        let backend = super::by_url(group.master_name().to_string(), group.sentinel_urls()).await;
        lock_testkit::failover::lock_wait_renew_release(backend, &group).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_about_a_sentinel_primary() {
    let group = lock_testkit::SentinelGroup::start().unwrap();
    let backend = connect(group.master_name().to_string(), group.sentinel_urls()).await;
    let findings = lock_core::LockBackend::check_deployment(&backend).await.unwrap();
    let sentinel = findings.iter().find(|f| f.code == "sentinel").unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(sentinel.severity, lock_core::doctor::Severity::Warning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_configuration_is_a_clear_error() {
    let none: [&str; 0] = [];
    let err = FredBackend::builder().connect_sentinel("m", &none).await.unwrap_err();
    assert!(err.to_string().contains("at least one sentinel"), "{err}");
    let err = FredBackend::builder().connect_sentinel("", &["redis://127.0.0.1:1/"]).await.unwrap_err();
    assert!(err.to_string().contains("master name"), "{err}");
    let group = lock_testkit::SentinelGroup::start().unwrap();
    let err = FredBackend::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect_sentinel("no-such-master", &group.sentinel_urls())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-master") || err.to_string().contains("sentinel"), "{err}");
}
