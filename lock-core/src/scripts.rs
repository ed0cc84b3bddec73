//! The Lua scripts and key layout shared by every Redis driver.
//!
//! Both drivers run these exact scripts on the same key names, so a lock taken through one
//! driver excludes clients of the other, and a release through one wakes waiters of the other.
//!
//! # Key layout
//! For a lock key `k`, with `t` = `k` escaped so it never starts with `}` or `~` (a leading `}`
//! or `~` gets a `~` before it, which keeps the mapping one-to-one):
//! - `lock:{t}`: the lock; value `<32 hex owner token>:<fence>` (`=` instead of `:` once a
//!   RedLock wrote its quorum's token back), with a PX expiry, and a trailing `!` once it was
//!   refused to somebody (the waiters' mark, see below);
//! - `lock:{t}:fence`: the fencing counter. It **never expires**: it must outlive every
//!   lease to keep fencing tokens increasing. One small integer per key that ever used fencing;
//! - `lock:{t}:released`: the pub/sub channel a release is announced on.
//!
//! Every name carries the hash tag `{t}` (Redis hashes only up to the first `}` after the first
//! `{`; all three names share that prefix), so Redis Cluster never sees CROSSSLOT.
//!
//! One more key per server: the **node marker** [`MARKER_KEY`] (`lock:node`, no expiry), see
//! [`NodeGuard`].
//!
//! # A node that lost its data abstains
//! A Redis server that restarts without persistence, is flushed (`FLUSHALL`) or fails over to
//! an empty replica forgets the locks it granted while their holders still rely on them. The
//! Redlock answer is "delayed restarts": keep the node out for at least the longest TTL. No
//! operator remembers that every time, so the acquire script enforces it on the server:
//! - every node carries the marker `lock:node` = `<12 hex node id>:<open_at>`, with no TTL; a
//!   node with data has it, because the first acquire ever made there (or `lockctl init`, or
//!   [`declare_fresh`]) created it;
//! - every acquire reads it in the same round trip: the acquire script in the same call, or,
//!   for an unfenced lock, a `GET` sent with the plain `SET NX` and run right after it (see
//!   below). When it is **missing**,
//!   the node has lost its data (or was never used and never declared fresh: the two cannot be
//!   told apart from the server's own state), so the script re-creates it with
//!   `open_at = server time + quarantine` and, until then, answers `{2, ms left}`: the driver
//!   turns it into a retryable [`BackendErrorKind::Quarantined`] error that names the time left.
//!   A single-node lock waits (its timeout error names the quarantine); a RedLock counts the
//!   node as a failed vote;
//! - the quarantine is kept on the server and judged by the server's clock, so every client
//!   sees the same one, including clients that never saw the node before. It runs from the
//!   instant the loss was **noticed**, not from the restart: a `FLUSHALL` leaves no trace of
//!   when it happened, so "now" is the only safe bound;
//! - renewals and releases are not affected: leases on a node that lost its data are gone, and
//!   their holders learn it as before (owner mismatch, then `lost()`).
//!
//! Why a marker read **after** a plain `SET NX` is enough: the marker is created only with a
//! running quarantine and set back to `<id>:0` only by a script that found the quarantine over,
//! so reading `<id>:0` after the `SET` means that any data loss before the `SET` was noticed at
//! least a quarantine ago, so every lease granted before it has expired by the time the grant is
//! returned, and a data loss after the `SET` would have taken the marker with it. Anything else
//! (missing, or a quarantine not yet closed) sends the acquire to the script, which decides, and
//! a `SET` it abstains on is deleted again (owner-checked). Both commands go to one connection,
//! the `SET` first, in one round trip, so they run in that order. The same holds for one read
//! placed after several `SET`s: the drivers send the uncontended acquires that arrive together
//! on one server as one pipeline with one marker read behind them ([`crate::coalesce`]).
//!
//! Set the quarantine ([`NodeGuard::quarantine`], the drivers' builders' `quarantine(..)`) to at
//! least the longest TTL any client uses on that server; the script also never uses less than
//! the TTL of the request that noticed the loss. Default: [`DEFAULT_QUARANTINE`] (60 s, twice
//! the default TTL).
//!
//! What the marker cannot see: a restart that reloads an **old snapshot** (the marker survives,
//! the recent locks do not), a **failover to a replica that lagged** (keys lost while the
//! marker replicated long ago), and a `SWAPDB` that swaps in another database holding lock data
//! with an open marker of its own (the read checks that the marker is open, not whose it is; a
//! database without a marker is caught). For the first two, use `appendfsync always` (or
//! delayed restarts) and fencing tokens at the resource; keep `SWAPDB` away from lock servers. Redis Cluster has no per-node marker (a script can only touch
//! one slot), so there the protection is off and the same advice applies.
//!
//! # A release announces itself only when somebody waits
//! Every script that refuses a held lock to a caller that may wait (the acquire, fair, read
//! and write scripts) appends a **waiters' mark** to the lock's value in the same call, and
//! scripts that rewrite a held lock's value keep it: `!` when the waiters wait for the notice
//! on the lock's broadcast channel (the mutex, the read-write lock), `?` when fair waiters may
//! be queued for it (`?` outranks `!`). The release script reads the value it deletes anyway:
//! only a marked lock goes on to the notice and the fair hand-over; an uncontended release is
//! a `GET` and a `DEL`, with no pub/sub or queue probe, and in a Redis Cluster with classic
//! pub/sub no notice crosses the cluster bus. A waiter subscribes before its last try, and
//! that try either takes the lock or marks it, so it never misses the notice of the release
//! it waits for. A grant made while others are still queued behind it (a fair hand-over, a
//! writer that readers wait behind) is marked at once. A lock whose holder vanished is not
//! released at all: waiters find it free when its TTL runs out, as before.
//!
//! The release is sent in its **short form** ([`release`]): the lock key alone, with the token
//! and the pub/sub mode, the textbook compare-and-delete call. It announces a `!`-marked
//! release itself, on `<lock key>:released`. Only the fair hand-over needs the other keys: on
//! a `?`-marked lock the short form changes nothing and the full form follows. Every fair lock
//! is likely marked so: the core releases it through
//! [`crate::LockBackend::release_contended`], which sends the full form at once
//! ([`release_contended`]), so a hand-over costs no extra round trip.
//!
//! # Shared helpers
//! The scripts share Lua helpers, kept once in `lock-core/scripts/common_*.lua` (the pub/sub
//! notice, the server clock, the data-loss marker, fencing tokens, the waiters' mark, taking a
//! lock, the fair queue). The server builds every `local function` of a script anew on each
//! call (about 0.2 us each on the development machine), so each script's text carries only the
//! helpers it uses, in one fixed order, and the release puts them after its fast path. A unit
//! test checks that every helper a script calls is defined before its first call.
//!
//! # Fence counters survive data loss
//! A fencing counter that has to be created (first use, or after data loss) starts from the
//! server's clock in microseconds, so a re-created counter is above every token the lost one
//! gave out, under two assumptions: the key averaged at most one fenced acquisition per
//! microsecond since its counter was made, and the server's clock never steps back (run NTP in
//! slew mode). RedLock's quorum fencing keeps its maximum rule on top of this.

use std::time::Duration;

use crate::backend::{AcquireOutcome, FairOutcome};
use crate::error::{BackendError, BackendErrorKind};
use crate::types::{FencingToken, Grant, LockKey};
use crate::{Instant, Token};

/// A Lua script with its SHA1 digest (for EVALSHA), pinned by a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaScript {
    /// A short name for errors and logs.
    pub name: &'static str,
    /// The script text.
    pub source: &'static str,
    /// The lower-case hex SHA1 of `source`: what `SCRIPT LOAD` returns.
    pub sha1: &'static str,
}

impl LuaScript {
    /// How a driver names one call of this script in an error: the script, its first key (if
    /// any) and the server.
    ///
    /// ```
    /// use lock_core::scripts::RELEASE;
    /// assert_eq!(RELEASE.describe_call(&["lock:{a}"], "127.0.0.1:6379"), "release script on redis key \"lock:{a}\" at 127.0.0.1:6379");
    /// assert_eq!(RELEASE.describe_call(&[], "127.0.0.1:6379"), "release script on redis key \"\" at 127.0.0.1:6379");
    /// ```
    pub fn describe_call(&self, keys: &[&str], endpoint: &str) -> String {
        format!("{} script on redis key {:?} at {endpoint}", self.name, keys.first().copied().unwrap_or(""))
    }
}

/// `acquire.lua`: SET NX PX, or refresh for the same owner, with an optional fence.
/// KEYS: lock, fence, \[marker\]. ARGV: token, ttl ms, `"1"` to fence, guard. Returns `{1, fence}`,
/// `{0, pttl}` or `{2, quarantine ms left}`.
pub const ACQUIRE: LuaScript = LuaScript {
    name: "acquire",
    source: concat!(
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_marker.lua"),
        include_str!("../scripts/common_fence.lua"),
        include_str!("../scripts/common_mark.lua"),
        include_str!("../scripts/common_take.lua"),
        include_str!("../scripts/acquire.lua")
    ),
    sha1: "64d4b7618ea708e3a4e03533f77361be9fd75a40",
};

/// `extend.lua`: owner-checked PEXPIRE. KEYS: lock. ARGV: token, ttl ms. Returns 1 or 0.
pub const EXTEND: LuaScript = LuaScript {
    name: "extend",
    source: include_str!("../scripts/extend.lua"),
    sha1: "c8bfd565593adf19adc8dfcc96e6ebf97a22c1c4",
};

/// `release.lua`: owner-checked DEL; then, unless the channel is empty (a discard) and only
/// when the lock carries the waiters' mark (somebody was refused it, see the module docs), the
/// lock is handed to the head of the fair queue (with a notice to it alone), or, with nobody
/// queued, a notice goes to the broadcast channel. KEYS: lock, queue, waiters, fence. ARGV:
/// token, channel, [`PubSubMode::flag`]. Returns 1 or 0.
///
/// Its **short form** passes the lock key alone, with ARGV token and the
/// [`PubSubMode::flag`] to announce (`""` for a discard): the same command as the textbook
/// release. It does all a release needs, the notice to plain waiters included, but the fair
/// hand-over: when the lock carries the fair waiters' mark and the release announces, it
/// changes nothing and returns 2, and the caller sends the full form ([`release`] does).
///
/// Its text is `release.lua`, then the shared helpers the rest needs, then
/// `release_contended.lua`, so an uncontended release returns before any helper is built.
pub const RELEASE: LuaScript = LuaScript {
    name: "release",
    source: concat!(
        include_str!("../scripts/release.lua"),
        include_str!("../scripts/common_announce.lua"),
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_fence.lua"),
        include_str!("../scripts/common_queue.lua"),
        include_str!("../scripts/release_contended.lua")
    ),
    sha1: "cf16d01dc4fc73ef702fea0b01144ad58c2d1aff",
};

/// `set_many.lua`: the uncontended unfenced acquires of one server that arrive together
/// ([`crate::coalesce`]), as one call: a plain `SET NX PX` per lock, then one `GET` of the
/// node marker behind them, so the server parses one command, and the client sends and reads
/// one, for a whole batch. KEYS: the lock keys, then [`MARKER_KEY`]. ARGV: per lock its value
/// (`<token>:0`) and its TTL in milliseconds. Returns what the pipeline of the same commands
/// would: per lock `OK` or nil, then the marker's value or nil.
pub const SET_MANY: LuaScript = LuaScript {
    name: "set_many",
    source: include_str!("../scripts/set_many.lua"),
    sha1: "0807e24bec668ec83820160d4a3ed3a8e23de9ea",
};

/// `release_many.lua`: the releases of one server that arrive together, in one call
/// ([`crate::coalesce::Releases`]), each decided alone as [`RELEASE`]'s short form decides it. KEYS: per
/// release, the lock key. ARGV: the [`PubSubMode::flag`], then per release the token and `"1"`
/// to announce it (`""` for a discard). Returns one integer per release: 1 released, 0 not
/// held, 2 the full form of [`RELEASE`] is needed (nothing changed), -1 a key of another type.
pub const RELEASE_MANY: LuaScript = LuaScript {
    name: "release_many",
    source: concat!(
        include_str!("../scripts/common_announce.lua"),
        include_str!("../scripts/release_many.lua")
    ),
    sha1: "0f020ca86922c69fd4d638feaf6b507509eb1492",
};

/// `fence.lua`: raise the fencing counter to at least a token (RedLock's write-back) and
/// record it on the lock if this owner holds it. KEYS: lock, fence. ARGV: token, fence.
/// Returns the counter.
pub const FENCE: LuaScript = LuaScript {
    name: "fence",
    source: include_str!("../scripts/fence.lua"),
    sha1: "b57117da900a20fef70f8e9cb06c3d1c4fdf26ba",
};

/// `fair.lua`: the fair lock's acquire: granted only at the head of the queue, else queued
/// (with a waiter deadline) or, for a try, refused without queueing.
/// KEYS: lock, fence, queue, waiters, \[marker\]. ARGV: token,
/// `ttl:fence:wait:mode:guard` (mode: [`PubSubMode::flag`]).
/// Returns `{1, fence}`, `{0, wait ms, ahead}` or `{2, quarantine ms left}`.
pub const FAIR: LuaScript = LuaScript {
    name: "fair",
    source: concat!(
        include_str!("../scripts/common_announce.lua"),
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_marker.lua"),
        include_str!("../scripts/common_fence.lua"),
        include_str!("../scripts/common_mark.lua"),
        include_str!("../scripts/common_take.lua"),
        include_str!("../scripts/common_queue.lua"),
        include_str!("../scripts/fair.lua")
    ),
    sha1: "ed7f2fcf9ae57a0911d9e6783454ea422c74cf8a",
};

/// `leave.lua`: a fair waiter leaves the queue (releasing the lock if a lost reply or a lost
/// hand-over notice gave it to it), and the lock is handed to the head if it is free.
/// KEYS: lock, queue, waiters, fence. ARGV: token, channel, [`PubSubMode::flag`]. Returns 1
/// when it released the lock, else 0.
pub const LEAVE: LuaScript = LuaScript {
    name: "leave",
    source: concat!(
        include_str!("../scripts/common_announce.lua"),
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_fence.lua"),
        include_str!("../scripts/common_queue.lua"),
        include_str!("../scripts/leave.lua")
    ),
    sha1: "62dd72c49a69f08c37190a51a6b857cad335292b",
};

/// `read.lua`: a read lock of a read-write lock: granted unless a writer holds the lock or a
/// live writer waits (a downgrade enters beside its own write lock).
/// KEYS: lock, readers, writers, fence, \[marker\]. ARGV: token, ttl ms, the downgraded writer's
/// token or `""`, guard. Returns `{1, fence}` (the fencing counter's value), `{0, wait ms}` or
/// `{2, quarantine ms left}`.
pub const READ: LuaScript = LuaScript {
    name: "read",
    source: concat!(
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_marker.lua"),
        include_str!("../scripts/common_mark.lua"),
        include_str!("../scripts/read.lua")
    ),
    sha1: "5603b2ba675248b47160cf6fe86bc4189ad4f4f7",
};

/// `write.lua`: the write lock of a read-write lock: the mutex key, granted only when no live
/// reader is left; a writer kept waiting is recorded among the waiting writers.
/// KEYS: lock, fence, readers, writers, \[marker\]. ARGV: token, ttl ms, `"1"` to fence, guard,
/// waiting ms. Returns as [`ACQUIRE`].
pub const WRITE: LuaScript = LuaScript {
    name: "write",
    source: concat!(
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_marker.lua"),
        include_str!("../scripts/common_fence.lua"),
        include_str!("../scripts/common_mark.lua"),
        include_str!("../scripts/common_take.lua"),
        include_str!("../scripts/write.lua")
    ),
    sha1: "adfc8d54714756767a5cf2b3d3058e4336ae8951",
};

/// `permit.lua`: one permit of a semaphore, each permit a lease of its own.
/// KEYS: permits, size, \[marker\]. ARGV: token, ttl ms, size, guard. Returns `{1, 0}`,
/// `{0, wait ms}`, `{2, quarantine ms left}` or `{3, the live size}`.
pub const PERMIT: LuaScript = LuaScript {
    name: "permit",
    source: concat!(
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/common_marker.lua"),
        include_str!("../scripts/permit.lua")
    ),
    sha1: "5dcf128a7a92cca88e47a4a47494116f799ab57f",
};

/// `member.lua`: renew or release one member of a set of holders (readers, waiting writers,
/// permits). KEYS: set, \[size\]. ARGV: token, ttl ms (`"0"` to release), channel,
/// `"1"` to announce only when the set is left empty, [`PubSubMode::flag`]. Returns 1 or 0.
pub const MEMBER: LuaScript = LuaScript {
    name: "member",
    source: concat!(
        include_str!("../scripts/common_announce.lua"),
        include_str!("../scripts/common_clock.lua"),
        include_str!("../scripts/member.lua")
    ),
    sha1: "6d053d324e9ef4281079299f9d490e72b1957ebd",
};

/// `renew.lua`: the watchdog's batch: renew many leases in one call, each decided alone as
/// [`EXTEND`] (a lock key) or [`MEMBER`] (a member of a set) would decide it.
/// KEYS: per lease, the lock key or the set, then the set's companion (or the same key again).
/// ARGV: per lease, `""` (a lock key) or `"m"` (a member), the token, the ttl ms. Returns one
/// integer per lease: 1 renewed, 0 not held, -1 a key of another type.
pub const RENEW: LuaScript = LuaScript {
    name: "renew",
    source: concat!(include_str!("../scripts/common_clock.lua"), include_str!("../scripts/renew.lua")),
    sha1: "3b230c087f473da3eb467c0f7a29e4252b1ef70b",
};

/// How many leases one [`RENEW`] call renews at most: a batch of more is split into several
/// calls (sent at once), so no call keeps the server busy for long.
pub const RENEW_CHUNK: usize = 256;

/// `node.lua`: read the node marker, or declare a server fresh. KEYS: marker. ARGV: `read`,
/// `init` or `force`, a fresh node id. Returns `{node id, quarantine ms left}` (`{0, -1}`: no
/// marker).
pub const NODE: LuaScript = LuaScript {
    name: "node",
    source: include_str!("../scripts/node.lua"),
    sha1: "8354eab7a9e51b6049a3b634482ffc1808a2d413",
};

/// The node marker's key: one per server, no expiry (see the module docs).
pub const MARKER_KEY: &str = "lock:node";

/// The quarantine a node keeps after it lost its data, unless configured: twice the default TTL.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(60);

/// How a driver protects one server against granting a lock twice after data loss (see the
/// module docs). Drivers of a single node (or of each RedLock node) offer it through
/// [`ScriptRunner::node_guard`]; Redis Cluster cannot (one script touches one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGuard {
    quarantine: Duration,
    fresh_id: String,
}

impl NodeGuard {
    /// A guard with this quarantine (at least 1 ms), and a random id for the marker in case this
    /// client is the one to re-create it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let guard = lock_core::scripts::NodeGuard::new(Duration::from_secs(90));
    /// assert_eq!(guard.quarantine(), Duration::from_secs(90));
    /// ```
    pub fn new(quarantine: Duration) -> Self {
        let hex = Token::random().to_redis_value();
        Self { quarantine: quarantine.max(Duration::from_millis(1)), fresh_id: hex[..12].to_string() }
    }

    /// How long a node that lost its data grants nothing.
    pub fn quarantine(&self) -> Duration {
        self.quarantine
    }

    /// The id this client writes when it creates a marker (12 hex digits).
    pub fn fresh_id(&self) -> &str {
        &self.fresh_id
    }
}

impl Default for NodeGuard {
    fn default() -> Self {
        Self::new(DEFAULT_QUARANTINE)
    }
}

/// What [`declare_fresh`] and [`node_status`] read from a server's marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// No marker: a server never used (and never declared fresh), or one that lost its data.
    /// The next acquire starts a quarantine.
    Unmarked,
    /// The node may grant locks. `id` names the server (two names of one server share it).
    Open {
        /// The node id from the marker.
        id: u64,
    },
    /// The node lost its data and grants nothing for `left` more.
    Quarantined {
        /// The node id from the marker.
        id: u64,
        /// The quarantine left, by the server's clock.
        left: Duration,
    },
}

impl NodeStatus {
    /// The node id, when there is a marker.
    pub fn id(&self) -> Option<u64> {
        match *self {
            NodeStatus::Unmarked => None,
            NodeStatus::Open { id } | NodeStatus::Quarantined { id, .. } => Some(id),
        }
    }

    fn from_reply(reply: &[i64]) -> Result<Self, BackendError> {
        match *reply {
            [0, -1] => Ok(NodeStatus::Unmarked),
            [id, 0] if id >= 0 => Ok(NodeStatus::Open { id: id.unsigned_abs() }),
            [id, left] if id >= 0 && left > 0 => Ok(NodeStatus::Quarantined {
                id: id.unsigned_abs(),
                left: Duration::from_millis(left.unsigned_abs()),
            }),
            _ => Err(BackendError::permanent(
                BackendErrorKind::Protocol,
                format!("unexpected reply {reply:?} from the node script"),
            )),
        }
    }
}

/// How [`declare_fresh`] treats a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declare {
    /// Create the marker (open) only if it is missing: for a new server. A running quarantine
    /// is kept.
    IfMissing,
    /// Also lift a running quarantine: only when you know the server kept every lock it
    /// granted (e.g. it restarted from an `appendfsync always` file).
    Force,
}

/// Reads a server's marker without changing anything.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Read-only.
pub async fn node_status<R: ScriptRunner + ?Sized>(runner: &R) -> Result<NodeStatus, BackendError> {
    let guard = runner.node_guard().cloned().unwrap_or_default();
    let args = ["read".to_string(), guard.fresh_id().to_string()];
    NodeStatus::from_reply(&runner.run_ints(&NODE, &[MARKER_KEY], &args).await?)
}

/// [`crate::LockBackend::node_identity`] for a driver with a [`NodeGuard`]: the node id from the
/// marker; `None` without a guard (Cluster) or without a marker.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Read-only.
pub async fn node_identity<R: ScriptRunner + ?Sized>(runner: &R) -> Result<Option<u64>, BackendError> {
    if runner.node_guard().is_none() {
        return Ok(None);
    }
    Ok(node_status(runner).await?.id())
}

/// Declares a server fresh: it has never granted a lock, so it needs no quarantine (what
/// `lockctl init` runs). Without this, the first acquire on a new server cannot tell it from
/// one that lost its data and waits out the quarantine.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Idempotent: a cancelled call can be sent again.
pub async fn declare_fresh<R: ScriptRunner + ?Sized>(
    runner: &R,
    how: Declare,
) -> Result<NodeStatus, BackendError> {
    let guard = runner.node_guard().cloned().unwrap_or_default();
    let mode = match how {
        Declare::IfMissing => "init",
        Declare::Force => "force",
    };
    let args = [mode.to_string(), guard.fresh_id().to_string()];
    NodeStatus::from_reply(&runner.run_ints(&NODE, &[MARKER_KEY], &args).await?)
}

/// The error for a quarantined node, naming how long is left.
pub fn quarantine_error(left: Duration) -> BackendError {
    warn_quarantine(left);
    BackendError::retryable(
        BackendErrorKind::Quarantined,
        format!(
            "the node lost its lock data (its marker `{MARKER_KEY}` was missing: a restart without \
             persistence, FLUSHALL, or a failover to an empty replica; or a new server never \
             declared fresh) and grants no lock for another {:.1} s, until every lease it may have \
             granted before has expired; declare a new server fresh with `lockctl init`",
            left.as_secs_f64()
        ),
    )
}

/// One warning a second at most, however many waiters hit a quarantined node.
fn warn_quarantine(left: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            "a lock node is in quarantine after losing its data; acquisitions on it wait"
        );
    }
}

// The suffixes of a lock's other names, after its lock key (see RedisKeys).
const FENCE_SUFFIX: &str = ":fence";
const CHANNEL_SUFFIX: &str = ":released";
const QUEUE_SUFFIX: &str = ":queue";
const WAITERS_SUFFIX: &str = ":waiters";

/// The Redis names of one lock (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    /// The lock key.
    pub lock: String,
    /// The fencing counter key.
    pub fence: String,
    /// The release notice channel.
    pub channel: String,
    /// The fair lock's queue: owner tokens by arrival.
    pub queue: String,
    /// The fair lock's waiter deadlines: owner tokens by deadline (server ms).
    pub waiters: String,
    /// The fair lock's turn channel: a release that hands the lock to a waiter says so here,
    /// naming the waiter's owner token (see [`parse_hand_over`]).
    pub turn: String,
    /// A read-write lock's readers: owner tokens by expiry (server ms).
    pub readers: String,
    /// A read-write lock's waiting writers: owner tokens by deadline (server ms).
    pub writers: String,
    /// A semaphore's permits: owner tokens by expiry (server ms).
    pub permits: String,
    /// A semaphore's size, kept as long as it has live permits.
    pub size: String,
}

impl RedisKeys {
    /// The names for `key`.
    ///
    /// ```
    /// use lock_core::{LockKey, scripts::RedisKeys};
    /// let k = RedisKeys::for_key(&LockKey::new("orders:42")?);
    /// assert_eq!(k.lock, "lock:{orders:42}");
    /// assert_eq!(k.fence, "lock:{orders:42}:fence");
    /// assert_eq!(k.channel, "lock:{orders:42}:released");
    /// assert_eq!(k.turn, "lock:{orders:42}:turn");
    /// # Ok::<(), lock_core::LockError>(())
    /// ```
    pub fn for_key(key: &LockKey) -> Self {
        let lock = Self::lock_name(key);
        Self {
            fence: concat(&[&lock, FENCE_SUFFIX]),
            channel: concat(&[&lock, CHANNEL_SUFFIX]),
            queue: concat(&[&lock, QUEUE_SUFFIX]),
            waiters: concat(&[&lock, WAITERS_SUFFIX]),
            turn: concat(&[&lock, ":turn"]),
            readers: concat(&[&lock, ":readers"]),
            writers: concat(&[&lock, ":writers"]),
            permits: concat(&[&lock, ":permits"]),
            size: concat(&[&lock, ":size"]),
            lock,
        }
    }

    /// The lock key's name alone ([`RedisKeys::lock`]), without building the others.
    ///
    /// ```
    /// use lock_core::{LockKey, scripts::RedisKeys};
    /// let key = LockKey::new("}odd")?;
    /// assert_eq!(RedisKeys::lock_name(&key), RedisKeys::for_key(&key).lock);
    /// # Ok::<(), lock_core::LockError>(())
    /// ```
    pub fn lock_name(key: &LockKey) -> String {
        let k = key.as_str();
        let escape = if k.starts_with('}') || k.starts_with('~') { "~" } else { "" };
        concat(&["lock:{", escape, k, "}"])
    }

    /// The channel-name prefix common to every lock's release notices.
    pub const CHANNEL_PREFIX: &'static str = "lock:{";
}

/// Reads a message on a lock's turn channel ([`RedisKeys::turn`]): `Some((owner token,
/// hand-over))` when a release handed the lock to the fair waiter with that token
/// (`'g:<token>:<fence>:<deadline>'`, fence 0 when none was minted, the waiter deadline in
/// server ms), `None` for anything else: also the `'g:<token>:<fence>'` of scripts before the
/// deadline was named, which only wakes its waiter (see [`crate::hub::ReleaseHub::deliver`]:
/// it calls, and finds the lock its own).
///
/// ```
/// use lock_core::{HandOver, scripts::parse_hand_over};
/// assert_eq!(
///     parse_hand_over(b"g:0af3:1733300000000001:1733300000123"),
///     Some(("0af3", HandOver { fence: 1_733_300_000_000_001, deadline: 1_733_300_000_123 }))
/// );
/// assert_eq!(parse_hand_over(b"g:0af3:0:5"), Some(("0af3", HandOver { fence: 0, deadline: 5 })));
/// assert_eq!(parse_hand_over(b"g:0af3:7"), None);
/// assert_eq!(parse_hand_over(b"1"), None);
/// assert_eq!(parse_hand_over(b"g:0af3:x:5"), None);
/// ```
pub fn parse_hand_over(message: &[u8]) -> Option<(&str, crate::HandOver)> {
    let (token, handed) = turn_message(message)?;
    Some((token, handed?))
}

/// A turn-channel message in any form a script of this crate sends (`'g:<token>:...'`): the
/// waiter it hands the lock to, and the hand-over when the message is in the current form
/// (see [`parse_hand_over`]); `None` for anything else.
pub(crate) fn turn_message(message: &[u8]) -> Option<(&str, Option<crate::HandOver>)> {
    let rest = std::str::from_utf8(message.strip_prefix(b"g:")?).ok()?;
    let mut parts = rest.split(':');
    let token = parts.next().filter(|t| !t.is_empty())?;
    let handed = match (parts.next(), parts.next(), parts.next()) {
        (Some(fence), Some(deadline), None) => fence
            .parse()
            .ok()
            .zip(deadline.parse().ok())
            .map(|(fence, deadline)| crate::HandOver { fence, deadline }),
        _ => None,
    };
    Some((token, handed))
}

/// The ARGV of [`ACQUIRE`]. The quarantine used is never below the request's TTL.
pub fn acquire_args(token: &Token, ttl: Duration, fencing: bool, guard: Option<&NodeGuard>) -> [String; 4] {
    [
        token.to_redis_value(),
        ttl_millis(ttl).to_string(),
        if fencing { "1" } else { "0" }.to_string(),
        guard_arg(ttl, guard),
    ]
}

/// The marker guard argument of the granting scripts: `<quarantine ms>:<a fresh node id>`.
fn guard_arg(ttl: Duration, guard: Option<&NodeGuard>) -> String {
    let (quarantine, id) =
        guard.map_or((0, "000000000000"), |g| (ttl_millis(g.quarantine().max(ttl)), g.fresh_id()));
    format!("{quarantine}:{id}")
}

/// The ARGV of [`FAIR`]: `wait` is the waiter timeout, `None` for a try that never queues;
/// `mode` is how a hand-over is announced ([`PubSubMode::flag`]).
pub fn fair_args(
    token: &Token,
    ttl: Duration,
    fencing: bool,
    wait: Option<Duration>,
    guard: Option<&NodeGuard>,
    mode: &str,
) -> [String; 2] {
    let [token, ttl_ms, fence, guard] = acquire_args(token, ttl, fencing, guard);
    let wait = wait.map_or(0, ttl_millis);
    [token, format!("{ttl_ms}:{fence}:{wait}:{mode}:{guard}")]
}

/// The ARGV of [`EXTEND`].
pub fn extend_args(token: &Token, ttl: Duration) -> [String; 2] {
    [token.to_redis_value(), ttl_millis(ttl).to_string()]
}

/// The parts joined, in a string allocated once at its final size: the names and values of
/// every lock call are built this way, not with `format!`, whose growing buffer reallocates
/// (a measurable share of the client's CPU under load).
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// The KEYS of [`RELEASE`] (and [`LEAVE`]) for the lock key `lock` (as
/// [`RedisKeys::lock_name`] names it): the lock, its fair queue, its fair waiters' deadlines,
/// its fencing counter. Only these four names are built.
///
/// ```
/// use lock_core::{LockKey, scripts::{RedisKeys, release_keys}};
/// let keys = RedisKeys::for_key(&LockKey::new("orders:42").unwrap());
/// assert_eq!(release_keys(&keys.lock), [keys.lock, keys.queue, keys.waiters, keys.fence]);
/// ```
pub fn release_keys(lock: &str) -> [String; 4] {
    [
        lock.to_string(),
        concat(&[lock, QUEUE_SUFFIX]),
        concat(&[lock, WAITERS_SUFFIX]),
        concat(&[lock, FENCE_SUFFIX]),
    ]
}

/// The ARGV of [`RELEASE`] (and [`LEAVE`]) for the lock key `lock`: the release is announced
/// on the lock's channel the `mode` way ([`PubSubMode::flag`]).
pub fn release_args(token: &Token, lock: &str, mode: &str) -> [String; 3] {
    [token.to_redis_value(), concat(&[lock, CHANNEL_SUFFIX]), mode.into()]
}

/// The ARGV of [`RELEASE`] for a silent discard (no PUBLISH).
pub fn discard_args(token: &Token) -> [String; 3] {
    [token.to_redis_value(), String::new(), String::new()]
}

/// How the scripts announce a release (and a fair lock's hand-over), and so how waiters must
/// subscribe to hear it.
///
/// - [`PubSubMode::Classic`]: `PUBLISH` / `SUBSCRIBE`. Works on every server; in a Redis
///   Cluster the cluster bus carries every notice to every node, however many nodes.
/// - [`PubSubMode::Sharded`]: `SPUBLISH` / `SSUBSCRIBE` (Redis >= 7). A notice stays on the
///   shard that owns the key's slot (the channel shares the key's hash tag, see the module
///   docs), so its cost does not grow with the cluster. The drivers use it in a Redis Cluster
///   whose servers support it, unless told not to.
///
/// All the processes that wait on the same keys should use the same mode: a waiter subscribed
/// the other way does not hear the notice and falls back on its capped backoff and the holder's
/// expiry. That costs latency, never safety: a notice only wakes a waiter to try again.
///
/// ```
/// use lock_core::scripts::PubSubMode;
/// assert_eq!(PubSubMode::default(), PubSubMode::Classic);
/// assert_eq!(PubSubMode::Sharded.to_string(), "sharded (SPUBLISH/SSUBSCRIBE)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PubSubMode {
    /// `PUBLISH` / `SUBSCRIBE`: every server; cluster-wide broadcast in a Cluster.
    #[default]
    Classic,
    /// `SPUBLISH` / `SSUBSCRIBE` on the shard that owns the key (Redis Cluster, Redis >= 7).
    Sharded,
}

impl PubSubMode {
    /// The scripts' mode argument (see `publish_mode` in `common_announce.lua`): `"s"` sharded (published
    /// only when the shard has a subscriber), `"l"` classic on a single server (published only
    /// when it has a subscriber: every subscriber is local), `"c"` classic in a Cluster (always
    /// published: subscribers may be on any node).
    ///
    /// ```
    /// use lock_core::scripts::PubSubMode;
    /// assert_eq!(PubSubMode::Classic.flag(false), "l");
    /// assert_eq!(PubSubMode::Classic.flag(true), "c");
    /// assert_eq!(PubSubMode::Sharded.flag(true), "s");
    /// ```
    pub fn flag(self, cluster: bool) -> &'static str {
        match (self, cluster) {
            (PubSubMode::Sharded, _) => "s",
            (PubSubMode::Classic, false) => "l",
            (PubSubMode::Classic, true) => "c",
        }
    }

    /// The channel the drivers send their one `SPUBLISH` probe to when connecting to a Cluster
    /// (a name under `lock:`, so the documented ACL allows it, that no lock uses).
    pub const PROBE_CHANNEL: &'static str = "lock:pubsub-probe";

    /// The mode a Cluster's answer to that probe allows: sharded when it was taken, classic when
    /// it was refused (Redis < 7, or not allowed for this user) or not answered in time
    /// (`None`).
    ///
    /// ```
    /// use lock_core::scripts::PubSubMode;
    /// assert_eq!(PubSubMode::from_probe(Some(Ok::<i64, String>(0))), PubSubMode::Sharded);
    /// assert_eq!(PubSubMode::from_probe(Some(Err::<i64, _>("ERR unknown command"))), PubSubMode::Classic);
    /// assert_eq!(PubSubMode::from_probe(None::<Result<i64, String>>), PubSubMode::Classic);
    /// ```
    pub fn from_probe<T, E: std::fmt::Display>(answer: Option<Result<T, E>>) -> Self {
        match answer {
            Some(Ok(_)) => PubSubMode::Sharded,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "SPUBLISH refused: release notices use classic pub/sub");
                PubSubMode::Classic
            }
            None => {
                tracing::debug!("SPUBLISH: no reply; release notices use classic pub/sub");
                PubSubMode::Classic
            }
        }
    }
}

/// The mode argument `runner`'s scripts announce with.
fn announce_flag<R: ScriptRunner + ?Sized>(runner: &R) -> &'static str {
    runner.pubsub_mode().flag(runner.cluster())
}

impl std::fmt::Display for PubSubMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PubSubMode::Classic => "classic (PUBLISH/SUBSCRIBE)",
            PubSubMode::Sharded => "sharded (SPUBLISH/SSUBSCRIBE)",
        })
    }
}

/// The ARGV of [`FENCE`].
pub fn fence_args(token: &Token, fence: FencingToken) -> [String; 2] {
    [token.to_redis_value(), fence.0.to_string()]
}

/// The Redis ACL rules a lock user needs, and nothing more: the lock's keys and release
/// channels only, the commands the drivers send (the fast-path `SET`, the scripts by
/// `EVALSHA`/`EVAL`/`SCRIPT LOAD`, pub/sub for waiters, connection set-up) and the commands the
/// scripts run (ACL applies inside scripts too). Create the user with
/// `ACL SETUSER locker on >PASSWORD ` followed by these rules. Add `+info +config|get` if the
/// same user should run the deployment doctor (it reports what it could not read otherwise).
///
/// ```
/// assert!(lock_core::scripts::ACL_RULES.contains("~lock:*"));
/// ```
pub const ACL_RULES: &str = "resetkeys ~lock:* resetchannels &lock:* -@all \
+set +get +del +incr +pexpire +pexpireat +pttl +time +publish +spublish +exists \
+zadd +zrem +zrange +zrangebyscore +zremrangebyscore +zrank +zscore +zcard +evalsha +eval +script|load \
+subscribe +unsubscribe +ssubscribe +sunsubscribe +pubsub|numsub +pubsub|shardnumsub +ping +client|setname +client|id";

/// The time a script's `PTTL` reading (in ms) leaves: 0 is a key in its last millisecond (it
/// expires once the server's clock passes its expiry), so 1 ms, not "unknown"; -1 (no expiry)
/// and -2 (no key) are unknown. A waiter told 1 ms calls again right after the expiry instead
/// of waiting out its backoff.
fn pttl_left(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(|ms| Duration::from_millis(ms.max(1)))
}

/// A TTL in whole milliseconds for PX/PEXPIRE, at least 1 (Redis rejects 0).
pub fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Interprets the reply of [`ACQUIRE`]: `started` is the instant sampled before sending it.
///
/// # Errors
/// [`BackendErrorKind::Protocol`] when the reply is not one the script can give.
pub fn acquire_outcome(
    started: Instant,
    ttl: Duration,
    fencing: bool,
    reply: &[i64],
) -> Result<AcquireOutcome, BackendError> {
    match *reply {
        [1, fence] => {
            let fence = match (fencing, u64::try_from(fence)) {
                (true, Ok(f)) if f > 0 => Some(FencingToken(f)),
                (true, _) => {
                    // Held by this token from an acquisition made without fencing.
                    return Err(BackendError::permanent(
                        BackendErrorKind::Protocol,
                        "the lock is held by this owner without a fencing token",
                    ));
                }
                (false, _) => None,
            };
            Ok(Grant::from_start(started, ttl, fence)
                .map_or(AcquireOutcome::Held { remaining: None }, AcquireOutcome::Acquired))
        }
        [0, pttl] => Ok(AcquireOutcome::Held { remaining: pttl_left(pttl) }),
        [2, left] => Err(quarantine_error(Duration::from_millis(left.unsigned_abs()))),
        _ => Err(BackendError::permanent(
            BackendErrorKind::Protocol,
            format!("unexpected reply {reply:?} from the acquire script"),
        )),
    }
}

/// What a Redis driver provides to run the shared scripts: EVALSHA with its own NOSCRIPT
/// handling, timeouts and error mapping. The operations below ([`acquire`], [`extend`],
/// [`release`], [`raise_fence`]) are written once on top of it, so every driver sends the same
/// commands and reads the replies the same way.
#[async_trait::async_trait]
pub trait ScriptRunner: Send + Sync {
    /// Runs a script whose reply is an array of integers.
    ///
    /// # Errors
    /// The driver's errors, mapped into [`BackendError`].
    async fn run_ints(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[String],
    ) -> Result<Vec<i64>, BackendError>;

    /// Runs a script whose reply is one integer.
    ///
    /// # Errors
    /// The driver's errors, mapped into [`BackendError`].
    async fn run_int(&self, script: &LuaScript, keys: &[&str], args: &[String]) -> Result<i64, BackendError>;

    /// `SET key value NX PX ttl_ms`: `Some(true)` when the key was set, `Some(false)` when it
    /// already existed. [`acquire`] tries it first when no fencing token is asked for, so an
    /// uncontended lock costs the server a plain `SET` instead of a script; anything else (held,
    /// our own token after a lost reply, a key of another type) goes to the [`ACQUIRE`] script.
    /// The default, `None`, means "not offered": the script is used directly.
    ///
    /// # Errors
    /// The driver's errors, mapped into [`BackendError`].
    async fn set_nx_px(&self, key: &str, value: &str, ttl_ms: u64) -> Result<Option<bool>, BackendError> {
        let _ = (key, value, ttl_ms);
        Ok(None)
    }

    /// `SET key value NX PX ttl_ms`, then `GET` of the node marker ([`MARKER_KEY`]), sent
    /// together in one round trip and run in that order on the same connection: whether the key
    /// was set, and the node marker's value as read after it. [`acquire`] tries it first for an
    /// unfenced lock on a node with a data-loss guard: the grant stands only when the marker,
    /// read **after** the `SET`, shows the node open (`<id>:0`); see the module docs for why
    /// that order makes it safe. The drivers of this workspace send it through their
    /// [`crate::coalesce::Coalescer`], with the other acquires of the moment. The default,
    /// `None`, means "not offered": the [`ACQUIRE`] script is used directly.
    ///
    /// # Errors
    /// The driver's errors, mapped into [`BackendError`].
    async fn set_nx_px_then_get(
        &self,
        set: crate::coalesce::SetNx,
    ) -> Result<Option<(bool, Option<String>)>, BackendError> {
        let _ = set;
        Ok(None)
    }

    /// The data-loss guard of this server (see the module docs), or `None` where a script
    /// cannot reach a per-server key (Redis Cluster). With a guard, an acquire checks the
    /// marker in the same round trip: the [`ACQUIRE`] script reads it, or, unfenced, the
    /// marker is read right after a plain `SET NX` ([`ScriptRunner::set_nx_px_then_get`]).
    /// The default is `None`.
    fn node_guard(&self) -> Option<&NodeGuard> {
        None
    }

    /// Whether the server is a Redis Cluster, where one script may only touch keys of one
    /// slot: [`extend_many`] then groups its leases by slot. The default says so exactly when
    /// there is no [`ScriptRunner::node_guard`] (drivers turn the guard off in Cluster), which
    /// is right for the drivers of this workspace and safe for any other (a single server
    /// taken for a Cluster only batches less).
    fn cluster(&self) -> bool {
        self.node_guard().is_none()
    }

    /// How the scripts announce releases on this server (see [`PubSubMode`]); the driver's
    /// subscriber must listen the same way. The default is [`PubSubMode::Classic`].
    fn pubsub_mode(&self) -> PubSubMode {
        PubSubMode::Classic
    }

    /// The batching of the connection the lock key `lock`'s commands go over
    /// ([`crate::coalesce::Batches`]), or `None`, the default: every acquire and release is
    /// its own call. With it, the uncontended acquires and the releases that arrive while two
    /// batches of their kind are out go together ([`ScriptRunner::set_nx_px_then_get`] is the
    /// driver's to route through `sets`; [`release`] uses `releases`, one [`RELEASE_MANY`]
    /// call per batch); a lone one is the same single call as without. A driver that spreads
    /// keys over several connections keeps one per connection and answers the one `lock`'s
    /// commands go over (a release batch's call is made with its first key), so a release
    /// still queues behind an acquire of its key on one connection. Releases are not batched
    /// in a Cluster ([`ScriptRunner::cluster`]), where one script may only touch keys of one
    /// slot.
    fn batches(&self, lock: &str) -> Option<&crate::coalesce::Batches> {
        let _ = lock;
        None
    }
}

/// [`crate::LockBackend::acquire`]: one round trip when the lock is free. Without fencing it
/// is a plain `SET NX PX` storing exactly what the script would (`token:0`): on a guarded node
/// with the marker read right after it in the same round trip
/// ([`ScriptRunner::set_nx_px_then_get`]), in Cluster alone ([`ScriptRunner::set_nx_px`]).
/// When that finds the key taken, the marker not open, or with fencing, the shared [`ACQUIRE`]
/// script decides (it re-acquires for our own token, reports the holder's PTTL, or abstains;
/// a plain `SET` the script then abstains on is taken back).
///
/// # Errors
/// The runner's errors, or a protocol error for an impossible reply.
///
/// # Cancel safety
/// As [`crate::LockBackend::acquire`]: a cancelled acquire may have been applied.
///
/// # Examples
/// A driver implements [`ScriptRunner`]; these functions are its whole `LockBackend`.
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> { Ok(vec![1, 7]) }
/// #     async fn run_int(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<i64, BackendError> { Ok(1) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
/// # let runner = Fake;
/// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
/// let req = AcquireRequest { key, token, ttl: std::time::Duration::from_secs(5), fencing: true };
/// let outcome = lock_core::scripts::acquire(&runner, &req).await?;
/// assert!(matches!(outcome, AcquireOutcome::Acquired(g) if g.fence == Some(FencingToken(7))));
/// # Ok(()) }
/// ```
pub async fn acquire<R: ScriptRunner + ?Sized>(
    runner: &R,
    req: &crate::AcquireRequest,
) -> Result<AcquireOutcome, BackendError> {
    // Only the names this call uses (a lock/unlock cycle builds 6 names, not 22).
    let guard = runner.node_guard();
    // Whether a plain SET of ours may stand on the server unconfirmed by the marker.
    let mut unconfirmed = false;
    if !req.fencing {
        let started = Instant::now();
        let value = req.token.redis_value_with(":0");
        let ttl = ttl_millis(req.ttl);
        let granted = match guard {
            None => runner.set_nx_px(&RedisKeys::lock_name(&req.key), &value, ttl).await? == Some(true),
            Some(_) => match runner
                .set_nx_px_then_get(crate::coalesce::SetNx {
                    key: RedisKeys::lock_name(&req.key),
                    value,
                    ttl_ms: ttl,
                })
                .await?
            {
                Some((set, marker)) => {
                    unconfirmed = set && !marker_open(marker.as_deref());
                    set && !unconfirmed
                }
                None => false,
            },
        };
        if granted {
            return Ok(Grant::from_start(started, req.ttl, None)
                .map_or(AcquireOutcome::Held { remaining: None }, AcquireOutcome::Acquired));
        }
    }
    // The script decides: held by another, ours after a lost reply (or a SET above whose
    // marker was not open: granted once the script finds the node open), or the node abstains.
    let lock = RedisKeys::lock_name(&req.key);
    let args = acquire_args(&req.token, req.ttl, req.fencing, guard);
    let fence = concat(&[&lock, FENCE_SUFFIX]);
    let started = Instant::now();
    let reply = if guard.is_some() {
        runner.run_ints(&ACQUIRE, &[&lock, &fence, MARKER_KEY], &args).await?
    } else {
        runner.run_ints(&ACQUIRE, &[&lock, &fence], &args).await?
    };
    let outcome = acquire_outcome(started, req.ttl, req.fencing, &reply);
    if unconfirmed && outcome.is_err() {
        // The node abstains (it lost its data): take back the SET it should not have granted.
        let _ = release(runner, &req.key, &req.token, false).await;
    }
    outcome
}

/// Whether a node marker read after a grant shows the node open: `<12 hex id>:0`. Missing
/// means the node lost its data since; a non-zero `open_at` means a quarantine that is running
/// or that no script has closed yet (the script decides then).
fn marker_open(marker: Option<&str>) -> bool {
    marker.and_then(|m| m.get(13..)) == Some("0")
}

/// [`crate::LockBackend::extend`] through the shared [`EXTEND`] script: one round trip.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// As [`crate::LockBackend::extend`].
///
/// # Examples
/// A driver implements [`ScriptRunner`]; these functions are its whole `LockBackend`.
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> { Ok(vec![1, 7]) }
/// #     async fn run_int(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<i64, BackendError> { Ok(1) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
/// # let runner = Fake;
/// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
/// let req = ExtendRequest { key, token, ttl: std::time::Duration::from_secs(5) };
/// assert!(matches!(lock_core::scripts::extend(&runner, &req).await?, ExtendOutcome::Extended { .. }));
/// # Ok(()) }
/// ```
pub async fn extend<R: ScriptRunner + ?Sized>(
    runner: &R,
    req: &crate::ExtendRequest,
) -> Result<crate::ExtendOutcome, BackendError> {
    let lock = RedisKeys::lock_name(&req.key);
    let started = Instant::now();
    let reply = runner.run_int(&EXTEND, &[&lock], &extend_args(&req.token, req.ttl)).await?;
    Ok(match (reply, Grant::from_start(started, req.ttl, None)) {
        (1, Some(g)) => crate::ExtendOutcome::Extended { valid_until: g.valid_until },
        _ => crate::ExtendOutcome::NotHeld,
    })
}

/// The Redis Cluster slot of a key: CRC16 of its hash tag (or of the whole key without one),
/// modulo 16384.
///
/// ```
/// use lock_core::scripts::slot;
/// assert_eq!(slot("lock:{orders:42}"), slot("lock:{orders:42}:fence"));
/// assert_eq!(slot("123456789"), 0x31C3 % 16384); // the CRC16/XMODEM check value
/// ```
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter().position(|b| *b == b'}').filter(|close| *close > 0).map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

/// The keys [`RENEW`] touches for one lease (the key or set, and its companion when it has
/// one: a semaphore's size), and its kind argument; only these names are built.
fn renewed_keys(r: &crate::Renewal) -> (String, Option<String>, &'static str) {
    use crate::Members;
    let lock = RedisKeys::lock_name(&r.req.key);
    match r.members {
        None => (lock, None, ""),
        Some(Members::Readers) => (concat(&[&lock, ":readers"]), None, "m"),
        Some(Members::Writers) => (concat(&[&lock, ":writers"]), None, "m"),
        Some(Members::Permits) => (concat(&[&lock, ":permits"]), Some(concat(&[&lock, ":size"])), "m"),
    }
}

/// [`crate::LockBackend::extend_many`] through the shared [`RENEW`] script: the leases are
/// split into calls of at most [`RENEW_CHUNK`] (one per slot and chunk in a Cluster, see
/// [`ScriptRunner::cluster`]), all sent at once, so a batch costs one round trip per node (a
/// pipeline on a multiplexed connection). A call that fails gives its error to its leases
/// alone; a key of another type fails its own lease alone.
///
/// # Errors
/// Per renewal: the runner's errors, or [`BackendErrorKind::WrongType`] naming the key.
///
/// # Cancel safety
/// As [`crate::LockBackend::extend`], per renewal.
///
/// # Examples
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner, RENEW};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, s: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> {
/// #         assert_eq!(s.name, RENEW.name); Ok(vec![1, 0]) }
/// #     async fn run_int(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<i64, BackendError> { Ok(1) }
/// #     fn cluster(&self) -> bool { false }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let runner = Fake;
/// let ttl = std::time::Duration::from_secs(5);
/// let renew = |k: &str| Renewal::key(ExtendRequest { key: LockKey::new(k).unwrap(), token: Token::random(), ttl });
/// let answers = lock_core::scripts::extend_many(&runner, &[renew("a"), renew("b")]).await;
/// assert!(matches!(answers[..], [Ok(ExtendOutcome::Extended { .. }), Ok(ExtendOutcome::NotHeld)]));
/// # }
/// ```
pub async fn extend_many<R: ScriptRunner + ?Sized>(
    runner: &R,
    renewals: &[crate::Renewal],
) -> Vec<Result<crate::ExtendOutcome, BackendError>> {
    let names: Vec<_> = renewals.iter().map(renewed_keys).collect();
    // Which renewals go in one call: in a Cluster, those of one slot.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    if runner.cluster() {
        let mut by_slot: std::collections::HashMap<u16, Vec<usize>> = std::collections::HashMap::new();
        for (i, (set, _, _)) in names.iter().enumerate() {
            by_slot.entry(slot(set)).or_default().push(i);
        }
        groups.extend(by_slot.into_values());
    } else {
        groups.push((0..renewals.len()).collect());
    }
    let calls = groups.iter().flat_map(|g| g.chunks(RENEW_CHUNK)).map(|chunk| {
        let mut keys: Vec<&str> = Vec::with_capacity(chunk.len() * 2);
        let mut args: Vec<String> = Vec::with_capacity(chunk.len() * 3);
        for &i in chunk {
            let (r, (set, companion, kind)) = (&renewals[i], &names[i]);
            keys.extend([set.as_str(), companion.as_deref().unwrap_or(set)]);
            args.extend([kind.to_string(), r.req.token.to_redis_value(), ttl_millis(r.req.ttl).to_string()]);
        }
        async move {
            let started = Instant::now();
            (chunk, started, runner.run_ints(&RENEW, &keys, &args).await)
        }
    });
    let mut out: Vec<Option<Result<crate::ExtendOutcome, BackendError>>> = vec![None; renewals.len()];
    for (chunk, started, reply) in futures::future::join_all(calls).await {
        for (n, &i) in chunk.iter().enumerate() {
            let req = &renewals[i].req;
            out[i] = Some(match &reply {
                Err(e) => Err(e.clone()),
                Ok(codes) => match (codes.get(n), Grant::from_start(started, req.ttl, None)) {
                    (Some(1), Some(g)) => Ok(crate::ExtendOutcome::Extended { valid_until: g.valid_until }),
                    (Some(1 | 0), _) => Ok(crate::ExtendOutcome::NotHeld),
                    (Some(-1), _) => Err(wrong_type(&names[i].0)),
                    (other, _) => Err(BackendError::permanent(
                        BackendErrorKind::Protocol,
                        format!("unexpected reply {other:?} from the renew script for {}", req.key),
                    )),
                },
            });
        }
    }
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(BackendError::permanent(BackendErrorKind::Protocol, "a renewal was not sent"))
            })
        })
        .collect()
}

/// [`crate::LockBackend::release`] (with `announce`) or [`crate::LockBackend::discard`]
/// (without) through the shared [`RELEASE`] script: one round trip of its short form (one key,
/// two arguments), and a second of its full form only when somebody was refused the lock
/// while it was held and the release announces (the full form hands it to the fair queue or
/// publishes the notice).
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// As [`crate::LockBackend::release`]: owner-checked and idempotent.
///
/// # Examples
/// A driver implements [`ScriptRunner`]; these functions are its whole `LockBackend`.
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> { Ok(vec![1, 7]) }
/// #     async fn run_int(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<i64, BackendError> { Ok(1) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
/// # let runner = Fake;
/// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
/// let outcome = lock_core::scripts::release(&runner, &key, &token, true).await?;
/// assert_eq!(outcome, ReleaseOutcome::Released);
/// # Ok(()) }
/// ```
pub async fn release<R: ScriptRunner + ?Sized>(
    runner: &R,
    key: &LockKey,
    token: &Token,
    announce: bool,
) -> Result<crate::ReleaseOutcome, BackendError> {
    let lock = RedisKeys::lock_name(key);
    // The short form first: the lock alone, all a release needs unless fair waiters are
    // queued for it. It changes nothing and answers 2 when the release needs the rest.
    let value = token.to_redis_value();
    let reply = match runner.batches(&lock) {
        Some(batches) if !runner.cluster() => {
            // An acquire of this key cancelled after its SET was taken into another caller's
            // batch is undone by a release like this one: it must not reach the server before
            // that SET (see `coalesce::Coalescer::settled`).
            let _ = crate::deadline::within(SETTLE_LIMIT, batches.sets.settled(&lock, &value)).await;
            let release = crate::coalesce::Release { lock, token: value, announce };
            batches.releases.call(release, |batch| release_batch(runner, batch)).await?
        }
        _ => short_release(runner, &lock, value, announce).await?,
    };
    match reply {
        1 => Ok(crate::ReleaseOutcome::Released),
        2 if announce => full_release(runner, &RedisKeys::lock_name(key), token).await,
        _ => Ok(crate::ReleaseOutcome::NotHeld),
    }
}

/// What a batch script reports of an item whose key holds another type (-1).
fn wrong_type(key: &str) -> BackendError {
    BackendError::permanent(
        BackendErrorKind::WrongType,
        format!("WRONGTYPE: redis key {key:?} holds another type"),
    )
}

/// How long a release waits at most for a `SET` of its key still on its way in a batch
/// ([`crate::coalesce::Coalescer::settled`]): a batch ends within its driver's command timeout
/// unless the caller sending it stopped polling it without dropping it, and then the release
/// goes anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// [`RELEASE`]'s short form for the lock key `lock` and the owner `token` (as stored): its
/// reply, 1, 0 or 2.
async fn short_release<R: ScriptRunner + ?Sized>(
    runner: &R,
    lock: &str,
    token: String,
    announce: bool,
) -> Result<i64, BackendError> {
    let short = [token, if announce { announce_flag(runner) } else { "" }.to_string()];
    runner.run_int(&RELEASE, &[lock], &short).await
}

/// Sends one batch of [`release`]s: a lone one as [`RELEASE`]'s short form, several as one
/// [`RELEASE_MANY`] call. One answer per release: its script reply (1, 0 or 2), or a
/// [`BackendErrorKind::WrongType`] error for a key of another type.
async fn release_batch<R: ScriptRunner + ?Sized>(
    runner: &R,
    mut batch: Vec<crate::coalesce::Release>,
) -> Result<Vec<Result<i64, BackendError>>, BackendError> {
    if batch.len() == 1 {
        let Some(one) = batch.pop() else { return Ok(Vec::new()) };
        return Ok(vec![Ok(short_release(runner, &one.lock, one.token, one.announce).await?)]);
    }
    let mut args = Vec::with_capacity(1 + 2 * batch.len());
    args.push(announce_flag(runner).to_string());
    for r in &mut batch {
        args.extend([std::mem::take(&mut r.token), if r.announce { "1" } else { "" }.to_string()]);
    }
    let keys: Vec<&str> = batch.iter().map(|r| r.lock.as_str()).collect();
    let codes = runner.run_ints(&RELEASE_MANY, &keys, &args).await?;
    Ok(codes
        .into_iter()
        .zip(&batch)
        .map(|(code, r)| match code {
            -1 => Err(wrong_type(&r.lock)),
            code => Ok(code),
        })
        .collect())
}

/// [`crate::LockBackend::release_contended`] through the shared [`RELEASE`] script: its full
/// form at once (one round trip), for a lock somebody was likely refused while it was held,
/// whose release hands it over or announces it.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// As [`crate::LockBackend::release`]: owner-checked and idempotent.
///
/// # Examples
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> { Ok(vec![1, 7]) }
/// #     async fn run_int(&self, _: &LuaScript, keys: &[&str], _: &[String]) -> Result<i64, BackendError> {
/// #         assert_eq!(keys.len(), 4, "the full form"); Ok(1) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
/// # let runner = Fake;
/// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
/// let outcome = lock_core::scripts::release_contended(&runner, &key, &token).await?;
/// assert_eq!(outcome, ReleaseOutcome::Released);
/// # Ok(()) }
/// ```
pub async fn release_contended<R: ScriptRunner + ?Sized>(
    runner: &R,
    key: &LockKey,
    token: &Token,
) -> Result<crate::ReleaseOutcome, BackendError> {
    full_release(runner, &RedisKeys::lock_name(key), token).await
}

/// The full form of [`RELEASE`] for the lock key `lock`, announced.
async fn full_release<R: ScriptRunner + ?Sized>(
    runner: &R,
    lock: &str,
    token: &Token,
) -> Result<crate::ReleaseOutcome, BackendError> {
    let args = release_args(token, lock, announce_flag(runner));
    // The four key names in one string (one allocation, not four; see `concat`).
    let names = concat(&[lock, lock, QUEUE_SUFFIX, lock, WAITERS_SUFFIX, lock, FENCE_SUFFIX]);
    let queue = 2 * lock.len() + QUEUE_SUFFIX.len();
    let waiters = queue + lock.len() + WAITERS_SUFFIX.len();
    let (lock_key, rest) = names.split_at(lock.len());
    let (queue_key, rest) = rest.split_at(queue - lock.len());
    let (waiters_key, fence_key) = rest.split_at(waiters - queue);
    let reply = runner.run_int(&RELEASE, &[lock_key, queue_key, waiters_key, fence_key], &args).await?;
    Ok(if reply == 1 { crate::ReleaseOutcome::Released } else { crate::ReleaseOutcome::NotHeld })
}

/// Interprets the reply of [`FAIR`]: `started` is the instant sampled before sending it.
///
/// # Errors
/// [`BackendErrorKind::Protocol`] when the reply is not one the script can give.
pub fn fair_outcome(
    started: Instant,
    ttl: Duration,
    fencing: bool,
    reply: &[i64],
) -> Result<FairOutcome, BackendError> {
    match *reply {
        // A queueing call names the deadline it set; a try (and an older script) does not.
        [0, wait, ahead, ref deadline @ ..] if deadline.len() <= 1 => Ok(FairOutcome::Waiting {
            ahead: u64::try_from(ahead).unwrap_or(0),
            retry_in: pttl_left(wait),
            deadline: deadline.first().and_then(|d| u64::try_from(*d).ok()),
        }),
        [1, _] | [2, _] => match acquire_outcome(started, ttl, fencing, reply)? {
            AcquireOutcome::Acquired(grant) => Ok(FairOutcome::Acquired(grant)),
            // A grant that arrived with no validity left: not ours in any useful sense.
            AcquireOutcome::Held { remaining } => {
                Ok(FairOutcome::Waiting { ahead: 0, retry_in: remaining, deadline: None })
            }
        },
        _ => Err(BackendError::permanent(
            BackendErrorKind::Protocol,
            format!("unexpected reply {reply:?} from the fair lock script"),
        )),
    }
}

/// [`crate::FairBackend::fair_acquire`] through the shared [`FAIR`] script: one round trip,
/// whether it grants, queues or refuses.
///
/// # Errors
/// The runner's errors, or a protocol error for an impossible reply.
///
/// # Cancel safety
/// As [`crate::FairBackend::fair_acquire`]: a cancelled call may have queued the token or
/// granted the lock; [`leave_queue`] undoes either.
pub async fn fair_acquire<R: ScriptRunner + ?Sized>(
    runner: &R,
    req: &crate::FairRequest,
) -> Result<FairOutcome, BackendError> {
    let keys = RedisKeys::for_key(&req.key);
    let guard = runner.node_guard();
    let args = fair_args(&req.token, req.ttl, req.fencing, req.wait, guard, announce_flag(runner));
    let started = Instant::now();
    let reply = if guard.is_some() {
        runner
            .run_ints(&FAIR, &[&keys.lock, &keys.fence, &keys.queue, &keys.waiters, MARKER_KEY], &args)
            .await?
    } else {
        runner.run_ints(&FAIR, &[&keys.lock, &keys.fence, &keys.queue, &keys.waiters], &args).await?
    };
    fair_outcome(started, req.ttl, req.fencing, &reply)
}

/// [`crate::FairBackend::leave_queue`] through the shared [`LEAVE`] script: one round trip.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Idempotent: a cancelled call can be sent again.
pub async fn leave_queue<R: ScriptRunner + ?Sized>(
    runner: &R,
    key: &LockKey,
    token: &Token,
) -> Result<crate::ReleaseOutcome, BackendError> {
    let lock = RedisKeys::lock_name(key);
    let args = release_args(token, &lock, announce_flag(runner));
    let keys = release_keys(&lock);
    let reply = runner.run_int(&LEAVE, &keys.each_ref().map(String::as_str), &args).await?;
    Ok(if reply == 1 { crate::ReleaseOutcome::Released } else { crate::ReleaseOutcome::NotHeld })
}

/// [`crate::LockBackend::raise_fence`] through the shared [`FENCE`] script: one round trip.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Idempotent: a cancelled call can be sent again.
///
/// # Examples
/// A driver implements [`ScriptRunner`]; these functions are its whole `LockBackend`.
/// ```
/// # use lock_core::scripts::{LuaScript, ScriptRunner};
/// # use lock_core::*;
/// # struct Fake;
/// # #[async_trait::async_trait]
/// # impl ScriptRunner for Fake {
/// #     async fn run_ints(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<Vec<i64>, BackendError> { Ok(vec![1, 7]) }
/// #     async fn run_int(&self, _: &LuaScript, _: &[&str], _: &[String]) -> Result<i64, BackendError> { Ok(1) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BackendError> {
/// # let runner = Fake;
/// let (key, token) = (LockKey::new("k").unwrap(), Token::random());
/// lock_core::scripts::raise_fence(&runner, &key, &token, FencingToken(9)).await?;
/// # Ok(()) }
/// ```
pub async fn raise_fence<R: ScriptRunner + ?Sized>(
    runner: &R,
    key: &LockKey,
    token: &Token,
    fence: FencingToken,
) -> Result<(), BackendError> {
    let keys = RedisKeys::for_key(key);
    runner.run_int(&FENCE, &[&keys.lock, &keys.fence], &fence_args(token, fence)).await.map(|_counter| ())
}

/// Interprets the reply of [`READ`], [`WRITE`] or [`PERMIT`]: `started` is the instant
/// sampled before sending it; `fencing` whether the caller asked for a fence.
///
/// # Errors
/// [`BackendErrorKind::Protocol`] when the reply is not one the script can give.
pub fn hold_outcome(
    started: Instant,
    req: &crate::HoldRequest,
    reply: &[i64],
) -> Result<crate::HoldOutcome, BackendError> {
    use crate::{Hold, HoldOutcome};
    let fence = |f: i64| u64::try_from(f).ok().map(FencingToken);
    let grant = |fence: Option<FencingToken>| {
        Ok(Grant::from_start(started, req.ttl, fence)
            .map_or(HoldOutcome::Held { remaining: None }, HoldOutcome::Acquired))
    };
    match (req.hold, reply) {
        (Hold::Write { .. }, [1, _] | [0, _] | [2, _]) => {
            Ok(match acquire_outcome(started, req.ttl, req.fencing, reply)? {
                AcquireOutcome::Acquired(g) => HoldOutcome::Acquired(g),
                AcquireOutcome::Held { remaining } => HoldOutcome::Held { remaining },
            })
        }
        (Hold::Read { .. }, [1, f]) => grant(if req.fencing { fence(*f) } else { None }),
        (Hold::Permit { .. }, [1, _]) => grant(None),
        (Hold::Read { .. } | Hold::Permit { .. }, [0, wait]) => {
            Ok(HoldOutcome::Held { remaining: pttl_left(*wait) })
        }
        (Hold::Read { .. } | Hold::Permit { .. }, [2, left]) => {
            Err(quarantine_error(Duration::from_millis(left.unsigned_abs())))
        }
        (Hold::Permit { .. }, [3, size]) => {
            Ok(HoldOutcome::SizeMismatch { permits: u32::try_from(*size).unwrap_or(u32::MAX) })
        }
        _ => Err(BackendError::permanent(
            BackendErrorKind::Protocol,
            format!("unexpected reply {reply:?} to a {:?} request", req.hold),
        )),
    }
}

/// [`crate::SharedBackend::acquire_hold`] through the shared [`READ`], [`WRITE`] and
/// [`PERMIT`] scripts: one round trip.
///
/// # Errors
/// The runner's errors, or a protocol error for an impossible reply.
///
/// # Cancel safety
/// As [`crate::SharedBackend::acquire_hold`].
pub async fn acquire_hold<R: ScriptRunner + ?Sized>(
    runner: &R,
    req: &crate::HoldRequest,
) -> Result<crate::HoldOutcome, BackendError> {
    use crate::Hold;
    let keys = RedisKeys::for_key(&req.key);
    let (token, ttl) = (req.token.to_redis_value(), ttl_millis(req.ttl).to_string());
    let started = Instant::now();
    let guard = runner.node_guard();
    let guard_arg = guard_arg(req.ttl, guard);
    let reply = match req.hold {
        Hold::Read { downgrade } => {
            let writer = downgrade.map_or_else(String::new, |t| t.to_redis_value());
            let names = with_marker(guard, vec![&keys.lock, &keys.readers, &keys.writers, &keys.fence]);
            runner.run_ints(&READ, &names, &[token, ttl, writer, guard_arg]).await?
        }
        Hold::Write { wait } => {
            let fence = if req.fencing { "1" } else { "0" }.to_string();
            let args = [token, ttl, fence, guard_arg, wait.map_or(0, ttl_millis).to_string()];
            let names = with_marker(guard, vec![&keys.lock, &keys.fence, &keys.readers, &keys.writers]);
            runner.run_ints(&WRITE, &names, &args).await?
        }
        Hold::Permit { permits } => {
            let names = with_marker(guard, vec![&keys.permits, &keys.size]);
            runner.run_ints(&PERMIT, &names, &[token, ttl, permits.to_string(), guard_arg]).await?
        }
    };
    hold_outcome(started, req, &reply)
}

/// `names`, then the node marker when the runner checks it.
fn with_marker<'a>(guard: Option<&NodeGuard>, mut names: Vec<&'a str>) -> Vec<&'a str> {
    if guard.is_some() {
        names.push(MARKER_KEY);
    }
    names
}

fn member_keys(set: crate::Members, keys: &RedisKeys) -> (Vec<&str>, &'static str) {
    use crate::Members;
    match set {
        Members::Readers => (vec![&keys.readers], "1"),
        Members::Writers => (vec![&keys.writers], "1"),
        Members::Permits => (vec![&keys.permits, &keys.size], "0"),
    }
}

/// [`crate::SharedBackend::extend_member`] through the shared [`MEMBER`] script: one round
/// trip.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Idempotent.
pub async fn extend_member<R: ScriptRunner + ?Sized>(
    runner: &R,
    set: crate::Members,
    req: &crate::ExtendRequest,
) -> Result<crate::ExtendOutcome, BackendError> {
    let keys = RedisKeys::for_key(&req.key);
    let (names, when_empty) = member_keys(set, &keys);
    let args = [
        req.token.to_redis_value(),
        ttl_millis(req.ttl).to_string(),
        String::new(),
        when_empty.into(),
        String::new(),
    ];
    let started = Instant::now();
    let reply = runner.run_int(&MEMBER, &names, &args).await?;
    Ok(match (reply, Grant::from_start(started, req.ttl, None)) {
        (1, Some(g)) => crate::ExtendOutcome::Extended { valid_until: g.valid_until },
        _ => crate::ExtendOutcome::NotHeld,
    })
}

/// [`crate::SharedBackend::release_member`] through the shared [`MEMBER`] script: one round
/// trip; announced on the key's release channel.
///
/// # Errors
/// The runner's errors.
///
/// # Cancel safety
/// Idempotent.
pub async fn release_member<R: ScriptRunner + ?Sized>(
    runner: &R,
    set: crate::Members,
    key: &LockKey,
    token: &Token,
) -> Result<crate::ReleaseOutcome, BackendError> {
    let keys = RedisKeys::for_key(key);
    let (names, when_empty) = member_keys(set, &keys);
    let args = [
        token.to_redis_value(),
        "0".into(),
        keys.channel.clone(),
        when_empty.into(),
        announce_flag(runner).into(),
    ];
    let reply = runner.run_int(&MEMBER, &names, &args).await?;
    Ok(if reply == 1 { crate::ReleaseOutcome::Released } else { crate::ReleaseOutcome::NotHeld })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script of this module.
    const ALL: [LuaScript; 14] = [
        ACQUIRE,
        EXTEND,
        RELEASE,
        RELEASE_MANY,
        SET_MANY,
        FENCE,
        NODE,
        FAIR,
        LEAVE,
        READ,
        WRITE,
        PERMIT,
        MEMBER,
        RENEW,
    ];

    fn sha1_hex(s: &str) -> String {
        sha1_smol::Sha1::from(s).digest().to_string()
    }

    #[test]
    fn script_digests_are_pinned() {
        for script in ALL {
            assert_eq!(sha1_hex(script.source), script.sha1, "{} changed: update its sha1", script.name);
        }
    }

    /// Each script carries only the shared helpers it uses (the server builds every one anew on
    /// each call), so one left out would fail only on the path that calls it: every helper a
    /// script calls must be defined in its text before the first call.
    #[test]
    fn every_helper_a_script_calls_is_defined_before_its_first_use() {
        // Every helper some script defines (the fair script carries them all).
        let mut names: Vec<&str> = ALL
            .iter()
            .flat_map(|script| script.source.lines())
            .filter_map(|l| l.strip_prefix("local function ")?.split('(').next())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 14, "{names:?}");
        let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        for script in ALL {
            let code: String = script
                .source
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            for name in &names {
                let call = format!("{name}(");
                let first =
                    code.match_indices(&call).map(|(i, _)| i).find(|&i| !code[..i].ends_with(is_ident));
                let Some(first) = first else { continue };
                let def = code.find(&format!("local function {call}")).map(|d| d + "local function ".len());
                assert_eq!(
                    def,
                    Some(first),
                    "{}: {name} is called before it is defined (or never is)",
                    script.name
                );
            }
        }
    }

    #[test]
    fn every_name_shares_one_non_empty_hash_tag() {
        for k in ["a", "}x", "~x", "a}b", "{x}", "x{", "}", "~", "~}"] {
            let keys = RedisKeys::for_key(&LockKey::new(k).unwrap());
            let tag = |name: &str| {
                let open = name.find('{').unwrap();
                let close = name[open + 1..].find('}').unwrap() + open + 1;
                name[open + 1..close].to_string()
            };
            let t = tag(&keys.lock);
            assert!(!t.is_empty(), "empty hash tag for {k:?}: {}", keys.lock);
            for name in [&keys.fence, &keys.queue, &keys.readers, &keys.writers, &keys.permits, &keys.size] {
                assert_eq!(t, tag(name), "{k:?}");
            }
        }
    }

    #[test]
    fn escaping_keeps_keys_distinct() {
        let names: std::collections::HashSet<_> = ["}x", "~}x", "~x", "~~x", "x"]
            .iter()
            .map(|k| RedisKeys::for_key(&LockKey::new(k).unwrap()).lock)
            .collect();
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn acquire_replies_are_decoded() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(matches!(
            acquire_outcome(t0, ttl, true, &[1, 7]).unwrap(),
            AcquireOutcome::Acquired(Grant { fence: Some(FencingToken(7)), .. })
        ));
        assert_eq!(
            acquire_outcome(t0, ttl, false, &[0, 1500]).unwrap(),
            AcquireOutcome::Held { remaining: Some(Duration::from_millis(1500)) }
        );
        assert_eq!(
            acquire_outcome(t0, ttl, false, &[0, -1]).unwrap(),
            AcquireOutcome::Held { remaining: None }
        );
        // A holder in its last millisecond: the waiter calls again right after it, not after
        // its backoff.
        assert_eq!(
            acquire_outcome(t0, ttl, false, &[0, 0]).unwrap(),
            AcquireOutcome::Held { remaining: Some(Duration::from_millis(1)) }
        );
        assert!(acquire_outcome(t0, ttl, false, &[2]).is_err());
    }

    #[test]
    fn fair_replies_are_decoded() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            fair_outcome(t0, ttl, false, &[0, 0, 2, 1_733_300_000_123]).unwrap(),
            FairOutcome::Waiting {
                ahead: 2,
                retry_in: Some(Duration::from_millis(1)),
                deadline: Some(1_733_300_000_123)
            }
        );
        // A try (never queued) names no deadline; nor does a reply of an older script.
        assert_eq!(
            fair_outcome(t0, ttl, false, &[0, -1, 3]).unwrap(),
            FairOutcome::Waiting { ahead: 3, retry_in: None, deadline: None }
        );
        assert!(matches!(fair_outcome(t0, ttl, true, &[1, 7]).unwrap(), FairOutcome::Acquired(_)));
        assert!(fair_outcome(t0, ttl, false, &[0, 1, 2, 3, 4]).is_err());
    }
}
