//! The read-write lock's and the semaphore's contracts on `MemoryBackend`, on paused time.

use lock_testkit::MemoryBackend;

lock_testkit::rw_suite!(paused, async { (MemoryBackend::new(), ()) });
lock_testkit::semaphore_suite!(paused, async { (MemoryBackend::new(), ()) });
