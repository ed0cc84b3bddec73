-- Acquire a lock, shared by every Redis driver of this workspace.
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
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if KEYS[3] then
  local marker = redis.call('GET', KEYS[3])
  local open
  if not marker then
    -- The node lost its data (restart without persistence, FLUSHALL, failover to an empty
    -- replica) at some instant up to now: leases it granted before may live for up to the
    -- quarantine, so it grants nothing until then.
    local sep = string.find(ARGV[4], ':', 1, true)
    marker = string.sub(ARGV[4], sep + 1) .. ':'
    open = now_ms() + tonumber(string.sub(ARGV[4], 1, sep - 1))
    redis.call('SET', KEYS[3], marker .. string.format('%.0f', open))
  else
    open = tonumber(string.sub(marker, 14)) or 0
  end
  if open > 0 then
    local left = open - now_ms()
    if left > 0 then
      return {2, left}
    end
    redis.call('SET', KEYS[3], string.sub(marker, 1, 13) .. '0')
  end
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
  -- The next token is the counter plus one, or the server's clock in microseconds if that is
  -- higher. So tokens rise on this server whatever happened to the counter: lost with the data,
  -- rolled back by an old snapshot, or one step behind on a replica promoted by a failover
  -- (the step that never replicated); as long as the servers' clocks agree to within the time
  -- between two grants and average at most one grant per microsecond.
  local t = redis.call('TIME')
  local now = tonumber(t[1] .. string.format('%06d', tonumber(t[2])))
  local stored = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  fence = math.max(stored + 1, now)
  redis.call('SET', KEYS[2], string.format('%.0f', fence))
end
-- '%.0f': Lua's own number-to-string keeps 14 digits only, and clock-based tokens have 16.
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', fence), 'NX', 'PX', ARGV[2])
return {1, fence}
