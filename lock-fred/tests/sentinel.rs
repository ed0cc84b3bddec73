//! `FredBackend` behind Redis Sentinel: one primary, one replica and three sentinels spawned on
//! loopback (`lock_testkit::SentinelGroup`), the Sentinel contracts (`lock_testkit::failover`),
//! the `redis-sentinel://` URL form for a client and a pool, and clear errors for a wrong configuration.

use lock_fred::FredBackend;

async fn connect(master: String, sentinels: Vec<String>) -> FredBackend {
    FredBackend::builder().connect_sentinel(&master, &sentinels).await.unwrap_or_else(|e| panic!("{e}"))
}

/// fred's URL form of a Sentinel deployment.
fn sentinel_url(master: &str, sentinels: &[String]) -> String {
    let hosts: Vec<&str> =
        sentinels.iter().map(|u| u.trim_start_matches("redis://").trim_end_matches('/')).collect();
    let mut url = format!("redis-sentinel://{}/?sentinelServiceName={master}", hosts[0]);
    for h in &hosts[1..] {
        url.push_str(&format!("&node={h}"));
    }
    url
}

/// The same deployment through fred's own URL form.
async fn by_url(master: String, sentinels: Vec<String>) -> FredBackend {
    let url = sentinel_url(&master, &sentinels);
    FredBackend::builder().connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A pool behind Sentinel, from the same URL.
async fn pool(master: String, sentinels: Vec<String>) -> FredBackend<lock_fred::fred::clients::Pool> {
    let url = sentinel_url(&master, &sentinels);
    FredBackend::builder().connect_pool(&url, 2).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

mod via_builder {
    lock_testkit::sentinel_suite!(super::connect);
}

mod via_pool {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failover_is_followed() {
        let group = lock_testkit::SentinelGroup::start().unwrap();
        let backend = super::pool(group.master_name().to_string(), group.sentinel_urls()).await;
        lock_testkit::failover::failover_is_followed(backend, &group).await;
    }
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
