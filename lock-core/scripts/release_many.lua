-- Release many locks in one call
-- (after its shared helper common_announce.lua, see lock_core::scripts): the releases of one
-- server that arrive together (lock_core::coalesce), each decided alone as the short form of
-- release.lua decides it.
-- KEYS[i] the lock key of release i; ARGV[1] the pub/sub mode ('c', 'l' or 's', see
-- publish_mode); ARGV[2i] the owner token of release i, ARGV[2i+1] '1' to announce it, '' for
-- a silent discard.
-- Returns one integer per release: 1 deleted, 0 absent or held by another owner (nothing
-- changed), 2 announced and the lock carries the fair waiters' mark '?' (nothing changed: the
-- caller sends release.lua's full form, which hands the lock over), -1 the key holds another
-- type (nothing changed).
publish_mode(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local lock, token, loud = KEYS[i], ARGV[2 * i], ARGV[2 * i + 1] == '1'
  local result = 0
  local current = redis.pcall('GET', lock)
  if type(current) == 'table' and current.err then
    result = -1
  elseif current and string.sub(current, 1, 32) == token then
    local mark = string.sub(current, -1)
    if loud and mark == '?' then
      result = 2
    else
      redis.call('DEL', lock)
      if loud and mark == '!' then
        announce(lock .. ':released', '1')
      end
      result = 1
    end
  end
  out[i] = result
end
return out
