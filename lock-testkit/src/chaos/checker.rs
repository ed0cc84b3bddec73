//! The history checker: judges a run's [`History`] against the checks C1-C9 (C9: the fair lock) and
//! returns every violation with the records involved.
//!
//! | check | what it proves |
//! |---|---|
//! | C1 | no two critical sections of different acquisitions overlap within their validity (readers may overlap readers; a semaphore's permit holders may overlap, never more of them than its permits), and no grant is handed out already expired |
//! | C2 | the fenced resource on the oracle never accepted a token below one it had stored, and never refused a holder that was still valid |
//! | C3 | the unfenced read-sleep-write counter lost no update (judged only when no client paused) |
//! | C4 | fencing tokens unique and increasing per key in acquisition order, the same on re-entry |
//! | C5 | no lock key left behind once everything was released |
//! | C6 | a lease that outlived its validity was noticed lost within 50 ms of its deadline (or of the end of its worker's pause), before anyone else acquired |
//! | C7 | no renewal sent after its section ended |
//! | C8 | faults were injected and counted, so a pass is not vacuous |
//! | C9 | the fair lock grants in queue order: nobody is granted while a waiter that queued before it is still, for certain, in the queue |
//!
//! ```
//! use lock_testkit::checker::{check, Check, Observations};
//! use lock_testkit::history::{Ending, Event, History};
//!
//! let acquired = |acq: &str, fence, t, valid_until| Event::Acquired {
//!     worker: acq.into(), acq: acq.into(), key: "k".into(), fence: Some(fence), t, valid_until,
//! };
//! let history = History::from_events(vec![
//!     acquired("a", 1, 0, 1_000_000_000),
//!     acquired("b", 2, 500_000_000, 2_000_000_000), // while "a" is still valid
//! ]);
//! let report = check(&history, &Observations::default());
//! assert!(report.violations.iter().any(|v| v.check == Check::C1));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{Ending, FairAnswer, FairCall, History, Section, Share};

/// 50 ms, in nanoseconds: how late a lost lease may be noticed (C6).
pub const LOSS_NOTICE_SLACK_NS: u64 = 50_000_000;

/// The checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Check {
    /// No overlapping critical sections.
    C1,
    /// The fenced resource accepts no stale token and refuses no valid holder.
    C2,
    /// The unfenced counter loses no update.
    C3,
    /// Tokens unique, increasing, same on re-entry.
    C4,
    /// No key left behind.
    C5,
    /// Lease loss noticed in time.
    C6,
    /// No renewal after release.
    C7,
    /// Faults really happened.
    C8,
    /// Fair-lock grants follow the order of the queue.
    C9,
}

impl Check {
    /// Every check, in order.
    pub const ALL: [Check; 9] =
        [Check::C1, Check::C2, Check::C3, Check::C4, Check::C5, Check::C6, Check::C7, Check::C8, Check::C9];
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One violation, with the sections involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which check.
    pub check: Check,
    /// What went wrong.
    pub what: String,
    /// The sections involved (may be empty, e.g. for a leftover key).
    pub sections: Vec<Section>,
}

/// A lock key found on a node after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftoverKey {
    /// The node.
    pub node: String,
    /// The Redis key.
    pub key: String,
    /// Its remaining TTL in ms (-1: none).
    pub pttl_ms: i64,
}

/// A window in which a worker process was stopped (SIGSTOP), in monotonic nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// The worker.
    pub worker: String,
    /// Stopped at.
    pub from: u64,
    /// Resumed at.
    pub to: u64,
}

/// What the runner observed outside the workers' logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Whether fencing was on (C2, C4 need it).
    pub fencing: bool,
    /// Per fenced resource, the tokens it accepted, in the order it stored them.
    pub oracle_accepted: BTreeMap<String, Vec<u64>>,
    /// The unfenced counter's final value, when C3 is to be judged.
    pub counter_final: Option<i64>,
    /// Lock keys still on the nodes after everything was released and the grace had passed.
    pub leftover_keys: Vec<LeftoverKey>,
    /// Worker pauses.
    pub pauses: Vec<Pause>,
    /// Faults injected, counted by the proxies and the runner. `None`: the scenario injects
    /// none by design, and C8 is not judged.
    pub faults_injected: Option<u64>,
}

/// The checker's verdict on one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Critical sections judged.
    pub acquisitions: usize,
    /// Leases whose loss the workers noticed.
    pub lost_noticed: usize,
    /// Fenced writes the resource rejected.
    pub fenced_rejected: usize,
    /// Every violation.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations per check (every check present, zero included).
    pub fn counts(&self) -> BTreeMap<Check, usize> {
        let mut m: BTreeMap<Check, usize> = Check::ALL.iter().map(|c| (*c, 0)).collect();
        for v in &self.violations {
            *m.entry(v.check).or_default() += 1;
        }
        m
    }

    /// Violations of one check.
    pub fn of(&self, check: Check) -> usize {
        self.violations.iter().filter(|v| v.check == check).count()
    }
}

fn paused_during(obs: &Observations, worker: &str, from: u64, to: u64) -> Option<u64> {
    obs.pauses.iter().filter(|p| p.worker == worker && p.from <= to && p.to >= from).map(|p| p.to).max()
}

/// Judges a history. Every violation is returned, none is hidden behind the first.
pub fn check(history: &History, obs: &Observations) -> Report {
    let mut r = Report {
        acquisitions: history.sections.len(),
        lost_noticed: history.sections.iter().filter(|s| s.t_lost.is_some()).count(),
        fenced_rejected: history.sections.iter().flat_map(|s| &s.writes).filter(|w| !w.accepted).count(),
        violations: Vec::new(),
    };
    let mut by_key: HashMap<&str, Vec<&Section>> = HashMap::new();
    for s in &history.sections {
        by_key.entry(s.key.as_str()).or_default().push(s);
    }
    for sections in by_key.values_mut() {
        sections.sort_by_key(|s| s.t_acquired);
        c1_overlaps(sections, &mut r);
        if obs.fencing {
            // Writers' tokens rise; a reader shows the last writer's, a permit none.
            let exclusive: Vec<&Section> =
                sections.iter().copied().filter(|s| s.share == Share::Exclusive).collect();
            c4_tokens(&exclusive, &mut r);
        }
        c6_loss_noticed(sections, obs, &mut r);
    }
    if obs.fencing {
        c2_fenced_resource(history, obs, &mut r);
    }
    if let Some(final_value) = obs.counter_final {
        let done: i64 = history.sections.iter().map(|s| i64::from(s.increments)).sum();
        // Below: two holders read the same value (lost updates). Above is possible only when a
        // worker was killed between its write and its log line, and proves nothing.
        if final_value < done {
            r.violations.push(Violation {
                check: Check::C3,
                what: format!(
                    "unfenced counter is {final_value} after {done} completed increments: {} lost updates",
                    done - final_value
                ),
                sections: Vec::new(),
            });
        }
    }
    for k in &obs.leftover_keys {
        r.violations.push(Violation {
            check: Check::C5,
            what: format!(
                "key {} left on {} (pttl {} ms) after every holder was done",
                k.key, k.node, k.pttl_ms
            ),
            sections: Vec::new(),
        });
    }
    c7_renewals(history, &mut r);
    c9_fair_order(history, &mut r);
    if obs.faults_injected == Some(0) {
        r.violations.push(Violation {
            check: Check::C8,
            what: "no fault was injected: the pass would be vacuous".into(),
            sections: Vec::new(),
        });
    }
    r
}

/// How much earlier than the client's estimate a waiter's deadline may fall on the server:
/// Redis keeps it in whole milliseconds.
const WAITER_DEADLINE_SLACK_NS: u64 = 2_000_000;

/// A span in which a fair waiter was, for certain, in its key's queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    waiter: u64,
    /// Its place was taken by then: the reply of the call that queued it.
    from: u64,
    /// It was still there until then: its deadline as last renewed by a call that was answered,
    /// cut short by anything that may have taken it out (a grant, a failed call, a leave).
    to: u64,
}

/// One waiter's calls on one key, folded into the spans it was certainly queued for and the
/// window in which its grant (if any) happened on the server.
fn fold_waiter(
    waiter: u64,
    calls: &[&FairCall],
    left_at: Option<u64>,
) -> (Vec<Queued>, Option<(u64, u64)>, u64) {
    let mut spans = Vec::new();
    let mut open: Option<Queued> = None;
    let mut grant = None;
    // The first call this waiter may have been granted by: its first call, or the first call
    // after its last answered `Waiting` (a failed call may have been a grant whose answer was
    // lost). A hand-over by a release may come earlier, right after the server ran the last
    // `Waiting` call; the grant's window then starts late, which is still sound: an older
    // waiter's certain span is one interval that began before the grantee's first call, so
    // if it covers the window's end it covers the grant. Nor does a hand-over make a span
    // claim too much: until the waiter it went to learns of it (its `Acquired` or `Handed`
    // cuts the span), leaves, or reaches its deadline, the lock is that waiter's, so nobody
    // else can be granted while the span still runs.
    let mut grant_from = calls.first().map_or(0, |c| c.t_sent);
    let first_sent = grant_from;
    for c in calls {
        match (c.answer, c.wait_ms) {
            (FairAnswer::Waiting, Some(wait_ms)) => {
                let deadline = c
                    .t_sent
                    .saturating_add(wait_ms.saturating_mul(1_000_000))
                    .saturating_sub(WAITER_DEADLINE_SLACK_NS);
                open = match open {
                    // Still queued when this call ran: the same place, renewed.
                    Some(q) if c.t_reply <= q.to => Some(Queued { to: q.to.max(deadline), ..q }),
                    other => {
                        spans.extend(other);
                        Some(Queued { waiter, from: c.t_reply, to: deadline })
                    }
                };
                grant_from = c.t_reply;
            }
            (FairAnswer::Waiting, None) => grant_from = c.t_reply,
            (FairAnswer::Acquired | FairAnswer::Handed, _) => {
                if let Some(mut q) = open.take() {
                    q.to = q.to.min(c.t_sent);
                    spans.push(q);
                }
                grant = Some((grant_from.min(c.t_sent), c.t_reply));
                break;
            }
            (FairAnswer::Failed, _) => {
                if let Some(mut q) = open.take() {
                    q.to = q.to.min(c.t_sent);
                    spans.push(q);
                }
            }
        }
    }
    spans.extend(open);
    if let Some(t) = left_at {
        for q in &mut spans {
            q.to = q.to.min(t);
        }
    }
    spans.retain(|q| q.from < q.to);
    (spans, grant, first_sent)
}

/// C9: for every fair grant, no waiter that was queued before the grantee's first call was
/// still, for certain, in the queue when the grant happened. Conservative on purpose: a waiter
/// counts as queued only between the answer that queued it and the earliest moment anything
/// could have taken it out; so faults (lost replies, resets, cancellations, kills) can hide a
/// violation but never invent one. Assumes the queue is not lost with a node's data.
fn c9_fair_order(history: &History, r: &mut Report) {
    let mut by_key: BTreeMap<&str, BTreeMap<u64, Vec<&FairCall>>> = BTreeMap::new();
    for c in &history.fair_calls {
        by_key.entry(c.key.as_str()).or_default().entry(c.waiter).or_default().push(c);
    }
    let mut leaves: HashMap<(&str, u64), u64> = HashMap::new();
    for l in &history.fair_leaves {
        let at = leaves.entry((l.key.as_str(), l.waiter)).or_insert(l.t);
        *at = (*at).min(l.t);
    }
    for (key, waiters) in by_key {
        let mut queued: Vec<Queued> = Vec::new();
        let mut grants: Vec<(u64, u64, u64, u64, &str)> = Vec::new(); // (waiter, lo, hi, first sent, worker)
        for (waiter, mut calls) in waiters {
            calls.sort_by_key(|c| c.t_sent);
            let (spans, grant, first_sent) = fold_waiter(waiter, &calls, leaves.get(&(key, waiter)).copied());
            queued.extend(spans);
            if let Some((lo, hi)) = grant {
                grants.push((waiter, lo, hi, first_sent, calls[0].worker.as_str()));
            }
        }
        for (grantee, lo, hi, first_sent, worker) in grants {
            if let Some(q) = queued
                .iter()
                .find(|q| q.waiter != grantee && q.from < first_sent && q.from <= lo && q.to >= hi)
            {
                r.violations.push(Violation {
                    check: Check::C9,
                    what: format!(
                        "{worker} was granted {key} while a waiter queued {} us before its first call was still at its place ahead of it",
                        (first_sent - q.from) / 1000
                    ),
                    sections: Vec::new(),
                });
            }
        }
    }
}

fn c1_overlaps(sections: &[&Section], r: &mut Report) {
    // Sweep in acquisition order, keeping the sections still valid at each new grant.
    let mut active: Vec<&Section> = Vec::new();
    for s in sections {
        if s.t_acquired > s.valid_until {
            r.violations.push(Violation {
                check: Check::C1,
                what: format!(
                    "{} on {} got a grant already {} us past its validity",
                    s.acquisition,
                    s.key,
                    (s.t_acquired - s.valid_until) / 1000
                ),
                sections: vec![(*s).clone()],
            });
        }
        active.retain(|a| a.effective_end() > s.t_acquired && a.acquisition != s.acquisition);
        // Exclusion: the conflicting holder that reaches furthest (one report per grant).
        if let Some(prev) =
            active.iter().filter(|a| a.share.conflicts(s.share)).max_by_key(|a| a.effective_end())
        {
            r.violations.push(Violation {
                check: Check::C1,
                what: format!(
                    "{} ({}{}) acquired {} while {} ({}{}) still held it for {} us",
                    s.acquisition,
                    s.worker,
                    mode(s.share),
                    s.key,
                    prev.acquisition,
                    prev.worker,
                    mode(prev.share),
                    (prev.effective_end() - s.t_acquired) / 1000
                ),
                sections: vec![(*prev).clone(), (*s).clone()],
            });
        }
        // Counting: never more valid permit holders than permits.
        if let Share::Permit(n) = s.share {
            let holders: Vec<&Section> =
                active.iter().copied().filter(|a| matches!(a.share, Share::Permit(_))).collect();
            if holders.len() >= n as usize {
                r.violations.push(Violation {
                    check: Check::C1,
                    what: format!(
                        "{} ({}) took a permit of {} while {} of its {n} permits were held: {}",
                        s.acquisition,
                        s.worker,
                        s.key,
                        holders.len(),
                        holders.iter().map(|h| h.acquisition.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    sections: holders.iter().map(|h| (*h).clone()).chain([(*s).clone()]).collect(),
                });
            }
        }
        active.push(s);
    }
}

fn mode(share: Share) -> &'static str {
    match share {
        Share::Exclusive => "",
        Share::Read => ", reading",
        Share::Permit(_) => ", a permit",
    }
}

fn c4_tokens(sections: &[&Section], r: &mut Report) {
    let mut prev: Option<&Section> = None;
    for s in sections {
        let Some(fence) = s.fence else {
            r.violations.push(Violation {
                check: Check::C4,
                what: format!("{} on {} has no fencing token", s.acquisition, s.key),
                sections: vec![(*s).clone()],
            });
            continue;
        };
        for again in &s.reentry_fences {
            if *again != Some(fence) {
                r.violations.push(Violation {
                    check: Check::C4,
                    what: format!("{} re-entered with token {again:?}, not {fence}", s.acquisition),
                    sections: vec![(*s).clone()],
                });
            }
        }
        if let Some(p) = prev
            && let Some(pf) = p.fence
        {
            if pf == fence {
                r.violations.push(Violation {
                    check: Check::C4,
                    what: format!(
                        "token {fence} on {} reused by {} after {}",
                        s.key, s.acquisition, p.acquisition
                    ),
                    sections: vec![p.clone(), (*s).clone()],
                });
            } else if fence < pf {
                r.violations.push(Violation {
                    check: Check::C4,
                    what: format!(
                        "token on {} went backwards: {} got {fence} after {} got {pf}",
                        s.key, s.acquisition, p.acquisition
                    ),
                    sections: vec![p.clone(), (*s).clone()],
                });
            }
        }
        prev = Some(s);
    }
}

fn c2_fenced_resource(history: &History, obs: &Observations, r: &mut Report) {
    for (resource, accepted) in &obs.oracle_accepted {
        for pair in accepted.windows(2) {
            if pair[1] < pair[0] {
                r.violations.push(Violation {
                    check: Check::C2,
                    what: format!(
                        "the fenced resource {resource} accepted token {} after {}",
                        pair[1], pair[0]
                    ),
                    sections: Vec::new(),
                });
            }
        }
    }
    for s in &history.sections {
        for w in &s.writes {
            // The answer came back while the lease was valid and not yet ended or lost: the write
            // was sent by a valid holder, and only a holder with a higher token can have beaten it.
            let valid_end = s.effective_end().min(s.t_lost.unwrap_or(u64::MAX));
            if !w.accepted && w.t < valid_end {
                r.violations.push(Violation {
                    check: Check::C2,
                    what: format!(
                        "{} wrote with token {} while valid, and the resource refused it: a higher token was already in",
                        s.acquisition, w.token
                    ),
                    sections: vec![s.clone()],
                });
            }
        }
    }
}

fn c6_loss_noticed(sections: &[&Section], obs: &Observations, r: &mut Report) {
    for (i, s) in sections.iter().enumerate() {
        if s.ended == Ending::Crashed {
            continue;
        }
        let resumed = paused_during(obs, &s.worker, s.t_acquired, s.valid_until + LOSS_NOTICE_SLACK_NS);
        let deadline = s.valid_until.max(resumed.unwrap_or(0));
        let ended_in_time = s.t_released.is_some_and(|t| t <= s.valid_until);
        if ended_in_time {
            continue;
        }
        match s.t_lost {
            Some(t) if t <= deadline + LOSS_NOTICE_SLACK_NS => {
                if resumed.is_none()
                    && let Some(next) = sections[i + 1..]
                        .iter()
                        .find(|n| n.t_acquired > s.t_acquired && n.share.conflicts(s.share))
                    && next.t_acquired < t
                {
                    r.violations.push(Violation {
                        check: Check::C6,
                        what: format!(
                            "{} noticed its loss only after {} had acquired {}",
                            s.acquisition, next.acquisition, s.key
                        ),
                        sections: vec![(*s).clone(), (*next).clone()],
                    });
                }
            }
            Some(t) => r.violations.push(Violation {
                check: Check::C6,
                what: format!(
                    "{} noticed its loss {} ms after its deadline",
                    s.acquisition,
                    t.saturating_sub(deadline) / 1_000_000
                ),
                sections: vec![(*s).clone()],
            }),
            None => r.violations.push(Violation {
                check: Check::C6,
                what: format!("{} outlived its validity without noticing the loss", s.acquisition),
                sections: vec![(*s).clone()],
            }),
        }
    }
}

fn c7_renewals(history: &History, r: &mut Report) {
    let mut by_worker_key: HashMap<(&str, &str), Vec<&Section>> = HashMap::new();
    for s in &history.sections {
        by_worker_key.entry((s.worker.as_str(), s.key.as_str())).or_default().push(s);
    }
    for e in &history.extends {
        let Some(sections) = by_worker_key.get(&(e.worker.as_str(), e.key.as_str())) else {
            r.violations.push(Violation {
                check: Check::C7,
                what: format!("{} renewed {} without ever holding it", e.worker, e.key),
                sections: Vec::new(),
            });
            continue;
        };
        let inside = sections.iter().any(|s| {
            let end = match (s.t_released, s.t_lost) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(u64::MAX),
            };
            s.t_acquired <= e.t && e.t <= end
        });
        if !inside {
            let last = sections.iter().rfind(|s| s.t_acquired <= e.t);
            r.violations.push(Violation {
                check: Check::C7,
                what: format!("{} renewed {} after its section had ended", e.worker, e.key),
                sections: last.map(|s| vec![(*s).clone()]).unwrap_or_default(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;

    const MS: u64 = 1_000_000;

    fn acquired(acq: &str, fence: u64, t: u64, valid_until: u64) -> Event {
        Event::Acquired {
            worker: format!("w-{acq}"),
            acq: acq.into(),
            key: "k".into(),
            fence: Some(fence),
            t: t * MS,
            valid_until: valid_until * MS,
        }
    }

    fn released(acq: &str, t: u64, valid_until: u64) -> Event {
        Event::Ended { acq: acq.into(), t: t * MS, valid_until: valid_until * MS, how: Ending::Released }
    }

    fn fenced() -> Observations {
        Observations { fencing: true, faults_injected: Some(1), ..Observations::default() }
    }

    /// One fair call of waiter `w`, sent at `sent` ms and answered at `reply` ms.
    fn fair(w: u64, sent: u64, reply: u64, wait_ms: Option<u64>, answer: FairAnswer) -> Event {
        Event::FairCall(crate::history::FairCall {
            worker: format!("w{w}"),
            key: "k".into(),
            waiter: w,
            t_sent: sent * MS,
            t_reply: reply * MS,
            wait_ms,
            answer,
        })
    }

    fn c9(events: Vec<Event>) -> usize {
        check(&History::from_events(events), &Observations::default()).of(Check::C9)
    }

    #[test]
    fn c9_passes_grants_in_queue_order() {
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(2, 5, 6, Some(1000), FairAnswer::Waiting),
                fair(1, 50, 51, Some(1000), FairAnswer::Acquired),
                fair(2, 60, 61, Some(1000), FairAnswer::Acquired),
                // A newcomer that found nobody queued any more.
                fair(3, 70, 71, Some(1000), FairAnswer::Acquired),
            ]),
            0
        );
    }

    #[test]
    fn c9_catches_a_newcomer_served_before_a_queued_waiter() {
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(2, 5, 6, Some(1000), FairAnswer::Acquired),
            ]),
            1
        );
        // And a later waiter served before an earlier one.
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(2, 5, 6, Some(1000), FairAnswer::Waiting),
                fair(2, 50, 51, Some(1000), FairAnswer::Acquired),
                fair(1, 60, 61, Some(1000), FairAnswer::Acquired),
            ]),
            1
        );
    }

    #[test]
    fn c9_judges_hand_overs_like_grants() {
        // Handed to the head in order: fine.
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(2, 5, 6, Some(1000), FairAnswer::Waiting),
                fair(1, 30, 30, None, FairAnswer::Handed),
                fair(2, 60, 60, None, FairAnswer::Handed),
            ]),
            0
        );
        // Handed to a later waiter while the earlier one still renews its place: caught.
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(2, 5, 6, Some(1000), FairAnswer::Waiting),
                fair(2, 30, 30, None, FairAnswer::Handed),
                fair(1, 40, 41, Some(1000), FairAnswer::Waiting),
                fair(1, 60, 60, None, FairAnswer::Handed),
            ]),
            1
        );
    }

    #[test]
    fn c9_excuses_waiters_that_left_expired_or_failed() {
        // Left before the grant.
        let mut events = vec![
            fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
            fair(2, 5, 6, Some(1000), FairAnswer::Acquired),
        ];
        events.push(Event::FairLeave(crate::history::FairLeave {
            worker: "w1".into(),
            key: "k".into(),
            waiter: 1,
            t: 4 * MS,
        }));
        assert_eq!(c9(events), 0);
        // Its deadline passed without a renewal (a crashed waiter).
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(10), FairAnswer::Waiting),
                fair(2, 20, 21, Some(1000), FairAnswer::Acquired)
            ]),
            0
        );
        // Its last call failed: it may have been granted and lost the lock since.
        assert_eq!(
            c9(vec![
                fair(1, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(1, 3, 4, Some(1000), FairAnswer::Failed),
                fair(2, 5, 6, Some(1000), FairAnswer::Acquired),
            ]),
            0
        );
        // Not before the grantee: queued after the grantee's first call.
        assert_eq!(
            c9(vec![
                fair(2, 0, 1, Some(1000), FairAnswer::Waiting),
                fair(1, 2, 3, Some(1000), FairAnswer::Waiting),
                fair(2, 50, 51, Some(1000), FairAnswer::Acquired),
            ]),
            0
        );
    }

    #[test]
    fn a_clean_history_passes() {
        let h = History::from_events(vec![
            acquired("a", 1, 0, 100),
            released("a", 10, 100),
            acquired("b", 2, 11, 111),
            Event::Write { acq: "b".into(), token: 2, accepted: true, t: 12 * MS },
            Event::Increment { acq: "b".into(), t: 13 * MS },
            Event::ExtendSent { worker: "w-b".into(), key: "k".into(), t: 14 * MS },
            released("b", 20, 130),
        ]);
        let obs = Observations {
            oracle_accepted: [("k".to_string(), vec![2])].into(),
            counter_final: Some(1),
            ..fenced()
        };
        let r = check(&h, &obs);
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(r.acquisitions, 2);
        assert_eq!(r.counts().values().sum::<usize>(), 0);
    }

    fn mode(acq: &str, share: Share) -> Event {
        Event::Mode { acq: acq.into(), share }
    }

    #[test]
    fn readers_may_overlap_each_other_but_not_a_writer() {
        let h = History::from_events(vec![
            acquired("r1", 1, 0, 100),
            mode("r1", Share::Read),
            released("r1", 60, 100),
            acquired("r2", 1, 10, 110),
            mode("r2", Share::Read),
            released("r2", 70, 110),
            acquired("w", 2, 65, 165),
            released("w", 90, 165),
            acquired("r3", 2, 95, 195),
            mode("r3", Share::Read),
            released("r3", 99, 195),
        ]);
        let r = check(&h, &fenced());
        assert_eq!(r.of(Check::C1), 1, "{:#?}", r.violations);
        let names: Vec<_> = r.violations[0].sections.iter().map(|s| s.acquisition.as_str()).collect();
        assert_eq!(names, ["r2", "w"], "the writer entered while r2 still read");
        assert_eq!(r.of(Check::C4), 0, "readers show the last writer's token: {:#?}", r.violations);
    }

    #[test]
    fn more_permit_holders_than_permits_are_reported() {
        let permit = |acq: &str, t: u64, end: u64| {
            vec![acquired(acq, 0, t, end + 50), mode(acq, Share::Permit(2)), released(acq, end, end + 50)]
        };
        let within: Vec<Event> = [permit("a", 0, 50), permit("b", 10, 60), permit("c", 55, 90)].concat();
        let h = History::from_events(within);
        assert_eq!(check(&h, &Observations::default()).of(Check::C1), 0);
        let over: Vec<Event> = [permit("a", 0, 50), permit("b", 10, 60), permit("c", 20, 90)].concat();
        let r = check(&History::from_events(over), &Observations::default());
        assert_eq!(r.of(Check::C1), 1, "{:#?}", r.violations);
        assert!(r.violations[0].what.contains("2 of its 2 permits"), "{}", r.violations[0].what);
    }

    #[test]
    fn overlapping_intervals_are_reported_with_both_records() {
        let h = History::from_events(vec![
            acquired("a", 1, 0, 100),
            released("a", 50, 100),
            acquired("b", 2, 40, 140),
            released("b", 60, 140),
        ]);
        let r = check(&h, &fenced());
        assert_eq!(r.of(Check::C1), 1, "{:#?}", r.violations);
        let v = &r.violations[0];
        assert_eq!(v.sections.iter().map(|s| s.acquisition.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_section_past_its_validity_does_not_overlap_the_next_holder() {
        // "a" was paused: it ended late, but its validity had run out before "b" acquired.
        let h = History::from_events(vec![
            acquired("a", 1, 0, 100),
            Event::Lost { acq: "a".into(), t: 300 * MS },
            Event::Ended { acq: "a".into(), t: 301 * MS, valid_until: 100 * MS, how: Ending::Lost },
            acquired("b", 2, 120, 220),
            released("b", 130, 220),
        ]);
        let obs = Observations {
            pauses: vec![Pause { worker: "w-a".into(), from: 50 * MS, to: 290 * MS }],
            ..fenced()
        };
        let r = check(&h, &obs);
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        // Without the pause on record, noticing 200 ms late is a C6 violation.
        let r = check(&h, &fenced());
        assert_eq!(r.of(Check::C6), 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_decreasing_token_is_reported() {
        let h = History::from_events(vec![
            acquired("a", 5, 0, 100),
            released("a", 10, 100),
            acquired("b", 4, 20, 120),
            released("b", 30, 120),
        ]);
        let r = check(&h, &fenced());
        assert_eq!(r.of(Check::C4), 1, "{:#?}", r.violations);
        assert!(r.violations[0].what.contains("backwards"));
    }

    #[test]
    fn a_reused_token_and_a_changed_reentry_token_are_reported() {
        let h = History::from_events(vec![
            acquired("a", 5, 0, 100),
            Event::Reentered { acq: "a".into(), fence: Some(6), t: 5 * MS },
            released("a", 10, 100),
            acquired("b", 5, 20, 120),
            released("b", 30, 120),
        ]);
        let r = check(&h, &fenced());
        assert_eq!(r.of(Check::C4), 2, "{:#?}", r.violations);
        assert!(r.violations.iter().any(|v| v.what.contains("reused")));
        assert!(r.violations.iter().any(|v| v.what.contains("re-entered")));
    }

    #[test]
    fn an_orphaned_key_is_reported() {
        let h = History::from_events(vec![acquired("a", 1, 0, 100), released("a", 10, 100)]);
        let obs = Observations {
            leftover_keys: vec![LeftoverKey { node: "n1".into(), key: "lock:{k}".into(), pttl_ms: 900 }],
            ..fenced()
        };
        let r = check(&h, &obs);
        assert_eq!(r.of(Check::C5), 1, "{:#?}", r.violations);
        assert!(r.violations[0].what.contains("lock:{k}"));
    }

    #[test]
    fn fenced_resource_violations_are_reported() {
        let h = History::from_events(vec![
            acquired("a", 7, 0, 100),
            Event::Write { acq: "a".into(), token: 7, accepted: false, t: 5 * MS },
            released("a", 10, 100),
        ]);
        let obs = Observations { oracle_accepted: [("k".to_string(), vec![8, 7])].into(), ..fenced() };
        let r = check(&h, &obs);
        assert_eq!(r.of(Check::C2), 2, "{:#?}", r.violations);
    }

    #[test]
    fn a_late_rejected_write_is_not_a_violation() {
        let h = History::from_events(vec![
            acquired("a", 7, 0, 100),
            Event::Lost { acq: "a".into(), t: 101 * MS },
            Event::Write { acq: "a".into(), token: 7, accepted: false, t: 150 * MS },
            Event::Ended { acq: "a".into(), t: 151 * MS, valid_until: 100 * MS, how: Ending::Lost },
        ]);
        let r = check(&h, &fenced());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(r.fenced_rejected, 1);
    }

    #[test]
    fn lost_updates_renewals_after_release_and_vacuous_runs_are_reported() {
        let h = History::from_events(vec![
            acquired("a", 1, 0, 100),
            Event::Increment { acq: "a".into(), t: 5 * MS },
            released("a", 10, 100),
            Event::ExtendSent { worker: "w-a".into(), key: "k".into(), t: 40 * MS },
        ]);
        let obs = Observations { counter_final: Some(0), faults_injected: Some(0), ..fenced() };
        let r = check(&h, &obs);
        assert_eq!(r.of(Check::C3), 1, "{:#?}", r.violations);
        assert_eq!(r.of(Check::C7), 1, "{:#?}", r.violations);
        assert_eq!(r.of(Check::C8), 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_worker_killed_mid_release_is_not_taken_for_a_holder() {
        let h = History::from_events(vec![
            acquired("a", 1, 0, 100),
            Event::Releasing { acq: "a".into(), t: 10 * MS, valid_until: 100 * MS },
            acquired("b", 2, 11, 111),
            released("b", 20, 111),
        ]);
        let r = check(&h, &fenced());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(h.sections[0].ended, Ending::Crashed);
        // Without the release on record, the dead holder's validity still covers "b".
        let h = History::from_events(vec![acquired("a", 1, 0, 100), acquired("b", 2, 11, 111)]);
        assert_eq!(check(&h, &fenced()).of(Check::C1), 1);
    }

    #[test]
    fn an_expired_grant_is_reported() {
        let h = History::from_events(vec![acquired("a", 1, 100, 90), released("a", 101, 90)]);
        let r = check(&h, &fenced());
        assert!(r.violations.iter().any(|v| v.check == Check::C1 && v.what.contains("already")));
    }
}
