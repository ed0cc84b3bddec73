-- Shared helpers (see lock_core::scripts, "Shared helpers").
-- The waiters' mark, the last character of a held lock's value: a lock that was refused to
-- somebody while it was held, who may be waiting for its release, ends in
--   '!' when its waiters wait for the release notice on the broadcast channel (the mutex, the
--       read-write lock's readers and writers): the release announces itself there;
--   '?' when fair waiters may be queued for it: the release hands it over to the head of the
--       queue (release.lua's full form), or announces itself with nobody left queued.
-- '?' outranks '!': a lock marked both ways is marked '?', and its release does both jobs.
-- Only a marked release announces itself; an uncontended release is a GET and a DEL. Every
-- script that refuses a lock to a caller that may wait marks it, in the same call as the
-- refusal, so a waiter (which subscribes before its last try) never misses the notice; a
-- rewrite of a lock's value keeps the mark (`marked`). `pttl` is the lock's PTTL, read in the
-- same call: the SET keeps that expiry (never shorter: the server's clock only moves on) with
-- no command beyond those the lock's ACL rules allow and no KEEPTTL (Redis >= 6). A lock in
-- its last millisecond answers PTTL 0 (it expires when the clock passes its expiry): it keeps
-- 1 ms, never no expiry at all, which would hold it for good. -1 (a key without expiry, not
-- one of ours) stays without. `mark` is '!' or '?' ('!' when nil).
local function mark_waited(lock_key, current, pttl, mark)
  mark = mark or '!'
  local last = string.sub(current, -1)
  if last == '?' or last == mark then
    return
  end
  local value = current .. mark
  if last == '!' then
    value = string.sub(current, 1, -2) .. mark
  end
  if pttl >= 0 then
    redis.call('SET', lock_key, value, 'PX', math.max(pttl, 1))
  else
    redis.call('SET', lock_key, value)
  end
end

-- The waiters' mark `current` carries ('!', '?' or '').
local function marked(current)
  local last = string.sub(current, -1)
  if last == '!' or last == '?' then
    return last
  end
  return ''
end
