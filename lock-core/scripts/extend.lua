-- Extend a lock only if this owner holds it.
-- KEYS[1] lock key; ARGV[1] owner token, ARGV[2] ttl in milliseconds
-- Returns 1 when extended, 0 when the key is absent or held by another owner (nothing changed).
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
