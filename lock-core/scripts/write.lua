-- Take the write lock of a read-write lock
-- (after its shared helpers, see lock_core::scripts). The write lock is the mutex key
-- of the same name (extend.lua renews it, release.lua frees it); it is granted only when no
-- live reader is left.
-- KEYS[1] lock key, KEYS[2] fence counter, KEYS[3] the readers (owner token -> expiry, server
-- ms), KEYS[4] the waiting writers (owner token -> deadline, server ms), KEYS[5] (optional) the
-- node marker, as in acquire.lua
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] '1' to mint a fencing token,
-- ARGV[4] the marker guard (as in acquire.lua), ARGV[5] how long (ms) to record this writer
-- among the waiting writers if it is kept waiting ('0' for a try: nothing is recorded)
-- Returns {1, fence}, {0, wait ms} (a writer's PTTL, or until the last reader expires) or
--         {2, left} (quarantine), as acquire.lua. Idempotent for the same token.
local abstain = check_marker(KEYS[5], ARGV[4])
if abstain then
  return abstain
end
local held = held_reply(KEYS[1], ARGV[1], ARGV[2])
if held and held[1] == 1 then
  return held
end
local now = now_ms()
local wait = held and held[2]
if not held then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  if last[1] then
    wait = tonumber(last[2]) - now
  end
end
if wait then
  local ms = tonumber(ARGV[5])
  if ms > 0 then
    redis.call('ZADD', KEYS[4], now + ms, ARGV[1])
    if redis.call('PTTL', KEYS[4]) < ms then
      redis.call('PEXPIRE', KEYS[4], ms)
    end
  end
  return {0, wait}
end
-- Readers refused because a writer waits (read.lua) wait for a write lock's release: a writer
-- that waited, or that others still wait behind, takes the lock marked as waited for.
local mark = ''
if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  mark = '!'
end
return take_lock(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], mark)
