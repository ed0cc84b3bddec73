-- Take one permit of a semaphore
-- (after its shared helpers, see lock_core::scripts). Every permit is a lease of its own: an
-- owner token with an expiry (server ms), so a dead holder's permit comes back at its TTL.
-- KEYS[1] the permits (owner token -> expiry), KEYS[2] the semaphore's size (lives as long as
-- the permits), KEYS[3] (optional) the node marker, as in acquire.lua
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] the size asked for, ARGV[4] the
-- marker guard (as in acquire.lua)
-- Returns {1, 0}:    a permit is ours,
--         {0, wait}: every permit is taken (wait: until the first one expires),
--         {3, size}: the semaphore has live permits and another size; nothing changed,
--         {2, left}: the node lost its data (and the permits it had granted) and abstains, as
--                    acquire.lua.
-- Idempotent: re-running it for a live holder refreshes its expiry.
local abstain = check_marker(KEYS[3], ARGV[4])
if abstain then
  return abstain
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local size = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken > 0 then
  local live = tonumber(redis.call('GET', KEYS[2]) or '')
  if live and live ~= size then
    return {3, live}
  end
end
if taken >= size and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', redis.call('PTTL', KEYS[1]))
return {1, 0}
