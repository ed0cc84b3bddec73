//! The chaos runner: real `redis-server` nodes behind fault proxies, worker processes taking
//! locks, faults injected on a schedule, and the history checker's verdict (C1-C8, DESIGN.md;
//! C9 for the fair lock).
//!
//! ```text
//! cargo run --release -p lock-examples --bin chaos -- \
//!   --scenario all --driver redis-rs --nodes 3 --workers 4 --duration 20s [--json PATH]
//! cargo run --release -p lock-examples --bin chaos -- --primitive fair \
//!   --scenario all --driver fred --nodes 3 --workers 4 --duration 20s
//! ```
//! With `--primitive fair` the workers take the fair lock and only its scenarios run (none of
//! them loses a node's data: the queue would go with it); on 3 or 5 nodes each key lives on one
//! node, as in a Cluster, since the fair lock has no RedLock form. `--primitive rw` takes the
//! read-write lock (a RedLock on 3 or 5 nodes; most sections read, writers fence and count),
//! `--primitive semaphore` a semaphore of 2 permits (each key on one node: RedLock refuses
//! semaphores); each has a mutant C1 must catch.
//!
//! Must-pass scenarios must show no violation; known-unsafe ones (a deployment the design
//! forbids, or a mutant of the backend) must be caught. The exit status is non-zero otherwise.
//! Everything runs on 127.0.0.1, every loop is bounded, and only processes this runner spawned
//! are signalled; Ctrl-C (or SIGTERM) stops and cleans up.

mod common;
mod env;
mod fair;
mod scenarios;
mod sentinel_runs;
mod timeline;
mod unsafe_runs;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::common::{Driver, DynError, Primitive};
use crate::scenarios::{Outcome, Params};

#[derive(Parser, Debug)]
#[command(about = "Fault injection against the lock, judged by the history checker")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A scenario name, several separated by commas, or `all` (see --list).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The Redis driver under test.
    #[arg(long, value_enum, default_value_t = Driver::RedisRs)]
    driver: Driver,
    /// Lock nodes: 1 (single node) or 3/5 (RedLock).
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Worker processes per must-pass scenario.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    workers: u32,
    /// How long the workers run in each must-pass scenario (e.g. 20s, 1m).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The lock TTL (pauses and delays are sized from it).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The lock the workers take: `mutex`, `fair` (the fair lock), `rw` (the read-write lock:
    /// most sections read) or `semaphore` (2 permits). The fair lock and the semaphore have no
    /// RedLock form, so on 3 or 5 nodes each of their keys lives on one node, as in a Cluster.
    #[arg(long, value_enum, default_value_t = Primitive::Mutex)]
    primitive: Primitive,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: run one worker process (spawned by the runner).
    #[command(hide = true)]
    Worker {
        /// The worker's spec, as JSON.
        spec: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Worker { spec }) = &args.cmd {
        // current_thread: a release stops the watchdog before anything else runs (C7 is exact).
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return fail(&format!("worker runtime: {e}")),
        };
        let spec = match serde_json::from_str(spec) {
            Ok(s) => s,
            Err(e) => return fail(&format!("worker spec: {e}")),
        };
        return match rt.block_on(worker::run(spec)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(&format!("worker: {e}")),
        };
    }
    if args.list {
        for (name, kind, about) in scenarios::of_primitive(args.primitive) {
            println!("{name:<24} {:<12} {about}", kind.label());
        }
        return std::process::ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("runtime: {e}")),
    };
    rt.block_on(async {
        tokio::select! {
            r = run(&args) => match r {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::from(1),
                Err(e) => fail(&format!("chaos: {e}")),
            },
            _ = tokio::signal::ctrl_c() => {
                // Dropping the run kills every node, proxy and worker it started.
                eprintln!("interrupted: cleaned up");
                std::process::ExitCode::from(130)
            }
            () = terminated() => {
                // `kill` (SIGTERM) cleans up as Ctrl-C does: the nodes are not its children
                // in the sense of dying with it, and would stay behind.
                eprintln!("terminated: cleaned up");
                std::process::ExitCode::from(143)
            }
        }
    })
}

/// Resolves when the process receives SIGTERM; never, if that cannot be listened for.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?}: the node count must be 1, 3 or 5")),
    }
}

fn fail(msg: &str) -> std::process::ExitCode {
    eprintln!("{msg}");
    std::process::ExitCode::from(2)
}

async fn run(args: &Args) -> Result<bool, DynError> {
    let offered = scenarios::of_primitive(args.primitive);
    let chosen: Vec<_> = match args.scenario.as_str() {
        "all" => offered,
        names => {
            let mut chosen = Vec::new();
            for name in names.split(',') {
                match offered.iter().find(|(n, _, _)| *n == name) {
                    Some(s) => chosen.push(*s),
                    None => {
                        return Err(format!(
                            "no scenario {name:?} for the {}; see --list --primitive",
                            args.primitive.name()
                        )
                        .into());
                    }
                }
            }
            chosen
        }
    };
    let p = Params {
        driver: args.driver,
        nodes: args.nodes,
        workers: args.workers,
        duration: args.duration,
        ttl: args.ttl,
        primitive: args.primitive,
    };
    if p.ttl < Duration::from_millis(200) || p.ttl > Duration::from_secs(10) {
        return Err("--ttl must be from 200ms to 10s".into());
    }
    println!(
        "chaos: {}, driver {}, {} node(s), {} workers, {:?} per scenario, ttl {:?}",
        p.primitive.name(),
        p.driver.name(),
        p.nodes,
        p.workers,
        p.duration,
        p.ttl
    );
    scenarios::print_header();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (name, kind, _) in chosen {
        let outcome = match scenarios::run(name, kind, &p).await {
            Ok(o) => o,
            Err(e) => Outcome::error(name, kind, &p, &e.to_string()),
        };
        scenarios::print_row(&outcome);
        outcomes.push(outcome);
    }
    let ok = outcomes.iter().all(|o| o.ok);
    println!(
        "\n{} of {} scenarios as expected: {}",
        outcomes.iter().filter(|o| o.ok).count(),
        outcomes.len(),
        if ok { "PASS" } else { "FAIL" }
    );
    for o in outcomes.iter().filter(|o| !o.ok || !o.samples.is_empty()) {
        for s in o.samples.iter().chain(&o.problems) {
            println!("  {}: {s}", o.scenario);
        }
        for line in &o.trace {
            println!("    {line}");
        }
    }
    if let Some(path) = &args.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&outcomes)?)?;
        // Timelines next to the JSON: out.json -> out/<scenario>.svg.
        let dir = path.with_extension("");
        std::fs::create_dir_all(&dir)?;
        for o in &outcomes {
            if let Some(tl) = &o.timeline {
                let svg = dir.join(format!("{}.svg", o.scenario));
                timeline::write_svg(&svg, &o.scenario, o.driver, tl)?;
            }
        }
        println!("wrote {} and its timelines in {}", path.display(), dir.display());
    }
    Ok(ok)
}
