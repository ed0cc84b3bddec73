//! Worker mode: one process that takes locks in a loop and logs every critical section.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockBackend, LockClient, LockConfig, LockError};
use lock_testkit::Oracle;
use lock_testkit::history::{Ending, Event, Recorder, Recording};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::common::{DynError, WorkerSpec, connect_backend, connect_nodes};
use crate::fair::Sharded;
use crate::unsafe_runs::Mutant;

/// Hard bound on the iterations of one worker, whatever its duration.
const MAX_ROUNDS: u64 = 200_000;

/// The lock a worker takes: the mutex, or the fair lock (`--primitive fair`).
enum Handle {
    Mutex(lock_core::Mutex),
    Fair(lock_core::FairMutex),
}

impl Handle {
    fn new(client: &LockClient<Arc<dyn LockBackend>>, key: &str, fair: bool) -> Result<Self, LockError> {
        Ok(if fair { Handle::Fair(client.fair_mutex(key)?) } else { Handle::Mutex(client.mutex(key)?) })
    }

    async fn lock(&self) -> Result<lock_core::Guard, LockError> {
        match self {
            Handle::Mutex(m) => m.lock().await,
            Handle::Fair(m) => m.lock().await,
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
    let mut backend: Arc<dyn LockBackend> = if spec.fair && spec.nodes.len() > 1 {
        // The fair lock has no RedLock form: each key lives on one of the nodes.
        let nodes = connect_nodes(spec.driver, &spec.nodes, node_timeout, quarantine).await?;
        Arc::new(Sharded::new(nodes, spec.keys.clone()))
    } else {
        connect_backend(spec.driver, &spec.nodes, node_timeout, quarantine).await?
    };
    match spec.mutant.as_deref() {
        None => {}
        Some("fair-barging") => backend = Arc::new(Mutant::fair_barging(backend)),
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
        let mutex = Handle::new(&client, &key, spec.fair)?;
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
        if round.is_multiple_of(5) {
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
        if let Some(token) = fence {
            write(token).await;
        }
        // Unfenced read-sleep-write: loses updates exactly when two holders overlap (C3).
        if let Ok(v) = oracle.counter(&key).await {
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
