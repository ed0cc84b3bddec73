//! Release notices over one shared pub/sub connection per backend, fed into a
//! [`ReleaseHub`] that counts waiters per channel: classic `SUBSCRIBE` on one server, or, in a
//! Redis Cluster in sharded mode, `SSUBSCRIBE` through a cluster connection that sends each
//! subscription to the shard owning the channel's slot.

use std::time::Duration;

use futures::StreamExt;
use lock_core::hub::{HubCommand, HubTask, ReleaseHub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::sentinel::SentinelConnection;

/// Where the subscriber connects: classic pub/sub on one server, or sharded pub/sub on every
/// shard of a Cluster.
#[derive(Clone)]
pub(crate) enum PubsubSource {
    Classic(ClassicSource),
    Sharded(ShardedSource),
}

/// The server a classic subscriber connects to: one fixed server, or the primary the sentinels
/// name at each (re)connect.
#[derive(Clone)]
pub(crate) enum ClassicSource {
    Client(Box<redis::Client>),
    Sentinel(SentinelConnection),
}

/// How to reach a Cluster for sharded pub/sub.
#[derive(Clone)]
pub(crate) struct ShardedSource {
    pub(crate) seeds: Vec<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

impl PubsubSource {
    /// Classic pub/sub through `client`'s server.
    pub(crate) fn client(client: redis::Client) -> Self {
        PubsubSource::Classic(ClassicSource::Client(Box::new(client)))
    }
}

impl ClassicSource {
    async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            ClassicSource::Client(c) => Ok(c.as_ref().clone()),
            ClassicSource::Sentinel(s) => s.primary_client().await,
        }
    }
}

/// Starts the pub/sub task for `source` on the current runtime.
pub(crate) fn start(source: PubsubSource, confirm_within: Duration) -> HubTask {
    match source {
        PubsubSource::Sharded(s) => {
            HubTask::spawn(confirm_within, move |hub, commands| run_sharded(s, hub, commands))
        }
        PubsubSource::Classic(source) => {
            HubTask::spawn(confirm_within, move |hub, commands| run(source, hub, commands, confirm_within))
        }
    }
}

/// Sharded pub/sub: one RESP3 cluster connection that only subscribes. redis-rs sends each
/// `SSUBSCRIBE` to the shard owning the channel's slot, keeps track of the subscriptions and
/// subscribes them again on a reconnected node or, after a topology change, on the node that
/// now owns their slot. A shard that drops a subscription itself (its slot moved away) says so
/// with an `sunsubscribe` push: the channel is subscribed again through the current slot map.
/// Notices sent while a subscription was missing are lost, so its waiters are woken to retry.
async fn run_sharded(
    source: ShardedSource,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
) {
    let (pushes_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let built = ClusterClientBuilder::new(source.seeds.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes_tx)
        .connection_timeout(source.connect_timeout)
        .response_timeout(source.command_timeout)
        .build();
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            // The seeds were accepted by the data connection's identical builder.
            warn!(error = %e, "sharded pub/sub client could not be built; waiters fall back on their backoff");
            while commands.recv().await.is_some() {}
            return;
        }
    };
    let mut delay = Duration::from_millis(10);
    let mut conn = loop {
        match tokio::time::timeout(source.connect_timeout, client.get_async_connection()).await {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) => debug!(error = %e, "sharded pub/sub connection failed; retrying"),
            Err(_) => debug!("sharded pub/sub connection timed out; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    };
    let subscribe = async |conn: &mut ClusterConnection, channel: &str| match tokio::time::timeout(
        source.command_timeout,
        conn.ssubscribe(channel),
    )
    .await
    {
        Ok(Ok(())) => {
            hub.confirm(channel);
            true
        }
        Ok(Err(e)) => {
            warn!(error = %e, channel, "SSUBSCRIBE failed");
            false
        }
        Err(_) => {
            warn!(channel, "SSUBSCRIBE: no reply");
            false
        }
    };
    // The first connection: the channels wanted so far are subscribed (and confirmed) now;
    // nothing was missed, so nobody is woken.
    for channel in hub.wanted() {
        subscribe(&mut conn, &channel).await;
    }
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(HubCommand::Subscribe(channel)) => {
                    if hub.is_wanted(&channel) {
                        subscribe(&mut conn, &channel).await;
                    }
                }
                Some(HubCommand::Unsubscribe(channel)) => {
                    if !hub.is_wanted(&channel)
                        && let Err(e) = conn.sunsubscribe(&channel).await
                    {
                        warn!(error = %e, channel, "SUNSUBSCRIBE failed");
                    }
                }
            },
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::SMessage => {
                        if let [Value::BulkString(channel), Value::BulkString(payload), ..] = push.data.as_slice() {
                            hub.deliver(&String::from_utf8_lossy(channel), payload);
                        }
                    }
                    PushKind::SUnsubscribe => {
                        // Ours (the last waiter left) or the shard's (the slot moved away).
                        if let Some(Value::BulkString(channel)) = push.data.first() {
                            let channel = String::from_utf8_lossy(channel).into_owned();
                            if hub.is_wanted(&channel) && subscribe(&mut conn, &channel).await {
                                debug!(channel, "shard channel subscribed again after its slot moved");
                                hub.reconnected(&[channel]);
                            }
                        }
                    }
                    PushKind::Disconnection => {
                        // redis-rs reconnects that node and subscribes its channels again.
                        hub.reconnected(&hub.wanted());
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn run(
    source: ClassicSource,
    hub: ReleaseHub,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    timeout: Duration,
) {
    let mut delay = Duration::from_millis(10);
    let mut first = true;
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
        if first {
            // Nothing was missed before the first connection: confirm, wake nobody.
            first = false;
            wanted.iter().for_each(|channel| hub.confirm(channel));
        } else {
            hub.reconnected(&wanted);
        }
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
