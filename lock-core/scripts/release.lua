-- Release a lock only if this owner holds it, and announce the release (after common.lua).
-- KEYS[1] lock key, KEYS[2] the fair queue, KEYS[3] the fair waiters' deadlines (same slot)
-- ARGV[1] owner token, ARGV[2] release notice channel ('' for a silent discard)
-- Returns 1 when deleted, 0 when the key is absent or held by another owner (nothing changed).
-- The notice goes to the broadcast channel (plain mutex waiters) and, when fair waiters are
-- queued, to the head of the queue alone.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], '1')
    wake_head(KEYS[1], KEYS[2], KEYS[3])
  end
  return 1
end
return 0
