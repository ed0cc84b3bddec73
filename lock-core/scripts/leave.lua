-- A fair lock's waiter leaves: cancelled, timed out, or failed
-- (after its shared helpers, see lock_core::scripts).
-- KEYS[1] lock key, KEYS[2] queue, KEYS[3] waiters (as in fair.lua), KEYS[4] fencing counter
-- ARGV[1] owner token, ARGV[2] release notice channel, ARGV[3] the pub/sub mode (as in
-- release.lua)
-- Removes the token from the queue; if the lock holds it (a grant whose reply or hand-over
-- notice never arrived), releases it. Then, if the lock is free, hands it to the head of the
-- queue (see hand_over). Returns 1 when it released the lock, else 0.
publish_mode(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local current = redis.call('GET', KEYS[1])
local released = 0
if current then
  if string.sub(current, 1, 32) ~= ARGV[1] then
    return 0
  end
  redis.call('DEL', KEYS[1])
  released = 1
end
if not hand_over(KEYS[1], KEYS[4], KEYS[2], KEYS[3]) and released == 1 then
  announce(ARGV[2], '1')
end
return released
