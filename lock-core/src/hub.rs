//! [`ReleaseHub`]: counted release-notice subscriptions, shared by the Redis drivers.
//!
//! A driver owns one pub/sub connection and one hub. Waiters subscribe through
//! [`ReleaseHub::watch`]; the hub counts them per channel and asks the driver's task (through
//! [`HubCommand`]s) to SUBSCRIBE for the first waiter and UNSUBSCRIBE after the last one, so
//! server-side subscriptions are bounded by the keys being waited on, never by the number of
//! waiters or of past waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::backend::{HandOver, ReleaseWatch};

struct Channel {
    notices: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    count: usize,
    /// The tickets of the waiters, in arrival order (the oldest first).
    queue: std::collections::BTreeSet<u64>,
    next_ticket: u64,
    /// The fair waiters on this channel (a lock's turn channel), by owner token: each one is
    /// woken only by the hand-over addressed to it.
    members: HashMap<String, Member>,
}

/// One fair waiter on a turn channel.
struct Member {
    notices: watch::Sender<u64>,
    /// The fence of the hand-over a message announced to it.
    handed: Arc<Mutex<Option<HandOver>>>,
}

struct Inner {
    channels: Mutex<HashMap<String, Channel>>,
    commands: mpsc::UnboundedSender<HubCommand>,
}

impl Inner {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the hub asks the driver's pub/sub task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubCommand {
    /// The first waiter arrived: SUBSCRIBE, then call [`ReleaseHub::confirm`].
    Subscribe(String),
    /// The last waiter left: UNSUBSCRIBE if [`ReleaseHub::is_wanted`] is still false.
    Unsubscribe(String),
}

/// Counted release-notice subscriptions for one pub/sub connection. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use lock_core::hub::{HubCommand, ReleaseHub};
///
/// let (hub, mut commands) = ReleaseHub::new();
/// let driver = hub.clone();
/// tokio::spawn(async move {
///     while let Some(cmd) = commands.recv().await {
///         if let HubCommand::Subscribe(ch) = cmd {
///             driver.confirm(&ch); // after the server confirmed SUBSCRIBE
///         }
///     }
/// });
/// let mut watch = hub.watch("lock:{a}:released", Duration::from_secs(1)).await;
/// hub.notify("lock:{a}:released"); // a message arrived on the channel
/// assert!(watch.wait(Duration::from_secs(1)).await);
/// drop(watch);
/// assert_eq!(hub.active_channels(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct ReleaseHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReleaseHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseHub").field("channels", &self.active_channels()).finish()
    }
}

/// Keeps one waiter counted on a channel; the last one out asks to unsubscribe.
struct Counted {
    inner: Weak<Inner>,
    channel: String,
    ticket: u64,
    member: Option<String>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else { return };
        let mut channels = inner.channels();
        if let Some(ch) = channels.get_mut(&self.channel) {
            if let Some(m) = &self.member {
                ch.members.remove(m);
            }
            ch.queue.remove(&self.ticket);
            ch.count = ch.count.saturating_sub(1);
            if ch.count == 0 {
                channels.remove(&self.channel);
                let _ = inner.commands.send(HubCommand::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

impl ReleaseHub {
    /// A hub and the command stream its driver task must serve.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<HubCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { inner: Arc::new(Inner { channels: Mutex::default(), commands: tx }) }, rx)
    }

    /// Subscribes a waiter to `channel`. Waits, at most `confirm_within`, until the driver
    /// confirmed the subscription, so a notice published after this returns is not missed.
    /// Unconfirmed, the watch still works; the waiter's capped backoff is the fallback.
    ///
    /// # Errors
    /// None: an unconfirmed subscription still returns a working watch.
    ///
    /// # Cancel safety
    /// Cancelling drops the count it took; the last waiter out unsubscribes.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, ReleaseHub};
    /// let (hub, mut commands) = ReleaseHub::new();
    /// let serve = hub.clone();
    /// tokio::spawn(async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         serve.confirm(&ch); // a driver would SUBSCRIBE here
    ///     }
    /// });
    /// let mut watch = hub.watch("lock:{k}:released", Duration::from_secs(1)).await;
    /// hub.notify("lock:{k}:released");
    /// assert!(watch.wait(Duration::from_secs(1)).await);
    /// # }
    /// ```
    pub async fn watch(&self, channel: &str, confirm_within: Duration) -> ReleaseWatch {
        let (slot, ready) = self.register(channel, None);
        let (weak, name, ticket) = (Arc::downgrade(&self.inner), channel.to_string(), slot.keep.ticket);
        let rank = move || {
            weak.upgrade()
                .and_then(|inner| inner.channels().get(&name).map(|ch| ch.queue.range(..ticket).count()))
                .unwrap_or(0)
        };
        confirmed(channel, ready, confirm_within).await;
        slot.into_watch().with_rank(rank)
    }

    /// Subscribes the fair waiter `member` (its owner token) to a lock's turn `channel`, which
    /// it shares with the other waiters of this process on that lock (one subscription per
    /// lock, not per waiter: no SUBSCRIBE per acquisition). Only a hand-over addressed to
    /// `member` wakes it (see [`crate::scripts::parse_hand_over`]), and the watch's
    /// [`ReleaseWatch::handed_over`] then reports the fence. Confirmation as in
    /// [`ReleaseHub::watch`].
    ///
    /// # Errors
    /// None: an unconfirmed subscription still returns a working watch.
    ///
    /// # Cancel safety
    /// As [`ReleaseHub::watch`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, ReleaseHub};
    /// let (hub, mut commands) = ReleaseHub::new();
    /// let serve = hub.clone();
    /// tokio::spawn(async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         serve.confirm(&ch);
    ///     }
    /// });
    /// let mut a = hub.watch_member("lock:{k}:turn", "aa", Duration::from_secs(1)).await;
    /// let mut b = hub.watch_member("lock:{k}:turn", "bb", Duration::from_secs(1)).await;
    /// assert_eq!(hub.active_channels(), 1);
    /// hub.deliver("lock:{k}:turn", b"g:bb:42:1000");
    /// assert!(b.wait(Duration::from_secs(1)).await);
    /// assert_eq!(b.handed_over(), Some(lock_core::HandOver { fence: 42, deadline: 1000 }));
    /// assert!(!a.wait(Duration::from_millis(10)).await, "not addressed to a");
    /// # }
    /// ```
    pub async fn watch_member(&self, channel: &str, member: &str, confirm_within: Duration) -> ReleaseWatch {
        let (slot, ready) = self.register(channel, Some(member));
        confirmed(channel, ready, confirm_within).await;
        slot.into_watch()
    }

    /// [`ReleaseHub::watch_member`] when `channel` is already subscribed and confirmed (no
    /// command to send, nothing to wait for); else `None`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, ReleaseHub};
    /// let (hub, mut commands) = ReleaseHub::new();
    /// let serve = hub.clone();
    /// tokio::spawn(async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         serve.confirm(&ch);
    ///     }
    /// });
    /// assert!(hub.watch_member_now("lock:{k}:turn", "aa").is_none(), "not subscribed yet");
    /// let _a = hub.watch_member("lock:{k}:turn", "aa", Duration::from_secs(1)).await;
    /// let mut b = hub.watch_member_now("lock:{k}:turn", "bb").expect("already subscribed");
    /// hub.deliver("lock:{k}:turn", b"g:bb:7:1000");
    /// assert!(b.wait(Duration::from_secs(1)).await);
    /// # }
    /// ```
    pub fn watch_member_now(&self, channel: &str, member: &str) -> Option<ReleaseWatch> {
        let mut channels = self.inner.channels();
        if !channels.get(channel).is_some_and(|ch| *ch.ready.borrow()) {
            return None;
        }
        // Under the same lock: the subscription cannot go away between the check and the count.
        let (slot, _) = self.register_in(&mut channels, channel, Some(member));
        drop(channels);
        Some(slot.into_watch())
    }

    /// Counts one more waiter on `channel` (asking the driver to SUBSCRIBE for the first one),
    /// with its own slot when it is a fair waiter `member`.
    fn register(&self, channel: &str, member: Option<&str>) -> (Slot, watch::Receiver<bool>) {
        self.register_in(&mut self.inner.channels(), channel, member)
    }

    fn register_in(
        &self,
        channels: &mut HashMap<String, Channel>,
        channel: &str,
        member: Option<&str>,
    ) -> (Slot, watch::Receiver<bool>) {
        let ch = channels.entry(channel.to_string()).or_insert_with(|| {
            let _ = self.inner.commands.send(HubCommand::Subscribe(channel.to_string()));
            Channel {
                notices: watch::channel(0).0,
                ready: watch::channel(false).0,
                count: 0,
                queue: std::collections::BTreeSet::new(),
                next_ticket: 0,
                members: HashMap::new(),
            }
        });
        ch.count += 1;
        let ticket = ch.next_ticket;
        ch.next_ticket += 1;
        ch.queue.insert(ticket);
        let (notices, handed) = match member {
            Some(m) => {
                let m = ch
                    .members
                    .entry(m.to_string())
                    .or_insert_with(|| Member { notices: watch::channel(0).0, handed: Arc::default() });
                (m.notices.subscribe(), Some(Arc::clone(&m.handed)))
            }
            None => (ch.notices.subscribe(), None),
        };
        let keep = Counted {
            inner: Arc::downgrade(&self.inner),
            channel: channel.to_string(),
            ticket,
            member: member.map(str::to_string),
        };
        (Slot { notices, handed, keep }, ch.ready.subscribe())
    }

    /// Whether any waiter wants `channel` now.
    pub fn is_wanted(&self, channel: &str) -> bool {
        self.inner.channels().contains_key(channel)
    }

    /// Every channel some waiter wants now.
    pub fn wanted(&self) -> Vec<String> {
        self.inner.channels().keys().cloned().collect()
    }

    /// The driver confirmed SUBSCRIBE for `channel`.
    pub fn confirm(&self, channel: &str) {
        if let Some(ch) = self.inner.channels().get(channel) {
            ch.ready.send_replace(true);
        }
    }

    /// A release notice arrived on `channel`: wake its waiters.
    pub fn notify(&self, channel: &str) {
        self.deliver(channel, b"");
    }

    /// A message arrived on `channel`: a hand-over (see [`crate::scripts::parse_hand_over`])
    /// wakes the fair waiter it names, if it is one of this hub's, and nobody else (a
    /// hand-over in an older script's form, `'g:<token>:<fence>'`, wakes it too, with nothing
    /// to take: it calls, and finds the lock its own); any other message wakes the channel's
    /// plain waiters (as [`ReleaseHub::notify`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, ReleaseHub};
    /// let (hub, mut commands) = ReleaseHub::new();
    /// let serve = hub.clone();
    /// tokio::spawn(async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         serve.confirm(&ch);
    ///     }
    /// });
    /// let mut watch = hub.watch("lock:{k}:released", Duration::from_secs(1)).await;
    /// hub.deliver("lock:{k}:released", b"1");
    /// assert!(watch.wait(Duration::from_secs(1)).await);
    /// assert_eq!(watch.handed_over(), None);
    /// let mut waiter = hub.watch_member("lock:{k}:turn", "aa", Duration::from_secs(1)).await;
    /// hub.deliver("lock:{k}:turn", b"g:aa:42");
    /// assert!(waiter.wait(Duration::from_secs(1)).await, "an older script's hand-over wakes its waiter");
    /// assert_eq!(waiter.handed_over(), None, "with nothing to take");
    /// # }
    /// ```
    pub fn deliver(&self, channel: &str, message: &[u8]) {
        let channels = self.inner.channels();
        let Some(ch) = channels.get(channel) else { return };
        let Some((token, handed)) = crate::scripts::turn_message(message) else {
            ch.notices.send_modify(|n| *n = n.wrapping_add(1));
            return;
        };
        if let Some(m) = ch.members.get(token) {
            if handed.is_some() {
                *m.handed.lock().unwrap_or_else(|p| p.into_inner()) = handed;
            }
            m.notices.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The pub/sub connection broke: subscriptions are unconfirmed until it is back.
    pub fn disconnected(&self) {
        for ch in self.inner.channels().values() {
            ch.ready.send_replace(false);
        }
    }

    /// The connection is back and `resubscribed` were subscribed again: confirm them, and wake
    /// every waiter once, since notices sent while disconnected were lost.
    pub fn reconnected(&self, resubscribed: &[String]) {
        for (name, ch) in self.inner.channels().iter() {
            if resubscribed.contains(name) {
                ch.ready.send_replace(true);
            }
            ch.notices.send_modify(|n| *n = n.wrapping_add(1));
            for m in ch.members.values() {
                m.notices.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// How many channels have at least one waiter.
    pub fn active_channels(&self) -> usize {
        self.inner.channels().len()
    }
}

/// One registered waiter: its notices (the channel's, or its own as a fair waiter) and the
/// count that keeps the subscription.
struct Slot {
    notices: watch::Receiver<u64>,
    handed: Option<Arc<Mutex<Option<HandOver>>>>,
    keep: Counted,
}

impl Slot {
    fn into_watch(self) -> ReleaseWatch {
        let watch = ReleaseWatch::with_keep(self.notices, self.keep);
        match self.handed {
            Some(handed) => watch.with_handover(move || *handed.lock().unwrap_or_else(|p| p.into_inner())),
            None => watch,
        }
    }
}

/// Waits, at most `within`, until the driver confirmed the subscription of `channel`.
async fn confirmed(channel: &str, mut ready: watch::Receiver<bool>, within: Duration) {
    if tokio::time::timeout(within, ready.wait_for(|r| *r)).await.is_err() {
        debug!(channel, "release subscription not confirmed in time");
    }
}

/// A [`ReleaseHub`] with the driver task that serves it: the task is aborted when this is
/// dropped (with the last clone of the backend that owns it).
pub struct HubTask {
    hub: ReleaseHub,
    task: tokio::task::AbortHandle,
    confirm_within: Duration,
}

impl std::fmt::Debug for HubTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTask").field("hub", &self.hub).finish()
    }
}

impl HubTask {
    /// Creates a hub and spawns `serve(hub, commands)` on the current runtime: the driver's
    /// loop that runs SUBSCRIBE/UNSUBSCRIBE and feeds notices into the hub.
    pub fn spawn<F, Fut>(confirm_within: Duration, serve: F) -> Self
    where
        F: FnOnce(ReleaseHub, mpsc::UnboundedReceiver<HubCommand>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (hub, commands) = ReleaseHub::new();
        let task = tokio::spawn(serve(hub.clone(), commands)).abort_handle();
        Self { hub, task, confirm_within }
    }

    /// Subscribes a waiter (see [`ReleaseHub::watch`]).
    ///
    /// # Errors
    /// None, as [`ReleaseHub::watch`].
    ///
    /// # Cancel safety
    /// As [`ReleaseHub::watch`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, HubTask};
    /// let task = HubTask::spawn(Duration::from_millis(100), |hub, mut commands| async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         hub.confirm(&ch);
    ///     }
    /// });
    /// let _watch = task.watch("lock:{k}:released").await;
    /// assert_eq!(task.active_channels(), 1);
    /// # }
    /// ```
    pub async fn watch(&self, channel: &str) -> ReleaseWatch {
        self.hub.watch(channel, self.confirm_within).await
    }

    /// [`ReleaseHub::watch_member_now`] on this task's hub.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, HubTask};
    /// let task = HubTask::spawn(Duration::from_millis(100), |hub, mut commands| async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         hub.confirm(&ch);
    ///     }
    /// });
    /// assert!(task.watch_member_now("lock:{k}:turn", "aa").is_none());
    /// let _a = task.watch_member("lock:{k}:turn", "aa").await;
    /// assert!(task.watch_member_now("lock:{k}:turn", "bb").is_some());
    /// # }
    /// ```
    pub fn watch_member_now(&self, channel: &str, member: &str) -> Option<ReleaseWatch> {
        self.hub.watch_member_now(channel, member)
    }

    /// Subscribes a fair waiter (see [`ReleaseHub::watch_member`]).
    ///
    /// # Errors
    /// None, as [`ReleaseHub::watch_member`].
    ///
    /// # Cancel safety
    /// As [`ReleaseHub::watch`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use lock_core::hub::{HubCommand, HubTask};
    /// let task = HubTask::spawn(Duration::from_millis(100), |hub, mut commands| async move {
    ///     while let Some(HubCommand::Subscribe(ch)) = commands.recv().await {
    ///         hub.confirm(&ch);
    ///     }
    /// });
    /// let _a = task.watch_member("lock:{k}:turn", "aa").await;
    /// let _b = task.watch_member("lock:{k}:turn", "bb").await;
    /// assert_eq!(task.active_channels(), 1);
    /// # }
    /// ```
    pub async fn watch_member(&self, channel: &str, member: &str) -> ReleaseWatch {
        self.hub.watch_member(channel, member, self.confirm_within).await
    }

    /// How many channels have at least one waiter.
    pub fn active_channels(&self) -> usize {
        self.hub.active_channels()
    }
}

impl Drop for HubTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
