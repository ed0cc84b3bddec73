//! A Sentinel-managed primary for tests: one primary, one replica and three `redis-sentinel`
//! processes, all on free loopback ports, with a forced failover on demand.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{HarnessError, RedisServer, free_port, which};
use crate::resp::{Resp, command};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "lockmaster";

/// How long the harness waits for the group to form or a failover to finish.
const SETTLE: Duration = Duration::from_secs(30);

/// One `redis-sentinel` process (killed on drop).
#[derive(Debug)]
struct SentinelProcess {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl SentinelProcess {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn cmd(&self, args: &[&str]) -> Result<Resp, HarnessError> {
        command(&self.addr(), args)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only ever the pid this harness spawned.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary, a replica and three sentinels monitoring them as [`MASTER_NAME`] (quorum 2,
/// `down-after-milliseconds` 1000, `failover-timeout` 5000), on free loopback ports. Both
/// servers are declared fresh (the replica takes the marker from the primary), so locks are
/// granted at once and keep being granted after a failover: the promoted replica has the
/// marker. Every process is killed on drop.
///
/// The sentinels are started only once the replica is in sync, so their first look at the
/// primary already lists it, and [`SentinelGroup::start`] returns once every sentinel knows the
/// replica and the other two sentinels.
///
/// ```no_run
/// let group = lock_testkit::SentinelGroup::start()?;
/// let before = group.primary()?.addr();
/// let after = group.failover()?;
/// assert_ne!(before, after);
/// # Ok::<(), lock_testkit::HarnessError>(())
/// ```
#[derive(Debug)]
pub struct SentinelGroup {
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

/// Key/value pairs of one `SENTINEL REPLICAS`/`SENTINELS`/`MASTER` entry.
fn pairs(entry: &Resp) -> HashMap<String, String> {
    let Resp::Array(Some(items)) = entry else { return HashMap::new() };
    items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].text(), c[1].text())).collect()
}

fn entries(reply: &Resp) -> Vec<HashMap<String, String>> {
    match reply {
        Resp::Array(Some(items)) => items.iter().map(pairs).collect(),
        _ => Vec::new(),
    }
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

impl SentinelGroup {
    /// Starts the primary, the replica (waiting for it to sync), then the three sentinels, and
    /// waits until every sentinel sees the replica and its two peers.
    ///
    /// # Errors
    /// [`HarnessError::NotInstalled`] without `redis-server`/`redis-sentinel`, or
    /// [`HarnessError::NotReady`] with the logs when the group does not form within 30 s.
    pub fn start() -> Result<Self, HarnessError> {
        which("redis-server")?;
        let primary = RedisServer::start()?;
        let port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])?;
        let mut group = Self { servers: vec![primary, replica], sentinels: Vec::new() };
        group.wait_for("the replica to sync with the primary", |g| Ok(g.replicas_in_sync(&g.servers[0])))?;
        for _ in 0..3 {
            let sentinel = group.spawn_sentinel()?;
            group.sentinels.push(sentinel);
        }
        group.wait_for("every sentinel to see the replica and its two peers", |g| g.sentinels_agree())?;
        Ok(group)
    }

    fn spawn_sentinel(&self) -> Result<SentinelProcess, HarnessError> {
        let io = |e: std::io::Error| HarnessError::Io(e.to_string());
        let primary = &self.servers[0];
        let mut last = None;
        for _ in 0..5 {
            let port = free_port(false)?;
            let dir = tempfile::tempdir().map_err(io)?;
            let conf: PathBuf = dir.path().join("sentinel.conf");
            let body = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display(),
                log = dir.path().join("sentinel.log").display(),
                primary = primary.port(),
            );
            std::fs::write(&conf, body).map_err(io)?;
            // Debian's `redis-sentinel` is `redis-server` in sentinel mode; fall back to that.
            let mut cmd = if which("redis-sentinel").is_ok() {
                let mut c = Command::new("redis-sentinel");
                c.arg(&conf);
                c
            } else {
                let mut c = Command::new("redis-server");
                c.arg(&conf).arg("--sentinel");
                c
            };
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let child = cmd.spawn().map_err(io)?;
            let mut sentinel = SentinelProcess { child: Some(child), port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            let ready = loop {
                if matches!(sentinel.cmd(&["PING"]), Ok(Resp::Simple(ref s)) if s == "PONG") {
                    break Ok(());
                }
                if let Some(child) = sentinel.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    break Err(format!("the process exited with {status}"));
                }
                if Instant::now() >= deadline {
                    break Err("no PONG within 10s".to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            match ready {
                Ok(()) => return Ok(sentinel),
                Err(reason) => {
                    last = Some(HarnessError::NotReady { port, reason, log: sentinel.log_tail() });
                }
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Io("could not start redis-sentinel".into())))
    }

    fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&Self) -> Result<bool, HarnessError>,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            if done(self)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = self.sentinels.iter().map(SentinelProcess::log_tail).collect::<Vec<_>>();
                return Err(HarnessError::NotReady {
                    port: self.servers[0].port(),
                    reason: format!("timed out after {SETTLE:?} waiting for {what}"),
                    log: logs.join("\n---\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `primary` reports itself master with every other server attached and in sync.
    fn replicas_in_sync(&self, primary: &RedisServer) -> bool {
        let Ok(info) = primary.cmd(&["INFO", "replication"]).map(|r| r.text()) else { return false };
        if info_field(&info, "role").as_deref() != Some("master") {
            return false;
        }
        self.servers.iter().filter(|s| s.port() != primary.port()).all(|s| {
            s.cmd(&["INFO", "replication"]).is_ok_and(|r| {
                let text = r.text();
                info_field(&text, "master_link_status").as_deref() == Some("up")
                    && info_field(&text, "master_port").as_deref() == Some(&primary.port().to_string())
            })
        })
    }

    fn sentinels_agree(&self) -> Result<bool, HarnessError> {
        let primary = self.primary()?;
        for s in &self.sentinels {
            let replicas = entries(&s.cmd(&["SENTINEL", "REPLICAS", MASTER_NAME])?);
            let healthy = replicas.iter().filter(|r| {
                r.get("flags").is_some_and(|f| f == "slave")
                    && r.get("master-link-status").is_some_and(|m| m == "ok")
                    && r.get("master-port").is_some_and(|p| *p == primary.port().to_string())
            });
            if healthy.count() < self.servers.len() - 1 {
                return Ok(false);
            }
            if entries(&s.cmd(&["SENTINEL", "SENTINELS", MASTER_NAME])?).len() < self.sentinels.len() - 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The name the sentinels know the primary by ([`MASTER_NAME`]).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProcess::addr).collect()
    }

    /// `redis://127.0.0.1:<port>/` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("redis://{}/", s.addr())).collect()
    }

    /// Both data servers (the primary and the replica, in either order after a failover).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The current primary, as the first sentinel reports it.
    ///
    /// # Errors
    /// [`HarnessError::Io`] when no sentinel answers or it names a server not in the group.
    pub fn primary(&self) -> Result<&RedisServer, HarnessError> {
        let addr = self.primary_addr()?;
        self.servers
            .iter()
            .find(|s| s.addr() == addr)
            .ok_or_else(|| HarnessError::Io(format!("the sentinels name {addr}, not a server of this group")))
    }

    /// The current replica.
    ///
    /// # Errors
    /// As [`SentinelGroup::primary`].
    pub fn replica(&self) -> Result<&RedisServer, HarnessError> {
        let primary = self.primary()?.port();
        self.servers
            .iter()
            .find(|s| s.port() != primary)
            .ok_or_else(|| HarnessError::Io("the group has no replica".into()))
    }

    fn primary_addr(&self) -> Result<String, HarnessError> {
        let mut last = HarnessError::Io("the group has no sentinel".into());
        for s in &self.sentinels {
            match s.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]) {
                Ok(Resp::Array(Some(items))) if items.len() == 2 => {
                    return Ok(format!("{}:{}", items[0].text(), items[1].text()));
                }
                Ok(other) => last = HarnessError::Io(format!("sentinel {}: {other:?}", s.addr())),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until the replica has every write the primary acknowledged so far (`WAIT 1`),
    /// e.g. so that a fencing counter is on both servers before a failover.
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the replica did not acknowledge within 5 s.
    pub fn sync_replica(&self) -> Result<(), HarnessError> {
        match self.primary()?.cmd(&["WAIT", "1", "5000"])? {
            Resp::Int(n) if n >= 1 => Ok(()),
            other => Err(HarnessError::Io(format!("WAIT 1 5000 answered {other:?}"))),
        }
    }

    /// Forces a failover (`SENTINEL FAILOVER`) and returns as soon as the replica answers as
    /// master (its `127.0.0.1:<port>`), before the sentinels demote the old primary: in that
    /// window both servers accept writes, and what the old primary takes then is lost when it
    /// resyncs from the new one. The window real failovers have, opened on purpose.
    /// [`SentinelGroup::failover`] waits for the whole failover instead.
    ///
    /// # Errors
    /// [`HarnessError::NotReady`] with the sentinels' logs when no replica is promoted within
    /// 30 s.
    pub fn begin_failover(&self) -> Result<String, HarnessError> {
        let replica = self.replica()?;
        // A sentinel refuses while it still settles a previous failover; retry until it starts.
        self.wait_for("a sentinel to accept SENTINEL FAILOVER", |g| {
            Ok(match g.sentinels[0].cmd(&["SENTINEL", "FAILOVER", MASTER_NAME])? {
                Resp::Error(e) if e.contains("INPROG") || e.contains("NOGOODSLAVE") => false,
                Resp::Error(e) => return Err(HarnessError::Io(format!("SENTINEL FAILOVER: {e}"))),
                _ => true,
            })
        })?;
        let deadline = Instant::now() + SETTLE;
        loop {
            // Sentinel kills the promoted server's clients (this probe's too): retry on errors.
            let role = replica.cmd(&["ROLE"]).unwrap_or(Resp::Bulk(None));
            if matches!(&role, Resp::Array(Some(items)) if items.first().map(Resp::text).as_deref() == Some("master"))
            {
                return Ok(replica.addr());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    port: replica.port(),
                    reason: format!("the replica was not promoted within {SETTLE:?}"),
                    log: self
                        .sentinels
                        .iter()
                        .map(SentinelProcess::log_tail)
                        .collect::<Vec<_>>()
                        .join("\n---\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until every sentinel names `primary` (`127.0.0.1:<port>`) as the primary: after
    /// [`SentinelGroup::begin_failover`], the moment new clients are sent to the new primary
    /// (the old one may not be demoted yet).
    ///
    /// # Errors
    /// [`HarnessError::NotReady`] with the sentinels' logs after 30 s.
    pub fn wait_named(&self, primary: &str) -> Result<(), HarnessError> {
        self.wait_for("every sentinel to name the new primary", |g| {
            for s in &g.sentinels {
                match s.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])? {
                    Resp::Array(Some(items))
                        if items.len() == 2
                            && format!("{}:{}", items[0].text(), items[1].text()) == primary => {}
                    _ => return Ok(false),
                }
            }
            Ok(true)
        })
    }

    /// Forces a failover (`SENTINEL FAILOVER`) and waits until every sentinel names the old
    /// replica as primary, it answers as master, and the old primary replicates from it.
    /// Returns the new primary's `127.0.0.1:<port>`.
    ///
    /// # Errors
    /// [`HarnessError::NotReady`] with the sentinels' logs when it does not finish within 30 s.
    pub fn failover(&self) -> Result<String, HarnessError> {
        let old = self.primary_addr()?;
        self.begin_failover()?;
        self.settle(&old)
    }

    /// Waits until a failover away from `old` has finished (see [`SentinelGroup::failover`]).
    ///
    /// # Errors
    /// As [`SentinelGroup::failover`].
    pub fn settle(&self, old: &str) -> Result<String, HarnessError> {
        self.wait_for("the failover to finish", |g| {
            let mut named = Vec::new();
            for s in &g.sentinels {
                match s.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])? {
                    Resp::Array(Some(items)) if items.len() == 2 => {
                        named.push(format!("{}:{}", items[0].text(), items[1].text()));
                    }
                    _ => return Ok(false),
                }
            }
            let Some(new) = named.first().cloned() else { return Ok(false) };
            if new == *old || named.iter().any(|n| *n != new) {
                return Ok(false);
            }
            let Some(primary) = g.servers.iter().find(|s| s.addr() == new) else { return Ok(false) };
            Ok(g.replicas_in_sync(primary))
        })?;
        self.wait_for("every sentinel to see the new replica", |g| g.sentinels_agree())?;
        self.primary_addr()
    }
}
