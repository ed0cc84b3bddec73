//! Release notices through fred's [`SubscriberClient`], fed into a [`ReleaseHub`] that counts
//! waiters per channel (SUBSCRIBE for the first, UNSUBSCRIBE after the last).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use lock_core::hub::{HubCommand, HubTask, ReleaseHub};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

/// Starts serving `subscriber`, which must already be connected.
pub(crate) fn start(subscriber: SubscriberClient, confirm_within: Duration) -> HubTask {
    // Re-subscribes every tracked channel after a reconnect.
    let _resubscriber = subscriber.manage_subscriptions();
    HubTask::spawn(confirm_within, |hub, commands| run(subscriber, hub, commands))
}

async fn run(sub: SubscriberClient, hub: ReleaseHub, mut commands: mpsc::UnboundedReceiver<HubCommand>) {
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => {
                    let _ = sub.quit().await;
                    return;
                }
                Some(HubCommand::Subscribe(channel)) => {
                    if hub.is_wanted(&channel) {
                        match sub.subscribe(channel.as_str()).await {
                            Ok(()) => hub.confirm(&channel),
                            Err(e) => warn!(error = %e, channel, "subscribe failed"),
                        }
                    }
                }
                Some(HubCommand::Unsubscribe(channel)) => {
                    if !hub.is_wanted(&channel)
                        && let Err(e) = sub.unsubscribe(channel.as_str()).await
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
            r = reconnects.recv() => match r {
                // manage_subscriptions re-subscribes; notices sent meanwhile were lost.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => hub.reconnected(&hub.wanted()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
