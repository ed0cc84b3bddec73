//! The scenarios, their fault schedules, and the table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use lock_testkit::ProxyMode;
use lock_testkit::checker::{Check, Observations, Pause, Report, check};
use lock_testkit::history::{Ending, Event, FairAnswer, FencedWrite, History, Share, mono_now_ns};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::common::{Driver, DynError, Primitive, WorkerSpec};
use crate::env::Env;
use crate::timeline::{FaultSpan, Timeline};
use crate::{sentinel_runs, unsafe_runs};

/// Must pass, or must be caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    MustPass,
    KnownUnsafe,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::MustPass => "must-pass",
            Kind::KnownUnsafe => "known-unsafe",
        }
    }
}

pub(crate) const ALL: [(&str, Kind, &str); 29] = [
    ("none", Kind::MustPass, "no fault"),
    ("minority-kill", Kind::MustPass, "a minority node killed, restarted empty after more than the TTL"),
    ("minority-pause", Kind::MustPass, "a minority node SIGSTOPped past the TTL, then resumed"),
    ("majority-pause", Kind::MustPass, "a majority SIGSTOPped: acquisitions fail, holders notice the loss"),
    ("latency", Kind::MustPass, "+200 ms round-trip latency on two nodes"),
    ("slow-replies", Kind::MustPass, "every reply delayed beyond the TTL: acquire fails and cleans up"),
    (
        "lost-replies",
        Kind::MustPass,
        "replies dropped (acquire, extend and release), then the connection resets",
    ),
    ("blackhole-holder", Kind::MustPass, "the holder cut off from a majority (asymmetric partition)"),
    ("client-pause", Kind::MustPass, "the holding client SIGSTOPped for 1.5x TTL; it writes late anyway"),
    ("client-kill", Kind::MustPass, "the holding client killed"),
    (
        "client-kill-waiter",
        Kind::MustPass,
        "a client killed while it waits in the fair lock's queue (fair lock only)",
    ),
    (
        "client-pause-waiter",
        Kind::MustPass,
        "a client SIGSTOPped for 1.5x TTL while it waits in the fair lock's queue (fair lock only)",
    ),
    ("cancel-storm", Kind::MustPass, "acquires aborted within 0-5 ms, guards dropped mid-renewal"),
    ("conn-resets", Kind::MustPass, "connections reset mid-command"),
    ("conn-kill-loop", Kind::MustPass, "CLIENT KILL of every client connection on a node, in a loop"),
    (
        "restart-at-once",
        Kind::MustPass,
        "a node restarted at once without persistence while it holds a bare majority's lock",
    ),
    ("fence-loss", Kind::MustPass, "every node's fence counter deleted between two holders"),
    ("fence-rollback", Kind::MustPass, "every node's fence counter rolled back to 0 (an old snapshot)"),
    (
        "sentinel-failover-fenced",
        Kind::MustPass,
        "sentinel-failover judged on the fenced resource (C2): the second holder's write is refused",
    ),
    (
        "unsafe-restart",
        Kind::KnownUnsafe,
        "restart-at-once from an old snapshot: the locks lost, the data-loss marker kept",
    ),
    (
        "sentinel-failover",
        Kind::KnownUnsafe,
        "Sentinel failover: a lock the old primary granted before its demotion never replicated",
    ),
    ("unsafe-clock-jump", Kind::KnownUnsafe, "a node's clock jumps forward (its key's PTTL shortened)"),
    (
        "mutant-counter-fence",
        Kind::KnownUnsafe,
        "mutant backend: tokens from a bare counter, rolled back to 0",
    ),
    ("mutant-plain-del", Kind::KnownUnsafe, "mutant backend: release by plain DEL"),
    ("mutant-unchecked-extend", Kind::KnownUnsafe, "mutant backend: extend without an owner check"),
    ("mutant-reply-validity", Kind::KnownUnsafe, "mutant backend: validity measured from the reply"),
    (
        "mutant-fair-barging",
        Kind::KnownUnsafe,
        "mutant fair lock: a free lock goes to whoever asks, queued or not (fair lock only)",
    ),
    (
        "mutant-rw-ignore-readers",
        Kind::KnownUnsafe,
        "mutant read-write lock: the write lock ignores readers (read-write lock only)",
    ),
    (
        "mutant-sem-uncounted",
        Kind::KnownUnsafe,
        "mutant semaphore: permits granted without counting the holders (semaphore only)",
    ),
];

/// The scenarios of the fair lock (`--primitive fair`): those whose faults keep the queue (a
/// node that loses its data loses the queue, and C9 would judge an order nobody kept).
pub(crate) const FAIR: [&str; 12] = [
    "none",
    "minority-pause",
    "latency",
    "lost-replies",
    "client-pause",
    "client-kill",
    "client-kill-waiter",
    "client-pause-waiter",
    "cancel-storm",
    "conn-resets",
    "conn-kill-loop",
    "mutant-fair-barging",
];

/// The scenarios of the read-write lock (`--primitive rw`, a RedLock on several nodes): the
/// mutex's node and client faults, data loss included (readers and writers abstain on a node
/// that lost its data), and its mutant.
pub(crate) const RW: [&str; 14] = [
    "none",
    "minority-kill",
    "minority-pause",
    "majority-pause",
    "latency",
    "slow-replies",
    "lost-replies",
    "blackhole-holder",
    "client-pause",
    "client-kill",
    "cancel-storm",
    "conn-resets",
    "conn-kill-loop",
    "mutant-rw-ignore-readers",
];

/// The scenarios of the semaphore (`--primitive semaphore`, each key on one node): the fair
/// lock's, and its mutant.
pub(crate) const SEMAPHORE: [&str; 10] = [
    "none",
    "minority-pause",
    "latency",
    "lost-replies",
    "client-pause",
    "client-kill",
    "cancel-storm",
    "conn-resets",
    "conn-kill-loop",
    "mutant-sem-uncounted",
];

/// Scenarios that only one primitive runs.
pub(crate) const ONE_PRIMITIVE_ONLY: [&str; 5] = [
    "client-kill-waiter",
    "client-pause-waiter",
    "mutant-fair-barging",
    "mutant-rw-ignore-readers",
    "mutant-sem-uncounted",
];

/// The scenarios of a primitive, in table order.
pub(crate) fn of_primitive(primitive: Primitive) -> Vec<(&'static str, Kind, &'static str)> {
    ALL.iter()
        .filter(|(name, _, _)| match primitive {
            Primitive::Mutex => !ONE_PRIMITIVE_ONLY.contains(name),
            Primitive::Fair => FAIR.contains(name),
            Primitive::Rw => RW.contains(name),
            Primitive::Semaphore => SEMAPHORE.contains(name),
        })
        .copied()
        .collect()
}

#[derive(Clone)]
pub(crate) struct Params {
    pub(crate) driver: Driver,
    pub(crate) nodes: usize,
    pub(crate) workers: u32,
    pub(crate) duration: Duration,
    pub(crate) ttl: Duration,
    /// The lock the workers take.
    pub(crate) primitive: Primitive,
}

impl Params {
    pub(crate) fn node_timeout(&self) -> Duration {
        // Large enough that +200 ms of latency still lets nodes answer; well under the TTL.
        self.ttl * 3 / 10
    }
}

/// One row of the table (and of the JSON).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) kind: Kind,
    pub(crate) driver: &'static str,
    pub(crate) nodes: usize,
    pub(crate) acquisitions: usize,
    /// `None`: no fault by design.
    pub(crate) faults: Option<u64>,
    pub(crate) violations: BTreeMap<String, usize>,
    pub(crate) lost_noticed: usize,
    pub(crate) fenced_rejected: usize,
    pub(crate) verdict: String,
    pub(crate) ok: bool,
    /// A few violations, verbatim.
    pub(crate) samples: Vec<String>,
    /// Expectations not met, worker failures, errors.
    pub(crate) problems: Vec<String>,
    /// For a must-pass scenario that was violated: what the workers logged about the key
    /// around each sampled violation (see [`trace`]), so a rare failure in CI can be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) trace: Vec<String>,
    /// What the SVG timeline is drawn from (not in the JSON).
    #[serde(skip)]
    pub(crate) timeline: Option<Timeline>,
}

impl Outcome {
    pub(crate) fn error(name: &str, kind: Kind, p: &Params, error: &str) -> Self {
        Outcome {
            scenario: name.into(),
            kind,
            driver: p.driver.name(),
            nodes: p.nodes,
            acquisitions: 0,
            faults: None,
            violations: BTreeMap::new(),
            lost_noticed: 0,
            fenced_rejected: 0,
            verdict: "ERROR".into(),
            ok: false,
            timeline: None,
            samples: Vec::new(),
            problems: vec![format!("error: {error}")],
            trace: Vec::new(),
        }
    }

    pub(crate) fn judge(
        name: &str,
        kind: Kind,
        p: &Params,
        report: &Report,
        faults: Option<u64>,
        expected: &[Check],
        mut problems: Vec<String>,
    ) -> Self {
        let counts = report.counts();
        let caught = report.violations.iter().any(|v| expected.is_empty() || expected.contains(&v.check));
        let (verdict, ok) = match kind {
            Kind::MustPass if report.violations.is_empty() && problems.is_empty() => ("pass", true),
            Kind::MustPass if report.violations.is_empty() => ("UNMET", false),
            Kind::MustPass => ("VIOLATED", false),
            Kind::KnownUnsafe if caught => ("caught", true),
            Kind::KnownUnsafe => ("MISSED", false),
        };
        if kind == Kind::KnownUnsafe && !caught {
            problems.push(format!("expected a violation of {expected:?}; the checker found none"));
        }
        Outcome {
            scenario: name.into(),
            kind,
            driver: p.driver.name(),
            nodes: p.nodes,
            acquisitions: report.acquisitions,
            faults,
            violations: counts.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            lost_noticed: report.lost_noticed,
            fenced_rejected: report.fenced_rejected,
            verdict: verdict.into(),
            ok,
            samples: report.violations.iter().take(3).map(|v| format!("{}: {}", v.check, v.what)).collect(),
            problems,
            trace: Vec::new(),
            timeline: None,
        }
    }

    /// Keeps what the run's timeline is drawn from; a violated must-pass scenario also keeps
    /// its [`trace`].
    pub(crate) fn with_timeline(mut self, history: History, faults: Vec<FaultSpan>, report: &Report) -> Self {
        if self.kind == Kind::MustPass {
            self.trace = trace(&history, report);
        }
        self.timeline = Some(Timeline { history, faults, violations: report.violations.clone() });
        self
    }
}

/// What the workers logged about the key of each of the first three violations (with
/// sections), from a TTL-sized window before the violating grant to just after the sections
/// end: every section of the key, and the fair acquire calls, leaves and renewals of the
/// workers involved. Times are in ms from the violating grant. Empty without a violation.
pub(crate) fn trace(history: &History, report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for v in report.violations.iter().filter(|v| !v.sections.is_empty()).take(3) {
        let key = &v.sections[0].key;
        let at = v.sections.iter().map(|s| s.t_acquired).max().unwrap_or(0);
        let from = v.sections.iter().map(|s| s.t_acquired).min().unwrap_or(0).saturating_sub(1_500_000_000);
        let to = v.sections.iter().map(|s| s.effective_end()).max();
        let to = to.unwrap_or(at).max(at).saturating_add(100_000_000);
        let ms = |t: u64| (t as f64 - at as f64) / 1e6;
        let involved = |w: &String| v.sections.iter().any(|s| &s.worker == w);
        out.push(format!("trace of {} {}: {}", v.check, key, v.what));
        let mut lines: Vec<(u64, String)> = Vec::new();
        for s in history
            .sections
            .iter()
            .filter(|s| &s.key == key && s.t_acquired <= to && s.effective_end() >= from)
        {
            lines.push((
                s.t_acquired,
                format!(
                    "{:>10.3} ms  section {} ({}) fence {:?} valid until {:.3} released {:?} lost {:?} {:?}",
                    ms(s.t_acquired),
                    s.acquisition,
                    s.worker,
                    s.fence,
                    ms(s.valid_until),
                    s.t_released.map(ms),
                    s.t_lost.map(ms),
                    s.ended
                ),
            ));
        }
        for c in history
            .fair_calls
            .iter()
            .filter(|c| &c.key == key && involved(&c.worker) && (from..=to).contains(&c.t_sent))
        {
            lines.push((
                c.t_sent,
                format!(
                    "{:>10.3} ms  fair call by {} waiter {:016x} answered {:?} at {:.3} (wait {:?} ms)",
                    ms(c.t_sent),
                    c.worker,
                    c.waiter,
                    c.answer,
                    ms(c.t_reply),
                    c.wait_ms
                ),
            ));
        }
        for l in history
            .fair_leaves
            .iter()
            .filter(|l| &l.key == key && involved(&l.worker) && (from..=to).contains(&l.t))
        {
            lines
                .push((l.t, format!("{:>10.3} ms  leave by {} waiter {:016x}", ms(l.t), l.worker, l.waiter)));
        }
        for e in history
            .extends
            .iter()
            .filter(|e| &e.key == key && involved(&e.worker) && (from..=to).contains(&e.t))
        {
            lines.push((e.t, format!("{:>10.3} ms  renewal sent by {}", ms(e.t), e.worker)));
        }
        lines.sort_by_key(|(t, _)| *t);
        out.extend(lines.into_iter().map(|(_, l)| l));
    }
    out
}

pub(crate) fn print_header() {
    println!(
        "\n{:<24} {:<12} {:>6} {:>7}  {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3}  {:>5} {:>6}  verdict",
        "scenario",
        "kind",
        "acqs",
        "faults",
        "C1",
        "C2",
        "C3",
        "C4",
        "C5",
        "C6",
        "C7",
        "C8",
        "C9",
        "lost",
        "fenced"
    );
}

pub(crate) fn print_row(o: &Outcome) {
    let v = |c: &str| o.violations.get(c).copied().unwrap_or(0);
    println!(
        "{:<24} {:<12} {:>6} {:>7}  {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {:>3}  {:>5} {:>6}  {}",
        o.scenario,
        o.kind.label(),
        o.acquisitions,
        o.faults.map_or("-".to_string(), |f| f.to_string()),
        v("C1"),
        v("C2"),
        v("C3"),
        v("C4"),
        v("C5"),
        v("C6"),
        v("C7"),
        v("C8"),
        v("C9"),
        o.lost_noticed,
        o.fenced_rejected,
        o.verdict
    );
}

pub(crate) async fn run(name: &str, kind: Kind, p: &Params) -> Result<Outcome, DynError> {
    if sentinel_runs::SCENARIOS.contains(&name) {
        return sentinel_runs::run(name, kind, p).await;
    }
    match kind {
        Kind::MustPass if unsafe_runs::PINNED.contains(&name) => unsafe_runs::run(name, kind, p).await,
        Kind::MustPass => with_workers(name, kind, p, None, &[]).await,
        Kind::KnownUnsafe if name == "mutant-fair-barging" => {
            with_workers(name, kind, p, Some("fair-barging"), &[Check::C9]).await
        }
        Kind::KnownUnsafe if name == "mutant-rw-ignore-readers" => {
            with_workers(name, kind, p, Some("rw-ignore-readers"), &[Check::C1]).await
        }
        Kind::KnownUnsafe if name == "mutant-sem-uncounted" => {
            with_workers(name, kind, p, Some("sem-uncounted"), &[Check::C1]).await
        }
        Kind::KnownUnsafe => unsafe_runs::run(name, kind, p).await,
    }
}

const KEYS: [&str; 2] = ["chaos:a", "chaos:b"];

/// What the schedule did, beyond what the proxies count.
#[derive(Default)]
struct Injected {
    count: u64,
    pauses: Vec<Pause>,
    /// For the timeline.
    spans: Vec<FaultSpan>,
}

impl Injected {
    /// Records a fault on every row (a node fault) or on one worker's, from `from` to now.
    fn span(&mut self, kind: &'static str, worker: Option<String>, from: u64) {
        self.spans.push(FaultSpan { kind, worker, from, to: mono_now_ns() });
    }
}

/// A run of worker processes under a fault schedule (or a mutant of the backend), judged by
/// the checker.
async fn with_workers(
    name: &str,
    kind: Kind,
    p: &Params,
    mutant: Option<&str>,
    expected: &[Check],
) -> Result<Outcome, DynError> {
    let mut env = Env::start(p.nodes).await?;
    let ttl_ms = u64::try_from(p.ttl.as_millis())?;
    let long = (30, 80);
    let (storm, stubborn, hold_ms) = match name {
        "cancel-storm" => (true, false, (1, 10)),
        "client-pause" => (false, true, long),
        "client-kill" => (false, false, long),
        // Holds that outlast a TTL and need renewals, so that a fault that stops renewals
        // takes leases from their holders while they still work.
        "majority-pause" | "blackhole-holder" => (false, false, (ttl_ms * 2, ttl_ms * 3)),
        _ => (false, false, (1, 10)),
    };
    let seed: u64 = rand::rng().random();
    for i in 0..p.workers {
        let id = format!("w{i}");
        let spec = WorkerSpec {
            nodes: env.lane_urls(&id).await?,
            id,
            driver: p.driver,
            oracle: env.oracle_url.clone(),
            keys: KEYS.iter().map(|k| k.to_string()).collect(),
            ttl_ms,
            node_timeout_ms: u64::try_from(p.node_timeout().as_millis())?,
            duration_ms: u64::try_from(p.duration.as_millis())?,
            out: Default::default(),
            storm,
            stubborn,
            hold_ms,
            seed: seed.wrapping_add(u64::from(i)),
            primitive: p.primitive,
            mutant: mutant.map(str::to_string),
        };
        env.spawn_worker(spec).await?;
    }
    let start = Instant::now();
    let end = start + p.duration;
    let mut injected = Injected::default();
    let proxy_before = env.proxy_faults();
    // Faults start once the workers are up and contending.
    tokio::time::sleep_until(start + p.duration / 5).await;
    schedule(name, &mut env, p, end, &mut injected).await?;
    tokio::time::sleep_until(end).await;
    env.heal()?;
    let mut problems = env.join_workers(Duration::from_secs(10) + p.ttl * 3).await;
    // C5: once everyone is done, no lock key may stay: 100 ms later when every release could
    // reach its nodes, one TTL later otherwise.
    let tidy = matches!(name, "none" | "latency" | "cancel-storm" | "minority-pause");
    tokio::time::sleep(Duration::from_millis(150)).await;
    if !tidy {
        tokio::time::sleep(p.ttl).await;
    }
    let leftover_keys = env.leftover_keys();
    let logs: Vec<_> = env.workers.iter().map(|w| w.log.clone()).collect();
    let history = History::read_logs(&logs)?;
    let mut oracle_accepted = BTreeMap::new();
    let mut counter = 0;
    for key in KEYS {
        oracle_accepted.insert(key.to_string(), env.oracle.accepted(key).await?);
        counter += env.oracle.counter(key).await?;
    }
    if name == "cancel-storm" {
        injected.count += history.acquire_aborts
            + history.sections.iter().filter(|s| s.ended == Ending::Dropped).count() as u64;
    }
    let faults =
        (name != "none" && mutant.is_none()).then(|| injected.count + env.proxy_faults() - proxy_before);
    let judge_counter = name != "client-pause";
    let obs = Observations {
        fencing: true,
        oracle_accepted,
        counter_final: judge_counter.then_some(counter),
        leftover_keys,
        pauses: injected.pauses.clone(),
        faults_injected: faults,
    };
    let report = check(&history, &obs);
    env.keep_logs(kind == Kind::MustPass && !report.violations.is_empty());
    expectations(name, p, &history, &report, &injected, &mut problems);
    let spans = std::mem::take(&mut injected.spans);
    Ok(Outcome::judge(name, kind, p, &report, faults, expected, problems)
        .with_timeline(history, spans, &report))
}

/// What a scenario must show besides the absence of violations, so that it tested what it says.
fn expectations(
    name: &str,
    p: &Params,
    history: &History,
    report: &Report,
    injected: &Injected,
    problems: &mut Vec<String>,
) {
    if report.acquisitions == 0 {
        problems.push("no acquisition at all".into());
    }
    match name {
        "client-pause" => {
            // A rejection is owed when a paused holder wrote after its pause while a higher
            // token was already in: only exclusive holders write (a reader or a permit holder
            // only holds), and under the read-write lock the sections taken during the pause
            // may all have been readers, which leave the resource as it was.
            let owed = injected.pauses.iter().any(|pause| {
                history.sections.iter().any(|s| {
                    s.worker == pause.worker
                        && s.share == Share::Exclusive
                        && s.t_acquired <= pause.from
                        && s.effective_end() >= pause.from
                        && s.writes
                            .iter()
                            .any(|late| late.t > pause.to && higher_before(history, &s.key, late))
                })
            });
            if owed && report.fenced_rejected == 0 {
                problems.push("no late write of a paused holder was rejected by the fenced resource".into());
            }
            for pause in &injected.pauses {
                for s in history.sections.iter().filter(|s| {
                    s.worker == pause.worker && s.t_acquired <= pause.from && s.effective_end() >= pause.from
                }) {
                    if s.ended == Ending::Released {
                        problems
                            .push(format!("{} released as if still owned after its pause", s.acquisition));
                    }
                    if s.t_lost.is_none() {
                        problems.push(format!("{} did not notice its loss after its pause", s.acquisition));
                    }
                }
            }
        }
        "majority-pause" | "blackhole-holder" if report.lost_noticed == 0 => {
            problems.push("no holder noticed a lost lease".into());
        }
        "client-kill"
            if !history.sections.iter().any(|s| s.ended == Ending::Crashed && s.t_released.is_none()) =>
        {
            problems.push("no section was cut short by the kill".into());
        }
        "client-pause-waiter" if injected.pauses.is_empty() => {
            problems.push("no waiter was paused in the queue".into());
        }
        "client-kill-waiter" => {
            let kills: Vec<u64> = injected.spans.iter().filter(|s| s.kind == "kill").map(|s| s.to).collect();
            match kills.iter().max() {
                None => problems.push("no waiter was killed in the queue".into()),
                Some(&last) => {
                    // The killed waiter's place expires with its waiter deadline (one TTL here):
                    // the queue must move on after that.
                    let by = last + u64::try_from(p.ttl.as_nanos()).unwrap_or(u64::MAX);
                    if !history.sections.iter().any(|s| s.t_acquired > by) {
                        problems
                            .push("no grant after the killed waiter's deadline: the queue stalled".into());
                    }
                }
            }
        }
        _ => {}
    }
}

/// Whether the fenced resource of `key` had accepted a token above `write`'s before `write`
/// was sent: answered at least 10 ms before `write`'s answer (the log has answers only, and a
/// write's round trip on loopback is far shorter).
fn higher_before(history: &History, key: &str, write: &FencedWrite) -> bool {
    const MARGIN_NS: u64 = 10_000_000;
    history
        .sections
        .iter()
        .filter(|o| o.key == key)
        .flat_map(|o| &o.writes)
        .any(|w| w.accepted && w.token > write.token && w.t.saturating_add(MARGIN_NS) < write.t)
}

/// SIGSTOPs worker `w` for `how_long`, then resumes it, and records the pause.
async fn pause(env: &mut Env, w: usize, how_long: Duration, inj: &mut Injected) -> Result<(), DynError> {
    let from = mono_now_ns();
    env.workers[w].stop()?;
    inj.count += 1;
    tokio::time::sleep(how_long).await;
    env.workers[w].cont()?;
    let to = mono_now_ns();
    inj.pauses.push(Pause { worker: env.workers[w].id.clone(), from, to });
    inj.spans.push(FaultSpan { kind: "pause", worker: Some(env.workers[w].id.clone()), from, to });
    Ok(())
}

/// Returns when a lock key of [`KEYS`] on `node` changes to a new value (a new grant there),
/// or at `until` at the latest (at once when it has passed).
async fn fresh_grant(node: &lock_testkit::RedisServer, until: Instant) {
    let names: Vec<String> = KEYS
        .iter()
        .filter_map(|k| lock_core::LockKey::new(*k).ok())
        .map(|k| lock_core::scripts::RedisKeys::lock_name(&k))
        .collect();
    let values = || -> Vec<Option<String>> {
        names
            .iter()
            .map(|name| match node.cmd(&["GET", name]) {
                Ok(lock_testkit::resp::Resp::Bulk(Some(v))) => Some(String::from_utf8_lossy(&v).into_owned()),
                _ => None,
            })
            .collect()
    };
    let before = values();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = values();
        if now.iter().zip(&before).any(|(now, before)| now.is_some() && now != before) {
            return;
        }
    }
}

fn left(end: Instant, need: Duration) -> bool {
    Instant::now() + need < end
}

async fn schedule(
    name: &str,
    env: &mut Env,
    p: &Params,
    end: Instant,
    inj: &mut Injected,
) -> Result<(), DynError> {
    let ttl = p.ttl;
    let n = env.nodes.len();
    let m = env.majority();
    let mut rng = rand::rng();
    // Every loop below runs at least once and at most this many times.
    const MAX_ROUNDS: usize = 1_000;
    match name {
        "none" => {}
        "minority-kill" => {
            // N = 1 has no minority: its one node goes (a majority), which must be safe too.
            let victim = n - 1;
            let from = mono_now_ns();
            env.nodes[victim].kill();
            inj.count += 1;
            tokio::time::sleep(ttl * 3 / 2).await; // a delayed restart: longer than the TTL
            env.nodes[victim].restart()?;
            inj.span("kill", None, from);
        }
        "conn-kill-loop" => {
            for round in 0..MAX_ROUNDS {
                let victim = round % n;
                let from = mono_now_ns();
                let killed = env.nodes[victim].cmd(&["CLIENT", "KILL", "TYPE", "normal"])?;
                inj.span("conn-kill", None, from);
                inj.count += u64::try_from(killed.int().unwrap_or(0).max(0))?;
                tokio::time::sleep(Duration::from_millis(150)).await;
                if !left(end, Duration::from_millis(300)) {
                    break;
                }
            }
        }
        "minority-pause" => {
            for _ in 0..MAX_ROUNDS {
                let victim = rng.random_range(0..n);
                let victim = if n >= 3 { victim } else { 0 };
                let from = mono_now_ns();
                env.nodes[victim].pause()?;
                inj.count += 1;
                tokio::time::sleep(ttl * 3 / 2).await;
                env.nodes[victim].resume()?;
                inj.span("pause", None, from);
                tokio::time::sleep(ttl / 2).await;
                if !left(end, ttl * 2) {
                    break;
                }
            }
        }
        "majority-pause" => {
            for _ in 0..MAX_ROUNDS {
                // Paused right after a grant, its holder (2-3 TTLs to go) outlives its
                // lease's validity and must notice the loss; a pause at a fixed moment could
                // fall where every hold was ending (the scenario then had nothing to judge).
                fresh_grant(&env.nodes[0], end.checked_sub(ttl * 3).unwrap_or(end)).await;
                let from = mono_now_ns();
                for node in &env.nodes[..m] {
                    node.pause()?;
                }
                inj.count += 1;
                tokio::time::sleep(ttl * 3 / 2).await;
                for node in &env.nodes[..m] {
                    node.resume()?;
                }
                inj.span("pause", None, from);
                tokio::time::sleep(ttl).await;
                if !left(end, ttl * 3) {
                    break;
                }
            }
        }
        "latency" => {
            let d = Duration::from_millis(100);
            let from = mono_now_ns();
            for proxy in env.proxies.iter().take(2) {
                proxy.set_mode(ProxyMode::Latency { up: d, down: d });
            }
            tokio::time::sleep_until(end - p.duration / 5).await;
            for proxy in &env.proxies {
                proxy.set_mode(ProxyMode::Pass);
            }
            inj.span("latency", None, from);
        }
        "slow-replies" => {
            for _ in 0..MAX_ROUNDS {
                let from = mono_now_ns();
                for proxy in &env.proxies {
                    proxy.set_mode(ProxyMode::Latency {
                        up: Duration::ZERO,
                        down: ttl + Duration::from_millis(100),
                    });
                }
                tokio::time::sleep(ttl * 2).await;
                for proxy in &env.proxies {
                    proxy.set_mode(ProxyMode::Pass);
                }
                inj.span("slow", None, from);
                tokio::time::sleep(ttl * 2).await;
                if !left(end, ttl * 4) {
                    break;
                }
            }
        }
        "lost-replies" => {
            for round in 0..MAX_ROUNDS {
                // Mostly one node; every third round a majority, so acquisitions fail too.
                let count = if round % 3 == 2 { m } else { 1 };
                let first = rng.random_range(0..n);
                let victims: Vec<usize> = (0..count).map(|i| (first + i) % n).collect();
                let from = mono_now_ns();
                for &v in &victims {
                    env.proxies[v].set_mode(ProxyMode::DropReplies);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..60))).await;
                for &v in &victims {
                    env.proxies[v].set_mode(ProxyMode::Pass);
                }
                inj.span("drop", None, from);
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !left(end, Duration::from_millis(300)) {
                    break;
                }
            }
        }
        "blackhole-holder" => {
            let mut tail = Tail::default();
            for _ in 0..MAX_ROUNDS {
                if let Some(h) = tail.holder(env, Duration::from_secs(2)).await {
                    let lane = env.workers[h].id.clone();
                    let from = mono_now_ns();
                    for proxy in &env.proxies[..m] {
                        proxy.set_lane_mode(&lane, ProxyMode::Blackhole);
                    }
                    inj.count += 1;
                    tokio::time::sleep(ttl * 3 / 2).await;
                    for proxy in &env.proxies[..m] {
                        proxy.set_lane_mode(&lane, ProxyMode::Pass);
                    }
                    inj.span("blackhole", Some(lane), from);
                }
                tokio::time::sleep(ttl / 2).await;
                if !left(end, ttl * 2) {
                    break;
                }
            }
        }
        "client-pause" => {
            let mut tail = Tail::default();
            for _ in 0..MAX_ROUNDS {
                if let Some(h) = tail.holder(env, Duration::from_secs(2)).await {
                    pause(env, h, ttl * 3 / 2, inj).await?;
                }
                tokio::time::sleep(ttl / 2).await;
                if !left(end, ttl * 2) {
                    break;
                }
            }
        }
        "client-kill" => {
            let mut tail = Tail::default();
            // Kill up to two holders, keeping at least two workers alive.
            let kills = (env.workers.len().saturating_sub(2)).clamp(1, 2);
            for _ in 0..kills {
                if let Some(h) = tail.holder(env, Duration::from_secs(2)).await {
                    let from = mono_now_ns();
                    env.workers[h].kill().await;
                    inj.count += 1;
                    inj.span("kill", Some(env.workers[h].id.clone()), from);
                }
                tokio::time::sleep(ttl).await;
                if !left(end, ttl) {
                    break;
                }
            }
        }
        "client-kill-waiter" => {
            let mut tail = Tail::default();
            // Kill up to two waiters queued in the fair lock, keeping at least two workers alive.
            let kills = (env.workers.len().saturating_sub(2)).clamp(1, 2);
            for _ in 0..kills {
                // Leave two TTLs after the kill, so the queue is seen moving on past its deadline.
                let Some(within) = end.checked_duration_since(Instant::now() + ttl * 2) else { break };
                if let Some(w) = tail.waiter(env, within.min(Duration::from_secs(2))).await {
                    let from = mono_now_ns();
                    env.workers[w].kill().await;
                    inj.count += 1;
                    inj.span("kill", Some(env.workers[w].id.clone()), from);
                }
                tokio::time::sleep(ttl).await;
                if !left(end, ttl * 2) {
                    break;
                }
            }
        }
        "client-pause-waiter" => {
            // A waiter descheduled for longer than its waiter deadline: a hand-over made to it
            // meanwhile expires before it calls again, and its notice is read late. It must
            // not take that notice for a grant (C1 otherwise: the lock went on to another).
            let mut tail = Tail::default();
            for _ in 0..MAX_ROUNDS {
                let Some(within) = end.checked_duration_since(Instant::now() + ttl * 2) else { break };
                if let Some(w) = tail.waiter(env, within.min(Duration::from_secs(2))).await {
                    pause(env, w, ttl * 3 / 2, inj).await?;
                }
                tokio::time::sleep(ttl / 4).await;
                if !left(end, ttl * 2) {
                    break;
                }
            }
        }
        // The mutants are in the workers' backends.
        "mutant-fair-barging" | "mutant-rw-ignore-readers" | "mutant-sem-uncounted" => {}
        "cancel-storm" => {} // the workers make the storm; counted from their logs
        "conn-resets" => {
            for _ in 0..MAX_ROUNDS {
                let v = rng.random_range(0..n);
                let from = mono_now_ns();
                env.proxies[v].set_mode(ProxyMode::Reset);
                tokio::time::sleep(Duration::from_millis(5)).await;
                env.proxies[v].set_mode(ProxyMode::Pass);
                inj.span("reset", None, from);
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
                if !left(end, Duration::from_millis(200)) {
                    break;
                }
            }
        }
        other => return Err(format!("no schedule for {other}").into()),
    }
    Ok(())
}

/// Follows the workers' logs to find who holds a lock right now.
#[derive(Default)]
struct Tail {
    offsets: HashMap<usize, u64>,
    partial: HashMap<usize, String>,
    open: HashMap<usize, HashSet<String>>,
    /// Workers whose last fair call queued them, and that have not been granted since.
    queued: HashSet<usize>,
}

impl Tail {
    fn poll(&mut self, env: &Env) {
        for (i, w) in env.workers.iter().enumerate() {
            let Ok(mut f) = std::fs::File::open(&w.log) else { continue };
            let off = self.offsets.entry(i).or_default();
            if f.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut buf = String::new();
            let Ok(n) = f.read_to_string(&mut buf) else { continue };
            *off += n as u64;
            let text = self.partial.remove(&i).unwrap_or_default() + &buf;
            let mut lines: Vec<&str> = text.split('\n').collect();
            let rest = lines.pop().unwrap_or_default().to_string();
            let open = self.open.entry(i).or_default();
            for line in lines {
                match serde_json::from_str::<Event>(line) {
                    Ok(Event::Acquired { acq, .. }) => {
                        open.insert(acq);
                    }
                    Ok(Event::Releasing { acq, .. } | Event::Ended { acq, .. } | Event::Lost { acq, .. }) => {
                        open.remove(&acq);
                    }
                    Ok(Event::FairCall(call)) => {
                        if call.answer == FairAnswer::Waiting && call.wait_ms.is_some() {
                            self.queued.insert(i);
                        } else {
                            self.queued.remove(&i);
                        }
                    }
                    _ => {}
                }
            }
            self.partial.insert(i, rest);
        }
    }

    /// A running worker waiting in a fair lock's queue, waiting up to `within` for one.
    async fn waiter(&mut self, env: &Env, within: Duration) -> Option<usize> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            self.poll(env);
            let found = self
                .queued
                .iter()
                .copied()
                .filter(|i| {
                    self.open.get(i).is_none_or(HashSet::is_empty)
                        && !env.workers[*i].killed
                        && !env.workers[*i].stopped
                })
                .min();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// A running worker holding a lock, waiting up to `within` for one.
    async fn holder(&mut self, env: &Env, within: Duration) -> Option<usize> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            self.poll(env);
            let found = self
                .open
                .iter()
                .filter(|(i, acqs)| !acqs.is_empty() && !env.workers[**i].killed && !env.workers[**i].stopped)
                .map(|(i, _)| *i)
                .min();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use lock_testkit::checker::{Observations, check};
    use lock_testkit::history::{Ending, Event, FairAnswer, FairCall, History};

    use super::trace;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_violation_is_traced_with_the_keys_sections_and_calls_around_it() {
        let at = 10_000 * MS;
        let events = vec![
            Event::Acquired {
                worker: "w2".into(),
                acq: "w2-1".into(),
                key: "k".into(),
                fence: Some(1),
                t: at - 5 * MS,
                valid_until: at + 995 * MS,
            },
            Event::Ended {
                acq: "w2-1".into(),
                t: at + 2 * MS,
                valid_until: at + 995 * MS,
                how: Ending::Released,
            },
            Event::FairCall(FairCall {
                worker: "w1".into(),
                key: "k".into(),
                waiter: 7,
                t_sent: at - MS,
                t_reply: at,
                wait_ms: Some(1000),
                answer: FairAnswer::Acquired,
            }),
            Event::Acquired {
                worker: "w1".into(),
                acq: "w1-1".into(),
                key: "k".into(),
                fence: Some(2),
                t: at,
                valid_until: at + 999 * MS,
            },
            // Another key, and a section long before the window: not in the trace.
            Event::Acquired {
                worker: "w3".into(),
                acq: "w3-1".into(),
                key: "other".into(),
                fence: Some(1),
                t: at,
                valid_until: at + 999 * MS,
            },
            Event::Acquired {
                worker: "w3".into(),
                acq: "w3-0".into(),
                key: "k".into(),
                fence: None,
                t: at - 5_000 * MS,
                valid_until: at - 4_000 * MS,
            },
        ];
        let history = History::from_events(events);
        let report = check(&history, &Observations::default());
        let lines = trace(&history, &report);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("trace of C1 k: w1-1 (w1) acquired k while w2-1 (w2)"), "{text}");
        assert!(text.contains("section w2-1 (w2)") && text.contains("section w1-1 (w1)"), "{text}");
        assert!(text.contains("fair call by w1 waiter 0000000000000007 answered Acquired"), "{text}");
        assert!(!text.contains("w3-"), "{text}");
        // Sorted by time, from the violating grant: w2's grant 5 ms before it.
        assert!(lines[1].trim_start().starts_with("-5.000 ms  section w2-1"), "{text}");
        assert!(trace(&History::default(), &check(&History::default(), &Observations::default())).is_empty());
    }
}
