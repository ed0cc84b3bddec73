//! Property: RedLock fencing tokens strictly increase in hand-out order, and valid holds never
//! overlap, over random interleavings of clients, latencies, lost replies, transient errors
//! and a minority of nodes losing their lock keys (then staying down for a TTL: a delayed
//! restart). Counters are durable here; the control run rolls them (and the keys) back on a
//! majority with no delay, as an old snapshot reloaded would (the loss the data-loss marker
//! cannot see), and must be caught, so the property is not vacuous. A plain wipe (the marker
//! lost too) is survived: see `wiped_majority_is_survived`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Instant, LockClient, LockConfig, LockOptions};
use lock_redlock::RedLock;
use lock_testkit::{Fault, Faulty, MemoryBackend, Op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MS: Duration = Duration::from_millis(1);
const NODES: usize = 5;
const CLIENTS: usize = 3;
const ROUNDS: usize = 6;
const SEEDS: u64 = 150;
const CONTROL_SEEDS: u64 = 60;

#[derive(Debug, Clone, Copy)]
struct Hold {
    acquired: Instant,
    until: Instant,
    fence: u64,
}

fn random_fault(rng: &mut StdRng) -> Option<Fault> {
    match rng.random_range(0..10) {
        0 => Some(Fault::transient()),
        1 => Some(Fault::LoseReply),
        2 | 3 => Some(Fault::Delay(rng.random_range(0..30) * MS)),
        4 => Some(Fault::DelayReply(rng.random_range(0..30) * MS)),
        _ => None,
    }
}

/// What happens to a majority of nodes, besides the minority's delayed restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Majority {
    /// Nothing: counters are durable.
    Durable,
    /// Keys and counters rolled back, marker kept (an old snapshot), on stores minting tokens
    /// from the bare counter (no clock floor): must be caught.
    OldSnapshot,
    /// Everything lost, marker included, at once (a restart without persistence, no delay):
    /// the quarantine must keep the property.
    Wiped,
}

/// Runs one random schedule; returns the holds in hand-out order.
async fn run(seed: u64, majority: Majority) -> Vec<Hold> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The control rolls counters back on stores that mint from the bare counter: with the
    // clock floor (the real scripts) a rolled-back counter still gives rising tokens.
    let store = || match majority {
        Majority::OldSnapshot => MemoryBackend::with_counter_only_fences(1_100 * MS),
        _ => MemoryBackend::with_quarantine(1_100 * MS),
    };
    let nodes: Vec<_> = (0..NODES).map(|_| Faulty::new(store())).collect();
    for node in &nodes {
        for op in [Op::Acquire, Op::Extend, Op::Release, Op::Fence] {
            for _ in 0..rng.random_range(0..6) {
                if let Some(f) = random_fault(&mut rng) {
                    node.inject(op, f);
                }
            }
        }
    }
    let rl = RedLock::new(nodes.clone()).unwrap();
    let config = LockConfig::builder()
        .ttl(1_000 * MS)
        .acquire_timeout(20_000 * MS)
        .retry_backoff(MS, 20 * MS)
        .fencing(true)
        .build()
        .unwrap();
    let holds = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let locks = LockClient::with_config(rl.clone(), config.clone()).unwrap();
        let holds = Arc::clone(&holds);
        let plan: Vec<(u64, u64)> =
            (0..ROUNDS).map(|_| (rng.random_range(0..40), rng.random_range(0..60))).collect();
        tasks.push(tokio::spawn(async move {
            let mutex = locks.mutex("fenced").unwrap();
            for (pause, hold) in plan {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let Ok(guard) = mutex.lock_with(LockOptions::new().timeout(5_000 * MS)).await else {
                    continue;
                };
                let acquired = Instant::now();
                let fence = guard.fencing_token().unwrap().0;
                tokio::time::sleep(Duration::from_millis(hold)).await;
                let until = Instant::now().min(guard.valid_until());
                holds.lock().unwrap().push(Hold { acquired, until, fence });
                let _ = guard.release().await;
            }
        }));
    }
    // Meanwhile a minority of nodes loses the lock key now and then (counters survive).
    let chaos = {
        let nodes = nodes.clone();
        let events: Vec<(u64, usize)> =
            (0..8).map(|_| (rng.random_range(0..400), rng.random_range(0..2))).collect();
        tokio::spawn(async move {
            for (at, node) in events {
                tokio::time::sleep(Duration::from_millis(at)).await;
                // A node loses its lock keys (crash without persistence) and, as the deployment
                // rules demand, stays down for a TTL before it serves again (delayed restart).
                let down = nodes[node].clone();
                down.take_down();
                down.inner().evict("fenced");
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1_100)).await;
                    down.bring_up();
                });
                for n in &nodes[..3] {
                    match majority {
                        Majority::Durable => {}
                        // Data loss the marker cannot see (an old snapshot reloaded): the
                        // quarantine does not start and the counters go back to 0.
                        Majority::OldSnapshot => n.inner().restore_old_snapshot(),
                        Majority::Wiped => n.inner().wipe(),
                    }
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    chaos.await.unwrap();
    let mut holds = holds.lock().unwrap().clone();
    holds.sort_by_key(|h| h.acquired);
    holds
}

fn violation(holds: &[Hold]) -> Option<String> {
    for pair in holds.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.fence <= a.fence {
            return Some(format!("fence went from {} to {} ({a:?} then {b:?})", a.fence, b.fence));
        }
        if b.acquired < a.until {
            return Some(format!("holds overlap: {a:?} and {b:?}"));
        }
    }
    None
}

#[tokio::test(start_paused = true)]
async fn fencing_tokens_increase_over_random_interleavings() {
    let mut acquisitions = 0;
    for seed in 0..SEEDS {
        let holds = match tokio::time::timeout(Duration::from_secs(600), run(seed, Majority::Durable)).await {
            Ok(h) => h,
            Err(_) => panic!("seed {seed}: the schedule did not finish within 600 s of virtual time"),
        };
        acquisitions += holds.len();
        if let Some(v) = violation(&holds) {
            panic!("seed {seed}: {v}");
        }
    }
    assert!(
        acquisitions > SEEDS as usize * CLIENTS * ROUNDS / 2,
        "too few acquisitions ({acquisitions}) to mean anything"
    );
}

#[tokio::test(start_paused = true)]
async fn control_non_durable_counters_are_caught() {
    let mut caught = 0;
    for seed in 0..CONTROL_SEEDS {
        if violation(&run(seed, Majority::OldSnapshot).await).is_some() {
            caught += 1;
        }
    }
    assert!(caught > 0, "rolling counters back on a majority must break fencing in some schedule");
}

#[tokio::test(start_paused = true)]
async fn wiped_majority_is_survived() {
    let mut acquisitions = 0;
    for seed in 0..CONTROL_SEEDS {
        let holds = match tokio::time::timeout(Duration::from_secs(600), run(seed, Majority::Wiped)).await {
            Ok(h) => h,
            Err(_) => panic!("seed {seed}: the schedule did not finish within 600 s of virtual time"),
        };
        acquisitions += holds.len();
        if let Some(v) = violation(&holds) {
            panic!("seed {seed}: a majority that lost everything (marker too) broke safety: {v}");
        }
    }
    assert!(acquisitions > CONTROL_SEEDS as usize * CLIENTS, "too few acquisitions ({acquisitions})");
}
