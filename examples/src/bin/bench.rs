//! The benchmark: our lock against the physical limit (raw commands on the same kind of
//! connection), measured side by side, interleaved in short slices so machine noise cancels
//! (in an order shuffled anew each round, so no contender always runs first or after the same
//! neighbour), with each ratio also given round by round so the noise left over shows.
//!
//! ```text
//! cargo run --release -p lock-examples --bin bench -- [--quick] [--json PATH]
//! ```
//! It spawns its own `redis-server` nodes on loopback and stops them when done.
//!
//! Contenders: raw commands (the physical limit), our redis-rs and fred backends, RedLock over 3
//! and 5 nodes, and rslock over 1, 3 and 5 nodes. Measured: sequential lock+unlock cycles
//! (cycles/s, p50, p99), 64 tasks on distinct keys (total cycles/s), contended hand-off of one
//! key among 8 tasks in 2 processes, in the no-barging mode (acquisitions/s, hand-off gap, wait, fairness), the
//! watchdog holding 10,000 and 100,000 leases (renewal traffic, batches, CPU, heap, lateness), 64 tasks taking read
//! locks on one key against the bare read scripts, a semaphore of 4 permits under 16 tasks
//! (acquisitions/s, wait), and round trips per cycle from `INFO commandstats`. It ends with every target of the benchmark and whether this
//! run met it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use futures::future::join_all;
use lock_core::scripts;
use lock_core::{LockBackend, LockClient, LockConfig, Token};
use lock_fred::FredBackend;
use lock_redis_rs::RedisBackend;
use lock_redis_rs::redis::aio::MultiplexedConnection;
use lock_redlock::RedLock;
use lock_testkit::history::mono_now_ns;
use lock_testkit::{RedisServer, start_nodes};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Lock benchmark against raw Redis commands, interleaved")]
struct Args {
    /// Short run (for CI smoke tests and quick checks).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run only section 4 (the watchdog at scale) and its targets.
    #[arg(long)]
    watchdog_only: bool,
    /// Run only sections 1 and 2 (the lock path: sequential and 64 tasks) and their targets.
    #[arg(long)]
    lock_path_only: bool,
    /// With --lock-path-only: only the contenders whose name contains this, or one of these
    /// comma-separated parts (e.g. to profile one, or `raw-1,redis-rs`); a part starting with
    /// `=` names one contender exactly (`=fred` is the library on fred alone).
    #[arg(long)]
    only: Option<String>,
    /// Internal: run one row of the watchdog section (spawned by the bench itself).
    #[arg(long, hide = true)]
    watchdog_child: Option<String>,
    /// Internal: run one process of the contended hand-off (spawned by the bench itself).
    #[arg(long, hide = true)]
    handoff_child: Option<String>,
}

/// One cycle's future: how long its acquire took (from the cycle's start until the lock was
/// held), or what went wrong. The rest of the cycle is the release.
type BoxFut<'a> = Pin<Box<dyn Future<Output = Result<Duration, String>> + Send + 'a>>;

/// One lock+unlock cycle on a key.
trait Contender: Send + Sync {
    fn name(&self) -> &str;
    /// Which commands this contender sends itself (the rest run inside scripts).
    fn client_commands(&self) -> &'static [&'static str];
    /// Locks `key` and unlocks it; answers how long the lock took (see [`BoxFut`]).
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a>;
}

/// The physical limit: `SET key token NX PX ttl`, then the release script by EVALSHA, on one
/// multiplexed connection per node, fanned out concurrently to every node.
struct Raw {
    name: String,
    conns: Vec<MultiplexedConnection>,
}

impl Contender for Raw {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["set", "evalsha", "eval"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let token = Token::random().to_redis_value();
            let name = format!("raw:{{{key}}}");
            let sets = self.conns.iter().map(|c| {
                let mut c = c.clone();
                let (name, token) = (name.clone(), token.clone());
                async move {
                    lock_redis_rs::redis::cmd("SET")
                        .arg(&name)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .query_async::<Option<String>>(&mut c)
                        .await
                }
            });
            for r in join_all(sets).await {
                r.map_err(|e| e.to_string())?;
            }
            let acquired = started.elapsed();
            let dels = self.conns.iter().map(|c| {
                let mut c = c.clone();
                let (name, token) = (name.clone(), token.clone());
                async move {
                    lock_redis_rs::redis::cmd("EVALSHA")
                        .arg(scripts::RELEASE.sha1)
                        .arg(1)
                        .arg(&name)
                        .arg(&token)
                        .arg("")
                        .query_async::<i64>(&mut c)
                        .await
                }
            });
            for r in join_all(dels).await {
                r.map_err(|e| e.to_string())?;
            }
            Ok(acquired)
        })
    }
}

/// The same physical limit on fred's own client (one node): `SET NX PX`, then the release
/// script by EVALSHA. The fred rows are compared with it, so the ratio measures this library,
/// not the difference between the two drivers.
struct RawFred {
    name: String,
    client: lock_fred::fred::clients::Client,
}

impl Contender for RawFred {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["set", "evalsha", "eval"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        use lock_fred::fred::interfaces::{KeysInterface, LuaInterface};
        use lock_fred::fred::types::{Expiration, SetOptions};
        Box::pin(async move {
            let started = Instant::now();
            let token = Token::random().to_redis_value();
            let name = format!("raw:{{{key}}}");
            let _: Option<String> = self
                .client
                .set(&name, token.as_str(), Some(Expiration::PX(30_000)), Some(SetOptions::NX), false)
                .await
                .map_err(|e| e.to_string())?;
            let acquired = started.elapsed();
            let _: i64 = self
                .client
                .evalsha(scripts::RELEASE.sha1, vec![name], vec![token, String::new()])
                .await
                .map_err(|e| e.to_string())?;
            Ok(acquired)
        })
    }
}

async fn raw_fred(name: &str, server: &RedisServer) -> Result<RawFred, Box<dyn std::error::Error>> {
    use lock_fred::fred::interfaces::{ClientLike, LuaInterface};
    let config = lock_fred::fred::prelude::Config::from_url(&server.url())?;
    let client = lock_fred::fred::prelude::Builder::from_config(config).build()?;
    client.init().await?;
    let _: String = client.script_load(scripts::RELEASE.source).await?;
    Ok(RawFred { name: name.to_string(), client })
}

/// The lock's own commands sent raw, with no library code around them: the acquire's
/// `SET NX PX` with the data-loss marker's `GET` behind it in the same round trip, then the
/// release script's short form (the lock key alone, the token and the pub/sub mode: a lock no
/// fair waiter is queued for needs no more; see `scripts::RELEASE`), which is the raw row's
/// release but for the mode. Set beside the raw row before it, it shows what the command shape costs
/// (the guard's read); set beside the library's row after it, what the library's code costs.
struct Shape {
    name: String,
    conn: Option<MultiplexedConnection>,
    fred: Option<lock_fred::fred::clients::Client>,
    /// Each call bounded by its own tokio timer (redis-rs only), as the library's calls are
    /// outside a RedLock round.
    timed: bool,
}

/// The names and arguments of one cycle of [`Shape`]: the lock key, the token and the
/// release's keys and arguments, as the library's release sends them.
fn shape_names(key: &str) -> Result<(String, String, [String; 1], [String; 2]), String> {
    let key = lock_core::LockKey::new(key).map_err(|e| e.to_string())?;
    let lock = scripts::RedisKeys::lock_name(&key);
    let token = Token::random().to_redis_value();
    // The announce argument is the pub/sub mode, "l" on one server (`PubSubMode::flag`).
    Ok((lock.clone(), token.clone(), [lock], [token, "l".to_string()]))
}

impl Shape {
    /// One call of the redis-rs form, bounded by a tokio timer of its own when the row is timed.
    async fn call<T>(
        &self,
        call: impl Future<Output = lock_redis_rs::redis::RedisResult<T>>,
    ) -> Result<T, String> {
        let reply = if self.timed {
            tokio::time::timeout(Duration::from_secs(5), call).await.map_err(|e| e.to_string())?
        } else {
            call.await
        };
        reply.map_err(|e| e.to_string())
    }
}

impl Contender for Shape {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["set", "evalsha", "eval"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        use lock_fred::fred::interfaces::{KeysInterface, LuaInterface};
        use lock_fred::fred::types::{Expiration, SetOptions};
        Box::pin(async move {
            let started = Instant::now();
            let mut acquired = Duration::ZERO;
            let (lock, token, keys, args) = shape_names(key)?;
            let value = format!("{token}:0");
            if let Some(conn) = &self.conn {
                let mut c = conn.clone();
                let mut acquire = lock_redis_rs::redis::pipe();
                acquire.cmd("SET").arg(&lock).arg(&value).arg("NX").arg("PX").arg(30_000);
                acquire.cmd("GET").arg(scripts::MARKER_KEY);
                let (_, _): (Option<String>, Option<String>) = self.call(acquire.query_async(&mut c)).await?;
                acquired = started.elapsed();
                let mut release = lock_redis_rs::redis::cmd("EVALSHA");
                release.arg(scripts::RELEASE.sha1).arg(keys.len()).arg(&keys).arg(&args);
                let _: i64 = self.call(release.query_async(&mut c)).await?;
            } else if let Some(c) = &self.fred {
                let set = c.set::<Option<String>, _, _>(
                    &lock,
                    value.as_str(),
                    Some(Expiration::PX(30_000)),
                    Some(SetOptions::NX),
                    false,
                );
                let _ = futures::future::try_join(set, c.get::<Option<String>, _>(scripts::MARKER_KEY))
                    .await
                    .map_err(|e| e.to_string())?;
                acquired = started.elapsed();
                let _: i64 = c
                    .evalsha(scripts::RELEASE.sha1, keys.to_vec(), args.to_vec())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(acquired)
        })
    }
}

struct Ours<B: LockBackend> {
    name: String,
    client: LockClient<B>,
}

impl<B: LockBackend> Contender for Ours<B> {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        // An uncontended unfenced acquire is one round trip: a SET with the marker GET
        // pipelined behind it (the GET is not counted: it rides the SET's round trip); a
        // release is one script call, which runs no SET. (With fencing the acquire is a script
        // whose inner SET INFO commandstats would count too; the bench locks unfenced.)
        &["set", "evalsha", "eval", "script|load"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let guard =
                self.client.mutex(key).map_err(|e| e.to_string())?.lock().await.map_err(|e| e.to_string())?;
            let acquired = started.elapsed();
            guard.release().await.map_err(|e| e.to_string())?;
            Ok(acquired)
        })
    }
}

/// The floor of a read lock: the read script and the member release script by EVALSHA on one
/// multiplexed connection, with no policy around them. `shared` names one key every task
/// reads (readers share it), else each cycle uses its own.
struct RawRead {
    name: String,
    conn: MultiplexedConnection,
    shared: Option<String>,
}

impl Contender for RawRead {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["evalsha", "eval"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        Box::pin(async move {
            let key =
                lock_core::LockKey::new(self.shared.as_deref().unwrap_or(key)).map_err(|e| e.to_string())?;
            let k = scripts::RedisKeys::for_key(&key);
            let started = Instant::now();
            let token = Token::random().to_redis_value();
            let mut c = self.conn.clone();
            let granted: Vec<i64> = lock_redis_rs::redis::cmd("EVALSHA")
                .arg(scripts::READ.sha1)
                .arg(4)
                .arg(&k.lock)
                .arg(&k.readers)
                .arg(&k.writers)
                .arg(&k.fence)
                .arg(&token)
                .arg(30_000)
                .arg("")
                .arg("0:000000000000")
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            if granted.first() != Some(&1) {
                return Err(format!("read refused: {granted:?}"));
            }
            let acquired = started.elapsed();
            let _: i64 = lock_redis_rs::redis::cmd("EVALSHA")
                .arg(scripts::MEMBER.sha1)
                .arg(1)
                .arg(&k.readers)
                .arg(&token)
                .arg(0)
                .arg(&k.channel)
                .arg(1)
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(acquired)
        })
    }
}

/// Our read lock (`shared`: one key every task reads) or write lock, lock + unlock.
struct OursRw<B: LockBackend> {
    name: String,
    client: LockClient<B>,
    write: bool,
    shared: Option<String>,
}

impl<B: LockBackend> Contender for OursRw<B> {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["evalsha", "eval", "script|load"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let rw = self.client.rw_lock(self.shared.as_deref().unwrap_or(key)).map_err(|e| e.to_string())?;
            let guard = if self.write { rw.write().await } else { rw.read().await };
            let guard = guard.map_err(|e| e.to_string())?;
            let acquired = started.elapsed();
            guard.release().await.map_err(|e| e.to_string())?;
            Ok(acquired)
        })
    }
}

/// A semaphore of `permits` under `tasks` tasks for `run`: each task takes a permit, holds it
/// 1 ms, gives it back, and asks again at once. Acquisitions/s, and the wait for a permit.
async fn semaphore_row<B: LockBackend + Clone>(
    name: &str,
    backend: &B,
    permits: u32,
    tasks: usize,
    run: Duration,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let client = LockClient::with_config(backend.clone(), config())?;
    let key = format!("bench:sem:{name}");
    let sem = client.semaphore(&key, permits)?;
    let stop = Instant::now() + run;
    let started = Instant::now();
    let handles = (0..tasks).map(|_| {
        let sem = sem.clone();
        tokio::spawn(async move {
            let mut waits = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let Ok(permit) = sem.acquire().await else { continue };
                waits.push(t.elapsed());
                precise_sleep(Duration::from_millis(1)).await;
                let _ = permit.release().await;
            }
            waits
        })
    });
    let mut waits: Vec<Duration> = join_all(handles).await.into_iter().flatten().flatten().collect();
    let elapsed = started.elapsed();
    waits.sort();
    let rate = waits.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    // With no overhead at all, `permits` holders of 1 ms each.
    let ideal = f64::from(permits) * 1000.0;
    let (p50, p99) = (percentile(&waits, 0.5), percentile(&waits, 0.99));
    println!(
        "   {:<16} {:>8.0} {:>8.2}x {:>9.2} {:>9.2}",
        name,
        rate,
        rate / ideal,
        us(p50) / 1000.0,
        us(p99) / 1000.0
    );
    Ok(serde_json::json!({
        "contender": name, "acquisitions_per_s": rate, "vs_ideal": rate / ideal,
        "wait_p50_ms": us(p50) / 1000.0, "wait_p99_ms": us(p99) / 1000.0,
    }))
}

/// rslock, the most used Rust RedLock crate: its `lock` (SET NX PX on every node) and `unlock`
/// (a compare-and-delete script on every node), as its users call them.
struct Rslock {
    name: String,
    manager: rslock::LockManager,
}

impl Rslock {
    fn new(name: &str, servers: &[&RedisServer]) -> Self {
        let manager = rslock::LockManager::new(servers.iter().map(|s| s.url()).collect::<Vec<_>>());
        Self { name: name.to_string(), manager }
    }
}

impl Contender for Rslock {
    fn name(&self) -> &str {
        &self.name
    }
    fn client_commands(&self) -> &'static [&'static str] {
        &["set", "evalsha", "eval", "script|load"]
    }
    fn cycle<'a>(&'a self, key: &'a str) -> BoxFut<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let lock = self
                .manager
                .lock(format!("rslock:{key}").as_bytes(), Duration::from_secs(30))
                .await
                .map_err(|e| format!("{e:?}"))?;
            let acquired = started.elapsed();
            self.manager.unlock(&lock).await;
            Ok(acquired)
        })
    }
}

/// The order the contenders run in, in one round: shuffled anew each round (seeded by the
/// round, so a run is repeatable), so that no contender is always the one that runs first,
/// after the same neighbour, or last: an effect of position (a connection idle since the last
/// round, the work the previous contender leaves behind) falls on every contender alike.
fn round_order(contenders: usize, round: usize) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..contenders).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(round as u64));
    order
}

/// The spread of one contender's per-round ratio to another's (round by round, each pair
/// measured in the same round): the 10th and 90th percentile of those ratios, so one round
/// that machine noise hit does not set it. `None` without rounds to compare.
fn ratio_spread(rounds: &[f64], base: &[f64]) -> Option<(f64, f64)> {
    let mut ratios: Vec<f64> =
        rounds.iter().zip(base).filter(|(_, b)| **b > 0.0).map(|(r, b)| r / b).collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |p: f64| ratios[((ratios.len() as f64 - 1.0) * p).round() as usize];
    Some((at(0.1), at(0.9)))
}

fn show_spread(spread: Option<(f64, f64)>) -> String {
    spread.map_or_else(|| "-".to_string(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"))
}

/// 101 points of the distribution (the 0th to 100th percentile), in microseconds: what the
/// CDF pictures are drawn from, kept in the JSON.
fn quantiles_us(sorted: &[Duration]) -> Vec<f64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100).map(|q| us(percentile(sorted, f64::from(q) / 100.0))).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn raw(name: &str, servers: &[&RedisServer]) -> Result<Raw, Box<dyn std::error::Error>> {
    let mut conns = Vec::new();
    for s in servers {
        let client = lock_redis_rs::redis::Client::open(s.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        // Load the release script so EVALSHA never misses.
        let _: String = lock_redis_rs::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(scripts::RELEASE.source)
            .query_async(&mut conn)
            .await?;
        conns.push(conn);
    }
    Ok(Raw { name: name.to_string(), conns })
}

/// Whether an `--only` part picks the contender `name`: `=name` exactly, else a substring.
fn picks(part: &str, name: &str) -> bool {
    part.strip_prefix('=').map_or_else(|| name.contains(part), |exact| name == exact)
}

fn config() -> LockConfig {
    // The watchdog is off: a cycle is lock + unlock, nothing in between to renew.
    LockConfig::builder().watchdog(false).build().unwrap_or_default()
}

/// Sequential cycles on distinct keys, interleaved across contenders.
async fn sequential(
    contenders: &[Arc<dyn Contender>],
    rounds: usize,
    slice: usize,
) -> Vec<serde_json::Value> {
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    let mut busy = vec![Duration::ZERO; contenders.len()];
    let mut switches = vec![0i64; contenders.len()];
    let mut seq_cpu = vec![Duration::ZERO; contenders.len()];
    // Time to the lock, summed: the acquire's share of `busy`, the rest is the release's.
    let mut acquiring = vec![Duration::ZERO; contenders.len()];
    // Each round's cycles/s and p50 per contender: how far one round's ratio strays from the
    // pooled one (machine noise that the interleaving does not cancel).
    let mut round_rate: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut round_p50: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut n = 0u64;
    for round in 0..rounds + 1 {
        for i in round_order(contenders.len(), round) {
            let c = &contenders[i];
            let before = Usage::now();
            let first = lat[i].len();
            for _ in 0..slice {
                n += 1;
                let key = format!("seq:{n}");
                let t = Instant::now();
                let acquired = c.cycle(&key).await.unwrap_or_else(|e| {
                    eprintln!("{}: {e}", c.name());
                    Duration::ZERO
                });
                let d = t.elapsed();
                // Round 0 is the warm-up.
                if round > 0 {
                    lat[i].push(d);
                    busy[i] += d;
                    acquiring[i] += acquired;
                }
            }
            if round > 0 {
                let after = Usage::now();
                switches[i] += after.switches - before.switches;
                seq_cpu[i] += after.cpu.saturating_sub(before.cpu);
                let mut this: Vec<Duration> = lat[i][first..].to_vec();
                this.sort();
                let spent: Duration = this.iter().sum();
                round_rate[i].push(this.len() as f64 / spent.as_secs_f64().max(1e-9));
                round_p50[i].push(us(percentile(&this, 0.5)));
            }
        }
    }
    println!(
        "\n1. sequential lock+unlock, one task, distinct keys ({} cycles each, interleaved)",
        rounds * slice
    );
    println!(
        "   {:<18} {:>12} {:>10} {:>10} {:>9} {:>11} {:>14} {:>8} {:>9} {:>9}",
        "contender",
        "cycles/s",
        "p50 us",
        "p99 us",
        "vs raw",
        "rounds",
        "client us/cyc",
        "csw/cyc",
        "lock us",
        "unlock us"
    );
    let mut out = Vec::new();
    let mut base = Vec::new();
    let mut base_rounds: &[f64] = &[];
    for (i, c) in contenders.iter().enumerate() {
        let mut l = lat[i].clone();
        l.sort();
        let rate = l.len() as f64 / busy[i].as_secs_f64().max(1e-9);
        let p50 = percentile(&l, 0.5);
        let p99 = percentile(&l, 0.99);
        // Each "raw-N" row is the baseline of the contenders after it.
        let is_base = c.name().starts_with("raw");
        if is_base {
            base = vec![rate, us(p50)];
            base_rounds = &round_rate[i];
        }
        let ratio = if base.is_empty() { 0.0 } else { rate / base[0] };
        let spread = if is_base { None } else { ratio_spread(&round_rate[i], base_rounds) };
        // Context switches of the whole process per cycle: each thread hand-off along a cycle
        // (a reply waking a parked thread) costs latency that CPU time does not show.
        let csw = switches[i] as f64 / l.len().max(1) as f64;
        // This process's CPU per cycle (all threads): parking and waking the runtime's threads
        // around each reply is most of it, one task alone.
        let cpu = us(seq_cpu[i]) / l.len().max(1) as f64;
        // Mean time to the lock and from it to the end of the cycle: which half a gap is in.
        let lock_us = us(acquiring[i]) / l.len().max(1) as f64;
        let unlock_us = us(busy[i].saturating_sub(acquiring[i])) / l.len().max(1) as f64;
        println!(
            "   {:<18} {:>12.0} {:>10.1} {:>10.1} {:>8.2}x {:>11} {:>14.1} {:>8.2} {:>9.1} {:>9.1}",
            c.name(),
            rate,
            us(p50),
            us(p99),
            ratio,
            show_spread(spread),
            cpu,
            csw,
            lock_us,
            unlock_us
        );
        out.push(serde_json::json!({
            "contender": c.name(), "cycles_per_s": rate, "p50_us": us(p50), "p99_us": us(p99), "ratio_vs_raw": ratio,
            "client_us_per_cycle": cpu, "context_switches_per_cycle": csw,
            "mean_lock_us": lock_us, "mean_unlock_us": unlock_us,
            "ratio_vs_raw_rounds": spread.map(|(lo, hi)| [lo, hi]),
            "round_cycles_per_s": round_rate[i], "round_p50_us": round_p50[i],
            "quantiles_us": quantiles_us(&l)
        }));
    }
    out
}

/// 64 tasks on distinct keys, interleaved slices.
async fn parallel(
    title: &str,
    contenders: &[Arc<dyn Contender>],
    servers: &[u32],
    slices: usize,
    slice: Duration,
) -> Vec<serde_json::Value> {
    let mut counts = vec![0u64; contenders.len()];
    let mut time = vec![Duration::ZERO; contenders.len()];
    let mut cpu = vec![Duration::ZERO; contenders.len()];
    let mut server_cpu = vec![Duration::ZERO; contenders.len()];
    let mut errors: Vec<(usize, String)> = vec![(0, String::new()); contenders.len()];
    let mut round_rate: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for round in 0..slices + 1 {
        for i in round_order(contenders.len(), round) {
            let c = &contenders[i];
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
            let cpu0 = cpu_time();
            let server0 = servers_cpu_time(servers);
            let start = Instant::now();
            let stop = start + slice;
            let tasks = (0..64).map(|t| {
                let (c, done, failed) = (Arc::clone(c), Arc::clone(&done), Arc::clone(&failed));
                tokio::spawn(async move {
                    let mut k = 0u64;
                    while Instant::now() < stop {
                        k += 1;
                        match c.cycle(&format!("par:{round}:{t}:{k}")).await {
                            Ok(_) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // A failed cycle is not counted, and is said: a silent one
                                // would read as a slow contender.
                                failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e);
                            }
                        }
                    }
                })
            });
            join_all(tasks).await;
            let failed =
                std::mem::take(&mut *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if let Some(first) = failed.first().filter(|_| errors[i].0 == 0) {
                errors[i].1 = first.clone();
            }
            errors[i].0 += failed.len();
            if round > 0 {
                let elapsed = start.elapsed();
                round_rate[i].push(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-9));
                counts[i] += done.load(Ordering::Relaxed);
                time[i] += elapsed;
                cpu[i] += cpu_time().saturating_sub(cpu0);
                server_cpu[i] += servers_cpu_time(servers).saturating_sub(server0);
            }
        }
    }
    println!("\n{title} ({:?} per contender, interleaved)", slice * slices as u32);
    // Client CPU: this process's user + system time per cycle; server CPU: the same of every
    // redis-server this bench started (on 2 cores the two share the machine), so the
    // library's own cost shows apart from the server's.
    println!(
        "   {:<18} {:>12} {:>9} {:>11} {:>14} {:>14}",
        "contender", "cycles/s", "vs raw", "rounds", "client us/cyc", "server us/cyc"
    );
    let mut base = 0.0;
    let mut base_rounds: &[f64] = &[];
    let mut out = Vec::new();
    for (i, c) in contenders.iter().enumerate() {
        let rate = counts[i] as f64 / time[i].as_secs_f64().max(1e-9);
        let is_base = c.name().starts_with("raw");
        if is_base {
            base = rate;
            base_rounds = &round_rate[i];
        }
        let ratio = if base > 0.0 { rate / base } else { 0.0 };
        let spread = if is_base { None } else { ratio_spread(&round_rate[i], base_rounds) };
        let client_us = cpu[i].as_secs_f64() * 1e6 / (counts[i].max(1) as f64);
        let server_us = server_cpu[i].as_secs_f64() * 1e6 / (counts[i].max(1) as f64);
        println!(
            "   {:<18} {:>12.0} {:>8.2}x {:>11} {:>14.1} {:>14.1}",
            c.name(),
            rate,
            ratio,
            show_spread(spread),
            client_us,
            server_us
        );
        out.push(serde_json::json!({
            "contender": c.name(), "cycles_per_s": rate, "ratio_vs_raw": ratio, "client_cpu_us_per_cycle": client_us,
            "server_cpu_us_per_cycle": server_us, "failed_cycles": errors[i].0,
            "ratio_vs_raw_rounds": spread.map(|(lo, hi)| [lo, hi]), "round_cycles_per_s": round_rate[i]
        }));
    }
    for (c, (n, first)) in contenders.iter().zip(&errors) {
        if *n > 0 {
            println!("   {}: {n} cycles failed (not counted); the first: {first}", c.name());
        }
    }
    out
}

/// What the contended hand-off needs of a lock: take it (waiting as its users would), give it
/// back.
trait Handoff: Send + Sync + 'static {
    type Held: Send;
    fn take(&self) -> impl Future<Output = Option<Self::Held>> + Send;
    fn give(&self, held: Self::Held) -> impl Future<Output = ()> + Send;
}

impl Handoff for lock_core::Mutex {
    type Held = lock_core::Guard;
    async fn take(&self) -> Option<Self::Held> {
        self.lock().await.ok()
    }
    async fn give(&self, held: Self::Held) {
        let _ = held.release().await;
    }
}

impl Handoff for lock_core::FairMutex {
    type Held = lock_core::Guard;
    async fn take(&self) -> Option<Self::Held> {
        self.lock().await.ok()
    }
    async fn give(&self, held: Self::Held) {
        let _ = held.release().await;
    }
}

fn our_fair_handoff<B: LockBackend + Clone>(backend: &B) -> Option<lock_core::FairMutex> {
    handoff_client(backend)?.fair_mutex("contended-fair").ok()
}

/// `n` tasks of the hand-off on our mutex, or on our fair lock.
async fn our_handoff_tasks<B: LockBackend + Clone>(
    backend: &B,
    fair: bool,
    n: usize,
    first: usize,
    start_ns: u64,
    run: Duration,
) -> Vec<HandoffEvent> {
    if fair {
        handoff_tasks((0..n).filter_map(|_| our_fair_handoff(backend)).collect(), first, start_ns, run).await
    } else {
        handoff_tasks((0..n).filter_map(|_| our_handoff(backend)).collect(), first, start_ns, run).await
    }
}

/// rslock's own waiting: `acquire` loops over `lock`, which retries with a random sleep.
struct RslockHandoff(rslock::LockManager);

impl Handoff for RslockHandoff {
    type Held = rslock::LockGuard;
    async fn take(&self) -> Option<Self::Held> {
        self.0.acquire(&b"contended"[..], Duration::from_secs(30)).await.ok()
    }
    async fn give(&self, held: Self::Held) {
        held.release().await;
    }
}

fn our_handoff<B: LockBackend + Clone>(backend: &B) -> Option<lock_core::Mutex> {
    handoff_client(backend)?.mutex("contended").ok()
}

/// The hand-off's client: no watchdog (holds are 1 ms), waits of up to 30 s.
fn handoff_client<B: LockBackend + Clone>(backend: &B) -> Option<LockClient<B>> {
    let config = LockConfig::builder()
        .watchdog(false)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    LockClient::with_config(backend.clone(), config).ok()
}

/// One acquisition of the contended hand-off, in host monotonic nanoseconds (comparable
/// across processes): asked, acquired, the task (numbered across processes), released.
type HandoffEvent = (u64, u64, usize, u64);

/// Tasks of one process on one key: hold 1 ms, release, 1 ms of other work, ask again (no
/// barging). They start together at `start_ns` and stop asking `run` later.
async fn handoff_tasks<H: Handoff>(
    lockers: Vec<H>,
    first_task: usize,
    start_ns: u64,
    run: Duration,
) -> Vec<HandoffEvent> {
    let now = mono_now_ns();
    if start_ns > now {
        tokio::time::sleep(Duration::from_nanos(start_ns - now)).await;
    }
    let stop = Instant::now() + run;
    let tasks = lockers.into_iter().enumerate().map(|(t, locker)| {
        tokio::spawn(async move {
            let mut events = Vec::new();
            while Instant::now() < stop {
                let asked = mono_now_ns();
                let Some(held) = locker.take().await else { continue };
                let acquired = mono_now_ns();
                precise_sleep(Duration::from_millis(1)).await;
                let released = mono_now_ns();
                locker.give(held).await;
                events.push((asked, acquired, first_task + t, released));
                precise_sleep(Duration::from_millis(1)).await;
            }
            events
        })
    });
    join_all(tasks).await.into_iter().flat_map(Result::unwrap_or_default).collect()
}

/// Sleeps for `d` to within tens of microseconds: tokio's timer has millisecond ticks, so its
/// `sleep(1 ms)` takes about 2 ms, which would make every hold and pause of the hand-off twice
/// what it says. A blocking thread's `nanosleep` keeps them at 1 ms.
async fn precise_sleep(d: Duration) {
    if tokio::task::spawn_blocking(move || std::thread::sleep(d)).await.is_err() {
        tokio::time::sleep(d).await;
    }
}

/// What one process of the contended hand-off runs (`--handoff-child`, as JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct HandoffChild {
    contender: String,
    urls: Vec<String>,
    tasks: usize,
    first_task: usize,
    start_ns: u64,
    run_ms: u64,
}

/// The contended hand-off's processes: 8 tasks split over this many.
const HANDOFF_PROCS: usize = 2;
const HANDOFF_TASKS: usize = 8;

/// A child process of the hand-off: builds its contender, runs its tasks, prints the events
/// as JSON on stdout.
async fn handoff_child(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let spec: HandoffChild = serde_json::from_str(spec)?;
    let run = Duration::from_millis(spec.run_ms);
    let (n, first, start) = (spec.tasks, spec.first_task, spec.start_ns);
    let url = spec.urls.first().ok_or("no node")?.clone();
    let events = match spec.contender.as_str() {
        "redis-rs" | "redis-rs fair" => {
            let b = RedisBackend::connect(&url).await?;
            our_handoff_tasks(&b, spec.contender.ends_with(" fair"), n, first, start, run).await
        }
        "fred" | "fred fair" => {
            let b = FredBackend::connect(&url).await?;
            our_handoff_tasks(&b, spec.contender.ends_with(" fair"), n, first, start, run).await
        }
        "rslock-1" => {
            let lockers =
                (0..n).map(|_| RslockHandoff(rslock::LockManager::new(vec![url.clone()]))).collect();
            handoff_tasks(lockers, first, start, run).await
        }
        "redlock-3" | "redlock-5" => {
            let mut nodes = Vec::new();
            for u in &spec.urls {
                nodes.push(RedisBackend::connect(u).await?);
            }
            let rl = RedLock::new(nodes)?;
            handoff_tasks((0..n).filter_map(|_| our_handoff(&rl)).collect(), first, start, run).await
        }
        other => return Err(format!("no hand-off contender {other:?}").into()),
    };
    println!("{}", serde_json::to_string(&events)?);
    Ok(())
}

/// 8 tasks on one key, split over [`HANDOFF_PROCS`] processes of this binary (so waiters in
/// different processes compete, as in production): hold 1 ms, release, 1 ms of other work, ask
/// again (no barging).
async fn contended(name: &str, urls: &[String], run: Duration) -> serde_json::Value {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            println!("   {name:<16} failed: no executable path: {e}");
            return serde_json::json!({"contender": name, "error": e.to_string()});
        }
    };
    // Time for every process to start and connect before the common start.
    let start_ns = mono_now_ns() + 1_500_000_000;
    let per = HANDOFF_TASKS / HANDOFF_PROCS;
    let mut children = Vec::new();
    for i in 0..HANDOFF_PROCS {
        let spec = HandoffChild {
            contender: name.to_string(),
            urls: urls.to_vec(),
            tasks: per,
            first_task: i * per,
            start_ns,
            run_ms: u64::try_from(run.as_millis()).unwrap_or(u64::MAX),
        };
        let spec = serde_json::to_string(&spec).unwrap_or_default();
        children.push(
            tokio::process::Command::new(&exe)
                .arg("--handoff-child")
                .arg(spec)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output(),
        );
    }
    let bound = run + Duration::from_secs(30);
    let mut events: Vec<HandoffEvent> = Vec::new();
    let mut failed = None;
    for out in join_all(children.into_iter().map(|c| tokio::time::timeout(bound, c))).await {
        match out {
            Ok(Ok(out)) if out.status.success() => {
                match serde_json::from_slice::<Vec<HandoffEvent>>(&out.stdout) {
                    Ok(e) => events.extend(e),
                    Err(e) => failed = Some(format!("unreadable events: {e}")),
                }
            }
            Ok(Ok(out)) => failed = Some(format!("a process failed: {}", out.status)),
            Ok(Err(e)) => failed = Some(format!("a process did not start: {e}")),
            Err(_) => failed = Some(format!("a process ran past {bound:?}")),
        }
    }
    if let Some(why) = failed {
        println!("   {name:<16} failed: {why}");
        return serde_json::json!({"contender": name, "error": why});
    }
    handoff_stats(name, events, run)
}

/// The hand-off's figures from every process's events: acquisitions/s, the gap between a
/// release and the next holder's grant, the wait, and fairness (min/max acquisitions per task).
fn handoff_stats(name: &str, mut events: Vec<HandoffEvent>, run: Duration) -> serde_json::Value {
    let ns = Duration::from_nanos;
    events.sort_by_key(|e| e.1);
    let mut gaps: Vec<Duration> =
        events.windows(2).filter(|w| w[0].2 != w[1].2).map(|w| ns(w[1].1.saturating_sub(w[0].3))).collect();
    gaps.sort();
    let mut waits: Vec<Duration> = events.iter().map(|e| ns(e.1.saturating_sub(e.0))).collect();
    waits.sort();
    let mut per_task = vec![0u64; HANDOFF_TASKS];
    for e in &events {
        if let Some(n) = per_task.get_mut(e.2) {
            *n += 1;
        }
    }
    let (min, max) =
        (per_task.iter().min().copied().unwrap_or(0), per_task.iter().max().copied().unwrap_or(0));
    let fairness = if max > 0 { min as f64 / max as f64 } else { 0.0 };
    let rate = events.len() as f64 / run.as_secs_f64();
    let (g50, g99) = (percentile(&gaps, 0.5), percentile(&gaps, 0.99));
    let (w50, w99, wmax) =
        (percentile(&waits, 0.5), percentile(&waits, 0.99), waits.last().copied().unwrap_or_default());
    println!(
        "   {:<16} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.2}",
        name,
        rate,
        us(g50) / 1000.0,
        us(g99) / 1000.0,
        us(w50) / 1000.0,
        us(w99) / 1000.0,
        us(wmax) / 1000.0,
        fairness
    );
    serde_json::json!({
        "contender": name, "acquisitions_per_s": rate, "gap_p50_ms": us(g50) / 1000.0, "gap_p99_ms": us(g99) / 1000.0,
        "wait_p50_ms": us(w50) / 1000.0, "wait_p99_ms": us(w99) / 1000.0, "wait_max_ms": us(wmax) / 1000.0, "fairness": fairness,
        "processes": HANDOFF_PROCS, "per_task": per_task, "wait_quantiles_us": quantiles_us(&waits)
    })
}

/// This process's resource use so far (all its threads), from one `getrusage`.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// CPU time, user + system.
    cpu: Duration,
    /// Context switches, voluntary and not.
    switches: i64,
}

impl Usage {
    fn now() -> Self {
        use nix::sys::resource::{UsageWho, getrusage};
        let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else { return Self::default() };
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
        };
        Self {
            cpu: tv(u.user_time()) + tv(u.system_time()),
            switches: u.voluntary_context_switches() + u.involuntary_context_switches(),
        }
    }
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    Usage::now().cpu
}

/// CPU time (user + system) of the given processes so far, from `/proc/<pid>/stat` (fields 14
/// and 15, in clock ticks of 10 ms: the slices are long enough for that).
fn servers_cpu_time(pids: &[u32]) -> Duration {
    let ticks = |pid: &u32| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
        // The command name (field 2) may hold spaces: count fields after its closing ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
        f.iter().sum()
    };
    Duration::from_millis(pids.iter().map(ticks).sum::<u64>() * 10)
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Section 4: the watchdog at scale, on both drivers, for each lease count. Each row runs in a
/// fresh process of this binary (`--watchdog-child`), so its memory growth is that of the
/// leases alone (in a process that freed heap before, the leases would reuse it) and its CPU
/// is the lock client's alone.
async fn watchdog_section(
    url: &str,
    lease_counts: [usize; 2],
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    println!(
        "\n4. watchdog at scale: {} and {} leases held at once, ttl 3 s, renewal every 1 s, 3 periods (one node)",
        lease_counts[0], lease_counts[1]
    );
    println!(
        "   {:<16} {:>7} {:>11} {:>12} {:>8} {:>7} {:>11} {:>10} {:>8} {:>5}",
        "contender",
        "leases",
        "scripts/s",
        "per lease/p",
        "batches",
        "cpu %",
        "bytes/lease",
        "late ms",
        "% ttl",
        "lost"
    );
    let exe = std::env::current_exe()?;
    let mut wd = Vec::new();
    for leases in lease_counts {
        for driver in ["redis-rs", "fred"] {
            let out = tokio::process::Command::new(&exe)
                .arg("--watchdog-child")
                .arg(format!("{driver}:{leases}:{url}"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .await?;
            let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                serde_json::json!({"contender": format!("{driver} {}k", leases / 1000), "error": e.to_string()})
            });
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "   {:<16} {:>7} {:>11.0} {:>12.4} {:>8} {:>7.1} {:>11.0} {:>10.1} {:>8.1} {:>5}",
                row["contender"].as_str().unwrap_or("?"),
                f("leases"),
                f("renewal_commands_per_s"),
                f("renewal_commands_per_lease_per_period"),
                f("batches"),
                f("cpu_percent"),
                f("memory_per_lease_bytes"),
                f("worst_lateness_ms"),
                f("worst_lateness_pct_ttl"),
                f("lost")
            );
            wd.push(row);
        }
    }
    Ok(wd)
}

/// One row of section 4 in this (fresh) process: `spec` is `<driver>:<leases>:<url>`; the row
/// goes to stdout as JSON.
async fn watchdog_child(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut parts = spec.splitn(3, ':');
    let (Some(driver), Some(leases), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad --watchdog-child spec {spec:?}").into());
    };
    let leases: usize = leases.parse()?;
    let row = match driver {
        "redis-rs" => watchdog_at_scale(driver, RedisBackend::connect(url).await?, url, leases, 3).await?,
        _ => watchdog_at_scale(driver, FredBackend::connect(url).await?, url, leases, 3).await?,
    };
    println!("{row}");
    Ok(())
}

/// Hold `leases` leases at once with the watchdog on for `periods` renewal periods: renewal
/// script calls (per second and per lease per period), the client's batches, CPU% of this
/// process, memory growth per held lease, and the worst renewal lateness. The row is named
/// `<driver> <leases/1000>k`.
async fn watchdog_at_scale<B: LockBackend + Clone>(
    name: &str,
    backend: B,
    url: &str,
    leases: usize,
    periods: u32,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let row = format!("{name} {}k", leases / 1000);
    let mut control = lock_redis_rs::redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let ttl = Duration::from_secs(3);
    let config = LockConfig::builder().ttl(ttl).acquire_timeout(Duration::from_secs(30)).build()?;
    let renew = config.renew_interval();
    let client = LockClient::with_config(backend, config.clone())?;
    // What holding the leases adds to this fresh process: the guards, their handles and our
    // list of them, once the acquisitions' transient buffers are gone.
    let rss_before = rss_bytes();
    let handles: Vec<_> = (0..leases).filter_map(|i| client.mutex(format!("wd:{row}:{i}")).ok()).collect();
    let mut guards = Vec::with_capacity(leases);
    for chunk in handles.chunks(500) {
        let taken = join_all(chunk.iter().map(|m| async move { m.lock().await.ok() })).await;
        guards.extend(taken.into_iter().flatten());
    }
    let held = guards.len();
    let per_lease = rss_bytes().saturating_sub(rss_before) as f64 / held.max(1) as f64;
    let _: String = lock_redis_rs::redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut control).await?;
    let stats0 = client.renewal_stats();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let end = t0 + renew * periods;
    // A lease renewed on time never has less than ttl - drift - renew_interval left; anything
    // below that is lateness seen from the lease. Sampled every 500 ms (the sampling costs a
    // little CPU too); the scheduler's own figure (sent after due) is the other bound.
    let floor = ttl.saturating_sub(config.drift()).saturating_sub(renew);
    let mut min_left = ttl;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for g in &guards {
            min_left = min_left.min(g.remaining());
        }
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let stats = client.renewal_stats();
    let commands: String =
        lock_redis_rs::redis::cmd("INFO").arg("commandstats").query_async(&mut control).await?;
    let calls = |name: &str| -> u64 {
        commands
            .lines()
            .filter_map(|l| {
                let (cmd, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                (cmd == name).then(|| rest.split(',').next()?.parse::<u64>().ok())?
            })
            .sum()
    };
    // One script call per EVALSHA (fred answers NOSCRIPT with SCRIPT LOAD and EVALSHA again).
    let renewals = (calls("evalsha") + calls("eval")).saturating_sub(calls("script|load"));
    let late = floor.saturating_sub(min_left).max(stats.worst_lateness);
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    join_all(guards.into_iter().map(|g| g.release())).await;
    // Per renewal period actually measured (the window is a little longer than `periods`
    // periods, by the sampling step), so an unbatched watchdog shows 1.00, not less.
    let measured_periods = elapsed.as_secs_f64() / renew.as_secs_f64();
    let per_lease_period = renewals as f64 / (held.max(1) as f64 * measured_periods);
    Ok(serde_json::json!({
        "contender": row, "leases": held, "ttl_ms": ttl.as_millis() as u64, "periods": periods,
        "renewal_commands_per_s": renewals as f64 / elapsed.as_secs_f64(),
        "renewal_commands_per_lease_per_period": per_lease_period,
        "batches": stats.batches - stats0.batches,
        "cpu_percent": cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        "memory_per_lease_bytes": per_lease, "worst_lateness_ms": us(late) / 1000.0,
        "worst_lateness_pct_ttl": late.as_secs_f64() / ttl.as_secs_f64() * 100.0, "lost": lost,
    }))
}

/// Client round trips of one cycle, from the servers' `INFO commandstats`: the calls of the
/// commands the contender sends itself, summed over its nodes, per cycle.
async fn round_trips(c: &dyn Contender, servers: &[&RedisServer]) -> f64 {
    let wanted = c.client_commands();
    let calls = |s: &RedisServer| -> u64 {
        let stats = s.cmd(&["INFO", "commandstats"]).map(|r| r.text()).unwrap_or_default();
        stats
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                let n: u64 = rest.split(',').next()?.parse().ok()?;
                wanted.contains(&name).then_some(n)
            })
            .sum()
    };
    let _ = c.cycle("rt:warm").await;
    for s in servers {
        let _ = s.cmd(&["CONFIG", "RESETSTAT"]);
    }
    let cycles = 50;
    for i in 0..cycles {
        let _ = c.cycle(&format!("rt:{i}")).await;
    }
    let total: u64 = servers.iter().map(|s| calls(s)).sum();
    total as f64 / cycles as f64
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(spec) = &args.handoff_child {
        return handoff_child(spec).await;
    }
    if let Some(spec) = &args.watchdog_child {
        return watchdog_child(spec).await;
    }
    let (rounds, slice, par_slices, par_slice, contended_run, lease_counts) = if args.quick {
        (5, 40, 2, Duration::from_millis(250), Duration::from_secs(1), [1_000, 10_000])
    } else {
        (20, 250, 10, Duration::from_millis(500), Duration::from_secs(5), [10_000, 100_000])
    };
    let servers = start_nodes(5)?;
    let one: Vec<&RedisServer> = servers.iter().take(1).collect();
    let three: Vec<&RedisServer> = servers.iter().take(3).collect();
    let five: Vec<&RedisServer> = servers.iter().collect();
    println!(
        "bench: {} mode, redis-server on {} loopback nodes, {} build",
        if args.quick { "quick" } else { "full" },
        servers.len(),
        if cfg!(debug_assertions) { "DEBUG (use --release for real figures)" } else { "release" }
    );

    let mut redis_nodes = Vec::new();
    for s in &servers {
        redis_nodes.push(RedisBackend::connect(&s.url()).await?);
    }
    let redis1 = redis_nodes[0].clone();
    // The bare connection that never reconnects, to show what reconnection costs (the
    // default, `RedisBackend::connect`, is the "redis-rs" row).
    let redis1_bare = RedisBackend::builder().connect_without_reconnect(&servers[0].url()).await?;
    let fred1 = FredBackend::connect(&servers[0].url()).await?;
    if args.watchdog_only {
        let wd = watchdog_section(&servers[0].url(), lease_counts).await?;
        let doc = serde_json::json!({ "watchdog": wd });
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        }
        targets(&doc);
        return Ok(());
    }
    let rl3 = RedLock::new(redis_nodes[..3].to_vec())?;
    let rl5 = RedLock::new(redis_nodes.clone())?;

    // Each "raw-N" row is the baseline of the rows after it, up to the next raw row.
    let single: Vec<(Arc<dyn Contender>, &[&RedisServer])> = vec![
        (Arc::new(raw("raw-1", &one).await?), &one),
        (
            Arc::new(Shape {
                name: "shape-1".into(),
                conn: Some(raw("", &one).await?.conns.remove(0)),
                fred: None,
                timed: false,
            }),
            &one,
        ),
        // The same with one tokio timer per call, as the library arms: what a timer costs.
        (
            Arc::new(Shape {
                name: "shape-1 timed".into(),
                conn: Some(raw("", &one).await?.conns.remove(0)),
                fred: None,
                timed: true,
            }),
            &one,
        ),
        (
            Arc::new(Ours {
                name: "redis-rs".into(),
                client: LockClient::with_config(redis1.clone(), config())?,
            }),
            &one,
        ),
        (
            Arc::new(Ours {
                name: "redis-rs bare".into(),
                client: LockClient::with_config(redis1_bare.clone(), config())?,
            }),
            &one,
        ),
        (Arc::new(Rslock::new("rslock-1", &one)), &one),
        (Arc::new(raw_fred("raw-1 fred", &servers[0]).await?), &one),
        (
            Arc::new(Shape {
                name: "shape-1 fred".into(),
                conn: None,
                fred: Some(raw_fred("", &servers[0]).await?.client),
                timed: false,
            }),
            &one,
        ),
        // The same commands on the library's own fred client: its configuration (fred's
        // timeout on every command) costs what separates this row from the one before.
        (
            Arc::new(Shape {
                name: "shape-1 fred timed".into(),
                conn: None,
                fred: Some(fred1.client().clone()),
                timed: false,
            }),
            &one,
        ),
        (
            Arc::new(Ours { name: "fred".into(), client: LockClient::with_config(fred1.clone(), config())? }),
            &one,
        ),
        (Arc::new(raw("raw-3 fan-out", &three).await?), &three),
        (
            Arc::new(Ours {
                name: "redlock-3".into(),
                client: LockClient::with_config(rl3.clone(), config())?,
            }),
            &three,
        ),
        (Arc::new(Rslock::new("rslock-3", &three)), &three),
        (Arc::new(raw("raw-5 fan-out", &five).await?), &five),
        (
            Arc::new(Ours {
                name: "redlock-5".into(),
                client: LockClient::with_config(rl5.clone(), config())?,
            }),
            &five,
        ),
        (Arc::new(Rslock::new("rslock-5", &five)), &five),
    ];
    let contenders: Vec<Arc<dyn Contender>> = single
        .iter()
        .filter(|(c, _)| {
            !args.lock_path_only
                || args.only.as_deref().is_none_or(|o| o.split(',').any(|o| picks(o, c.name())))
        })
        .map(|(c, _)| Arc::clone(c))
        .collect();
    let seq = sequential(&contenders, rounds, slice).await;
    let pids: Vec<u32> = servers.iter().filter_map(RedisServer::pid).collect();
    let par = parallel("2. 64 tasks on distinct keys", &contenders, &pids, par_slices, par_slice).await;
    if args.lock_path_only {
        let doc = serde_json::json!({ "sequential": seq, "parallel_64": par });
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        }
        targets(&doc);
        return Ok(());
    }

    println!(
        "\n3. contended hand-off: 8 tasks in {HANDOFF_PROCS} processes, one key, hold 1 ms, 1 ms between asks ({contended_run:?} each)"
    );
    println!(
        "   {:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "contender", "acq/s", "gap p50", "gap p99", "wait p50", "wait p99", "wait max", "fairness"
    );
    println!(
        "   {:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "", "", "ms", "ms", "ms", "ms", "ms", "min/max"
    );
    let urls = |nodes: &[&RedisServer]| nodes.iter().map(|s| s.url()).collect::<Vec<_>>();
    let mut cont = Vec::new();
    for (name, nodes) in [
        ("redis-rs", &one),
        ("fred", &one),
        ("redis-rs fair", &one),
        ("fred fair", &one),
        ("rslock-1", &one),
        ("redlock-3", &three),
        ("redlock-5", &five),
    ] {
        cont.push(contended(name, &urls(nodes), contended_run).await);
    }

    let wd = watchdog_section(&servers[0].url(), lease_counts).await?;

    // The read-write lock: 64 tasks reading one key (readers share it), against the floor of
    // the same two scripts sent bare.
    let mut raw_read_conn =
        lock_redis_rs::redis::Client::open(servers[0].url())?.get_multiplexed_async_connection().await?;
    for script in [&scripts::READ, &scripts::MEMBER] {
        let _: String = lock_redis_rs::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script.source)
            .query_async(&mut raw_read_conn)
            .await?;
    }
    let shared_key = Some("bench:rw:shared".to_string());
    let readers: Vec<Arc<dyn Contender>> = vec![
        Arc::new(RawRead {
            name: "raw-read".into(),
            conn: raw_read_conn.clone(),
            shared: shared_key.clone(),
        }),
        Arc::new(OursRw {
            name: "redis-rs read".into(),
            client: LockClient::with_config(redis1.clone(), config())?,
            write: false,
            shared: shared_key.clone(),
        }),
        Arc::new(OursRw {
            name: "fred read".into(),
            client: LockClient::with_config(fred1.clone(), config())?,
            write: false,
            shared: shared_key,
        }),
    ];
    let reads = parallel(
        "5. read-write lock: 64 tasks taking read locks on one key",
        &readers,
        &pids,
        par_slices,
        par_slice,
    )
    .await;

    println!("\n6. semaphore of 4 permits under 16 tasks, hold 1 ms ({contended_run:?} each)");
    println!("   {:<16} {:>8} {:>9} {:>9} {:>9}", "contender", "acq/s", "vs ideal", "wait p50", "wait p99");
    let sems = vec![
        semaphore_row("redis-rs", &redis1, 4, 16, contended_run).await?,
        semaphore_row("fred", &fred1, 4, 16, contended_run).await?,
    ];

    println!("\n7. client round trips per lock+unlock cycle (INFO commandstats, summed over nodes)");
    let mut rts = Vec::new();
    let rw_rows: Vec<(Arc<dyn Contender>, &[&RedisServer])> = vec![
        (
            Arc::new(OursRw {
                name: "redis-rs read".into(),
                client: LockClient::with_config(redis1.clone(), config())?,
                write: false,
                shared: None,
            }),
            &one,
        ),
        (
            Arc::new(OursRw {
                name: "redis-rs write".into(),
                client: LockClient::with_config(redis1.clone(), config())?,
                write: true,
                shared: None,
            }),
            &one,
        ),
    ];
    for (c, nodes) in single.iter().chain(&rw_rows) {
        let rt = round_trips(c.as_ref(), nodes).await;
        println!("   {:<16} {:>6.2}", c.name(), rt);
        rts.push(serde_json::json!({"contender": c.name(), "round_trips_per_cycle": rt}));
    }

    let doc = serde_json::json!({
        "mode": if args.quick { "quick" } else { "full" },
        "release_build": !cfg!(debug_assertions),
        "sequential": seq, "parallel_64": par, "contended": cont, "watchdog": wd, "round_trips": rts,
        "rw_read_64": reads, "semaphore_4_of_16": sems,
    });
    targets(&doc);
    if let Some(path) = args.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        let latency = path.with_file_name(format!("{}-latency.svg", stem(&path)));
        cdf_svg(
            &latency,
            "lock+unlock latency, one task, distinct keys (CDF)",
            &doc["sequential"],
            "quantiles_us",
        )?;
        let wait = path.with_file_name(format!("{}-wait.svg", stem(&path)));
        cdf_svg(
            &wait,
            "contended wait: 8 tasks, one key, hold 1 ms (CDF)",
            &doc["contended"],
            "wait_quantiles_us",
        )?;
        println!("\nwrote {}, {} and {}", path.display(), latency.display(), wait.display());
    }
    Ok(())
}

/// Every target of the benchmark issue, with the figure measured against it in this run.
fn targets(doc: &serde_json::Value) {
    let row = |section: &str, who: &str| -> Option<&serde_json::Value> {
        doc[section].as_array().and_then(|rows| rows.iter().find(|r| r["contender"] == who))
    };
    let get = |section: &str, who: &str, field: &str| -> f64 {
        row(section, who).and_then(|r| r[field].as_f64()).unwrap_or(f64::NAN)
    };
    let rounds = |section: &str, who: &str, field: &str| -> Vec<f64> {
        row(section, who)
            .and_then(|r| r[field].as_array())
            .map(|v| v.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let mut rows: Vec<(String, String, Verdict)> = Vec::new();
    // A ratio of two contenders of one section, pooled over the run and round by round: the
    // verdict is the pooled ratio's; the rounds' spread says whether noise spans the target.
    let mut ratio = |what: String,
                     section: &str,
                     (a, b): (&str, &str),
                     (field, per_round): (&str, &str),
                     at_most: Option<f64>,
                     at_least: Option<f64>| {
        let r = get(section, a, field) / get(section, b, field);
        let spread = ratio_spread(&rounds(section, a, per_round), &rounds(section, b, per_round));
        let meets = |x: f64| at_least.is_none_or(|t| x >= t) && at_most.is_none_or(|t| x <= t);
        let measured = match spread {
            Some((lo, hi)) => format!("{r:.2}x ({lo:.2}-{hi:.2})"),
            None => format!("{r:.2}x"),
        };
        let verdict = if r.is_nan() {
            Verdict::NotMeasured
        } else {
            let straddled = spread.is_some_and(|(lo, hi)| meets(lo) != meets(hi));
            Verdict::Pooled { ok: meets(r), straddled }
        };
        rows.push((what, measured, verdict));
    };
    let cycles = ("cycles_per_s", "round_cycles_per_s");
    // Each driver against the raw commands on its own client (issue 14).
    for (who, raw, target) in [("redis-rs", "raw-1", 0.90), ("fred", "raw-1 fred", 0.85)] {
        ratio(format!("sequential {who} >= 0.95x {raw}"), "sequential", (who, raw), cycles, None, Some(0.95));
        ratio(
            format!("64 tasks {who} >= {target:.2}x {raw}"),
            "parallel_64",
            (who, raw),
            cycles,
            None,
            Some(target),
        );
    }
    for (n, raw) in [(3, "raw-3 fan-out"), (5, "raw-5 fan-out")] {
        let ours = format!("redlock-{n}");
        let rslock = format!("rslock-{n}");
        ratio(
            format!("RedLock-{n} p50 <= 1.1x raw fan-out"),
            "sequential",
            (&ours, raw),
            ("p50_us", "round_p50_us"),
            Some(1.1),
            None,
        );
        ratio(
            format!("RedLock-{n} cycles/s >= 1.0x {rslock}"),
            "sequential",
            (&ours, &rslock),
            cycles,
            None,
            Some(1.0),
        );
        ratio(
            format!("RedLock-{n} 64 tasks cycles/s >= 1.0x {rslock}"),
            "parallel_64",
            (&ours, &rslock),
            cycles,
            None,
            Some(1.0),
        );
    }
    // Figures of one contender, judged as measured.
    let mut add = |what: String, measured: String, ok: bool| {
        let verdict = if measured.contains("NaN") {
            Verdict::NotMeasured
        } else {
            Verdict::Pooled { ok, straddled: false }
        };
        rows.push((what, measured, verdict));
    };
    let rs = get("contended", "rslock-1", "acquisitions_per_s");
    for who in ["redis-rs", "fred"] {
        let g = get("contended", who, "gap_p50_ms");
        add(format!("contended {who} gap p50 < 1 ms"), format!("{g:.2} ms"), g < 1.0);
        let r = get("contended", who, "acquisitions_per_s") / rs;
        add(format!("contended {who} acq/s >= 5x rslock"), format!("{r:.1}x"), r >= 5.0);
        let w = get("contended", who, "wait_p99_ms");
        add(format!("contended {who} wait p99 < 50 ms"), format!("{w:.1} ms"), w < 50.0);
        let f = get("contended", who, "fairness");
        add(format!("contended {who} fairness >= 0.5"), format!("{f:.2}"), f >= 0.5);
    }
    // The watchdog at scale (issue 14): batched renewal. Rows exist only for the counts this
    // run measured (the quick mode measures 1k and 10k), so a target is met only when measured.
    let watchdog_rows: Vec<String> = doc["watchdog"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["contender"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for row in &watchdog_rows {
        let c = get("watchdog", row, "renewal_commands_per_lease_per_period");
        add(format!("watchdog {row} renewal commands/period <= leases/50"), format!("{c:.4}"), c <= 0.02);
        let l = get("watchdog", row, "worst_lateness_pct_ttl");
        add(format!("watchdog {row} lateness <= 10% ttl"), format!("{l:.1}%"), l <= 10.0);
        let lost = get("watchdog", row, "lost");
        add(format!("watchdog {row} none lost"), format!("{lost:.0}"), lost == 0.0);
        if row.ends_with(" 100k") {
            let m = get("watchdog", row, "memory_per_lease_bytes");
            add(format!("watchdog {row} memory < 1 KiB/lease"), format!("{m:.0} B"), m < 1024.0);
        }
    }
    // The fair lock (issue 12): 8 waiters in 2 processes.
    for who in ["redis-rs", "fred"] {
        let fair = format!("{who} fair");
        let w = get("contended", &fair, "wait_p99_ms");
        add(format!("contended {fair} wait p99 < 20 ms"), format!("{w:.1} ms"), w < 20.0);
        let m = get("contended", &fair, "wait_max_ms");
        add(format!("contended {fair} wait max < 50 ms"), format!("{m:.1} ms"), m < 50.0);
        let f = get("contended", &fair, "fairness");
        add(format!("contended {fair} fairness >= 0.9"), format!("{f:.2}"), f >= 0.9);
        let g = get("contended", &fair, "gap_p50_ms");
        add(format!("contended {fair} gap p50 < 0.5 ms"), format!("{g:.2} ms"), g < 0.5);
        let r = get("contended", &fair, "acquisitions_per_s") / get("contended", who, "acquisitions_per_s");
        add(format!("contended {fair} acq/s >= the mutex's"), format!("{r:.2}x"), r >= 1.0);
    }
    // The read-write lock (issue 13): its throughput figures are in sections 5 and 6 (no target
    // was set for them); its round trips are.
    for side in ["read", "write"] {
        let rt = get("round_trips", &format!("redis-rs {side}"), "round_trips_per_cycle");
        add(format!("{side} lock+unlock is 2 round trips"), format!("{rt:.2}"), rt <= 2.0);
    }
    println!(
        "\ntargets (ratios pooled over this run; in parentheses the 10th-90th percentile of the same ratio round by round)"
    );
    for (what, measured, verdict) in &rows {
        let verdict = match verdict {
            Verdict::NotMeasured => "not measured",
            Verdict::Pooled { ok: true, straddled: false } => "met",
            Verdict::Pooled { ok: true, straddled: true } => "met (rounds straddle it)",
            Verdict::Pooled { ok: false, straddled: false } => "MISSED",
            Verdict::Pooled { ok: false, straddled: true } => "MISSED (rounds straddle it)",
        };
        let measured = if measured.contains("NaN") { "-" } else { measured.as_str() };
        println!("   {what:<60} {measured:>20}  {verdict}");
    }
}

/// A target's verdict in the closing table.
enum Verdict {
    /// A figure it needs was not measured in this run.
    NotMeasured,
    /// Met or missed by the figure pooled over the run; `straddled`: the rounds' spread of a
    /// ratio reaches both sides of the target, so another run may say otherwise.
    Pooled { ok: bool, straddled: bool },
}

fn stem(path: &std::path::Path) -> String {
    path.file_stem().map_or_else(|| "bench".to_string(), |s| s.to_string_lossy().into_owned())
}

/// One CDF per contender (log x axis, microseconds) from the quantiles kept in the JSON.
fn cdf_svg(
    path: &std::path::Path,
    title: &str,
    rows: &serde_json::Value,
    field: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let series: Vec<(String, Vec<f64>)> = rows
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let name = r["contender"].as_str()?.to_string();
                    let q: Vec<f64> = r[field].as_array()?.iter().filter_map(|v| v.as_f64()).collect();
                    (!q.is_empty()).then_some((name, q))
                })
                .collect()
        })
        .unwrap_or_default();
    let lo = series.iter().flat_map(|(_, q)| q.first()).copied().fold(f64::MAX, f64::min).max(1.0);
    let hi = series.iter().flat_map(|(_, q)| q.last()).copied().fold(1.0, f64::max).max(lo * 10.0);
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("microseconds (log scale)")
        .x_labels(8)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("fraction of operations")
        .y_labels(11)
        .draw()?;
    for (i, (name, q)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let last = (q.len() - 1).max(1) as f64;
        let points = q.iter().enumerate().map(|(k, v)| (v.max(lo), k as f64 / last));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
