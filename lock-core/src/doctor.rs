//! The deployment doctor: reads how the servers behind a backend are set up and says what
//! would make the lock unsafe there, with a fix for each finding (S9).
//!
//! Backends report [`NodeFacts`] through [`crate::LockBackend::deployment_facts`] (the Redis
//! drivers read `INFO` and `CONFIG GET`; a RedLock reports every node, marked as quorum
//! members). [`check`] turns facts into [`Finding`]s; [`crate::LockBackend::check_deployment`]
//! does both.
//!
//! ```
//! use lock_core::doctor::{check, NodeFacts, Severity};
//!
//! let node = NodeFacts {
//!     endpoint: "127.0.0.1:6379".into(),
//!     maxmemory_policy: Some("allkeys-lru".into()),
//!     ..NodeFacts::default()
//! };
//! let findings = check(&[node]);
//! assert!(findings.iter().any(|f| f.code == "eviction" && f.severity == Severity::Critical));
//! ```

use std::collections::HashMap;
use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; safe as it is.
    Info,
    /// Safe only if an operational rule is followed (documented in the finding).
    Warning,
    /// Two holders are possible as deployed.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "CRITICAL",
        })
    }
}

/// One thing the doctor found, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// A stable short code (`eviction`, `replica`, `duplicate-node`, `even-quorum`,
    /// `no-persistence`, `old-server`, `sentinel`, `unreadable`, `pubsub`).
    pub code: &'static str,
    /// The node(s) concerned.
    pub node: String,
    /// What is wrong and why it matters.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} ({}): {} Fix: {}", self.severity, self.code, self.node, self.problem, self.fix)
    }
}

/// What a backend could read about one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Where the server is.
    pub endpoint: String,
    /// Whether this node is one of a RedLock quorum (persistence and identity then matter).
    pub quorum_member: bool,
    /// `INFO server` `run_id`: the same on two "nodes" means one server reached twice.
    pub run_id: Option<String>,
    /// `INFO server` `redis_version`.
    pub version: Option<String>,
    /// `INFO replication` `role` (`master` or `slave`).
    pub role: Option<String>,
    /// `CONFIG GET maxmemory-policy`.
    pub maxmemory_policy: Option<String>,
    /// `CONFIG GET appendonly` (`yes`/`no`).
    pub appendonly: Option<String>,
    /// `CONFIG GET appendfsync`.
    pub appendfsync: Option<String>,
    /// Why some facts could not be read (e.g. `CONFIG` is not allowed for this user).
    pub unreadable: Option<String>,
    /// The master name, when the backend reaches this server through Redis Sentinel.
    pub sentinel_master: Option<String>,
    /// How release notices travel, reported by backends connected to a Redis Cluster (see
    /// [`crate::scripts::PubSubMode`]); `None` elsewhere.
    pub pubsub_mode: Option<crate::scripts::PubSubMode>,
}

impl NodeFacts {
    /// The facts in an `INFO` reply (`run_id`, `redis_version`, `role`).
    pub fn from_info(endpoint: impl Into<String>, info: &str) -> Self {
        let mut facts = NodeFacts { endpoint: endpoint.into(), ..NodeFacts::default() };
        for line in info.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else { continue };
            match k {
                "run_id" => facts.run_id = Some(v.to_string()),
                "redis_version" => facts.version = Some(v.to_string()),
                "role" => facts.role = Some(v.to_string()),
                _ => {}
            }
        }
        facts
    }

    /// Records the reply to `CONFIG GET name` (a `[name, value]` pair), or why it failed.
    pub fn record_config_reply<E: fmt::Display>(&mut self, name: &str, reply: Result<Vec<String>, E>) {
        match reply {
            Ok(mut pair) if pair.len() == 2 => {
                if let Some(value) = pair.pop() {
                    self.set_config(name, value);
                }
            }
            Ok(_) => {}
            Err(e) => self.unreadable = Some(format!("CONFIG GET {name}: {e}")),
        }
    }

    /// Records one `CONFIG GET` answer.
    pub fn set_config(&mut self, name: &str, value: String) {
        match name {
            "maxmemory-policy" => self.maxmemory_policy = Some(value),
            "appendonly" => self.appendonly = Some(value),
            "appendfsync" => self.appendfsync = Some(value),
            _ => {}
        }
    }
}

/// The settings the doctor reads with `CONFIG GET`, one at a time (Redis before 7 takes one).
pub const CONFIG_NAMES: [&str; 3] = ["maxmemory-policy", "appendonly", "appendfsync"];

fn version_at_least(version: &str, want: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    v >= want
}

/// Judges the facts of every node of a deployment.
pub fn check(nodes: &[NodeFacts]) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in nodes {
        let node = n.endpoint.clone();
        if let Some(policy) = &n.maxmemory_policy
            && policy != "noeviction"
        {
            out.push(Finding {
                severity: Severity::Critical,
                code: "eviction",
                node: node.clone(),
                problem: format!(
                    "maxmemory-policy is {policy}: under memory pressure Redis may evict a held lock's key \
                     (lock keys carry a TTL, so volatile-* policies evict them too), and another client then \
                     acquires it."
                ),
                fix: "CONFIG SET maxmemory-policy noeviction (and in redis.conf), or give locks their own server."
                    .into(),
            });
        }
        if n.role.as_deref() == Some("slave") {
            out.push(Finding {
                severity: Severity::Critical,
                code: "replica",
                node: node.clone(),
                problem: "this node is a replica: writes fail (READONLY), or, if it accepts writes, its locks are \
                          invisible to the primary and overwritten by replication."
                    .into(),
                fix: "point the lock at the primary; for RedLock use independent primaries, never a primary and \
                      its replica."
                    .into(),
            });
        }
        if let Some(v) = &n.version {
            if !version_at_least(v, (2, 6, 12)) {
                out.push(Finding {
                    severity: Severity::Critical,
                    code: "old-server",
                    node: node.clone(),
                    problem: format!("Redis {v} has no SET NX PX and no EVALSHA as the lock uses them."),
                    fix: "upgrade to Redis 6.2 or newer.".into(),
                });
            } else if !version_at_least(v, (5, 0, 0)) {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: "old-server",
                    node: node.clone(),
                    problem: format!(
                        "Redis {v} replicates scripts verbatim rather than by their effects; the lock is \
                         tested on 6.2+."
                    ),
                    fix: "upgrade to Redis 6.2 or newer.".into(),
                });
            }
        }
        let durable = n.appendonly.as_deref() == Some("yes") && n.appendfsync.as_deref() == Some("always");
        if n.quorum_member && n.appendonly.is_some() && !durable {
            out.push(Finding {
                severity: Severity::Warning,
                code: "no-persistence",
                node: node.clone(),
                problem: format!(
                    "RedLock node without fsync-always persistence (appendonly {}, appendfsync {}): if it restarts \
                     at once it forgets its locks and fence counters, and another client can take a majority.",
                    n.appendonly.as_deref().unwrap_or("?"),
                    n.appendfsync.as_deref().unwrap_or("?")
                ),
                fix: "either appendonly yes + appendfsync always, or delay every restart of this node past the \
                      longest lock TTL (and keep fence counters durable if you use fencing)."
                    .into(),
            });
        }
        if let Some(name) = &n.sentinel_master {
            out.push(Finding {
                severity: Severity::Warning,
                code: "sentinel",
                node: node.clone(),
                problem: format!(
                    "a Sentinel-managed primary ({name}): replication is asynchronous, so a failover can \
                     promote a replica that never saw a granted lock, and a second client then acquires it \
                     while the first still holds it."
                ),
                fix: "pass the guard's fencing token to the resource and have it refuse older tokens (fencing \
                      survives the failover once the counter has replicated), or use RedLock over independent \
                      primaries (lock-redlock) for locks that must never be held twice."
                    .into(),
            });
        }
        match n.pubsub_mode {
            Some(crate::scripts::PubSubMode::Sharded) => out.push(Finding {
                severity: Severity::Info,
                code: "pubsub",
                node: node.clone(),
                problem: "release notices use sharded pub/sub (SPUBLISH/SSUBSCRIBE): each one is heard only on \
                          the shard that owns the lock's key."
                    .into(),
                fix: "nothing to do; every process waiting on these keys should use sharded pub/sub too (the \
                      default of both drivers on Redis 7+)."
                    .into(),
            }),
            Some(crate::scripts::PubSubMode::Classic) => out.push(Finding {
                severity: Severity::Info,
                code: "pubsub",
                node: node.clone(),
                problem: "release notices use classic pub/sub (PUBLISH): the cluster bus copies each one to every \
                          node, a cost that grows with the cluster."
                    .into(),
                fix: "on Redis 7+ leave the drivers' sharded_pubsub option on (the default), and allow the lock \
                      user SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE (see ACL_RULES)."
                    .into(),
            }),
            None => {}
        }
        if let Some(why) = &n.unreadable {
            out.push(Finding {
                severity: Severity::Info,
                code: "unreadable",
                node: node.clone(),
                problem: format!("some settings could not be read: {why}"),
                fix: "run the doctor as a user allowed INFO and CONFIG GET, or check these settings by hand."
                    .into(),
            });
        }
    }
    let members: Vec<&NodeFacts> = nodes.iter().filter(|n| n.quorum_member).collect();
    if !members.is_empty() && members.len().is_multiple_of(2) {
        out.push(Finding {
            severity: Severity::Warning,
            code: "even-quorum",
            node: members.iter().map(|n| n.endpoint.as_str()).collect::<Vec<_>>().join(", "),
            problem: format!(
                "{} RedLock nodes: a majority needs {}, so one more failure is tolerated by {} nodes than by {}.",
                members.len(),
                members.len() / 2 + 1,
                members.len() + 1,
                members.len()
            ),
            fix: "use an odd number of nodes (3 or 5).".into(),
        });
    }
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in &members {
        if let Some(id) = &n.run_id {
            by_id.entry(id.as_str()).or_default().push(n.endpoint.as_str());
        }
    }
    let mut dups: Vec<_> = by_id.into_iter().filter(|(_, eps)| eps.len() > 1).collect();
    dups.sort();
    for (id, eps) in dups {
        out.push(Finding {
            severity: Severity::Critical,
            code: "duplicate-node",
            node: eps.join(", "),
            problem: format!(
                "these RedLock nodes are one server (run_id {id}): one server counts as several votes, so a \
                 'majority' may be a minority of real servers."
            ),
            fix: "give every RedLock node its own independent server.".into(),
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(endpoint: &str, run_id: &str) -> NodeFacts {
        NodeFacts {
            endpoint: endpoint.into(),
            quorum_member: true,
            run_id: Some(run_id.into()),
            version: Some("7.0.15".into()),
            role: Some("master".into()),
            maxmemory_policy: Some("noeviction".into()),
            appendonly: Some("yes".into()),
            appendfsync: Some("always".into()),
            unreadable: None,
            sentinel_master: None,
            pubsub_mode: None,
        }
    }

    #[test]
    fn a_healthy_quorum_has_no_finding() {
        let nodes = [healthy("a", "1"), healthy("b", "2"), healthy("c", "3")];
        assert_eq!(check(&nodes), vec![]);
    }

    #[test]
    fn every_rule_reports_its_finding() {
        let mut nodes = vec![healthy("a", "1"), healthy("b", "1"), healthy("c", "3"), healthy("d", "4")];
        nodes[0].maxmemory_policy = Some("volatile-lru".into());
        nodes[2].role = Some("slave".into());
        nodes[3].appendfsync = Some("everysec".into());
        nodes[3].version = Some("4.0.9".into());
        nodes[1].sentinel_master = Some("mymaster".into());
        let codes: Vec<&str> = check(&nodes).iter().map(|f| f.code).collect();
        for code in [
            "eviction",
            "replica",
            "duplicate-node",
            "even-quorum",
            "no-persistence",
            "old-server",
            "sentinel",
        ] {
            assert!(codes.contains(&code), "{code} missing from {codes:?}");
        }
        assert_eq!(check(&nodes)[0].severity, Severity::Critical, "sorted worst first");
    }

    #[test]
    fn a_single_node_is_not_judged_as_a_quorum() {
        let mut node = healthy("a", "1");
        node.quorum_member = false;
        node.appendonly = Some("no".into());
        assert_eq!(check(&[node]), vec![]);
    }
}
