-- The end of release.lua
-- (after its shared helpers, see lock_core::scripts): the lock just deleted carried the waiters' mark.
publish_mode(ARGV[3])
if not hand_over(KEYS[1], KEYS[4], KEYS[2], KEYS[3]) then
  announce(ARGV[2], '1')
end
return 1
