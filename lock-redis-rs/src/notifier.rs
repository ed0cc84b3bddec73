//! Release notices over one shared pub/sub connection per backend.
//!
//! Waiters subscribe to a lock's release channel through [`Notifier::watch`]. Subscriptions are
//! counted per channel: the first waiter sends SUBSCRIBE, the last one to leave sends
//! UNSUBSCRIBE, so the number of server-side subscriptions is bounded by the number of keys
//! being waited on, never by the number of waiters or of past waits.
//!
//! After a reconnect every wanted channel is subscribed again and every waiter is woken once,
//! since notices sent while disconnected were lost; waiters then simply retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use lock_core::ReleaseWatch;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

struct Channel {
    notices: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    count: usize,
}

#[derive(Default)]
struct Registry {
    channels: HashMap<String, Channel>,
}

struct Shared {
    registry: Mutex<Registry>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Owns the pub/sub task; dropping the last clone of the backend stops it.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    task: AbortHandle,
    confirm_within: Duration,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one waiter counted on a channel; the last one out unsubscribes.
struct Subscription {
    shared: Weak<Shared>,
    channel: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else { return };
        let mut reg = shared.registry();
        if let Some(ch) = reg.channels.get_mut(&self.channel) {
            ch.count = ch.count.saturating_sub(1);
            if ch.count == 0 {
                reg.channels.remove(&self.channel);
                let _ = shared.commands.send(Command::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

impl Notifier {
    /// Starts the pub/sub task for `client` on the current runtime.
    pub(crate) fn start(client: redis::Client, confirm_within: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { registry: Mutex::default(), commands: tx });
        let task = tokio::spawn(run(client, Arc::downgrade(&shared), rx, confirm_within)).abort_handle();
        Self { shared, task, confirm_within }
    }

    /// Subscribes to `channel`, waiting (bounded) until the server confirmed the subscription,
    /// so a release published after this returns is not missed.
    pub(crate) async fn watch(&self, channel: &str) -> ReleaseWatch {
        let (notices, mut ready) = {
            let mut reg = self.shared.registry();
            let ch = reg.channels.entry(channel.to_string()).or_insert_with(|| {
                let _ = self.shared.commands.send(Command::Subscribe(channel.to_string()));
                Channel { notices: watch::channel(0).0, ready: watch::channel(false).0, count: 0 }
            });
            ch.count += 1;
            (ch.notices.subscribe(), ch.ready.subscribe())
        };
        let keep = Subscription { shared: Arc::downgrade(&self.shared), channel: channel.to_string() };
        if tokio::time::timeout(self.confirm_within, ready.wait_for(|r| *r)).await.is_err() {
            // Unconfirmed: the waiter still has its capped, jittered wait as a fallback.
            debug!(channel, "subscription not confirmed in time");
        }
        ReleaseWatch::with_keep(notices, keep)
    }

    /// Channels with at least one waiter.
    pub(crate) fn active_channels(&self) -> usize {
        self.shared.registry().channels.len()
    }
}

async fn run(
    client: redis::Client,
    shared: Weak<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    timeout: Duration,
) {
    let mut delay = Duration::from_millis(10);
    loop {
        let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            other => {
                match other {
                    Ok(Err(e)) => debug!(error = %e, "pub/sub connection failed; retrying"),
                    _ => debug!("pub/sub connection timed out; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        delay = Duration::from_millis(10);
        let (mut sink, mut stream) = pubsub.split();
        let Some(s) = shared.upgrade() else { return };
        let wanted: Vec<String> = s.registry().channels.keys().cloned().collect();
        drop(s);
        if !wanted.is_empty() && sink.subscribe(&wanted).await.is_err() {
            continue;
        }
        if let Some(s) = shared.upgrade() {
            // Notices may have been lost while we were away: wake everyone to retry.
            for (name, ch) in &s.registry().channels {
                if wanted.contains(name) {
                    ch.ready.send_replace(true);
                }
                ch.notices.send_modify(|n| *n += 1);
            }
        }
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let Some(s) = shared.upgrade() else { return };
                    let result = match cmd {
                        Command::Subscribe(channel) => {
                            if !s.registry().channels.contains_key(&channel) {
                                continue;
                            }
                            let r = sink.subscribe(&channel).await;
                            if r.is_ok() && let Some(ch) = s.registry().channels.get(&channel) {
                                ch.ready.send_replace(true);
                            }
                            r
                        }
                        Command::Unsubscribe(channel) => {
                            if s.registry().channels.contains_key(&channel) {
                                continue;
                            }
                            sink.unsubscribe(&channel).await
                        }
                    };
                    if let Err(e) = result {
                        warn!(error = %e, "pub/sub command failed; reconnecting");
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        debug!("pub/sub connection closed; reconnecting");
                        break;
                    };
                    let Some(s) = shared.upgrade() else { return };
                    if let Some(ch) = s.registry().channels.get(msg.get_channel_name()) {
                        ch.notices.send_modify(|n| *n += 1);
                    }
                }
            }
        }
        // Mark every channel unconfirmed until the next connection re-subscribes it.
        if let Some(s) = shared.upgrade() {
            for ch in s.registry().channels.values() {
                ch.ready.send_replace(false);
            }
        }
    }
}
