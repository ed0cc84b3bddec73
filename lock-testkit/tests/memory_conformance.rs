//! The conformance suite against the in-memory backend, on paused time.

lock_testkit::conformance_suite!(paused, async { (lock_testkit::MemoryBackend::new(), ()) });

mod through_faulty_wrapper {
    // A Faulty wrapper with no faults planned must be transparent.
    lock_testkit::conformance_suite!(paused, async {
        (lock_testkit::Faulty::new(lock_testkit::MemoryBackend::new()), ())
    });
}

mod through_arc_dyn {
    use std::sync::Arc;
    // `Arc<dyn LockBackend>` is itself a backend.
    lock_testkit::conformance_suite!(paused, async {
        (Arc::new(lock_testkit::MemoryBackend::new()) as Arc<dyn lock_core::LockBackend>, ())
    });
}
