//! Deterministic RedLock tests on `MemoryBackend` and `Faulty` nodes with paused time.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, BackendErrorKind, Instant, LockBackend, LockClient, LockConfig,
    LockError, LockKey, LostReason, ReleaseOutcome, Token,
};
use lock_redlock::{RedLock, RedLockOptions};
use lock_testkit::{Fault, Faulty, MemoryBackend, Op};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn nodes(n: usize) -> Vec<Faulty<MemoryBackend>> {
    (0..n).map(|_| Faulty::new(MemoryBackend::new())).collect()
}

fn quorum(nodes: &[Faulty<MemoryBackend>]) -> RedLock<Faulty<MemoryBackend>> {
    RedLock::new(nodes.to_vec()).unwrap()
}

fn config() -> LockConfig {
    LockConfig::builder()
        .ttl(10 * SEC)
        .renew_interval(3 * SEC)
        .acquire_timeout(5 * SEC)
        .retry_backoff(10 * MS, 100 * MS)
        .fencing(true)
        .build()
        .unwrap()
}

fn req(key: &str, ttl: Duration) -> AcquireRequest {
    AcquireRequest { key: LockKey::new(key).unwrap(), token: Token::random(), ttl, fencing: true }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

mod conformance_over_memory_nodes {
    lock_testkit::conformance_suite!(paused, async {
        let nodes: Vec<_> = (0..3).map(|_| lock_testkit::MemoryBackend::new()).collect();
        (lock_redlock::RedLock::new(nodes).unwrap(), ())
    });
}

mod rw_over_memory_nodes {
    lock_testkit::rw_suite!(paused, async {
        let nodes: Vec<_> = (0..3).map(|_| lock_testkit::MemoryBackend::new()).collect();
        (lock_redlock::RedLock::new(nodes).unwrap(), ())
    });
}

#[tokio::test(start_paused = true)]
async fn semaphores_are_refused_naming_the_reason() {
    let locks = LockClient::new(quorum(&nodes(3)));
    assert!(locks.rw_lock("rw").is_ok(), "read-write locks are safe over a quorum");
    match locks.semaphore("pool", 2) {
        Err(LockError::Unsupported { backend, feature }) => {
            assert_eq!(backend, "redlock");
            assert!(feature.contains("majority") && feature.contains("3 holders"), "{feature}");
        }
        other => panic!("a quorum semaphore must be refused: {other:?}"),
    }
    let raw = lock_core::HoldRequest {
        key: LockKey::new("pool").unwrap(),
        token: Token::random(),
        ttl: 10 * SEC,
        fencing: false,
        hold: lock_core::Hold::Permit { permits: 2 },
    };
    let err = lock_core::SharedBackend::acquire_hold(&quorum(&nodes(3)), &raw).await.unwrap_err();
    assert!(!err.is_retryable() && err.message().contains("semaphores"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_reader_and_a_writer_never_both_hold_a_majority() {
    // Node 0 has a writer that the quorum does not know of; a reader then needs nodes 1 and 2.
    let nodes = nodes(3);
    nodes[0].inner().force_hold("split", Token::random(), 10 * SEC).unwrap();
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let read = locks.rw_lock("split").unwrap().try_read().await.unwrap().expect("2 of 3 nodes grant");
    // No writer can reach a majority now: nodes 1 and 2 hold our reader, node 0 another writer.
    assert!(locks.rw_lock("split").unwrap().try_write().await.unwrap().is_none());
    let readers =
        nodes.iter().filter(|n| !n.inner().members("split", lock_core::Members::Readers).is_empty());
    assert_eq!(readers.count(), 2, "the reader holds a majority");
    read.release().await.unwrap();
    assert!(nodes.iter().all(|n| n.inner().members("split", lock_core::Members::Readers).is_empty()));
}

mod conformance_with_a_minority_down {
    use lock_testkit::{Fault, Faulty, MemoryBackend, Op};
    lock_testkit::conformance_suite!(paused, async {
        let nodes: Vec<_> = (0..5).map(|_| Faulty::new(MemoryBackend::new())).collect();
        for down in &nodes[..2] {
            for op in [Op::Acquire, Op::Extend, Op::Release, Op::Fence] {
                down.inject_always(op, Fault::transient());
            }
        }
        (lock_redlock::RedLock::new(nodes).unwrap(), ())
    });
}

#[tokio::test(start_paused = true)]
async fn minority_down_acquire_works() {
    let nodes = nodes(5);
    nodes[0].inject_always(Op::Acquire, Fault::transient());
    nodes[1].inject_always(Op::Acquire, Fault::Hang);
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let guard = locks.mutex("minority").unwrap().try_lock().await.unwrap().expect("3 of 5 nodes suffice");
    assert!(guard.is_held());
    let holders = nodes.iter().filter(|n| n.inner().holder("minority").is_some()).count();
    assert_eq!(holders, 3);
    guard.release().await.unwrap();
    assert!(nodes.iter().all(|n| n.inner().holder("minority").is_none()));
}

#[tokio::test(start_paused = true)]
async fn majority_down_fails_fast_naming_the_nodes_and_errors() {
    let nodes = nodes(5);
    for n in &nodes[..3] {
        n.inject_always(Op::Acquire, Fault::transient());
    }
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let start = Instant::now();
    let err = locks.mutex("majority").unwrap().try_lock().await.unwrap_err();
    assert_eq!(Instant::now(), start, "no waiting when the errors come at once");
    let LockError::Backend { source, .. } = &err else { panic!("expected a backend error, got {err}") };
    assert_eq!(source.kind(), BackendErrorKind::Quorum);
    let msg = err.to_string();
    for n in &nodes[..3] {
        assert!(msg.contains(&n.endpoint()), "{msg} does not name {}", n.endpoint());
    }
    assert!(msg.contains("injected transient fault"), "{msg}");
    settle().await;
    assert!(nodes.iter().all(|n| n.inner().holder("majority").is_none()), "the partial grants were released");
}

#[tokio::test(start_paused = true)]
async fn a_slow_node_does_not_delay_the_decision_and_nothing_is_orphaned() {
    let nodes = nodes(5);
    // Node 4 applies at once but answers late: after the round was decided, within its deadline.
    nodes[4].inject(Op::Acquire, Fault::DelayReply(200 * MS));
    // Node 3 is slower than its deadline (10 s / 20 = 500 ms).
    nodes[3].inject(Op::Acquire, Fault::Delay(2 * SEC));
    let rl = quorum(&nodes);
    let r = req("late", 10 * SEC);
    let start = Instant::now();
    let outcome = rl.acquire(&r).await.unwrap();
    assert!(matches!(outcome, AcquireOutcome::Acquired(_)), "{outcome:?}");
    assert_eq!(Instant::now(), start, "decided at the majority, not waiting for the slow nodes");
    assert!(nodes[4].inner().holder("late").is_some(), "node 4 granted, its reply is in flight");
    tokio::time::sleep(3 * SEC).await;
    assert_eq!(nodes[3].inner().holder("late"), None, "the timed-out node never kept the key");
    // The late grant belongs to the lease: the release reaches it like every other node.
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
    assert!(nodes.iter().all(|n| n.inner().holder("late").is_none()), "nothing orphaned");
}

#[tokio::test(start_paused = true)]
async fn a_failed_round_releases_every_node_including_errored_ones() {
    let nodes = nodes(3);
    // Node 0 applies the acquire but its reply is lost; nodes 1 and 2 are held by another.
    nodes[0].inject(Op::Acquire, Fault::LoseReply);
    for n in &nodes[1..] {
        n.inner().force_hold("contended", Token::random(), 10 * SEC).unwrap();
    }
    let outcome = quorum(&nodes).acquire(&req("contended", 10 * SEC)).await.unwrap();
    assert!(matches!(outcome, AcquireOutcome::Held { .. }), "{outcome:?}");
    assert_eq!(nodes[0].inner().holder("contended"), None, "the errored node was released too");
    assert_eq!(nodes[0].inner().op_counts().release, 1);
}

#[tokio::test(start_paused = true)]
async fn a_grant_past_its_validity_is_a_failure_and_is_cleaned_up() {
    let nodes = nodes(3);
    let rl = RedLock::with_options(nodes.clone(), RedLockOptions::new().node_timeout(20 * SEC)).unwrap();
    for n in &nodes {
        n.inject(Op::Acquire, Fault::DelayReply(1_990 * MS));
    }
    let err = rl.acquire(&req("slow", 2 * SEC)).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Timeout, "{err}");
    assert!(nodes.iter().all(|n| n.inner().holder("slow").is_none()), "every node was released");
}

#[tokio::test(start_paused = true)]
async fn contention_reports_the_smallest_ttl_that_blocks_a_majority() {
    let nodes = nodes(5);
    let other = Token::random();
    for (n, secs) in nodes.iter().zip([3, 1, 2]) {
        n.inner().force_hold("busy", other, Duration::from_secs(secs)).unwrap();
    }
    let outcome = quorum(&nodes).acquire(&req("busy", 10 * SEC)).await.unwrap();
    // Two nodes are free; a majority needs one more: the first holder to expire, in 1 s.
    assert_eq!(outcome, AcquireOutcome::Held { remaining: Some(SEC) });
    assert!(nodes.iter().all(|n| n.inner().holder("busy") != Some(Token::from_u128(0))));
    assert!(nodes[3..].iter().all(|n| n.inner().holder("busy").is_none()), "partial grants released");
}

#[tokio::test(start_paused = true)]
async fn failed_extensions_never_release_or_shorten_the_lease() {
    let nodes = nodes(3);
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let guard = locks.mutex("renew").unwrap().lock().await.unwrap();
    let promised = guard.valid_until();
    for n in &nodes[..2] {
        n.inject_always(Op::Extend, Fault::transient());
    }
    tokio::time::sleep(8 * SEC).await;
    assert_eq!(guard.valid_until(), promised, "a failed majority extension must not move the deadline");
    assert!(guard.is_held());
    assert!(nodes.iter().all(|n| n.inner().op_counts().release == 0), "a failed extension must not release");
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::Expired), "{reason:?}");
    assert_eq!(Instant::now(), promised);
}

#[tokio::test(start_paused = true)]
async fn extension_needs_a_majority_of_owners() {
    let nodes = nodes(3);
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let guard = locks.mutex("owners").unwrap().lock().await.unwrap();
    nodes[0].inner().evict("owners");
    tokio::time::sleep(3500 * MS).await;
    assert!(guard.is_held(), "one node lost of three: still a majority");
    nodes[1].inner().evict("owners");
    let reason = guard.lost().await;
    assert!(matches!(reason, LostReason::NotOwner), "{reason:?}");
}

#[tokio::test(start_paused = true)]
async fn repair_retakes_a_node_that_lost_the_key_while_a_majority_holds() {
    let nodes = nodes(3);
    let rl = RedLock::with_options(nodes.clone(), RedLockOptions::new().repair(true)).unwrap();
    let locks = LockClient::with_config(rl, config()).unwrap();
    let guard = locks.mutex("repair").unwrap().lock().await.unwrap();
    nodes[2].inner().evict("repair");
    tokio::time::sleep(3500 * MS).await;
    settle().await;
    assert!(nodes[2].inner().holder("repair").is_some(), "the emptied node was re-taken");
    guard.release().await.unwrap();
}

/// A release while a repair is on its way: the re-take must not land after the release and
/// hold the key on that node until its TTL.
#[tokio::test(start_paused = true)]
async fn a_release_during_a_repair_leaves_no_key_behind() {
    let nodes = nodes(3);
    let rl = RedLock::with_options(nodes.clone(), RedLockOptions::new().repair(true)).unwrap();
    let locks = LockClient::with_config(rl, config()).unwrap();
    let guard = locks.mutex("repairing").unwrap().lock().await.unwrap();
    nodes[2].inner().evict("repairing");
    // The re-take reaches node 2 only 500 ms after it is sent.
    nodes[2].inject(Op::Acquire, Fault::Delay(500 * MS));
    // The renewal at 3 s finds node 2 empty and starts the repair; the lease is released
    // while the re-take is on its way.
    tokio::time::sleep(3100 * MS).await;
    settle().await;
    guard.release().await.unwrap();
    tokio::time::sleep(2 * SEC).await;
    settle().await;
    assert_eq!(nodes[2].injected(), 1, "the re-take was sent (and delayed)");
    for (i, node) in nodes.iter().enumerate() {
        assert!(node.inner().holder("repairing").is_none(), "node {i} still holds the released key");
    }
}

/// A release that begins while the renewal round that finds a node empty is still being
/// decided (the renewal was sent before the release, its answers come after): the repair that
/// round schedules must not re-take the key after the release, which would hold it on that
/// node until its TTL.
#[tokio::test(start_paused = true)]
async fn a_release_before_its_renewal_round_is_decided_leaves_no_key_behind() {
    let nodes = nodes(3);
    let rl = RedLock::with_options(nodes.clone(), RedLockOptions::new().repair(true)).unwrap();
    let locks = LockClient::with_config(rl, config()).unwrap();
    let guard = locks.mutex("deciding").unwrap().lock().await.unwrap();
    nodes[2].inner().evict("deciding");
    // The renewal at 3 s is served at once by nodes 0 and 1, but their answers take 300 ms;
    // node 2 answers at once that it lost the key.
    nodes[0].inject(Op::Extend, Fault::DelayReply(300 * MS));
    nodes[1].inject(Op::Extend, Fault::DelayReply(300 * MS));
    tokio::time::sleep(3100 * MS).await;
    settle().await;
    // Released while the round waits for its majority.
    guard.release().await.unwrap();
    tokio::time::sleep(2 * SEC).await;
    settle().await;
    assert_eq!(nodes[0].injected() + nodes[1].injected(), 2, "the renewal was sent (its answers delayed)");
    for (i, node) in nodes.iter().enumerate() {
        assert!(node.inner().holder("deciding").is_none(), "node {i} still holds the released key");
    }
}

#[tokio::test(start_paused = true)]
async fn release_reports_whether_a_majority_still_owned_the_lock() {
    let nodes = nodes(3);
    let rl = quorum(&nodes);
    let r = req("owned", 10 * SEC);
    assert!(matches!(rl.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
    nodes[0].inner().evict("owned");
    nodes[1].inner().evict("owned");
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::NotHeld);
    assert!(nodes.iter().all(|n| n.inner().holder("owned").is_none()), "released on every node anyway");
}

#[tokio::test(start_paused = true)]
async fn construction_rejects_bad_node_lists() {
    let err = RedLock::<MemoryBackend>::new(vec![]).unwrap_err();
    assert!(matches!(err, LockError::Config { field: "nodes", .. }), "{err}");
    let a = MemoryBackend::new();
    let err = RedLock::new(vec![a.clone(), MemoryBackend::new(), a.clone()]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("node 2 and node 0 are the same server") && msg.contains(&a.endpoint()), "{msg}");
    let err =
        RedLock::with_options(vec![MemoryBackend::new()], RedLockOptions::new().node_timeout(Duration::ZERO))
            .unwrap_err();
    assert!(matches!(err, LockError::Config { field: "node_timeout", .. }), "{err}");
    let even = RedLock::new((0..4).map(|_| MemoryBackend::new()).collect()).unwrap();
    assert_eq!(even.quorum(), 3, "an even count is allowed; its quorum is N/2 + 1");
}

#[tokio::test(start_paused = true)]
async fn a_release_on_any_node_wakes_waiters() {
    let nodes: Vec<MemoryBackend> = (0..3).map(|_| MemoryBackend::new()).collect();
    let rl = RedLock::new(nodes.clone()).unwrap();
    let slow = LockConfig::builder()
        .ttl(30 * SEC)
        .acquire_timeout(60 * SEC)
        .retry_backoff(10 * SEC, 10 * SEC)
        .build()
        .unwrap();
    let holder = LockClient::with_config(rl.clone(), slow.clone()).unwrap();
    let guard = holder.mutex("wake").unwrap().lock().await.unwrap();
    let waiter = LockClient::with_config(rl, slow).unwrap();
    let task = tokio::spawn(async move {
        let g = waiter.mutex("wake").unwrap().lock().await.unwrap();
        (Instant::now(), g)
    });
    tokio::time::sleep(2 * SEC).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let (acquired, g) = task.await.unwrap();
    assert_eq!(acquired, released, "woken by the release, not by the 10 s backoff");
    g.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn mixed_backends_through_arc_dyn() {
    let nodes: Vec<Arc<dyn LockBackend>> = vec![
        Arc::new(MemoryBackend::new()),
        Arc::new(Faulty::new(MemoryBackend::new())),
        Arc::new(MemoryBackend::new()),
    ];
    let locks = LockClient::with_config(RedLock::new(nodes).unwrap(), config()).unwrap();
    locks.mutex("mixed").unwrap().lock().await.unwrap().release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_acquire_round_leaves_no_key_behind() {
    let nodes = nodes(3);
    for n in &nodes {
        n.inject(Op::Acquire, Fault::DelayReply(100 * MS));
    }
    let rl = quorum(&nodes);
    let r = req("cancelled", 10 * SEC);
    assert!(tokio::time::timeout(50 * MS, rl.acquire(&r)).await.is_err());
    assert!(nodes.iter().all(|n| n.inner().holder("cancelled").is_some()), "applied before the cancel");
    tokio::time::sleep(SEC).await;
    assert!(
        nodes.iter().all(|n| n.inner().holder("cancelled").is_none()),
        "the abandoned round was released"
    );
}

#[tokio::test(start_paused = true)]
async fn lost_replies_on_acquire_and_release_leave_no_orphaned_key() {
    let nodes = nodes(5);
    // Node 0 takes the key but its reply is lost; node 1 deletes it but its reply is lost.
    nodes[0].inject(Op::Acquire, Fault::LoseReply);
    nodes[1].inject(Op::Release, Fault::LoseReply);
    let rl = quorum(&nodes);
    let r = req("lost-replies", 10 * SEC);
    assert!(matches!(rl.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
    assert!(nodes[0].inner().holder("lost-replies").is_some(), "node 0 holds despite the lost reply");
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
    assert!(nodes.iter().all(|n| n.inner().holder("lost-replies").is_none()), "a key was orphaned");
    assert_eq!(nodes[0].injected() + nodes[1].injected(), 2, "both faults really happened");
}

#[tokio::test(start_paused = true)]
async fn late_answers_after_a_decided_round_are_released() {
    let nodes = nodes(5);
    let other = Token::random();
    // Three nodes are held by another owner: the round is decided (lost) once they answer;
    // nodes 3 and 4 grant, but answer only later.
    for n in &nodes[..3] {
        n.inner().force_hold("decided", other, 10 * SEC).unwrap();
    }
    nodes[3].inject(Op::Acquire, Fault::DelayReply(300 * MS));
    nodes[4].inject(Op::Acquire, Fault::DelayReply(400 * MS));
    let outcome = quorum(&nodes).acquire(&req("decided", 10 * SEC)).await.unwrap();
    assert!(matches!(outcome, AcquireOutcome::Held { .. }), "{outcome:?}");
    assert!(nodes[3..].iter().all(|n| n.inner().holder("decided").is_none()), "late grants were released");
    assert!(
        nodes[..3].iter().all(|n| n.inner().holder("decided") == Some(other)),
        "the holder was untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_answering_after_the_node_timeout_still_frees_that_node() {
    let nodes = nodes(3);
    let r = req("slow-release", 10 * SEC); // node timeout: ttl / 20 = 500 ms
    let redlock = quorum(&nodes);
    assert!(matches!(redlock.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
    // Node 0's release reaches the server only after 2 s, long past its node timeout.
    nodes[0].inject(Op::Release, Fault::Delay(2 * SEC));
    let started = Instant::now();
    let outcome = redlock.release(&r.key, &r.token).await.unwrap();
    assert_eq!(outcome, ReleaseOutcome::Released, "the two prompt nodes form a majority");
    assert!(started.elapsed() < SEC, "the release waited for the slow node: {:?}", started.elapsed());
    assert_eq!(nodes[0].inner().holder("slow-release"), Some(r.token), "not applied yet");
    tokio::time::sleep(2 * SEC).await;
    settle().await;
    // The slow call was not cancelled at the node timeout: the key is gone 8 s before its TTL.
    assert!(nodes.iter().all(|n| n.inner().holder("slow-release").is_none()));
}

#[tokio::test(start_paused = true)]
async fn a_partial_extend_failure_keeps_the_lease() {
    let nodes = nodes(3);
    let locks = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let guard = locks.mutex("partial").unwrap().lock().await.unwrap();
    let first = guard.valid_until();
    nodes[2].inject_always(Op::Extend, Fault::transient());
    tokio::time::sleep(7 * SEC).await;
    assert!(guard.is_held());
    assert!(guard.valid_until() > first + 5 * SEC, "two of three extended: the lease moved on");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_server_under_two_names_counts_one_vote() {
    let ns = nodes(3);
    // Node 2 is node 0 under another name; node 1 is down.
    let nodes = vec![ns[0].clone(), ns[1].clone(), ns[0].alias("other-name-of-node-0")];
    nodes[1].take_down();
    let rl = RedLock::new(nodes).unwrap();
    let err = rl.acquire(&req("alias", 10 * SEC)).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Quorum, "{err}");
    assert!(err.to_string().contains("1 distinct server"), "{err}");
    assert_eq!(ns[0].inner().holder("alias"), None, "the partial grant was cleaned up");
    // With the third node a real one, the same quorum is won.
    ns[1].bring_up();
    let rl = RedLock::new(vec![ns[0].clone(), ns[1].clone(), ns[2].clone()]).unwrap();
    assert!(matches!(rl.acquire(&req("alias", 10 * SEC)).await.unwrap(), AcquireOutcome::Acquired(_)));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_lost_its_data_abstains_until_its_quarantine_passed() {
    // Node 0 and 1 hold A's lease; node 0 restarts empty at once (no delayed restart). B
    // reaches nodes 0 and 2 only: without the quarantine it would win 0 and 2 while A holds.
    let ns: Vec<_> = (0..3).map(|_| Faulty::new(MemoryBackend::with_quarantine(10 * SEC))).collect();
    let a = RedLock::new(vec![ns[0].clone(), ns[1].clone(), ns[2].clone()]).unwrap();
    ns[2].take_down();
    let held = match a.acquire(&req("restart", 10 * SEC)).await.unwrap() {
        AcquireOutcome::Acquired(g) => g,
        other => panic!("{other:?}"),
    };
    ns[2].bring_up();
    ns[0].inner().wipe();
    let b_nodes = vec![ns[0].clone(), ns[1].alias("node-1-unreachable"), ns[2].clone()];
    b_nodes[1].take_down();
    let b = RedLock::new(b_nodes).unwrap();
    let mut b_req = req("restart", 10 * SEC);
    let err = b.acquire(&b_req).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Quorum, "{err}");
    assert!(err.to_string().contains("quarantine"), "the failed vote names the quarantine: {err}");
    // After A's validity and node 0's quarantine, B wins.
    tokio::time::sleep_until(held.valid_until.max(Instant::now() + 10 * SEC)).await;
    b_req.token = Token::random();
    assert!(matches!(b.acquire(&b_req).await.unwrap(), AcquireOutcome::Acquired(_)));
}

/// The watchdog's batch over a quorum: one `extend_many` per node, each lease decided at a
/// majority on its own; a hanging node holds the batch up for its node timeout only.
#[tokio::test(start_paused = true)]
async fn a_batch_is_decided_per_lease_at_a_majority() {
    let nodes = nodes(3);
    let rl = quorum(&nodes);
    let ttl = 10 * SEC;
    let mut renewals = Vec::new();
    for key in ["kept", "one-lost", "two-lost"] {
        let r = req(key, ttl);
        assert!(matches!(rl.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
        renewals.push(lock_core::Renewal::key(lock_core::ExtendRequest { key: r.key, token: r.token, ttl }));
    }
    nodes[0].inner().evict("one-lost");
    nodes[0].inner().evict("two-lost");
    nodes[1].inner().evict("two-lost");
    nodes[2].inject_always(Op::Extend, Fault::Hang);
    let started = Instant::now();
    let answers = rl.extend_many(&renewals).await;
    assert!(started.elapsed() <= ttl / 10, "a hanging node holds the batch up for its node timeout only");
    assert!(matches!(answers[0], Ok(lock_core::ExtendOutcome::Extended { .. })), "{:?}", answers[0]);
    assert!(answers[1].is_err(), "one vote each way and a node silent: unknown, {:?}", answers[1]);
    assert!(matches!(answers[2], Ok(lock_core::ExtendOutcome::NotHeld)), "{:?}", answers[2]);
    nodes[2].clear();
    let answers = rl.extend_many(&renewals).await;
    assert!(matches!(answers[0], Ok(lock_core::ExtendOutcome::Extended { .. })), "{:?}", answers[0]);
    assert!(matches!(answers[1], Ok(lock_core::ExtendOutcome::Extended { .. })), "2 of 3 still hold it");
    assert!(matches!(answers[2], Ok(lock_core::ExtendOutcome::NotHeld)), "a majority lost it");
    assert_eq!(nodes[0].inner().op_counts().extend, 6, "each batch reaches every node: 3 leases, twice");
}

/// Votes count distinct servers by their identity, kept in a short list on the stack that
/// spills to the heap past 16 servers: with 33 known servers a majority (17) needs the spilled
/// ones counted too.
#[tokio::test(start_paused = true)]
async fn more_than_sixteen_known_servers_are_each_counted() {
    let nodes = nodes(33);
    let rl = quorum(&nodes);
    assert_eq!(rl.quorum(), 17);
    let first = req("many", 10 * SEC);
    assert!(matches!(rl.acquire(&first).await.unwrap(), AcquireOutcome::Acquired(_)));
    assert_eq!(rl.release(&first.key, &first.token).await.unwrap(), ReleaseOutcome::Released);
    // Past the identity recheck: the next round asks every node again, and each now knows its id.
    tokio::time::sleep(11 * SEC).await;
    for round in 0..2 {
        let r = req("many", 10 * SEC);
        let outcome = rl.acquire(&r).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(matches!(outcome, AcquireOutcome::Acquired(_)), "round {round}: {outcome:?}");
        assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_right_after_the_decision_reaches_a_late_node_after_its_acquire() {
    let nodes = nodes(3);
    // Node 0's acquire is applied only after 200 ms (within its 500 ms node timeout), as a SET
    // held back on the client in a batch of coalesced acquires is: the round is decided by the
    // other two before it lands.
    nodes[0].inject(Op::Acquire, Fault::Delay(200 * MS));
    let rl = quorum(&nodes);
    let r = req("held-back", 10 * SEC);
    assert!(matches!(rl.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
    assert_eq!(nodes[0].inner().holder("held-back"), None, "node 0's acquire has not landed yet");
    // Released at once, while node 0's acquire is still on its way: decided by the other two,
    // without waiting for node 0, whose release follows its acquire in the background.
    let started = Instant::now();
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(Instant::now(), started, "the release waited for the late node");
    tokio::time::sleep(SEC).await;
    settle().await;
    assert!(
        nodes.iter().all(|n| n.inner().holder("held-back").is_none()),
        "node 0's acquire landed after the release and holds the key until its TTL, orphaned"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_acquire_dropped_at_its_deadline_does_not_hold_back_the_release() {
    let nodes = nodes(3);
    // Node 0 never answers: its call is dropped at the node timeout (500 ms).
    nodes[0].inject(Op::Acquire, Fault::Hang);
    let rl = quorum(&nodes);
    let r = req("hung", 10 * SEC);
    assert!(matches!(rl.acquire(&r).await.unwrap(), AcquireOutcome::Acquired(_)));
    tokio::time::sleep(SEC).await;
    let started = Instant::now();
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(Instant::now(), started, "the release waited for an acquire that had already ended");
    assert!(nodes.iter().all(|n| n.inner().holder("hung").is_none()));
}

/// The lock policy retries a failed round with the same owner token, and a failed round
/// releases its partial grants with that token. Those releases may reach a node late (held
/// back on the client behind a full batch of releases to a stalled node, or behind the wait
/// that keeps a release after its own `SET`), after the next round's grant there: they would
/// delete the grant's key, leaving the holder fewer nodes than it counted, and another client
/// could win a majority while it holds the lock (the long chaos run's `minority-pause` and
/// `majority-pause` on 5 nodes found exactly this). A round sends nothing to a node until the
/// cleanup of the lease's earlier rounds there ended.
#[tokio::test(start_paused = true)]
async fn a_failed_rounds_late_cleanup_never_deletes_the_next_rounds_grant() {
    let nodes = nodes(3);
    // Round 1: node 0 takes the key but its reply is lost, node 1 grants, node 2 fails: one
    // vote of two. Its cleanup reaches nodes 0 and 1 only 2 s later.
    nodes[0].inject(Op::Acquire, Fault::LoseReply);
    nodes[2].inject(Op::Acquire, Fault::transient());
    nodes[0].inject(Op::Release, Fault::Delay(2 * SEC));
    nodes[1].inject(Op::Release, Fault::Delay(2 * SEC));
    let first = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let guard = first.mutex("retried").unwrap().lock().await.unwrap();
    let token = nodes[2].inner().holder("retried").expect("the holder's key on node 2");
    // Past the late cleanup (2 s), before the first renewal (3 s after the grant).
    tokio::time::sleep(2500 * MS).await;
    settle().await;
    let holding = nodes.iter().filter(|n| n.inner().holder("retried") == Some(token)).count();
    assert!(holding >= 2, "the holder's key is left on {holding} node(s) of 3 while it holds the lock");
    let second = LockClient::with_config(quorum(&nodes), config()).unwrap();
    let taken = second.mutex("retried").unwrap().try_lock().await.unwrap();
    assert!(taken.is_none(), "a second client won a majority while the first held the lock");
    assert_eq!(nodes[0].injected() + nodes[1].injected() + nodes[2].injected(), 4, "every fault happened");
    guard.release().await.unwrap();
}

/// The same when the round was cut off (the policy's deadline drops a round; its cleanup then
/// runs in the background): the next call with the same token waits for it node by node.
#[tokio::test(start_paused = true)]
async fn an_abandoned_rounds_cleanup_never_deletes_the_next_rounds_grant() {
    let nodes = nodes(3);
    for n in &nodes {
        n.inject(Op::Acquire, Fault::DelayReply(100 * MS));
    }
    nodes[0].inject(Op::Release, Fault::Delay(2 * SEC));
    nodes[1].inject(Op::Release, Fault::Delay(2 * SEC));
    let rl = quorum(&nodes);
    let r = req("abandoned", 10 * SEC);
    assert!(tokio::time::timeout(50 * MS, rl.acquire(&r)).await.is_err(), "the first round was cut off");
    // The policy's next calls, with the same token, until one is granted.
    let mut granted = false;
    for _ in 0..50 {
        if let Ok(AcquireOutcome::Acquired(_)) = rl.acquire(&r).await {
            granted = true;
            break;
        }
        tokio::time::sleep(100 * MS).await;
    }
    assert!(granted, "granted once the cleanup ended");
    tokio::time::sleep(3 * SEC).await;
    settle().await;
    let holding = nodes.iter().filter(|n| n.inner().holder("abandoned") == Some(r.token)).count();
    assert_eq!(holding, 3, "the abandoned round's cleanup deleted the grant on {} node(s)", 3 - holding);
    assert_eq!(rl.release(&r.key, &r.token).await.unwrap(), ReleaseOutcome::Released);
}

/// A repair re-takes a node with the lease's token too: it waits, as a round does, for the
/// lease's earlier failed round's cleanup on that node to end, or the cleanup landing after
/// the re-take would delete it.
#[tokio::test(start_paused = true)]
async fn a_failed_rounds_late_cleanup_never_deletes_a_repair() {
    let nodes = nodes(3);
    // Round 1: node 0 grants, node 1's reply is lost, node 2 fails: one vote. Its release
    // reaches node 2 only 5 s later; round 2 is granted by nodes 0 and 1, its call to node 2
    // waiting for that release until the round's deadline.
    nodes[1].inject(Op::Acquire, Fault::LoseReply);
    nodes[2].inject(Op::Acquire, Fault::transient());
    nodes[2].inject(Op::Release, Fault::Delay(5 * SEC));
    let rl = RedLock::with_options(nodes.clone(), RedLockOptions::new().repair(true)).unwrap();
    let locks = LockClient::with_config(rl, config()).unwrap();
    let guard = locks.mutex("repaired").unwrap().lock().await.unwrap();
    let token = nodes[0].inner().holder("repaired").expect("the holder's key on node 0");
    assert_eq!(nodes[2].inner().holder("repaired"), None, "node 2 was not granted");
    // The renewal at 3 s finds node 2 without the key and repairs it; the release lands at 5 s,
    // the next renewal is at 6 s.
    tokio::time::sleep(5500 * MS).await;
    settle().await;
    assert_eq!(nodes[2].inner().holder("repaired"), Some(token), "the late cleanup deleted the repair");
    assert!(guard.is_held(), "the lease holds");
    guard.release().await.unwrap();
}
