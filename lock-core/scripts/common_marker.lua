-- Shared helper (see lock_core::scripts, "Shared helpers"), after common_clock.lua.
-- The data-loss guard (see lock_core::scripts): `marker_key` is the node marker `lock:node`
-- (nil in Redis Cluster), `guard` is '<quarantine in milliseconds>:<a fresh 12 hex node id>'.
-- Returns nil when the node may grant, else the reply {2, ms left}.
local function check_marker(marker_key, guard)
  if not marker_key then
    return nil
  end
  local marker = redis.call('GET', marker_key)
  local open
  if not marker then
    -- The node lost its data (restart without persistence, FLUSHALL, failover to an empty
    -- replica) at some instant up to now: leases it granted before may live for up to the
    -- quarantine, so it grants nothing until then.
    local sep = string.find(guard, ':', 1, true)
    marker = string.sub(guard, sep + 1) .. ':'
    open = now_ms() + tonumber(string.sub(guard, 1, sep - 1))
    redis.call('SET', marker_key, marker .. string.format('%.0f', open))
  else
    open = tonumber(string.sub(marker, 14)) or 0
  end
  if open > 0 then
    local left = open - now_ms()
    if left > 0 then
      return {2, left}
    end
    redis.call('SET', marker_key, string.sub(marker, 1, 13) .. '0')
  end
  return nil
end
