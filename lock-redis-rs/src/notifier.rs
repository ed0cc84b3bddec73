//! Release notices over one shared pub/sub connection per backend, fed into a
//! [`ReleaseHub`] that counts waiters per channel.

use std::time::Duration;

use futures::StreamExt;
use lock_core::hub::{HubCommand, HubTask, ReleaseHub};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::sentinel::SentinelConnection;

/// Where the subscriber connects: one fixed server, or the primary the sentinels name at each
/// (re)connect.
#[derive(Clone)]
pub(crate) enum PubsubSource {
    Client(Box<redis::Client>),
    Sentinel(SentinelConnection),
}

impl PubsubSource {
    async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            PubsubSource::Client(c) => Ok(c.as_ref().clone()),
            PubsubSource::Sentinel(s) => s.primary_client().await,
        }
    }
}

/// Starts the pub/sub task for `source` on the current runtime.
pub(crate) fn start(source: PubsubSource, confirm_within: Duration) -> HubTask {
    HubTask::spawn(confirm_within, move |hub, commands| run(source, hub, commands, confirm_within))
}

async fn run(
    source: PubsubSource,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    timeout: Duration,
) {
    let mut delay = Duration::from_millis(10);
    loop {
        let connect = async { source.client().await?.get_async_pubsub().await };
        let pubsub = match tokio::time::timeout(timeout, connect).await {
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
                    hub.deliver(msg.get_channel_name(), msg.get_payload_bytes());
                }
            }
        }
        hub.disconnected();
    }
}
