//! The fair lock's contracts on the in-memory backend, on paused time.

use lock_testkit::{MemoryBackend, fair};

lock_testkit::fair_suite!(paused, async { (MemoryBackend::new(), ()) });

#[tokio::test(start_paused = true)]
async fn crashed_waiter_is_skipped() {
    let store = MemoryBackend::new();
    let crash = {
        let store = store.clone();
        move |key| async move { fair::abandoned_waiter(&store, &key).await }
    };
    fair::crashed_waiter_is_skipped(store, crash).await;
}
