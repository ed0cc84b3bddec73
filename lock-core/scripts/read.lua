-- Take a read lock of a read-write lock (after its shared helpers, see lock_core::scripts).
-- KEYS[1] the lock key (the write side: a writer holds it as a mutex, see write.lua)
-- KEYS[2] the readers (owner token -> expiry, server ms), KEYS[3] the waiting writers (owner
-- token -> deadline, server ms), KEYS[4] the fencing counter (same slot; only read),
-- KEYS[5] (optional) the node marker, as in acquire.lua
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] the owner token of the write lock
-- the same handle holds ('' if none): a downgrade, granted beside that write lock,
-- ARGV[4] the marker guard (as in acquire.lua)
-- Returns {1, fence}: granted (fence: the counter, i.e. the last fenced writer's token; 0 if
--                     no writer ever fenced),
--         {0, wait}:  a writer holds the lock (wait: its PTTL) or waits for it (wait: until the
--                     first waiting writer's deadline), so readers do not starve writers,
--         {2, left}:  the node lost its data and abstains (as acquire.lua): a reader it granted
--                     before may still rely on it, unknown to a writer.
-- Idempotent: re-running it for a live reader refreshes its expiry.
local abstain = check_marker(KEYS[5], ARGV[4])
if abstain then
  return abstain
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not mine or tonumber(mine) <= now then
  local writer = redis.call('GET', KEYS[1])
  local downgrade = writer and ARGV[3] ~= '' and string.sub(writer, 1, 32) == ARGV[3]
  if writer and not downgrade then
    local pttl = redis.call('PTTL', KEYS[1])
    mark_waited(KEYS[1], writer, pttl)
    return {0, pttl}
  end
  if not downgrade then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    if first[1] then
      return {0, tonumber(first[2]) - now}
    end
  end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {1, tonumber(redis.call('GET', KEYS[4]) or '0') or 0}
