-- Shared helpers (see lock_core::scripts, "Shared helpers"), after common_fence.lua and
-- common_mark.lua.
-- The lock at `lock_key` as `token` finds it: nil when free; {1, fence} when `token` holds it
-- (its expiry refreshed to `ttl` ms: a retry after a lost reply); {0, pttl} when another owner
-- does (pttl -1 when the key has no expiry), the lock marked as waited for (mark_waited).
local function held_reply(lock_key, token, ttl)
  local current = redis.call('GET', lock_key)
  if not current then
    return nil
  end
  if string.sub(current, 1, 32) == token then
    redis.call('PEXPIRE', lock_key, ttl)
    return {1, fence_of(current)}
  end
  local pttl = redis.call('PTTL', lock_key)
  mark_waited(lock_key, current, pttl)
  return {0, pttl}
end

-- Takes the free lock at `lock_key` for `token` for `ttl` ms, with a fencing token minted from
-- `fence_key` when `fencing` is '1' (else 0), with the waiters' mark `mark` ('!', '?' or '',
-- see common_mark.lua). Returns the grant {1, fence}.
local function take_lock(lock_key, fence_key, token, ttl, fencing, mark)
  local fence = 0
  if fencing == '1' then
    fence = mint_fence(fence_key)
  end
  -- '%.0f': Lua's own number-to-string keeps 14 digits only, and clock-based tokens have 16.
  redis.call('SET', lock_key, token .. ':' .. string.format('%.0f', fence) .. (mark or ''), 'PX', ttl)
  return {1, fence}
end
