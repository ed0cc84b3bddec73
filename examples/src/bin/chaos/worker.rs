//! Worker mode: one process that takes locks in a loop and logs every critical section.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockBackend, LockClient, LockConfig, LockError};
use lock_testkit::Oracle;
use lock_testkit::history::{Ending, Event, Recorder, Recording, Share};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::common::{DynError, PERMITS, Primitive, WorkerSpec, connect_backend, connect_nodes};
use crate::fair::Sharded;
use crate::unsafe_runs::Mutant;

/// Hard bound on the iterations of one worker, whatever its duration.
const MAX_ROUNDS: u64 = 200_000;

/// The lock a worker takes in one round (`--primitive`).
enum Handle {
    Mutex(lock_core::Mutex),
    Fair(lock_core::FairMutex),
    Read(lock_core::RwLock),
    Write(lock_core::RwLock),
    Permit(lock_core::Semaphore),
}

impl Handle {
    fn new(
        client: &LockClient<Arc<dyn LockBackend>>,
        key: &str,
        primitive: Primitive,
        rng: &mut StdRng,
    ) -> Result<Self, LockError> {
        Ok(match primitive {
            Primitive::Mutex => Handle::Mutex(client.mutex(key)?),
            Primitive::Fair => Handle::Fair(client.fair_mutex(key)?),
            // Mostly readers, so readers overlap, and writers wait for them.
            Primitive::Rw if rng.random_bool(0.3) => Handle::Write(client.rw_lock(key)?),
            Primitive::Rw => Handle::Read(client.rw_lock(key)?),
            Primitive::Semaphore => Handle::Permit(client.semaphore(key, PERMITS)?),
        })
    }

    async fn lock(&self) -> Result<lock_core::Guard, LockError> {
        match self {
            Handle::Mutex(m) => m.lock().await,
            Handle::Fair(m) => m.lock().await,
            Handle::Read(rw) => rw.read().await,
            Handle::Write(rw) => rw.write().await,
            Handle::Permit(s) => s.acquire().await,
        }
    }

    /// How its sections hold the key, for the checker.
    fn share(&self) -> Share {
        match self {
            Handle::Read(_) => Share::Read,
            Handle::Permit(_) => Share::Permit(PERMITS),
            _ => Share::Exclusive,
        }
    }
}

pub(crate) async fn run(spec: WorkerSpec) -> Result<(), DynError> {
    // If the runner dies, so do its workers (they are bounded in time anyway).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let rec = Recorder::to_file(&spec.out)?;
    let clock = rec.clock();
    let ttl = Duration::from_millis(spec.ttl_ms);
    let (node_timeout, quarantine) = (Duration::from_millis(spec.node_timeout_ms), ttl);
    let mut backend: Arc<dyn LockBackend> = if spec.primitive.sharded() && spec.nodes.len() > 1 {
        // The fair lock and the semaphore have no RedLock form: each key lives on one node.
        let nodes = connect_nodes(spec.driver, &spec.nodes, node_timeout, quarantine).await?;
        Arc::new(Sharded::new(nodes, spec.keys.clone()))
    } else {
        connect_backend(spec.driver, &spec.nodes, node_timeout, quarantine).await?
    };
    match spec.mutant.as_deref() {
        None => {}
        Some("fair-barging") => backend = Arc::new(Mutant::fair_barging(backend)),
        Some("rw-ignore-readers") => backend = Arc::new(Mutant::rw_ignore_readers(backend)),
        Some("sem-uncounted") => backend = Arc::new(Mutant::sem_uncounted(backend)),
        Some(other) => return Err(format!("no mutant {other:?}").into()),
    }
    let backend: Arc<dyn LockBackend> = Arc::new(Recording::new(backend, spec.id.clone(), rec.clone()));
    let config = LockConfig::builder()
        .ttl(ttl)
        .renew_interval(ttl / 3)
        .acquire_timeout(ttl * 2)
        .retry_backoff(Duration::from_millis(2), Duration::from_millis(50))
        .fencing(true)
        // A killed waiter of the fair lock keeps its place for one TTL, not the default 5 s.
        .waiter_timeout(ttl.max(Duration::from_millis(100)))
        .build()?;
    let client = LockClient::with_config(backend, config)?;
    let oracle = Oracle::connect(&spec.oracle).await?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let deadline = Instant::now() + Duration::from_millis(spec.duration_ms);
    let mut round = 0u64;
    while Instant::now() < deadline && round < MAX_ROUNDS {
        round += 1;
        let key = spec.keys[rng.random_range(0..spec.keys.len())].clone();
        let mutex = Handle::new(&client, &key, spec.primitive, &mut rng)?;
        let share = mutex.share();
        // Only exclusive holders write (fenced, and the unfenced counter); readers and permit
        // holders only hold.
        let writes = share == Share::Exclusive;
        let attempt = if spec.storm && rng.random_bool(0.3) {
            let within = Duration::from_micros(rng.random_range(0..5_000));
            match tokio::time::timeout(within, mutex.lock()).await {
                Ok(r) => r,
                Err(_) => {
                    rec.record(Event::AcquireAborted { worker: spec.id.clone(), key, t: rec.now() });
                    continue;
                }
            }
        } else {
            mutex.lock().await
        };
        let guard = match attempt {
            Ok(g) => g,
            Err(_) => {
                rec.record(Event::AcquireFailed { worker: spec.id.clone(), key, t: rec.now() });
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
                continue;
            }
        };
        let acq = format!("{}-{round}", spec.id);
        let fence = guard.fencing_token().map(|f| f.0);
        rec.record(Event::Acquired {
            worker: spec.id.clone(),
            acq: acq.clone(),
            key: key.clone(),
            fence,
            t: rec.now(),
            valid_until: clock.ns(guard.valid_until()),
        });
        if share != Share::Exclusive {
            rec.record(Event::Mode { acq: acq.clone(), share });
        }
        // A semaphore counts holds: a second acquire is another permit, not a re-entry.
        if round.is_multiple_of(5) && !matches!(share, Share::Permit(_)) {
            // Re-entry through the same handle: same lease, same token (C4).
            if let Ok(again) = mutex.lock().await {
                let fence = again.fencing_token().map(|f| f.0);
                rec.record(Event::Reentered { acq: acq.clone(), fence, t: rec.now() });
                drop(again);
            }
        }
        let write = |token: u64| {
            let (oracle, rec, acq, key) = (oracle.clone(), rec.clone(), acq.clone(), key.clone());
            async move {
                if let Ok(accepted) = oracle.fenced_write(&key, token).await {
                    rec.record(Event::Write { acq, token, accepted, t: rec.now() });
                }
            }
        };
        let fence = fence.filter(|_| writes);
        if let Some(token) = fence {
            write(token).await;
        }
        // Unfenced read-sleep-write: loses updates exactly when two holders overlap (C3).
        if writes && let Ok(v) = oracle.counter(&key).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if guard.is_held() && oracle.set_counter(&key, v + 1).await.is_ok() {
                rec.record(Event::Increment { acq: acq.clone(), t: rec.now() });
            }
        }
        let hold = Duration::from_millis(rng.random_range(spec.hold_ms.0..=spec.hold_ms.1));
        let drop_mid_renewal = spec.storm && rng.random_bool(0.2);
        let hold = if drop_mid_renewal {
            hold + ttl / 3 + Duration::from_millis(rng.random_range(0..20))
        } else {
            hold
        };
        let lost = tokio::select! {
            _ = guard.lost() => {
                rec.record(Event::Lost { acq: acq.clone(), t: rec.now() });
                true
            }
            () = tokio::time::sleep(hold) => false,
        };
        if let Some(token) = fence
            && (spec.stubborn || !lost)
        {
            write(token).await;
        }
        let lost = lost || {
            // The deadline may pass after the select (during the last write): notice it here.
            let gone = !guard.is_held();
            if gone {
                rec.record(Event::Lost { acq: acq.clone(), t: rec.now() });
            }
            gone
        };
        let t_end = rec.now();
        let valid_until = clock.ns(guard.valid_until());
        rec.record(Event::Releasing { acq: acq.clone(), t: t_end, valid_until });
        let how = if drop_mid_renewal {
            drop(guard);
            Ending::Dropped
        } else {
            match guard.release().await {
                _ if lost => Ending::Lost,
                Ok(()) => Ending::Released,
                Err(LockError::NotHeld { .. }) => Ending::NotOwned,
                Err(LockError::LeaseLost { .. }) => Ending::Lost,
                Err(_) => Ending::ReleaseFailed,
            }
        };
        rec.record(Event::Ended { acq, t: t_end, valid_until, how });
        // No barging: give the waiters a chance before asking again.
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..2_000))).await;
    }
    // Let background releases of dropped guards finish before the process exits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
