--[[
  reset: an admin reset of a user's quota window: the day counter goes back to 0 and a
  grace period begun in that window is forgotten. Run by the user's owner, in line with
  its flushes, so no flush can put the old count back.

  KEYS[1] bucket "debt at version graceDay graceAt"   KEYS[2] day counter of the window
  ARGV[1] start of that day window

  Returns 1.
]]
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[2], '0', 'KEEPTTL') end
local stored = redis.call('GET', KEYS[1])
if stored then
  local d, a, v, gd = string.match(stored, '^(%S+) (%S+) (%S+) (%S+) %S+$')
  if gd == ARGV[1] then
    redis.call('SET', KEYS[1], d .. ' ' .. a .. ' ' .. v .. ' -1 -1', 'KEEPTTL')
  end
end
return 1
