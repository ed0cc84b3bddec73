-- Read or declare the node marker `lock:node` (see acquire.lua).
-- KEYS[1] the marker; ARGV[1] 'read', 'init' (declare a new server fresh: create the marker
-- open if it is missing) or 'force' (also lift a running quarantine), ARGV[2] a fresh node id.
-- Returns {id, left}: the node id as a number (0 when there is no marker), and the quarantine
-- left in milliseconds (0 when the node may grant, -1 when there is no marker).
local marker = redis.call('GET', KEYS[1])
if not marker then
  if ARGV[1] == 'read' then
    return {0, -1}
  end
  marker = ARGV[2] .. ':0'
  redis.call('SET', KEYS[1], marker)
end
local id = tonumber(string.sub(marker, 1, 12), 16) or 0
local open = tonumber(string.sub(marker, 14)) or 0
if open > 0 and ARGV[1] == 'force' then
  redis.call('SET', KEYS[1], string.sub(marker, 1, 13) .. '0')
  open = 0
end
if open == 0 then
  return {id, 0}
end
local t = redis.call('TIME')
local left = open - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if left < 0 then
  left = 0
end
return {id, left}
