//! Release notices through fred's [`SubscriberClient`], fed into a [`ReleaseHub`] that counts
//! waiters per channel (SUBSCRIBE for the first, UNSUBSCRIBE after the last; SSUBSCRIBE and
//! SUNSUBSCRIBE in sharded mode, which fred sends to the shard owning the channel's slot).

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use lock_core::hub::{HubCommand, HubTask, ReleaseHub};
use lock_core::scripts::{self, PubSubMode};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

/// Starts serving `subscriber`, which must already be connected.
pub(crate) fn start(subscriber: SubscriberClient, confirm_within: Duration, mode: PubSubMode) -> HubTask {
    // Re-subscribes every tracked channel (shard channels too) after a reconnect.
    let _resubscriber = subscriber.manage_subscriptions();
    HubTask::spawn(confirm_within, move |hub, commands| run(subscriber, hub, commands, mode))
}

async fn subscribe(sub: &SubscriberClient, channel: &str, mode: PubSubMode) -> fred::prelude::FredResult<()> {
    match mode {
        PubSubMode::Classic => sub.subscribe(channel).await,
        PubSubMode::Sharded => sub.ssubscribe(channel).await,
    }
}

async fn unsubscribe(
    sub: &SubscriberClient,
    channel: &str,
    mode: PubSubMode,
) -> fred::prelude::FredResult<()> {
    match mode {
        PubSubMode::Classic => sub.unsubscribe(channel).await,
        PubSubMode::Sharded => sub.sunsubscribe(channel).await,
    }
}

/// How often, while shard channels are wanted, the subscriber refreshes its slot map to see
/// whether a slot moved (fred drops the shard's own `sunsubscribe` notice, so it cannot be
/// heard): one `CLUSTER SLOTS` per second per waiting backend, none while nobody waits.
const SLOT_CHECK: Duration = Duration::from_secs(1);

/// Which shard serves each wanted shard channel, as last seen.
#[derive(Default)]
struct Owners(HashMap<String, Option<String>>);

impl Owners {
    fn owner(sub: &SubscriberClient, channel: &str) -> Option<String> {
        sub.cached_cluster_state()?.get_server(scripts::slot(channel)).map(ToString::to_string)
    }

    fn record(&mut self, sub: &SubscriberClient, channel: &str) {
        self.0.insert(channel.to_string(), Self::owner(sub, channel));
    }

    /// Subscribes again every wanted channel whose slot is now served by another shard, and
    /// wakes its waiters (a notice may have been missed meanwhile).
    async fn follow(&mut self, sub: &SubscriberClient, hub: &ReleaseHub) {
        let wanted = hub.wanted();
        self.0.retain(|channel, _| wanted.contains(channel));
        let mut moved = Vec::new();
        for channel in wanted {
            let now = Self::owner(sub, &channel);
            if self.0.insert(channel.clone(), now.clone()).is_some_and(|before| before != now) {
                moved.push(channel);
            }
        }
        for channel in &moved {
            match sub.ssubscribe(channel.as_str()).await {
                Ok(()) => debug!(channel, "shard channel subscribed again after its slot moved"),
                Err(e) => warn!(error = %e, channel, "SSUBSCRIBE after a slot move failed"),
            }
        }
        if !moved.is_empty() {
            hub.reconnected(&moved);
        }
    }
}

async fn run(
    sub: SubscriberClient,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    mode: PubSubMode,
) {
    let sharded = mode == PubSubMode::Sharded;
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    // A slot that moves to another shard takes its shard subscriptions with it: follow it
    // when fred sees a new slot map, and check for one every SLOT_CHECK while channels are
    // wanted.
    let mut cluster_changes = sub.cluster_change_rx();
    let mut owners = Owners::default();
    let mut slot_check = tokio::time::interval(SLOT_CHECK);
    slot_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => {
                    let _ = sub.quit().await;
                    return;
                }
                Some(HubCommand::Subscribe(channel)) => {
                    if hub.is_wanted(&channel) {
                        match subscribe(&sub, &channel, mode).await {
                            Ok(()) => {
                                hub.confirm(&channel);
                                if sharded {
                                    owners.record(&sub, &channel);
                                }
                            }
                            Err(e) => warn!(error = %e, channel, "subscribe failed"),
                        }
                    }
                }
                Some(HubCommand::Unsubscribe(channel)) => {
                    if !hub.is_wanted(&channel)
                        && let Err(e) = unsubscribe(&sub, &channel, mode).await
                    {
                        warn!(error = %e, channel, "unsubscribe failed");
                    }
                }
            },
            msg = messages.recv() => match msg {
                Ok(m) => hub.deliver(&m.channel, m.value.as_bytes().unwrap_or_default()),
                // Notices were dropped: wake everyone to retry.
                Err(broadcast::error::RecvError::Lagged(_)) => hub.reconnected(&[]),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            c = cluster_changes.recv(), if sharded => match c {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => owners.follow(&sub, &hub).await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = slot_check.tick(), if sharded => {
                if hub.active_channels() > 0 {
                    if let Err(e) = sub.sync_cluster().await {
                        debug!(error = %e, "refreshing the slot map failed");
                    }
                    owners.follow(&sub, &hub).await;
                }
            },
            r = reconnects.recv() => match r {
                // manage_subscriptions re-subscribes; notices sent meanwhile were lost.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => hub.reconnected(&hub.wanted()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
