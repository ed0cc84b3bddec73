-- Acquire a fair lock: served in arrival order (after its shared helpers, see lock_core::scripts).
-- KEYS[1] lock key, KEYS[2] fence counter, KEYS[3] queue (zset: owner token by arrival),
-- KEYS[4] waiters (zset: owner token by its deadline, server ms), all in one hash slot;
-- KEYS[5] (optional) the node marker, as in acquire.lua.
-- ARGV[1] owner token,
-- ARGV[2] '<ttl ms>:<1 to fence, else 0>:<waiter timeout ms, 0 to try once without queueing>:
--          <pub/sub mode: c, l or s, as in release.lua>:<quarantine ms>:<fresh 12 hex node id>' (one argument: at most 10 elements, so an
--          unauthenticated client is told NOAUTH, as in acquire.lua)
-- Returns {1, fence}        the lock is ours (granted, or already ours: the expiry refreshed),
--         {0, wait, ahead, deadline}
--                           not ours yet: `ahead` waiters are before this one (queued, its
--                           deadline renewed to `deadline`, server ms) or in the queue (a try,
--                           without `deadline`); `wait` is how long, in ms, until the state can
--                           change by itself (the holder's PTTL; -1 when unknown),
--         {2, left}         the node lost its data, as in acquire.lua.
-- Idempotent for the same token: a resent call finds itself queued, or holding the lock.
local ttl, fencing, wait_ms, mode, guard = string.match(ARGV[2], '^(%d+):([01]):(%d+):([cls]):(.*)$')
publish_mode(mode)
wait_ms = tonumber(wait_ms)
local abstain = check_marker(KEYS[5], guard)
if abstain then
  return abstain
end
local token = ARGV[1]
local now = now_ms()
drop_expired(KEYS[3], KEYS[4], now)
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == token then
  -- Ours: granted by an earlier call whose reply was lost, or handed over by a release.
  local fence = fence_of(current)
  if fencing == '1' and fence == 0 then
    -- Handed over while the fencing counter was missing (deleted after this waiter queued).
    fence = mint_fence(KEYS[2])
    redis.call('SET', KEYS[1], token .. ':' .. string.format('%.0f', fence) .. marked(current), 'PX', ttl)
  else
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  redis.call('ZREM', KEYS[3], token)
  redis.call('ZREM', KEYS[4], token)
  return {1, fence}
end
local head, head_deadline = live_head(KEYS[3], KEYS[4])
if not current and (not head or head == token) then
  redis.call('ZREM', KEYS[3], token)
  redis.call('ZREM', KEYS[4], token)
  -- Marked while others are queued, so its release hands over to the next.
  local mark = ''
  if redis.call('EXISTS', KEYS[3]) == 1 then
    mark = '?'
  end
  return take_lock(KEYS[1], KEYS[2], token, ttl, fencing, mark)
end
if not current then
  -- Free, but another waiter is at the head: no release handed it over (the holder's TTL ran
  -- out, or the head before it was dropped at its deadline just now). Hand it over here.
  grant_head(KEYS[1], KEYS[2], KEYS[3], KEYS[4], head, head_deadline, now)
end
-- Held now, by another: the state changes by itself when its TTL runs out, or its release
-- hands over (marked here, also a grant_head's just above: this caller may queue below; a try
-- that does not queue marks it as a plain waiter would).
local wait = redis.call('PTTL', KEYS[1])
local holder = current or redis.call('GET', KEYS[1])
if holder then
  mark_waited(KEYS[1], holder, wait, wait_ms == 0 and '!' or '?')
end
if wait_ms == 0 then
  return {0, wait, redis.call('ZCARD', KEYS[3])}
end
local ahead = redis.call('ZRANK', KEYS[3], token)
if fencing == '1' then
  -- A release that hands the lock over mints a fence only if the counter exists.
  redis.call('SET', KEYS[2], '0', 'NX')
end
if not ahead then
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  redis.call('ZADD', KEYS[3], (tonumber(last[2]) or 0) + 1, token)
  ahead = redis.call('ZCARD', KEYS[3]) - 1
end
local deadline = now + wait_ms
redis.call('ZADD', KEYS[4], deadline, token)
-- The queue outlives its last live waiter by nothing: both keys expire at the latest deadline.
local latest = tonumber(redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2]) or deadline
redis.call('PEXPIREAT', KEYS[3], latest)
redis.call('PEXPIREAT', KEYS[4], latest)
-- The deadline goes back to the waiter: a hand-over names the deadline it grants until, and
-- the waiter trusts only one that names the deadline of its latest call (see grant_head).
return {0, wait, ahead, deadline}
