-- Raise a lock's fencing counter to at least a given token (RedLock's write-back), and record
-- the token on the lock when this owner holds it, so a re-acquire returns it.
-- KEYS[1] lock key, KEYS[2] fence counter key; ARGV[1] owner token, ARGV[2] fencing token
-- Returns the counter after the call. A missing counter starts from the server's clock in
-- microseconds, as in acquire.lua.
local wanted = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[2])
local counter
if stored then
  counter = tonumber(stored)
else
  local t = redis.call('TIME')
  counter = tonumber(t[1] .. string.format('%06d', tonumber(t[2])))
  redis.call('SET', KEYS[2], string.format('%.0f', counter))
end
if counter < wanted then
  redis.call('SET', KEYS[2], ARGV[2])
  counter = wanted
end
-- The lock's 33rd character says whose token it records: ':' one this node minted itself
-- (never handed out unless it was the quorum's maximum, so the write-back replaces it), '='
-- one written back (only ever raised, so a late write-back never lowers a newer one).
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[1])
  local recorded = tonumber(string.match(current, '^%d+', 34)) or 0
  local minted_here = string.sub(current, 33, 33) == ':'
  if ttl > 0 and (minted_here or recorded < wanted) then
    -- Keeps the waiters' mark, a trailing '!' or '?' (see mark_waited in common_mark.lua).
    local mark = string.sub(current, -1)
    if mark ~= '!' and mark ~= '?' then
      mark = ''
    end
    redis.call('SET', KEYS[1], ARGV[1] .. '=' .. ARGV[2] .. mark, 'PX', ttl)
  end
end
return counter
