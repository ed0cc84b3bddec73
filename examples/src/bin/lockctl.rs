//! `lockctl`: look at locks and deployments from the command line.
//!
//! ```text
//! cargo run -p lock-examples --bin lockctl -- inspect KEY [--url URL]...
//! cargo run -p lock-examples --bin lockctl -- doctor [--url URL]...
//! cargo run -p lock-examples --bin lockctl -- init [--force] [--url URL]...
//! cargo run -p lock-examples --bin lockctl -- run KEY [--fair] [--url URL]... [--cluster]
//!     [--driver redis-rs|fred] [--timeout 30s] [--ttl 30s] [--waiter-timeout 5s] -- COMMAND...
//! ```
//!
//! `run` is `flock(1)` for distributed locks: it takes the lock (the fair lock with `--fair`:
//! served in arrival order), runs the command while the watchdog keeps the lease, releases, and
//! exits with the command's status (3 when the lock was not had within `--timeout`, 4 when the
//! lease was lost while the command ran; the command is then killed).
//!
//! `init` declares new servers fresh: it writes the data-loss marker (`lock:node`) where it is
//! missing, so the first acquire on a server that never held a lock is not taken for one that
//! lost its data (which waits out the quarantine). `--force` also lifts a running quarantine:
//! only when you know the server kept every lock it granted. It prints each node's state.
//!
//! `inspect` shows, for a lock key on each node: whether it is held (the owner token redacted),
//! its remaining TTL, its fence counter and how many waiters are subscribed to its release
//! channel. `doctor` runs the deployment doctor over the nodes (a RedLock when there are several)
//! and exits with status 1 when a finding is critical. Several `--url`s mean several nodes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lock_core::scripts::RedisKeys;
use lock_core::{LockBackend, LockKey};
use lock_redis_rs::RedisBackend;
use lock_redis_rs::redis;
use lock_redlock::RedLock;

#[derive(Parser, Debug)]
#[command(about = "Inspect distributed locks and check a deployment")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show a lock's state on every node.
    Inspect {
        /// The lock key, as given to `LockClient::mutex` (including any key prefix).
        key: String,
        /// A node URL (repeat for several nodes).
        #[arg(long = "url", default_value = "redis://127.0.0.1:6379/")]
        urls: Vec<String>,
    },
    /// Declare new servers fresh (write the data-loss marker where it is missing).
    Init {
        /// Also lift a running quarantine (only if the server kept every lock it granted).
        #[arg(long)]
        force: bool,
        /// A node URL (repeat for several nodes).
        #[arg(long = "url", default_value = "redis://127.0.0.1:6379/")]
        urls: Vec<String>,
    },
    /// Run a command while holding a lock (like flock(1)).
    Run {
        /// The lock key.
        key: String,
        /// Use the fair lock: served in arrival order, behind every waiter already queued.
        #[arg(long)]
        fair: bool,
        /// A node URL; with --cluster, a seed of the Cluster.
        #[arg(long = "url", default_value = "redis://127.0.0.1:6379/")]
        urls: Vec<String>,
        /// The URLs are seeds of a Redis Cluster.
        #[arg(long)]
        cluster: bool,
        /// The Redis driver.
        #[arg(long, default_value = "redis-rs", value_parser = ["redis-rs", "fred"])]
        driver: String,
        /// How long to wait for the lock.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The lease TTL (renewed while the command runs).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How long the fair queue keeps this waiter if it dies while waiting.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        waiter_timeout: std::time::Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the deployment doctor.
    Doctor {
        /// A node URL (repeat for the nodes of a RedLock).
        #[arg(long = "url", default_value = "redis://127.0.0.1:6379/")]
        urls: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.cmd {
        Cmd::Inspect { key, urls } => inspect(&key, &urls).await,
        Cmd::Doctor { urls } => doctor(&urls).await,
        Cmd::Init { force, urls } => init(force, &urls).await,
        Cmd::Run { key, fair, urls, cluster, driver, timeout, ttl, waiter_timeout, command } => {
            let run = RunArgs { key, fair, timeout, ttl, waiter_timeout, command };
            match (driver.as_str(), cluster) {
                ("fred", true) => match lock_fred::FredBackend::builder().connect_cluster(&urls).await {
                    Ok(b) => run_locked(b, run).await,
                    Err(e) => Err(e.into()),
                },
                ("fred", false) => match lock_fred::FredBackend::connect(first(&urls)).await {
                    Ok(b) => run_locked(b, run).await,
                    Err(e) => Err(e.into()),
                },
                (_, true) => match RedisBackend::builder().connect_cluster(&urls).await {
                    Ok(b) => run_locked(b, run).await,
                    Err(e) => Err(e.into()),
                },
                (_, false) => match RedisBackend::connect(first(&urls)).await {
                    Ok(b) => run_locked(b, run).await,
                    Err(e) => Err(e.into()),
                },
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockctl: {e}");
            ExitCode::from(2)
        }
    }
}

fn first(urls: &[String]) -> &str {
    urls.first().map_or("redis://127.0.0.1:6379/", String::as_str)
}

struct RunArgs {
    key: String,
    fair: bool,
    timeout: std::time::Duration,
    ttl: std::time::Duration,
    waiter_timeout: std::time::Duration,
    command: Vec<String>,
}

async fn run_locked<B: LockBackend>(
    backend: B,
    run: RunArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use lock_core::{LockClient, LockConfig, LockError};
    let config = LockConfig::builder()
        .ttl(run.ttl)
        .acquire_timeout(run.timeout)
        .waiter_timeout(run.waiter_timeout)
        .build()?;
    let locks = LockClient::with_config(backend, config)?;
    let taken =
        if run.fair { locks.fair_mutex(&run.key)?.lock().await } else { locks.mutex(&run.key)?.lock().await };
    let guard = match taken {
        Ok(g) => g,
        Err(e @ LockError::Timeout { .. }) => {
            eprintln!("lockctl: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    let (program, args) = run.command.split_first().ok_or("no command given")?;
    let mut child = tokio::process::Command::new(program).args(args).kill_on_drop(true).spawn()?;
    let status = tokio::select! {
        status = child.wait() => status?,
        reason = guard.lost() => {
            eprintln!("lockctl: the lease on {:?} was lost ({reason}); stopping the command", run.key);
            let _ = child.kill().await;
            return Ok(ExitCode::from(4));
        }
    };
    guard.release().await?;
    Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
}

async fn inspect(key: &str, urls: &[String]) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let keys = RedisKeys::for_key(&LockKey::new(key)?);
    println!("lock {key:?} (redis key {}):", keys.lock);
    for url in urls {
        let mut conn = match redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                println!("  {url}: unreachable ({e})");
                continue;
            }
        };
        let value: Option<String> = redis::cmd("GET").arg(&keys.lock).query_async(&mut conn).await?;
        let pttl: i64 = redis::cmd("PTTL").arg(&keys.lock).query_async(&mut conn).await?;
        let fence: Option<u64> = redis::cmd("GET").arg(&keys.fence).query_async(&mut conn).await?;
        let subs: (String, i64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(&keys.channel).query_async(&mut conn).await?;
        let held = match &value {
            // The owner token is a secret: show only enough of it to tell owners apart.
            Some(v) => {
                // `<32 hex owner>:<fence>` (minted here) or `<owner>=<fence>` (written back),
                // with a trailing `!` once somebody was refused it, `?` once fair waiters may
                // be queued for it (the waiters' marks).
                let (owner, rest) = (v.get(..32).unwrap_or(v.as_str()), v.get(33..).unwrap_or("unknown"));
                let (fence, refused) = if let Some(f) = rest.strip_suffix('!') {
                    (f, ", refused to a waiter")
                } else if let Some(f) = rest.strip_suffix('?') {
                    (f, ", fair waiters queued")
                } else {
                    (rest, "")
                };
                let shown: String = owner.chars().take(4).collect();
                format!("held by {shown}\u{2026} (fence {fence}{refused}), {pttl} ms left")
            }
            None => "free".to_string(),
        };
        println!(
            "  {url}: {held}; fence counter {}; {} waiter connection(s) subscribed",
            fence.map_or("none".to_string(), |f| f.to_string()),
            subs.1
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn doctor(urls: &[String]) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    for url in urls {
        nodes.push(RedisBackend::connect(url).await?);
    }
    let findings = if nodes.len() == 1 {
        nodes.remove(0).check_deployment().await?
    } else {
        RedLock::new(nodes)?.check_deployment().await?
    };
    if findings.is_empty() {
        println!("no finding: {} node(s) look right for locks", urls.len());
    }
    for f in &findings {
        println!("{f}");
    }
    let critical = findings.iter().any(|f| f.severity == lock_core::doctor::Severity::Critical);
    Ok(if critical { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

async fn init(force: bool, urls: &[String]) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use lock_core::scripts::{self, Declare, NodeStatus};
    let how = if force { Declare::Force } else { Declare::IfMissing };
    for url in urls {
        let backend = RedisBackend::builder().connect_without_reconnect(url).await?;
        match scripts::declare_fresh(&backend, how).await? {
            NodeStatus::Open { id } => println!("  {url}: fresh, grants locks (node id {id:012x})"),
            NodeStatus::Quarantined { id, left } => println!(
                "  {url}: in quarantine for {:.1} s more after losing its data (node id {id:012x}); \
                 --force lifts it if the server kept every lock",
                left.as_secs_f64()
            ),
            NodeStatus::Unmarked => println!("  {url}: no marker could be written"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
