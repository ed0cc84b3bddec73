-- Take many locks in one call: the uncontended unfenced acquires of one server that arrive
-- together (lock_core::coalesce), each a plain SET NX PX, then one read of the node marker
-- behind them all (the data-loss guard, see lock_core::scripts).
-- KEYS[1..n] the lock keys, KEYS[n+1] the node marker; ARGV[2i-1] the value of lock i
-- ('<token>:0'), ARGV[2i] its TTL in milliseconds.
-- Returns n+1 items, as the pipeline of the same commands would: per lock 'OK' when it was
-- set, nil when the key exists (of any type); then the marker's value (nil: missing).
local n = #KEYS - 1
local out = {}
for i = 1, n do
  out[i] = redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'NX', 'PX', ARGV[2 * i])
end
out[n + 1] = redis.call('GET', KEYS[n + 1])
return out
