-- Raise a lock's fencing counter to at least a given token (RedLock's write-back), and record
-- the token on the lock when this owner holds it (never lowering it), so a re-acquire returns it.
-- KEYS[1] lock key, KEYS[2] fence counter key; ARGV[1] owner token, ARGV[2] fencing token
-- Returns the counter after the call.
local wanted = tonumber(ARGV[2])
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < wanted then
  redis.call('SET', KEYS[2], ARGV[2])
  counter = wanted
end
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 and (tonumber(string.sub(current, 34)) or 0) < wanted then
    redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ttl)
  end
end
return counter
