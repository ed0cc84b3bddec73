-- Shared helpers (see lock_core::scripts, "Shared helpers"): the fair lock's queue, after
-- common_announce.lua, common_clock.lua and common_fence.lua.
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
-- 'g:<owner token>:<fence>:<deadline>' (only that waiter wakes; its process subscribes once
-- per lock, not per waiter). So the head holds the lock from this instant, without a call of
-- its own. The grant expires at the head's waiter deadline (its lease starts from its last
-- call, the one that set that deadline, so its own validity is counted from before the grant;
-- the waiter checks the message names the deadline its last call set, so a notice of an
-- earlier grant that expired before that call, read late, is never taken for one): a head that
-- died blocks the queue no longer than it would have as a waiter, and a live head's first
-- renewal sets its own TTL. A fence is minted when the lock has a fencing counter (a fencing
-- waiter creates it when it queues); 0 otherwise. The grant carries the fair waiters' mark '?'
-- while others are still queued, so its release hands over to the next.
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
    mark = '?'
  end
  redis.call('SET', lock_key, head .. ':' .. shown .. mark, 'PX', math.max(deadline - now, 1))
  announce(lock_key .. ':turn', 'g:' .. head .. ':' .. shown .. ':' .. string.format('%.0f', deadline))
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
