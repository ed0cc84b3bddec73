-- Release a lock only if this owner holds it, and announce the release to waiters.
-- KEYS[1] lock key; ARGV[1] owner token, ARGV[2] release notice channel ('' for a silent discard)
-- Returns 1 when deleted, 0 when the key is absent or held by another owner (nothing changed).
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], '1')
  end
  return 1
end
return 0
