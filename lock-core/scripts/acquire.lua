-- Acquire a lock, shared by every Redis driver of this workspace (after common.lua).
-- KEYS[1] lock key (value: 32 hex owner token, ':', fencing token or 0)
-- KEYS[2] fence counter key (same hash slot; never expires)
-- KEYS[3] (optional) the node marker `lock:node` (value: 12 hex node id, ':', the server time in
--         ms at which the node may grant again, or 0 once it may); absent in Redis Cluster
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] '1' to mint a fencing token,
-- ARGV[4] '<quarantine in milliseconds>:<a fresh 12 hex node id>' (used only to re-create the
--         marker; one argument, so the call stays within the 10 elements Redis parses from a
--         client before AUTH, and an unauthenticated client is told NOAUTH)
-- Returns {1, fence} when the lock is ours (fence 0 when none was minted),
--         {0, pttl}  when another owner holds it (pttl -1 when the key has no expiry),
--         {2, left}  when the node lost its data and abstains for `left` more milliseconds.
-- Idempotent: re-running it for the same token refreshes the expiry and returns the same fence.
local abstain = check_marker(KEYS[3], ARGV[4])
if abstain then
  return abstain
end
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
  fence = mint_fence(KEYS[2])
end
-- '%.0f': Lua's own number-to-string keeps 14 digits only, and clock-based tokens have 16.
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', fence), 'NX', 'PX', ARGV[2])
return {1, fence}
