//! `redis-server` processes for tests: single nodes and a 3-master Redis Cluster.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::resp::{Resp, command};

/// The environment variable that points tests at an existing server instead of spawning one.
pub const REDIS_URL_ENV: &str = "LOCK_TEST_REDIS_URL";

const INSTALL_HINT: &str = "install it (Debian/Ubuntu: `apt-get install redis-server redis-tools`, \
macOS: `brew install redis`), or set LOCK_TEST_REDIS_URL to a running server";

/// Why a test server could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// `redis-server` or `redis-cli` is not installed.
    #[error("`{0}` was not found on PATH: {INSTALL_HINT}")]
    NotInstalled(&'static str),
    /// The server did not become ready; includes the tail of its log.
    #[error("redis-server on port {port} did not become ready: {reason}\n--- server log ---\n{log}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// What went wrong.
        reason: String,
        /// The end of the server's log.
        log: String,
    },
    /// An I/O error talking to a server or managing files.
    #[error("test server i/o: {0}")]
    Io(String),
    /// A cluster could not be formed.
    #[error("redis cluster set-up failed: {0}")]
    Cluster(String),
}

pub(crate) fn free_port(with_bus: bool) -> Result<u16, HarnessError> {
    for _ in 0..200 {
        let port = if with_bus {
            20_000 + rand::random::<u16>() % 10_000
        } else {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::Io(e.to_string()))?;
            l.local_addr().map_err(|e| HarnessError::Io(e.to_string()))?.port()
        };
        let ok = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && (!with_bus || TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok());
        if ok {
            return Ok(port);
        }
    }
    Err(HarnessError::Io("no free loopback port found".into()))
}

pub(crate) fn which(program: &'static str) -> Result<(), HarnessError> {
    match Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(_) => Err(HarnessError::NotInstalled(program)),
    }
}

/// A `redis-server` process on a free loopback port, with its own temp dir, no persistence
/// (`--save ''`, `--appendonly no`) and a log kept for failure messages. Killed on drop.
///
/// ```no_run
/// let server = lock_testkit::RedisServer::start()?;
/// println!("{}", server.url()); // redis://127.0.0.1:<port>/
/// # Ok::<(), lock_testkit::HarnessError>(())
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// TLS only: the port speaks TLS and nothing else.
    tls: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// # Errors
    /// [`HarnessError::NotInstalled`] when `redis-server` is missing, or
    /// [`HarnessError::NotReady`] with the server's log.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments (e.g.
    /// `["--requirepass", "secret"]`).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn start_with(extra: &[&str]) -> Result<Self, HarnessError> {
        which("redis-server")?;
        let mut last = None;
        for _ in 0..5 {
            let cluster = extra.contains(&"--cluster-enabled");
            let port = free_port(cluster)?;
            let dir = tempfile::tempdir().map_err(|e| HarnessError::Io(e.to_string()))?;
            let mut server = Self {
                child: None,
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                tls: false,
            };
            match server.spawn().and_then(|()| server.declare_fresh()) {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Io("could not start redis-server".into())))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let io = |e: std::io::Error| HarnessError::Io(e.to_string());
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().map_err(io)?);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            let reply = if self.tls {
                // No plain port to PING: the log says when it listens.
                if self.log_tail().contains("Ready to accept connections") {
                    return Ok(());
                }
                Err(HarnessError::Io("not ready".into()))
            } else {
                command(&self.addr(), &["PING"])
            };
            match reply {
                // Ours, not a server another process started on the same port meanwhile (the
                // port was free when picked; ours then exits failing to bind it).
                Ok(Resp::Simple(s)) if s == "PONG" => return self.check_own_process(),
                // A password-protected server answers NOAUTH: it is up.
                Ok(Resp::Error(e)) if e.starts_with("NOAUTH") => return Ok(()),
                _ => {}
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(self.not_ready(format!("the process exited with {status}")));
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!("no PONG within {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server answering on our port is the process we started (`INFO server`'s
    /// `process_id`).
    fn check_own_process(&self) -> Result<(), HarnessError> {
        let Some(pid) = self.pid() else { return Ok(()) };
        let info = command(&self.addr(), &["INFO", "server"])?.text();
        let answering = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
        if answering == Some(pid.to_string().as_str()) {
            Ok(())
        } else {
            Err(self.not_ready(format!(
                "another process answers on the port (process_id {answering:?}, ours {pid})"
            )))
        }
    }

    fn not_ready(&self, reason: String) -> HarnessError {
        HarnessError::NotReady { port: self.port, reason, log: self.log_tail() }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` for a [`RedisServer::start_tls`] server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 40 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs one command on the server (a fresh connection each time).
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> Result<Resp, HarnessError> {
        command(&self.addr(), args)
    }

    /// Kills the process (SIGKILL) and waits for it. Its data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too; no SIGCONT needed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing, like a node
    /// stalled by a GC pause or a VM migration. Commands queue up and run at [`RedisServer::resume`].
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the signal could not be sent.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal("-STOP")
    }

    /// Thaws a [`RedisServer::pause`]d process (SIGCONT).
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the signal could not be sent.
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<(), HarnessError> {
        // Only ever the pid this harness spawned.
        let pid = self.pid().ok_or_else(|| HarnessError::Io("the server is not running".into()))?;
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .map_err(|e| HarnessError::Io(format!("kill {sig} {pid}: {e}")))?;
        if status.success() { Ok(()) } else { Err(HarnessError::Io(format!("kill {sig} {pid}: {status}"))) }
    }

    /// Declares the server fresh (`lockctl init`): writes the data-loss marker
    /// ([`lock_core::scripts::MARKER_KEY`]) if it is missing, so the first acquire on a new
    /// server is not taken for one after data loss. [`RedisServer::start`] does it; a
    /// [`RedisServer::restart`] does not (the restarted server lost its data and must abstain
    /// for its quarantine). A TLS-only server is skipped (no plain port), as is a Cluster node.
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the server cannot be reached or refuses the write.
    pub fn declare_fresh(&self) -> Result<(), HarnessError> {
        if self.tls || self.extra.iter().any(|a| a == "--cluster-enabled") {
            return Ok(());
        }
        let id = &lock_core::Token::random().to_redis_value()[..12];
        let marker = format!("{id}:0");
        let set: &[&str] = &["SET", lock_core::scripts::MARKER_KEY, &marker, "NX"];
        let reply = match self.extra.iter().position(|a| a == "--requirepass") {
            Some(i) => {
                let pass = self.extra.get(i + 1).map_or("", String::as_str);
                crate::resp::commands(&self.addr(), &[&["AUTH", pass], set])?
            }
            None => command(&self.addr(), set)?,
        };
        match reply {
            // A replica takes the marker from its primary.
            Resp::Error(e) if e.starts_with("READONLY") => Ok(()),
            Resp::Error(e) => Err(HarnessError::Io(format!("declaring {} fresh: {e}", self.addr()))),
            _ => Ok(()),
        }
    }

    /// Kills the server if it runs, then starts it again on the same port, empty: it lost its
    /// data, so the first acquire on it starts its quarantine.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }
}

/// The certificates of a [`RedisServer::start_tls`] server, all made at start-up.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TestTls {
    /// The CA that signed the server's certificate (PEM): trust it to connect.
    pub ca_pem: String,
    /// Another CA, which did not sign it (PEM): trusting only this one must fail.
    pub other_ca_pem: String,
}

#[cfg(feature = "tls")]
impl RedisServer {
    /// A TLS-only server (`--port 0 --tls-port <free port>`) with a certificate for
    /// `127.0.0.1`/`localhost` signed by a CA generated on the spot with `rcgen`. Clients need
    /// not present a certificate. [`RedisServer::cmd`] does not work on it (no plain port).
    ///
    /// # Errors
    /// As [`RedisServer::start`], and [`HarnessError::Io`] if the certificates cannot be made.
    pub fn start_tls() -> Result<(Self, TestTls), HarnessError> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let tls_err = |e: rcgen::Error| HarnessError::Io(format!("making test certificates: {e}"));
        let io = |e: std::io::Error| HarnessError::Io(e.to_string());
        which("redis-server")?;
        let ca = |name: &str| -> Result<(rcgen::Certificate, KeyPair), HarnessError> {
            let key = KeyPair::generate().map_err(tls_err)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            Ok((params.self_signed(&key).map_err(tls_err)?, key))
        };
        let (ca_cert, ca_key) = ca("lock-testkit test CA")?;
        let (other_ca, _) = ca("lock-testkit unrelated CA")?;
        let server_key = KeyPair::generate().map_err(tls_err)?;
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(tls_err)?;
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key).map_err(tls_err)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port(false)?;
            let dir = tempfile::tempdir().map_err(io)?;
            let (cert, key, ca_file) =
                (dir.path().join("server.crt"), dir.path().join("server.key"), dir.path().join("ca.crt"));
            std::fs::write(&cert, server_cert.pem()).map_err(io)?;
            std::fs::write(&key, server_key.serialize_pem()).map_err(io)?;
            std::fs::write(&ca_file, ca_cert.pem()).map_err(io)?;
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            let extra = vec![
                "--port".to_string(),
                "0".to_string(),
                "--tls-port".to_string(),
                port.to_string(),
                "--tls-cert-file".to_string(),
                path(&cert),
                "--tls-key-file".to_string(),
                path(&key),
                "--tls-ca-cert-file".to_string(),
                path(&ca_file),
                "--tls-auth-clients".to_string(),
                "no".to_string(),
            ];
            let mut server = Self { child: None, port, dir, extra, tls: true };
            match server.spawn() {
                Ok(()) => {
                    let tls = TestTls { ca_pem: ca_cert.pem(), other_ca_pem: other_ca.pem() };
                    return Ok((server, tls));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Io("could not start a TLS redis-server".into())))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `LOCK_TEST_REDIS_URL` when set, else a freshly spawned server (kept alive by the value).
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// Uses `LOCK_TEST_REDIS_URL` if set (declare that server fresh first with `lockctl init`,
    /// or the first acquire waits out the data-loss quarantine), else spawns a server.
    ///
    /// # Errors
    /// As [`RedisServer::start`] when a server must be spawned.
    pub fn from_env_or_spawn() -> Result<Self, HarnessError> {
        match std::env::var(REDIS_URL_ENV) {
            Ok(url) if !url.is_empty() => Ok(Self { url, server: None }),
            _ => RedisServer::start().map(|s| Self { url: s.url(), server: Some(s) }),
        }
    }

    /// The URL to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The spawned server, when one was spawned.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }
}

/// Starts `n` independent servers.
///
/// # Errors
/// As [`RedisServer::start`].
pub fn start_nodes(n: usize) -> Result<Vec<RedisServer>, HarnessError> {
    (0..n).map(|_| RedisServer::start()).collect()
}

/// A local Redis Cluster of 3 masters (no replicas), made with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

static SHARED_CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());

impl RedisCluster {
    /// Starts 3 cluster-enabled servers, joins them, and waits for `cluster_state:ok`.
    ///
    /// # Errors
    /// [`HarnessError`] when a server or `redis-cli` is missing or the cluster does not form.
    pub fn start() -> Result<Self, HarnessError> {
        which("redis-cli")?;
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "3000",
        ];
        let nodes = (0..3).map(|_| RedisServer::start_with(&args)).collect::<Result<Vec<_>, _>>()?;
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create.output().map_err(|e| HarnessError::Cluster(e.to_string()))?;
        if !out.status.success() {
            return Err(HarnessError::Cluster(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.is_ok() {
            if Instant::now() >= deadline {
                return Err(HarnessError::Cluster("cluster_state did not become ok within 30s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// One cluster shared by every test of this process that holds the returned `Arc`; it is
    /// stopped when the last holder drops it.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn shared() -> Result<Arc<Self>, HarnessError> {
        let mut slot = SHARED_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.upgrade() {
            return Ok(c);
        }
        let c = Arc::new(Self::start()?);
        *slot = Arc::downgrade(&c);
        Ok(c)
    }

    fn is_ok(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.cmd(&["CLUSTER", "INFO"]).is_ok_and(|r| r.text().contains("cluster_state:ok")))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:<port>/` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index in [`RedisCluster::nodes`] of the master that owns `key`'s slot (a channel
    /// name works too: shard channels hash like keys).
    ///
    /// # Errors
    /// [`HarnessError::Cluster`] when no node claims the slot.
    pub fn owner_of(&self, key: &str) -> Result<usize, HarnessError> {
        let first = self.nodes.first().ok_or_else(|| HarnessError::Cluster("no nodes".into()))?;
        let slot = first.cmd(&["CLUSTER", "KEYSLOT", key])?.int().unwrap_or(-1);
        for (i, node) in self.nodes.iter().enumerate() {
            let nodes = node.cmd(&["CLUSTER", "NODES"])?.text();
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else { continue };
            // <id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>
            let owns = me.split_whitespace().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<i64>(), hi.parse::<i64>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if owns {
                return Ok(i);
            }
        }
        Err(HarnessError::Cluster(format!("no node owns slot {slot} of {key:?}")))
    }

    /// Migrates the slot of `key` (its keys included) to the master `target` (an index in
    /// [`RedisCluster::nodes`]), as `redis-cli --cluster reshard` does: IMPORTING on the target,
    /// MIGRATING on the owner, MIGRATE of every key, then SETSLOT NODE on every master.
    ///
    /// # Errors
    /// [`HarnessError::Cluster`] when a step is refused.
    pub fn move_slot_of(&self, key: &str, target: usize) -> Result<(), HarnessError> {
        let owner = self.owner_of(key)?;
        if owner == target {
            return Ok(());
        }
        let node = |i: usize| {
            self.nodes.get(i).ok_or_else(|| HarnessError::Cluster(format!("no node {i} in the cluster")))
        };
        let (from, to) = (node(owner)?, node(target)?);
        let slot = from.cmd(&["CLUSTER", "KEYSLOT", key])?.int().unwrap_or(-1).to_string();
        let (from_id, to_id) = (from.cmd(&["CLUSTER", "MYID"])?.text(), to.cmd(&["CLUSTER", "MYID"])?.text());
        let step = |node: &RedisServer, args: &[&str]| -> Result<Resp, HarnessError> {
            match node.cmd(args)? {
                Resp::Error(e) => Err(HarnessError::Cluster(format!("{args:?}: {e}"))),
                ok => Ok(ok),
            }
        };
        step(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        step(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        loop {
            let keys = match step(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])? {
                Resp::Array(Some(items)) => items.iter().map(Resp::text).collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                break;
            }
            let port = to.port().to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", port.as_str(), "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            step(from, &migrate)?;
        }
        for node in [to, from].into_iter().chain(self.nodes.iter()) {
            step(node, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        }
        Ok(())
    }
}
