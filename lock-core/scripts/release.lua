-- Release a lock only if this owner holds it, and announce the release (after common.lua).
-- KEYS[1] lock key, KEYS[2] the fair queue, KEYS[3] the fair waiters' deadlines, KEYS[4] the
-- fencing counter (same slot; only KEYS[1] is read for a silent discard)
-- ARGV[1] owner token, ARGV[2] release notice channel ('' for a silent discard), ARGV[3] the
-- pub/sub mode ('c', 'l' or 's'; see publish_mode in common.lua)
-- Returns 1 when deleted, 0 when the key is absent or held by another owner (nothing changed).
-- When fair waiters are queued, the lock goes to the head of the queue at once (see
-- hand_over); otherwise the notice goes to the broadcast channel (plain mutex waiters).
publish_mode(ARGV[3])
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' and not hand_over(KEYS[1], KEYS[4], KEYS[2], KEYS[3]) then
    announce(ARGV[2], '1')
  end
  return 1
end
return 0
