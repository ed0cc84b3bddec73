//! Release notices through fred's [`SubscriberClient`], fed into a [`ReleaseHub`] that counts
//! waiters per channel (SUBSCRIBE for the first, UNSUBSCRIBE after the last; SSUBSCRIBE and
//! SUNSUBSCRIBE in sharded mode, which fred sends to the shard owning the channel's slot).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use lock_core::hub::{HubCommand, HubTask, ReleaseHub};
use lock_core::scripts::PubSubMode;
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

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

async fn run(
    sub: SubscriberClient,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    mode: PubSubMode,
) {
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    // A slot that moved to another shard takes its shard subscriptions with it: once fred
    // sees the new slot map, subscribe the shard channels again where their slots now live.
    let mut cluster_changes = sub.cluster_change_rx();
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
                            Ok(()) => hub.confirm(&channel),
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
            c = cluster_changes.recv(), if mode == PubSubMode::Sharded => match c {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let wanted = hub.wanted();
                    for channel in &wanted {
                        if let Err(e) = sub.ssubscribe(channel.as_str()).await {
                            warn!(error = %e, channel, "SSUBSCRIBE after a cluster change failed");
                        }
                    }
                    hub.reconnected(&wanted);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                // manage_subscriptions re-subscribes; notices sent meanwhile were lost.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => hub.reconnected(&hub.wanted()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
