-- Shared helpers (see lock_core::scripts, "Shared helpers"): fencing tokens.
-- The next fencing token of a lock: the counter plus one, or the server's clock in
-- microseconds if that is higher. So tokens rise on this server whatever happened to the
-- counter: lost with the data, rolled back by an old snapshot, or one step behind on a replica
-- promoted by a failover (the step that never replicated); as long as the servers' clocks agree
-- to within the time between two grants and average at most one grant per microsecond.
local function mint_fence(fence_key)
  local t = redis.call('TIME')
  local now = tonumber(t[1] .. string.format('%06d', tonumber(t[2])))
  local stored = tonumber(redis.call('GET', fence_key) or '0') or 0
  local fence = math.max(stored + 1, now)
  redis.call('SET', fence_key, string.format('%.0f', fence))
  return fence
end

-- The fencing token a lock's value records: the digits after the owner token and its ':' or '='.
local function fence_of(current)
  return tonumber(string.match(current, '^%d+', 34)) or 0
end
