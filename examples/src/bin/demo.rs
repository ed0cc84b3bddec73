//! The demo: several workers contend for one lock, with fencing tokens, waits, and a lease
//! that is lost (its renewals hang) and noticed.
//!
//! ```text
//! cargo run -p lock-examples --bin demo
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use lock_core::{LockBackend, LockClient, LockConfig, LockError};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_testkit::{Fault, Faulty, MemoryBackend, Op, RedisServer};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendChoice {
    /// Redis when `REDIS_URL` is set or `redis-server` is installed, else in-memory.
    Auto,
    /// Redis: `REDIS_URL`, or a `redis-server` spawned on a free loopback port.
    Redis,
    /// The in-memory backend.
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Driver {
    /// The `redis` crate (lock-redis-rs).
    RedisRs,
    /// The `fred` crate (lock-fred).
    Fred,
}

#[derive(Parser, Debug)]
#[command(about = "Workers contending for one distributed lock")]
struct Args {
    /// Which Redis driver to use when the lock lives in Redis.
    #[arg(long, value_enum, default_value_t = Driver::RedisRs)]
    driver: Driver,
    /// Where the lock lives.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Number of contending workers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Critical sections per worker.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

/// A resource that accepts a write only with a fencing token above every token it has seen.
#[derive(Default)]
struct FencedLedger {
    highest: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl FencedLedger {
    fn write(&self, token: u64) -> bool {
        let ok = self.highest.fetch_max(token, Ordering::SeqCst) < token;
        if ok { &self.accepted } else { &self.rejected }.fetch_add(1, Ordering::SeqCst);
        ok
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Story {
    start: Instant,
}

impl Story {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        let t = self.start.elapsed();
        println!("{:>7.1} ms  {who:<10} {what}", t.as_secs_f64() * 1000.0);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let use_redis = match args.backend {
        BackendChoice::Memory => false,
        BackendChoice::Redis => true,
        BackendChoice::Auto => url.is_some() || redis_server_installed(),
    };
    if !use_redis {
        println!("backend: in-memory (embedded default; install redis-server or set REDIS_URL for Redis)");
        return run(MemoryBackend::new(), &args).await;
    }
    let driver = match args.driver {
        Driver::RedisRs => "redis-rs",
        Driver::Fred => "fred",
    };
    // Keeps a spawned server alive for the whole demo; it is killed on drop.
    let (url, _server) = match url {
        Some(url) => {
            println!("backend: {driver} driver, Redis at {url} (from REDIS_URL)");
            declare_fresh_if_new(&url).await?;
            (url, None)
        }
        None => {
            let server = RedisServer::start()?;
            println!(
                "backend: {driver} driver, redis-server spawned on {} (pid {:?})",
                server.addr(),
                server.pid()
            );
            (server.url(), Some(server))
        }
    };
    match args.driver {
        Driver::RedisRs => run(RedisBackend::builder().connect(&url).await?, &args).await,
        Driver::Fred => run(FredBackend::connect(&url).await?, &args).await,
    }
}

/// A server without the data-loss marker is new or lost its data; the two cannot be told apart,
/// and the first lock would wait out the quarantine. The demo's server is a development one, so
/// it declares it fresh (what `lockctl init` does) and says so; a quarantine already running is
/// left alone and explained.
async fn declare_fresh_if_new(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    use lock_core::scripts::{self, Declare, NodeStatus};
    let probe = RedisBackend::builder().connect_without_reconnect(url).await?;
    match scripts::node_status(&probe).await? {
        NodeStatus::Unmarked => {
            scripts::declare_fresh(&probe, Declare::IfMissing).await?;
            println!(
                "note: {url} had no data-loss marker (a new server?); declared it fresh, as `lockctl init` does"
            );
        }
        NodeStatus::Quarantined { left, .. } => println!(
            "note: {url} lost its lock data and grants no lock for {:.1} s more (its quarantine); the demo waits",
            left.as_secs_f64()
        ),
        NodeStatus::Open { .. } => {}
    }
    Ok(())
}

fn redis_server_installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn run<B: LockBackend + Clone>(backend: B, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // The deployment doctor first: what in this server's settings could break the lock.
    match backend.check_deployment().await {
        Ok(findings) if findings.is_empty() => println!("doctor: no finding for {}", backend.endpoint()),
        Ok(findings) => {
            println!("doctor: {} finding(s) for {}", findings.len(), backend.endpoint());
            for f in &findings {
                println!("  {f}");
            }
        }
        Err(e) => println!("doctor: could not read the server's settings: {e}"),
    }
    let config = LockConfig::builder()
        .ttl(Duration::from_millis(600))
        .renew_interval(Duration::from_millis(200))
        .acquire_timeout(Duration::from_secs(30))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(100))
        .fencing(true)
        .build()?;
    let story = Arc::new(Story { start: Instant::now() });
    let ledger = Arc::new(FencedLedger::default());
    let key = "demo:ledger";

    println!("\n== act 1: {} workers x {} rounds contend for \"{key}\" ==", args.workers, args.rounds);
    let mut tasks = Vec::new();
    for w in 0..args.workers {
        let client = LockClient::with_config(backend.clone(), config.clone())?;
        let (story, ledger) = (Arc::clone(&story), Arc::clone(&ledger));
        let rounds = args.rounds;
        tasks.push(tokio::spawn(async move {
            let who = format!("worker-{w}");
            let mutex = client.mutex(key)?;
            for _ in 0..rounds {
                let asked = Instant::now();
                let guard = mutex.lock().await?;
                let token = guard.fencing_token().map_or(0, |f| f.0);
                story.say(&who, format_args!("acquired, fence {token}, waited {}", ms(asked.elapsed())));
                tokio::time::sleep(Duration::from_millis(30)).await;
                let ok = ledger.write(token);
                story.say(
                    &who,
                    format_args!("wrote with fence {token}: {}", if ok { "accepted" } else { "REJECTED" }),
                );
                guard.release().await?;
                story.say(&who, "released");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, LockError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    println!("\n== act 2: a holder's renewals hang; it notices the loss at its deadline ==");
    let faulty = Faulty::new(backend.clone());
    let stalled = LockClient::with_config(faulty.clone(), config.clone())?;
    let guard = stalled.mutex(key)?.lock().await?;
    let stale_token = guard.fencing_token().map_or(0, |f| f.0);
    story.say("stalled", format_args!("acquired, fence {stale_token}, valid for {}", ms(guard.remaining())));
    faulty.inject_always(Op::Extend, Fault::Hang);
    story.say("stalled", "its network stalls: every renewal now hangs");
    let successor = {
        let client = LockClient::with_config(backend.clone(), config.clone())?;
        let story = Arc::clone(&story);
        tokio::spawn(async move {
            let asked = Instant::now();
            let guard = client.mutex(key)?.lock().await?;
            let token = guard.fencing_token().map_or(0, |f| f.0);
            story.say(
                "successor",
                format_args!("acquired after waiting {}, fence {token}", ms(asked.elapsed())),
            );
            Ok::<_, LockError>((guard, token))
        })
    };
    let deadline = guard.valid_until();
    let reason = guard.lost().await;
    let late = Instant::now().saturating_duration_since(deadline);
    story.say("stalled", format_args!("LEASE LOST ({reason}), {} after its deadline; stops work", ms(late)));
    let (next, next_token) = successor.await??;
    ledger.write(next_token);
    story.say("successor", format_args!("wrote with fence {next_token}: accepted"));
    let ok = ledger.write(stale_token);
    story.say(
        "stalled",
        format_args!(
            "a write with its stale fence {stale_token} is {}",
            if ok { "ACCEPTED (bug!)" } else { "rejected" }
        ),
    );
    drop(guard);
    next.release().await?;

    println!(
        "\n== summary: {} writes accepted, {} stale writes rejected, fences only ever increased ==",
        ledger.accepted.load(Ordering::SeqCst),
        ledger.rejected.load(Ordering::SeqCst)
    );
    if ok {
        return Err("a stale fencing token was accepted".into());
    }
    Ok(())
}
