-- Acquire a lock, shared by every Redis driver of this workspace
-- (after its shared helpers, see lock_core::scripts).
-- KEYS[1] lock key (value: 32 hex owner token, ':', fencing token or 0)
-- KEYS[2] fence counter key (same hash slot; never expires)
-- KEYS[3] (optional) the node marker `lock:node` (value: 12 hex node id, ':', the server time in
--         ms at which the node may grant again, or 0 once it may); absent in Redis Cluster
-- ARGV[1] owner token, ARGV[2] ttl in milliseconds, ARGV[3] '1' to mint a fencing token,
-- ARGV[4] '<quarantine in milliseconds>:<a fresh 12 hex node id>' (used only to re-create the
--         marker; one argument, so the call stays within the 10 elements Redis parses from a
--         client before AUTH, and an unauthenticated client is told NOAUTH)
-- Returns {1, fence} when the lock is ours (fence 0 when none was minted),
--         {0, pttl}  when another owner holds it (pttl -1 when the key has no expiry),
--         {2, left}  when the node lost its data and abstains for `left` more milliseconds.
-- Idempotent: re-running it for the same token refreshes the expiry and returns the same fence.
local abstain = check_marker(KEYS[3], ARGV[4])
if abstain then
  return abstain
end
local held = held_reply(KEYS[1], ARGV[1], ARGV[2])
if held then
  return held
end
return take_lock(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
