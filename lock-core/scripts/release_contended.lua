-- The end of release.lua
-- (after its shared helpers, see lock_core::scripts): the lock just deleted carried a waiters'
-- mark. The short form (marked '!': no fair waiter) announces on the lock's channel; the full
-- form hands the lock over to the fair queue's head, or announces with nobody queued.
if #KEYS == 1 then
  publish_mode(ARGV[2])
  announce(KEYS[1] .. ':released', '1')
  return 1
end
publish_mode(ARGV[3])
if not hand_over(KEYS[1], KEYS[4], KEYS[2], KEYS[3]) then
  announce(ARGV[2], '1')
end
return 1
