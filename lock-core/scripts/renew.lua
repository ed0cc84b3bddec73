-- Renew many leases in one call
-- (after its shared helpers, see lock_core::scripts): the watchdog's batch.
-- Item i (from 1): KEYS[2i-1] the lock key, or the set of holders; KEYS[2i] the key that lives
-- and dies with that set (a semaphore's size), or the same key again.
-- ARGV[3i-2] '' for a lock key, 'm' for a member of a set; ARGV[3i-1] owner token;
-- ARGV[3i] ttl in milliseconds.
-- Returns one integer per item: 1 renewed, 0 not held by this owner (nothing changed), -1 the
-- key holds another type (nothing changed). Each item is decided alone, as extend.lua and
-- member.lua decide it.
local now
local out = {}
for i = 1, #ARGV / 3 do
  local key, extra = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, token, ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local result = 0
  if kind == '' then
    local current = redis.pcall('GET', key)
    if type(current) == 'table' and current.err then
      result = -1
    elseif current and string.sub(current, 1, 32) == token then
      redis.call('PEXPIRE', key, ttl)
      result = 1
    end
  else
    now = now or now_ms()
    local score = redis.pcall('ZSCORE', key, token)
    if type(score) == 'table' and score.err then
      result = -1
    elseif score and tonumber(score) > now then
      local ms = tonumber(ttl)
      redis.call('ZADD', key, now + ms, token)
      if redis.call('PTTL', key) < ms then
        redis.call('PEXPIRE', key, ms)
        if extra ~= key then
          redis.call('PEXPIRE', extra, ms)
        end
      end
      result = 1
    end
  end
  out[i] = result
end
return out
