//! Lock metrics through the `metrics` facade (lock-core's `metrics` feature), printed to stdout
//! by the facade's debugging recorder. In a service, install your exporter of choice instead
//! (Prometheus, StatsD, ...): the lock only talks to the facade.
//!
//! ```text
//! cargo run -p lock-examples --example metrics
//! ```
//! Uses `REDIS_URL` when set, else spawns a `redis-server` on a free loopback port.

use std::time::Duration;

use lock_core::{LockClient, LockConfig, LockOptions};
use lock_redis_rs::RedisBackend;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let (url, _server) = lock_examples_support::redis_url()?;
    let config = LockConfig::builder().ttl(Duration::from_millis(300)).build()?;
    let locks = LockClient::with_config(RedisBackend::connect(&url).await?, config)?;

    // Some traffic: a renewed lease, a contended wait, a timeout, a dropped guard.
    let held = locks.mutex("m:a")?.lock().await?;
    tokio::time::sleep(Duration::from_millis(250)).await; // renewed at 100 and 200 ms
    let waiter = {
        let locks = LockClient::with_config(locks.backend().clone(), locks.config().clone())?;
        tokio::spawn(async move { locks.mutex("m:a")?.lock().await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    held.release().await?;
    waiter.await??;
    let other = LockClient::with_config(locks.backend().clone(), locks.config().clone())?;
    let blocker = locks.mutex("m:b")?.lock().await?;
    let timed_out =
        other.mutex("m:b")?.lock_with(LockOptions::new().timeout(Duration::from_millis(30))).await;
    assert!(timed_out.is_err());
    drop(blocker); // released in the background
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut rows: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(g) => g.to_string(),
                DebugValue::Histogram(h) => {
                    let max = h.iter().map(|v| v.into_inner()).fold(0.0, f64::max);
                    format!("{} samples, max {:.2} ms", h.len(), max * 1000.0)
                }
            };
            let labels: Vec<String> =
                key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            format!("{:<58} {value}", format!("{}{{{}}}", key.key().name(), labels.join(",")))
        })
        .collect();
    rows.sort();
    for row in &rows {
        println!("{row}");
    }
    for name in ["lock_acquisitions_total", "lock_timeouts_total", "lock_renewals_total", "lock_hold_seconds"]
    {
        assert!(rows.iter().any(|r| r.starts_with(name)), "{name} was not recorded");
    }
    Ok(())
}

#[path = "support/mod.rs"]
mod lock_examples_support;
