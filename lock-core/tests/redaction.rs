//! Owner tokens are secrets. In its own test binary: the log capture needs a subscriber that no
//! other test's "nobody listens" cache can hide.

use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_testkit::MemoryBackend;

fn client(backend: MemoryBackend) -> LockClient<MemoryBackend> {
    let config = LockConfig::builder().ttl(Duration::from_secs(10)).build().unwrap();
    LockClient::with_config(backend, config).unwrap()
}

/// Owner tokens are secrets: no guard, error or log line shows one in full.
#[tokio::test(start_paused = true)]
async fn tokens_never_show_in_full_in_guards_errors_or_logs() {
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    // Other tests may have cached "nobody listens" for these callsites: ask again.
    tracing::callsite::rebuild_interest_cache();

    let memory = MemoryBackend::new();
    let guard = client(memory.clone()).mutex("secret").unwrap().lock().await.unwrap();
    let token = memory.holder("secret").expect("held").to_redis_value();
    let mut shown = format!("{guard:?} {:?} {}", memory.holder("secret"), memory.holder("secret").unwrap());
    memory.evict("secret");
    let err = guard.release().await.unwrap_err();
    shown.push_str(&format!("{err} {err:?}"));
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the lock logged nothing: the check would be vacuous");
    assert!(!shown.contains(&token), "a token leaked into a guard or an error: {shown}");
    assert!(!logs.contains(&token), "a token leaked into the logs: {logs}");
}
