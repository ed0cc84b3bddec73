-- Acquire a lock, shared by every Redis driver of this workspace.
-- KEYS[1] lock key (value: 32 hex owner token, ':', fencing token or 0)
-- KEYS[2] fence counter key (same hash slot; never expires)
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] '1' to mint a fencing token
-- Returns {1, fence} when the lock is ours (fence 0 when none was minted),
--         {0, pttl}  when another owner holds it (pttl -1 when the key has no expiry).
-- Idempotent: re-running it for the same token refreshes the expiry and returns the same fence.
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, 1, 32) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(string.sub(current, 34)) or 0}
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = 0
if ARGV[3] == '1' then
  fence = redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'NX', 'PX', ARGV[2])
return {1, fence}
