-- Shared helper (see lock_core::scripts, "Shared helpers"): how a release is announced.
-- How a release is announced (see lock_core::scripts::PubSubMode), set by a script that
-- announces from its mode argument through `publish_mode`, before any call below:
-- 'c' classic PUBLISH, always sent (in a Redis Cluster the subscribers may be on any node);
-- 'l' classic PUBLISH on a single server, where every subscriber is local: sent only when
--     somebody listens on the channel;
-- 's' sharded SPUBLISH (Redis >= 7), heard only on the shard that owns the key's slot, where
--     its subscribers are: sent only when somebody listens.
-- A waiter subscribes before its last try, so a release that finds nobody listening wakes
-- nobody who needed it; skipping it saves the server a publish (and its propagation) on every
-- uncontended release.
local publish_flag = 'c'
local function publish_mode(flag)
  if flag == 's' or flag == 'l' then
    publish_flag = flag
  end
end

local function announce(channel, message)
  if publish_flag == 'c' then
    redis.call('PUBLISH', channel, message)
    return
  end
  local count, publish = 'NUMSUB', 'PUBLISH'
  if publish_flag == 's' then
    count, publish = 'SHARDNUMSUB', 'SPUBLISH'
  end
  if redis.call('PUBSUB', count, channel)[2] > 0 then
    redis.call(publish, channel, message)
  end
end
