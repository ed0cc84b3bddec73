//! TLS: a TLS-only `redis-server` with a certificate made at test time (rcgen). Both drivers
//! lock and unlock over `rediss://` trusting its CA; trusting another CA fails at connect with
//! an error that says why.

use lock_core::{BackendError, LockClient, LockConfig};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_testkit::RedisServer;

async fn lock_and_unlock<B: lock_core::LockBackend>(backend: B) {
    let config = LockConfig::builder().fencing(true).build().unwrap();
    let locks = LockClient::with_config(backend, config).unwrap();
    let guard = locks.mutex("tls:orders").unwrap().lock().await.unwrap();
    assert!(guard.fencing_token().is_some());
    guard.release().await.unwrap();
}

fn says_why(err: &BackendError) {
    eprintln!("wrong CA: {err}");
    let msg = err.to_string().to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("unknownissuer") || msg.contains("issuer"),
        "a wrong CA must be named as a certificate problem: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_drivers_lock_over_tls_and_a_wrong_ca_is_a_clear_error() {
    let (server, tls) = RedisServer::start_tls().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let on_redis_rs = RedisBackend::builder().tls_root_ca(tls.ca_pem.clone()).connect(&url).await.unwrap();
    // The harness cannot declare a TLS-only server fresh (no plain port): do it over TLS, as
    // `lockctl init` would, or the first lock waits out the data-loss quarantine.
    lock_core::scripts::declare_fresh(&on_redis_rs, lock_core::scripts::Declare::IfMissing).await.unwrap();
    lock_and_unlock(on_redis_rs).await;
    let on_fred = FredBackend::builder().tls_root_ca(tls.ca_pem.clone()).connect(&url).await.unwrap();
    lock_and_unlock(on_fred).await;

    let err = RedisBackend::builder().tls_root_ca(tls.other_ca_pem.clone()).connect(&url).await.unwrap_err();
    says_why(&err);
    let err = FredBackend::builder().tls_root_ca(tls.other_ca_pem.clone()).connect(&url).await.unwrap_err();
    says_why(&err);
    // Plain text to a TLS-only port fails too, and does not hang.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(
        RedisBackend::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .connect(&plain)
            .await
            .is_err()
    );
}
