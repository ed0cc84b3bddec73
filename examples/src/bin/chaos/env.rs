//! The environment of one run: nodes, their proxies, the oracle, the worker processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lock_testkit::checker::LeftoverKey;
use lock_testkit::resp::Resp;
use lock_testkit::{FaultProxy, Oracle, ProxyMode, RedisServer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::common::{DynError, WorkerSpec};

pub(crate) struct Env {
    pub(crate) nodes: Vec<RedisServer>,
    pub(crate) proxies: Vec<FaultProxy>,
    pub(crate) oracle: Oracle,
    pub(crate) oracle_url: String,
    _oracle_server: RedisServer,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) workers: Vec<WorkerProc>,
}

pub(crate) struct WorkerProc {
    pub(crate) id: String,
    pub(crate) log: PathBuf,
    child: Child,
    pid: Option<u32>,
    pub(crate) stopped: bool,
    pub(crate) killed: bool,
}

impl WorkerProc {
    fn signal(&self, sig: Signal) -> Result<(), DynError> {
        // Only ever a pid this runner spawned, and only while its child handle is alive.
        let pid = self.pid.ok_or("worker has no pid")?;
        kill(Pid::from_raw(i32::try_from(pid)?), sig)?;
        Ok(())
    }

    pub(crate) fn stop(&mut self) -> Result<(), DynError> {
        self.signal(Signal::SIGSTOP)?;
        self.stopped = true;
        Ok(())
    }

    pub(crate) fn cont(&mut self) -> Result<(), DynError> {
        self.signal(Signal::SIGCONT)?;
        self.stopped = false;
        Ok(())
    }

    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
        self.killed = true;
    }
}

impl Env {
    pub(crate) async fn start(nodes: usize) -> Result<Self, DynError> {
        let servers = lock_testkit::start_nodes(nodes)?;
        let mut proxies = Vec::with_capacity(nodes);
        for s in &servers {
            proxies.push(FaultProxy::start(s.addr().parse::<SocketAddr>()?).await?);
        }
        let oracle_server = RedisServer::start()?;
        let oracle_url = oracle_server.url();
        let oracle = Oracle::connect(&oracle_url).await?;
        Ok(Self {
            nodes: servers,
            proxies,
            oracle,
            oracle_url,
            _oracle_server: oracle_server,
            dir: tempfile::tempdir()?,
            workers: Vec::new(),
        })
    }

    /// One lane per client on every node's proxy.
    pub(crate) async fn lane_urls(&self, lane: &str) -> Result<Vec<String>, DynError> {
        let mut urls = Vec::with_capacity(self.proxies.len());
        for p in &self.proxies {
            urls.push(format!("redis://{}/", p.lane(lane).await?));
        }
        Ok(urls)
    }

    pub(crate) fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    pub(crate) async fn spawn_worker(&mut self, mut spec: WorkerSpec) -> Result<(), DynError> {
        spec.out = self.dir.path().join(format!("{}.jsonl", spec.id));
        let stderr = std::fs::File::create(self.dir.path().join(format!("{}.stderr", spec.id)))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        self.workers.push(WorkerProc {
            id: spec.id,
            log: spec.out,
            child,
            pid,
            stopped: false,
            killed: false,
        });
        Ok(())
    }

    /// Waits for every worker to finish (bounded), killing stragglers. Returns the stderr of
    /// workers that failed, for the report.
    pub(crate) async fn join_workers(&mut self, within: Duration) -> Vec<String> {
        let mut failures = Vec::new();
        for w in &mut self.workers {
            if w.stopped {
                let _ = w.cont();
            }
            if w.killed {
                continue;
            }
            match tokio::time::timeout(within, w.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                other => {
                    let _ = w.child.kill().await;
                    let err = std::fs::read_to_string(self.dir.path().join(format!("{}.stderr", w.id)))
                        .unwrap_or_default();
                    failures.push(format!("{}: {other:?}: {}", w.id, err.trim()));
                }
            }
        }
        failures
    }

    /// Every proxy back to pass, every node running.
    pub(crate) fn heal(&mut self) -> Result<(), DynError> {
        for p in &self.proxies {
            p.set_mode(ProxyMode::Pass);
        }
        for n in &mut self.nodes {
            match n.pid() {
                Some(_) => n.resume()?,
                None => n.restart()?,
            }
        }
        Ok(())
    }

    /// Keeps the worker logs (and prints their folder) for study: always after a violation
    /// (`violated`), and after every scenario with `CHAOS_KEEP` set.
    pub(crate) fn keep_logs(&mut self, violated: bool) {
        if violated || std::env::var_os("CHAOS_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            );
            println!("  logs kept in {}", dir.keep().display());
        }
    }

    pub(crate) fn proxy_faults(&self) -> u64 {
        self.proxies.iter().map(|p| p.stats().faults()).sum()
    }

    /// Lock keys (not fence counters) still on any node.
    pub(crate) fn leftover_keys(&self) -> Vec<LeftoverKey> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let Ok(Resp::Array(Some(keys))) = n.cmd(&["KEYS", "lock:*"]) else { continue };
            for k in keys {
                let key = k.text();
                if key.ends_with(":fence") || key == lock_core::scripts::MARKER_KEY {
                    continue;
                }
                let pttl = match n.cmd(&["PTTL", &key]) {
                    Ok(Resp::Int(ms)) => ms,
                    _ => -3,
                };
                // -2: it expired between the two commands.
                if pttl != -2 {
                    out.push(LeftoverKey { node: n.addr(), key, pttl_ms: pttl });
                }
            }
        }
        out
    }
}
