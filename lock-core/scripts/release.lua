-- Release a lock only if this owner holds it, and announce the release. The script is this
-- file, then the shared helpers (see lock_core::scripts), then release_contended.lua: an
-- uncontended release returns here, before any helper is built, so it costs the server a GET
-- and a DEL.
-- Full form: KEYS[1] lock key, KEYS[2] the fair queue, KEYS[3] the fair waiters' deadlines,
-- KEYS[4] the fencing counter (same slot; only KEYS[1] is read unless the lock carries the
-- fair waiters' mark); ARGV[1] owner token, ARGV[2] release notice channel ('' for a silent
-- discard), ARGV[3] the pub/sub mode ('c', 'l' or 's'; see publish_mode in
-- common_announce.lua).
-- Short form: KEYS[1] alone; ARGV[1] owner token, ARGV[2] the pub/sub mode ('' for a silent
-- discard). Its notice goes to the lock's channel, `<lock key>:released`. It does all a
-- release needs but the fair hand-over: for a lock carrying the fair waiters' mark '?' it
-- returns 2, changing nothing, and the caller sends the full form.
-- Returns 1 when deleted, 0 when the key is absent or held by another owner (nothing changed).
-- A lock somebody was refused (its value ends in a waiters' mark, see common_mark.lua) goes
-- on to release_contended.lua: it goes to the head of the fair queue at once if fair waiters
-- are queued (see hand_over), else the notice goes to the broadcast channel (plain waiters).
-- Nobody else can be waiting for it.
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, 32) ~= ARGV[1] then
  return 0
end
local mark = string.sub(current, -1)
if ARGV[2] == '' or (mark ~= '!' and mark ~= '?') then
  redis.call('DEL', KEYS[1])
  return 1
end
if mark == '?' and #KEYS == 1 then
  return 2
end
redis.call('DEL', KEYS[1])
