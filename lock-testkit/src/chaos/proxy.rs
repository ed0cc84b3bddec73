//! A TCP fault proxy: sits between clients and one Redis node and misbehaves on demand.
//!
//! Each client gets its own *lane* (a listening port) so faults can be aimed at some clients and
//! not others: that is how asymmetric partitions are built. Modes switch while traffic flows.
//!
//! A TCP stream cannot lose bytes in its middle and carry on: a real network that drops replies
//! or blackholes a peer ends with the connection timing out or being reset. So a connection
//! that lost bytes (in [`ProxyMode::DropReplies`] or [`ProxyMode::Blackhole`]) is reset when its
//! lane leaves that mode; it is never handed back to the client out of step with the server,
//! which would make a driver match replies to the wrong requests.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! use lock_testkit::{FaultProxy, ProxyMode, RedisServer};
//!
//! let server = RedisServer::start().expect("redis-server");
//! let proxy = FaultProxy::start(server.addr().parse().expect("addr")).await?;
//! let alice = proxy.lane("alice").await?; // connect alice's client here
//! let bob = proxy.lane("bob").await?;
//! // Alice's replies now take 100 ms longer; Bob is not affected.
//! proxy.set_lane_mode("alice", ProxyMode::Latency { up: Duration::ZERO, down: Duration::from_millis(100) });
//! # let _ = (alice, bob); Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a lane does to the traffic through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward everything at once.
    #[default]
    Pass,
    /// Forward everything, late: `up` is added to requests, `down` to replies. Order is kept.
    Latency {
        /// Added to every chunk from client to server.
        up: Duration,
        /// Added to every chunk from server to client.
        down: Duration,
    },
    /// Forward requests (the server runs them) and discard the replies.
    DropReplies,
    /// Accept connections and keep them open, but forward nothing either way.
    Blackhole,
    /// Reset every open connection and every new one at once.
    Reset,
}

impl ProxyMode {
    fn loses_bytes(self) -> bool {
        matches!(self, ProxyMode::DropReplies | ProxyMode::Blackhole)
    }
}

/// Counters of what a proxy did, for proving that faults really happened (C8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Chunks forwarded late (a [`ProxyMode::Latency`] with a non-zero delay).
    pub delayed: u64,
    /// Chunks discarded ([`ProxyMode::DropReplies`] or [`ProxyMode::Blackhole`]).
    pub dropped: u64,
    /// Connections reset by the proxy.
    pub resets: u64,
}

impl ProxyStats {
    /// Delayed + dropped + resets: the faults this proxy injected.
    pub fn faults(&self) -> u64 {
        self.delayed + self.dropped + self.resets
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    resets: AtomicU64,
}

struct Lane {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
}

struct Inner {
    upstream: SocketAddr,
    lanes: Mutex<HashMap<String, Lane>>,
    counters: Counters,
    tasks: Mutex<JoinSet<()>>,
}

/// A fault-injecting TCP proxy in front of one upstream address. Dropping it closes every lane
/// and connection.
pub struct FaultProxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("upstream", &self.inner.upstream).finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream` (a loopback address), with no lane yet.
    ///
    /// # Errors
    /// None today; kept fallible so that a future check of the upstream stays compatible.
    ///
    /// # Cancel safety
    /// Nothing is opened until [`FaultProxy::lane`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// let proxy = lock_testkit::FaultProxy::start("127.0.0.1:6379".parse().unwrap()).await?;
    /// assert_eq!(proxy.stats().faults(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                upstream,
                lanes: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                tasks: Mutex::new(JoinSet::new()),
            }),
        })
    }

    /// The address this proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// The listening address of the lane `name`, opened on a free loopback port on first use.
    /// Connect one client (or one group of clients) to it; its mode is set by name.
    ///
    /// # Errors
    /// The loopback listener could not be bound.
    ///
    /// # Cancel safety
    /// Cancel-safe: a lane is registered only once its listener is bound.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// use lock_testkit::{FaultProxy, ProxyMode};
    /// let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).await?;
    /// let alice = proxy.lane("alice").await?;
    /// assert_eq!(proxy.lane("alice").await?, alice, "one lane per name");
    /// assert!(proxy.set_lane_mode("alice", ProxyMode::Blackhole));
    /// # Ok(()) }
    /// ```
    pub async fn lane(&self, name: &str) -> io::Result<SocketAddr> {
        if let Some(lane) = lock(&self.inner.lanes).get(name) {
            return Ok(lane.addr);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        lock(&self.inner.lanes).insert(name.to_string(), Lane { addr, mode });
        let inner = Arc::clone(&self.inner);
        lock(&self.inner.tasks).spawn(accept_loop(listener, rx, inner));
        Ok(addr)
    }

    /// Sets the mode of every lane.
    pub fn set_mode(&self, mode: ProxyMode) {
        for lane in lock(&self.inner.lanes).values() {
            lane.mode.send_replace(mode);
        }
    }

    /// Sets the mode of one lane. Returns `false` when there is no lane of that name.
    pub fn set_lane_mode(&self, name: &str, mode: ProxyMode) -> bool {
        match lock(&self.inner.lanes).get(name) {
            Some(lane) => {
                lane.mode.send_replace(mode);
                true
            }
            None => false,
        }
    }

    /// The current mode of a lane.
    pub fn lane_mode(&self, name: &str) -> Option<ProxyMode> {
        lock(&self.inner.lanes).get(name).map(|l| *l.mode.borrow())
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.inner.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        lock(&self.inner.tasks).abort_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, mode: watch::Receiver<ProxyMode>, inner: Arc<Inner>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                inner.counters.connections.fetch_add(1, Ordering::Relaxed);
                conns.spawn(serve(client, mode.clone(), Arc::clone(&inner)));
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

fn reset(stream: &TcpStream, inner: &Inner) {
    let _ = stream.set_zero_linger();
    inner.counters.resets.fetch_add(1, Ordering::Relaxed);
}

async fn serve(client: TcpStream, mut mode: watch::Receiver<ProxyMode>, inner: Arc<Inner>) {
    let _ = client.set_nodelay(true);
    // Zero linger on both sockets: when the proxy drops a connection, both peers see a reset.
    let _ = client.set_zero_linger();
    if *mode.borrow_and_update() == ProxyMode::Reset {
        reset(&client, &inner);
        return;
    }
    let Ok(server) = TcpStream::connect(inner.upstream).await else {
        reset(&client, &inner);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_zero_linger();
    let tainted = Arc::new(AtomicBool::new(false));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(cr, sw, Dir::Up, mode.clone(), Arc::clone(&tainted), Arc::clone(&inner)));
    pumps.spawn(pump(sr, cw, Dir::Down, mode.clone(), Arc::clone(&tainted), Arc::clone(&inner)));
    let mut last = *mode.borrow();
    loop {
        tokio::select! {
            // One side closed: close the other too (dropping the set aborts the survivor).
            _ = pumps.join_next() => return,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *mode.borrow_and_update();
                let resync = last.loses_bytes() && !now.loses_bytes() && tainted.load(Ordering::SeqCst);
                if now == ProxyMode::Reset || resync {
                    inner.counters.resets.fetch_add(1, Ordering::Relaxed);
                    // The halves hold the sockets (zero linger on the server side): aborting the
                    // pumps drops them, so both peers see the connection end at once.
                    pumps.abort_all();
                    return;
                }
                last = now;
            }
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    mode: watch::Receiver<ProxyMode>,
    tainted: Arc<AtomicBool>,
    inner: Arc<Inner>,
) {
    // Chunks go through a queue with their due time, so latency delays without throttling and
    // a change of delay never reorders bytes.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match *mode.borrow() {
                ProxyMode::Pass => Duration::ZERO,
                ProxyMode::Latency { up, down } => match dir {
                    Dir::Up => up,
                    Dir::Down => down,
                },
                ProxyMode::DropReplies if dir == Dir::Up => Duration::ZERO,
                ProxyMode::DropReplies | ProxyMode::Blackhole | ProxyMode::Reset => {
                    tainted.store(true, Ordering::SeqCst);
                    inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if !delay.is_zero() {
                inner.counters.delayed.fetch_add(1, Ordering::Relaxed);
            }
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
        // Dropping `tx` lets the writer flush what is queued and shut down.
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn pass_latency_drop_and_reset() {
        let (up, _srv) = echo_server().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let a = proxy.lane("a").await.unwrap();
        let b = proxy.lane("b").await.unwrap();
        assert_eq!(proxy.lane("a").await.unwrap(), a, "a lane is opened once");
        let mut sa = TcpStream::connect(a).await.unwrap();
        let mut sb = TcpStream::connect(b).await.unwrap();
        assert_eq!(roundtrip(&mut sa, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));

        // Latency on lane a only: a's echo is late, b's is not.
        proxy.set_lane_mode("a", ProxyMode::Latency { up: Duration::ZERO, down: Duration::from_millis(150) });
        let t = Instant::now();
        assert!(roundtrip(&mut sa, Duration::from_secs(2)).await.is_some());
        assert!(t.elapsed() >= Duration::from_millis(150));
        let t = Instant::now();
        assert!(roundtrip(&mut sb, Duration::from_secs(2)).await.is_some());
        assert!(t.elapsed() < Duration::from_millis(150));
        assert!(proxy.stats().delayed >= 1);

        // Dropped replies: nothing comes back; leaving the mode resets the connection.
        proxy.set_lane_mode("a", ProxyMode::DropReplies);
        assert!(roundtrip(&mut sa, Duration::from_millis(200)).await.is_none());
        proxy.set_lane_mode("a", ProxyMode::Pass);
        let mut buf = [0u8; 8];
        let end = tokio::time::timeout(Duration::from_secs(2), sa.read(&mut buf)).await.unwrap();
        assert!(matches!(end, Ok(0) | Err(_)), "a desynchronised connection is closed: {end:?}");
        assert!(proxy.stats().dropped >= 1 && proxy.stats().resets >= 1);

        // A fresh connection works again; Reset kills it, b is untouched.
        let mut sa = TcpStream::connect(a).await.unwrap();
        assert!(roundtrip(&mut sa, Duration::from_secs(2)).await.is_some());
        proxy.set_lane_mode("a", ProxyMode::Reset);
        let end = tokio::time::timeout(Duration::from_secs(2), sa.read(&mut buf)).await.unwrap();
        assert!(matches!(end, Ok(0) | Err(_)));
        assert!(roundtrip(&mut sb, Duration::from_secs(2)).await.is_some());
    }

    #[tokio::test]
    async fn blackhole_keeps_the_socket_open_and_forwards_nothing() {
        let (up, _srv) = echo_server().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let a = proxy.lane("a").await.unwrap();
        proxy.set_mode(ProxyMode::Blackhole);
        let mut sa = TcpStream::connect(a).await.unwrap();
        assert!(roundtrip(&mut sa, Duration::from_millis(200)).await.is_none());
        assert_eq!(proxy.lane_mode("a"), Some(ProxyMode::Blackhole));
        assert!(proxy.stats().dropped >= 1);
        assert!(!proxy.set_lane_mode("nobody", ProxyMode::Pass));
    }
}
