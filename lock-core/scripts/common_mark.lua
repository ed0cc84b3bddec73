-- Shared helpers (see lock_core::scripts, "Shared helpers").
-- The waiters' mark: a lock whose value ends in '!' was refused to somebody while it was held,
-- who may be waiting for its release. Only such a release hands the lock over to a fair queue
-- or announces itself (release.lua); an uncontended release is a GET and a DEL. Every script
-- that refuses a lock to a caller that may wait marks it, in the same call as the refusal, so a
-- waiter (which subscribes before its last try) never misses the notice; a rewrite of a lock's
-- value keeps the mark (`marked`). `pttl` is the lock's PTTL, read in the same call: the SET
-- keeps that expiry (never shorter: the server's clock only moves on) with no command beyond
-- those the lock's ACL rules allow and no KEEPTTL (Redis >= 6).
local function mark_waited(lock_key, current, pttl)
  if string.sub(current, -1) ~= '!' then
    if pttl > 0 then
      redis.call('SET', lock_key, current .. '!', 'PX', pttl)
    else
      redis.call('SET', lock_key, current .. '!')
    end
  end
end

local function marked(current)
  if string.sub(current, -1) == '!' then
    return '!'
  end
  return ''
end
