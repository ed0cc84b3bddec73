-- Renew or release one member of a set of holders
-- (after its shared helpers, see lock_core::scripts): a read-write lock's
-- readers or waiting writers, or a semaphore's permits (owner token -> expiry, server ms).
-- KEYS[1] the set, KEYS[2] (optional) a key that lives and dies with the set (a semaphore's
-- size)
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds to renew, or '0' to release,
-- ARGV[3] the channel to announce a release on ('' for none), ARGV[4] '1' to announce only
-- when the release leaves the set empty, ARGV[5] the pub/sub mode (as in release.lua)
-- Returns 1 when the member was live (it is now renewed, or released), 0 when it was absent
-- or had expired (a release still removes it).
publish_mode(ARGV[5])
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local live = score and tonumber(score) > now
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  if not live then
    return 0
  end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
    if KEYS[2] then
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
  end
  return 1
end
if not score then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local empty = redis.call('ZCARD', KEYS[1]) == 0
if empty and KEYS[2] then
  redis.call('DEL', KEYS[2])
end
if ARGV[3] ~= '' and (ARGV[4] ~= '1' or empty) then
  announce(ARGV[3], '1')
end
if live then
  return 1
end
return 0
