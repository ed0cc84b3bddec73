-- A fair lock's waiter leaves: cancelled, timed out, or failed (after common.lua).
-- KEYS[1] lock key, KEYS[2] queue, KEYS[3] waiters (as in fair.lua)
-- ARGV[1] owner token, ARGV[2] release notice channel
-- Removes the token from the queue; if the lock holds it (a grant whose reply never arrived),
-- releases it. Then, if the lock is free, wakes the head of the queue: the leaver may have
-- been the head that was told it was its turn. Returns 1 when it released the lock, else 0.
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local current = redis.call('GET', KEYS[1])
local released = 0
if current then
  if string.sub(current, 1, 32) ~= ARGV[1] then
    return 0
  end
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  released = 1
end
wake_head(KEYS[1], KEYS[2], KEYS[3])
return released
