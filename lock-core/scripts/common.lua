-- Helpers shared by the lock scripts of this workspace; lock-core prepends this file to every
-- script but extend.lua, fence.lua and node.lua (one text per script, so one EVALSHA), and puts
-- it in the middle of the release: release.lua, this file, release_contended.lua. The server
-- builds every function below anew on each call (a few microseconds), so the uncontended
-- release returns before it gets here.
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

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The data-loss guard (see lock_core::scripts): `marker_key` is the node marker `lock:node`
-- (nil in Redis Cluster), `guard` is '<quarantine in milliseconds>:<a fresh 12 hex node id>'.
-- Returns nil when the node may grant, else the reply {2, ms left}.
local function check_marker(marker_key, guard)
  if not marker_key then
    return nil
  end
  local marker = redis.call('GET', marker_key)
  local open
  if not marker then
    -- The node lost its data (restart without persistence, FLUSHALL, failover to an empty
    -- replica) at some instant up to now: leases it granted before may live for up to the
    -- quarantine, so it grants nothing until then.
    local sep = string.find(guard, ':', 1, true)
    marker = string.sub(guard, sep + 1) .. ':'
    open = now_ms() + tonumber(string.sub(guard, 1, sep - 1))
    redis.call('SET', marker_key, marker .. string.format('%.0f', open))
  else
    open = tonumber(string.sub(marker, 14)) or 0
  end
  if open > 0 then
    local left = open - now_ms()
    if left > 0 then
      return {2, left}
    end
    redis.call('SET', marker_key, string.sub(marker, 1, 13) .. '0')
  end
  return nil
end

-- The next fencing token of a lock: the counter plus one, or the server's clock in
-- microseconds if that is higher. So tokens rise on this server whatever happened to the
-- counter: lost with the data, rolled back by an old snapshot, or one step behind on a replica
-- promoted by a failover (the step that never replicated); as long as the servers' clocks agree
-- to within the time between two grants and average at most one grant per microsecond.
local function mint_fence(fence_key)
  local t = redis.call('TIME')
  local now = tonumber(t[1] .. string.format('%06d', tonumber(t[2])))
  local stored = tonumber(redis.call('GET', fence_key) or '0') or 0
  local fence = math.max(stored + 1, now)
  redis.call('SET', fence_key, string.format('%.0f', fence))
  return fence
end

-- The waiters' mark: a lock whose value ends in '!' was refused to somebody while it was held,
-- who may be waiting for its release. Only such a release hands the lock over to a fair queue
-- or announces itself (release.lua); an uncontended release is a GET and a DEL. Every script
-- that refuses a lock to a caller that may wait marks it, in the same call as the refusal, so a
-- waiter (which subscribes before its last try) never misses the notice; a rewrite of a lock's
-- value keeps the mark (`marked`). `pttl` is the lock's PTTL, read in the same call: the SET
-- keeps that expiry (never shorter: the server's clock only moves on) with no command beyond
-- those the lock's ACL rules allow and no KEEPTTL (Redis >= 6).
local function mark_waited(lock_key, current, pttl)
  if string.sub(current, -1) ~= '!' then
    if pttl > 0 then
      redis.call('SET', lock_key, current .. '!', 'PX', pttl)
    else
      redis.call('SET', lock_key, current .. '!')
    end
  end
end

local function marked(current)
  if string.sub(current, -1) == '!' then
    return '!'
  end
  return ''
end

-- The fencing token a lock's value records: the digits after the owner token and its ':' or '='.
local function fence_of(current)
  return tonumber(string.match(current, '^%d+', 34)) or 0
end

-- The lock at `lock_key` as `token` finds it: nil when free; {1, fence} when `token` holds it
-- (its expiry refreshed to `ttl` ms: a retry after a lost reply); {0, pttl} when another owner
-- does (pttl -1 when the key has no expiry), the lock marked as waited for (mark_waited).
local function held_reply(lock_key, token, ttl)
  local current = redis.call('GET', lock_key)
  if not current then
    return nil
  end
  if string.sub(current, 1, 32) == token then
    redis.call('PEXPIRE', lock_key, ttl)
    return {1, fence_of(current)}
  end
  local pttl = redis.call('PTTL', lock_key)
  mark_waited(lock_key, current, pttl)
  return {0, pttl}
end

-- Takes the free lock at `lock_key` for `token` for `ttl` ms, with a fencing token minted from
-- `fence_key` when `fencing` is '1' (else 0), with the waiters' mark when `mark` is '!' (else
-- ''). Returns the grant {1, fence}.
local function take_lock(lock_key, fence_key, token, ttl, fencing, mark)
  local fence = 0
  if fencing == '1' then
    fence = mint_fence(fence_key)
  end
  -- '%.0f': Lua's own number-to-string keeps 14 digits only, and clock-based tokens have 16.
  redis.call('SET', lock_key, token .. ':' .. string.format('%.0f', fence) .. (mark or ''), 'PX', ttl)
  return {1, fence}
end

-- A fair lock's queue: `queue` orders the waiters' owner tokens by arrival (score), `waiters`
-- holds each one's deadline (server ms; a waiter renews it while it waits). A waiter whose
-- deadline passed (it crashed, or stopped waiting without saying so) leaves the queue here.
local function drop_expired(queue, waiters, now)
  local dead = redis.call('ZRANGEBYSCORE', waiters, '-inf', now)
  for _, token in ipairs(dead) do
    redis.call('ZREM', queue, token)
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
  end
  return #dead
end

-- The head of the queue: its owner token and its deadline (server ms), or nil; an entry
-- without a deadline (left behind by a queue whose other key was deleted) is dropped on the way.
local function live_head(queue, waiters)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then
      return nil
    end
    local deadline = redis.call('ZSCORE', waiters, head)
    if deadline then
      return head, tonumber(deadline)
    end
    redis.call('ZREM', queue, head)
  end
end

-- The lock is free: give it to `head`, the waiter at the head of the queue (with its
-- `deadline`), and say so on the lock's turn channel `<lock key>:turn` with the message
-- 'g:<owner token>:<fence>' (only that waiter wakes; its process subscribes once per lock, not
-- per waiter). So the head holds the lock from this instant, without a call of its own. The
-- grant expires at the head's waiter deadline (its lease starts from its last call, the one
-- that set that deadline, so its own validity is counted from before the grant): a head that
-- died blocks the queue no longer than it would have as a waiter, and a live head's first
-- renewal sets its own TTL. A fence is minted when the lock has a fencing counter (a fencing
-- waiter creates it when it queues); 0 otherwise. The grant carries the waiters' mark while
-- others are still queued, so its release hands over to the next.
local function grant_head(lock_key, fence_key, queue, waiters, head, deadline, now)
  redis.call('ZREM', queue, head)
  redis.call('ZREM', waiters, head)
  local fence = 0
  if redis.call('EXISTS', fence_key) == 1 then
    fence = mint_fence(fence_key)
  end
  local shown = string.format('%.0f', fence)
  local mark = ''
  if redis.call('EXISTS', queue) == 1 then
    mark = '!'
  end
  redis.call('SET', lock_key, head .. ':' .. shown .. mark, 'PX', math.max(deadline - now, 1))
  announce(lock_key .. ':turn', 'g:' .. head .. ':' .. shown)
end

-- The lock was just freed: hand it over to the live head of the queue, if any (see
-- grant_head). Returns the head's token, or nil.
local function hand_over(lock_key, fence_key, queue, waiters)
  if redis.call('EXISTS', queue) == 0 then
    return nil
  end
  local now = now_ms()
  drop_expired(queue, waiters, now)
  local head, deadline = live_head(queue, waiters)
  if head then
    grant_head(lock_key, fence_key, queue, waiters, head, deadline, now)
  end
  return head
end
