//! Release notices over one shared pub/sub connection per backend, fed into a
//! [`ReleaseHub`] that counts waiters per channel.

use std::time::Duration;

use futures::StreamExt;
use lock_core::ReleaseWatch;
use lock_core::hub::{HubCommand, ReleaseHub};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// Owns the pub/sub task; dropping the last clone of the backend stops it.
pub(crate) struct Notifier {
    hub: ReleaseHub,
    task: AbortHandle,
    confirm_within: Duration,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Notifier {
    /// Starts the pub/sub task for `client` on the current runtime.
    pub(crate) fn start(client: redis::Client, confirm_within: Duration) -> Self {
        let (hub, commands) = ReleaseHub::new();
        let task = tokio::spawn(run(client, hub.clone(), commands, confirm_within)).abort_handle();
        Self { hub, task, confirm_within }
    }

    pub(crate) async fn watch(&self, channel: &str) -> ReleaseWatch {
        self.hub.watch(channel, self.confirm_within).await
    }

    pub(crate) fn active_channels(&self) -> usize {
        self.hub.active_channels()
    }
}

async fn run(
    client: redis::Client,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
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
        let wanted = hub.wanted();
        if !wanted.is_empty() && sink.subscribe(&wanted).await.is_err() {
            continue;
        }
        hub.reconnected(&wanted);
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let result = match cmd {
                        None => return,
                        Some(HubCommand::Subscribe(channel)) => {
                            if !hub.is_wanted(&channel) {
                                continue;
                            }
                            let r = sink.subscribe(&channel).await;
                            if r.is_ok() {
                                hub.confirm(&channel);
                            }
                            r
                        }
                        Some(HubCommand::Unsubscribe(channel)) => {
                            if hub.is_wanted(&channel) {
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
                    hub.notify(msg.get_channel_name());
                }
            }
        }
        hub.disconnected();
    }
}
